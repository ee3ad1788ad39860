"""The paper's training protocols as named, immutable recipes.

A recipe holds everything that decides a run: model and data names, optimiser, schedule,
regularisation and execution options. ``resolve_recipe`` applies the paper's rules that
depend on the data set (DenseNets: dropout exactly when there is no augmentation) so the
resolved recipe written to the run folder repeats the run on its own. The ResNet baselines
train under the same recipes; only their dropout default is their own paper's.
"""

from __future__ import annotations

import difflib
import json
import typing
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import yaml

from ..data.csv_labels import UNCERTAIN
from ..data.resident import FLIPS, PAD
from ..errors import ConfigError, reject_unknown_fields
from .multilabel import POS_WEIGHTS, THRESHOLD_RULES
from .tta import TTA_MODES

SCHEDULES = ("step", "cosine", "linear")
OPTIMIZERS = ("sgd", "muon")
MEMORY_VALUES = ("full",)  # memory_efficient's named level beside true and false (set_memory_efficient's)


@dataclass(frozen=True)
class Recipe:
    """Everything that decides a training run, as one immutable record.

    Each field is an option of ``densenets train`` (``lr_milestones`` is
    ``--lr-milestones``); the resolved recipe is written to the run's ``config.json`` and
    repeats the run on its own.
    """

    # what to train
    model: str = "densenet_bc40_k12"
    data: str = "digits+"
    data_dir: str = "data"
    download: bool = False
    image_size: int | None = None  # None: the weights' size, else the stem's for user images, else the data set's
    val_split: int = 0  # training images held out for validation (paper: 5,000 CIFAR / 6,000 SVHN)
    verify_images: bool | None = None  # decode-check image folders up front (None: imagefolder yes, imagenet no)
    skip_bad_images: bool = False  # leave out unreadable images with a warning instead of stopping
    labels: str | None = None  # csv: the labels file (None: DATA_DIR/labels.csv)
    uncertain: str = "ignore"  # csv, multi-label: a -1 label is ignore (masked like a blank) | ones | zeros
    pos_weight: str = "none"  # multi-label: none | balanced (each class's positives weighted negatives/positives)
    threshold: str = "f1"  # multi-label: per-class operating point on the validation split, f1 (max F1) | youden
    volume_size: tuple[int, ...] | None = None  # csv of volumes: resize each to D H W (None: their own, all alike)
    intensity_window: tuple[float, ...] | None = (
        None  # csv of volumes: clip to LOW HIGH, scale to [0, 1] (None: z-score)
    )
    spatial_dims: int | None = None  # the model's: None follows the data (3 for volumes), else must match it
    inflate: str | None = None  # 2-D weights (pretrained, weights) into a 3-D model: center | mean (None: mean)
    # optimiser and schedule (paper: SGD, Nesterov 0.9, no dampening, wd 1e-4)
    epochs: int = 30
    batch_size: int = 64  # global: split over the ranks of a distributed run
    lr: float = 0.1
    lr_milestones: tuple[float, ...] = (0.5, 0.75)  # fractions of training where lr is divided
    lr_gamma: float = 0.1
    schedule: str = "step"  # step (the paper's: divide at lr_milestones) | cosine | linear (each to zero at the end)
    warmup_epochs: float = 0.0  # linear ramp from lr/steps to lr over this many epochs
    optimizer: str | None = "sgd"  # sgd (the paper's) | muon: convolution filters take orthogonalised steps
    # (engine/muon.py); None: muon for 2-D images from random weights, else sgd
    muon_lr: float = 0.02  # muon: the filters' peak lr, the fraction of a filter bank's norm a step moves it
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4
    decay_norm_bias: bool = True  # weight decay on BatchNorm scales and shifts and on biases too (the paper's);
    # false: on the convolution and linear weights only
    bias_lr_scale: float = 1.0  # lr multiplier for BatchNorm shifts and biases (airbench's bias scaler; 1: the same lr)
    freeze_norm_scale: bool = False  # hold the BatchNorm scales at their initial 1 (lr 0): only the shifts train
    # model settings the protocol decides
    weights: str | None = None  # initialise from a weights file (ours or torchvision's); new classifier if needed
    pretrained: bool | str = False  # start from the model's named weights (True: its default; or a tag)
    freeze_epochs: int = 0  # train only the classifier for this many epochs (the rest at lr 0)
    label_smoothing: float | None = 0.0  # None: FINETUNE_SMOOTHING on single-label classes, none on multi-label
    accum_steps: int = 1  # split each batch into this many chunks, gradients accumulated (same result, less memory)
    ema_decay: float = 0.0  # 0: off; e.g. 0.999: keep an EMA of the weights, which is evaluated and saved as the result
    tta: str = "none"  # none | flip | flip-translate: also report the final test figure with test-time augmentation
    augment: str | None = None  # none | crop | crop-flip | imagenet (None: chosen by the data set and image size)
    dropout: float | None = None  # None: 0.2 without augmentation, 0 with (the paper's rule)
    init: str = "fan_out"
    whiten_stem: bool | None = False  # initialise the first conv as a patch-whitening filter bank from training
    # images (None: yes for 2-D images from random weights, else no)
    train_sizes: tuple[int, ...] | None = None  # progressive resizing: train at these sizes over equal parts of
    # the epochs (e.g. 16 24 32), the last one the input size; the resident loader resizes each batch
    translate: int = PAD  # resident loader: zero-pad and crop back, a shift of up to this many pixels (the paper's 4)
    flip: str = "random"  # resident loader: random each epoch | alternate (random once, then mirrored each other epoch)
    # execution
    seed: int = 0
    loader: str | None = None  # workers | resident (None: resident for in-memory CIFAR/SVHN, else workers)
    workers: int | None = None  # None: 0 on the CPU (loading competes with compute), 8 on CUDA
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: str = "none"  # none | bf16 | fp16 (fp16 on CUDA only)
    channels_last: bool | None = None  # None: fp32 on the CPU; with --amp for ImageNet-stem models (measured)
    memory_efficient: bool | str = False  # true: concat-BN-ReLU recomputed in backward | "full": also conv1, BN2-ReLU2,
    # the transitions' and the ImageNet stem's BN-ReLU (set_memory_efficient's levels; for volumes)
    sync_bn: bool = False
    compile: bool = False
    checkpoint_every: int = 0  # also save last.pt every N steps (0: at the end of each epoch only)
    max_steps: int = 0  # stop after this many steps in total (0: train all epochs); for smoke tests

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(Recipe)
        for f in fields(self):
            _check_type(f.name, getattr(self, f.name), hints[f.name])
        object.__setattr__(self, "lr_milestones", tuple(float(m) for m in self.lr_milestones))
        if self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.bias_lr_scale <= 0:
            raise ConfigError(f"bias_lr_scale must be > 0, got {self.bias_lr_scale}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.optimizer is not None and self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer must be one of {', '.join(OPTIMIZERS)}; got {self.optimizer!r}")
        if self.muon_lr <= 0:
            raise ConfigError(f"muon_lr must be > 0, got {self.muon_lr}")
        if any(not 0 < m < 1 for m in self.lr_milestones):
            raise ConfigError(f"lr_milestones are fractions of training in (0, 1), got {self.lr_milestones}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule must be one of {', '.join(SCHEDULES)}; got {self.schedule!r}")
        if self.augment is not None and self.augment not in AUGMENTS:
            raise ConfigError(f"augment must be one of {', '.join(AUGMENTS)}; got {self.augment!r}")
        if self.label_smoothing is not None and not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.accum_steps < 1 or self.batch_size % self.accum_steps:
            raise ConfigError(
                f"accum_steps must be >= 1 and divide batch_size {self.batch_size}, got {self.accum_steps}"
            )
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"ema_decay must be in [0, 1) (0: no EMA), got {self.ema_decay}")
        if self.pretrained and self.weights:
            raise ConfigError("give either pretrained (named weights) or weights (a file), not both")
        if self.whiten_stem and (self.pretrained or self.weights):
            raise ConfigError("whiten_stem initialises a network from random weights, not from pretrained/weights")
        if self.amp not in ("none", "bf16", "fp16"):
            raise ConfigError(f"amp must be one of none, bf16, fp16; got {self.amp!r}")
        if self.loader not in (None, "workers", "resident"):
            raise ConfigError(f"loader must be one of workers, resident; got {self.loader!r}")
        named = {"uncertain": UNCERTAIN, "pos_weight": POS_WEIGHTS, "threshold": THRESHOLD_RULES, "tta": TTA_MODES}
        for name, allowed in named.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}; got {getattr(self, name)!r}")
        if self.volume_size is not None:
            if len(self.volume_size) != 3 or any(int(v) != v or v < 1 for v in self.volume_size):
                raise ConfigError(f"volume_size takes three positive integers D H W, got {list(self.volume_size)}")
            object.__setattr__(self, "volume_size", tuple(int(v) for v in self.volume_size))
        if self.intensity_window is not None and (
            len(self.intensity_window) != 2 or not self.intensity_window[0] < self.intensity_window[1]
        ):
            raise ConfigError(f"intensity_window takes LOW HIGH with LOW < HIGH, got {list(self.intensity_window)}")
        if isinstance(self.memory_efficient, str) and self.memory_efficient not in MEMORY_VALUES:
            raise ConfigError(f"memory_efficient must be false, true or 'full', got {self.memory_efficient!r}")
        if self.inflate is not None:
            from ..models.inflate import INFLATIONS

            if self.inflate not in INFLATIONS:
                raise ConfigError(f"inflate must be one of {', '.join(INFLATIONS)}; got {self.inflate!r}")
            if not (self.pretrained or self.weights):
                raise ConfigError("inflate needs 2-D weights to inflate into the 3-D model: pretrained or weights")
        if self.translate < 0:
            raise ConfigError(f"translate must be >= 0 pixels, got {self.translate}")
        if self.flip not in FLIPS:
            raise ConfigError(f"flip must be one of {', '.join(FLIPS)}; got {self.flip!r}")
        if self.train_sizes is not None:
            sizes = self.train_sizes
            if not sizes or any(int(v) != v or v < 8 for v in sizes) or len(sizes) > self.epochs:
                raise ConfigError(
                    f"train_sizes takes 1 to epochs ({self.epochs}) image sizes of at least 8 px, got {list(sizes)}"
                    + (" (fewer epochs: fewer sizes, e.g. --train-sizes 16 32)" if len(sizes) > self.epochs else "")
                )
            object.__setattr__(self, "train_sizes", tuple(int(v) for v in sizes))
        if self.spatial_dims not in (None, 1, 2, 3):
            raise ConfigError(f"spatial_dims must be 1, 2 or 3, got {self.spatial_dims!r}")
        if self.init not in ("fan_out", "fan_in"):
            raise ConfigError(f"init must be one of fan_out, fan_in; got {self.init!r}")
        if self.dropout is not None and not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        for name in ("workers", "val_split", "checkpoint_every", "max_steps", "seed", "freeze_epochs", "warmup_epochs"):
            if (getattr(self, name) or 0) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")

    def to_dict(self) -> dict:
        """The recipe as plain JSON types (``config.json``'s ``recipe``)."""
        out = asdict(self)
        out["lr_milestones"] = list(self.lr_milestones)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> Recipe:
        """A recipe from ``to_dict``'s output; an unknown field is refused by name."""
        reject_unknown_fields(data, cls, "recipe")
        return cls(**data)


def _check_type(name: str, value: object, hint: object) -> None:
    """Reject a value of the wrong type with a message naming the field."""
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, _union_type()) else (hint,)
    for option in options:
        if option is type(None) and value is None:
            return
        origin = typing.get_origin(option) or option
        if origin is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return
        if origin is int and isinstance(value, int) and not isinstance(value, bool):
            return
        if origin in (bool, str) and isinstance(value, origin):
            return
        numbers = isinstance(value, (tuple, list)) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
        )
        if origin is tuple and numbers:
            return
    expected = " or ".join(_type_name(o) for o in options)
    raise ConfigError(f"recipe field {name!r} must be {expected}, got {value!r} ({type(value).__name__})")


def _union_type():
    import types

    return getattr(types, "UnionType", typing.Union)


def _type_name(option: object) -> str:
    if option is type(None):
        return "null"
    origin = typing.get_origin(option) or option
    return {tuple: "a list of numbers"}.get(origin, getattr(origin, "__name__", str(origin)))


# Base recipes; model and data defaults are the usual pairing, both overridable.
RECIPES: dict[str, Recipe] = {
    # CIFAR-10/100: batch 64, 300 epochs, lr 0.1 divided by 10 at 50% and 75%.
    "cifar": Recipe(model="densenet_bc100_k12", data="cifar10+", epochs=300, batch_size=64),
    # SVHN: train + extra, 40 epochs, 6,000 images held out, best model by validation error.
    "svhn": Recipe(model="densenet_bc100_k12", data="svhn", epochs=40, batch_size=64, val_split=6000),
    # ImageNet: batch 256, 90 epochs, lr divided by 10 at epochs 30 and 60.
    "imagenet": Recipe(model="densenet121", data="imagenet", epochs=90, batch_size=256, lr_milestones=(1 / 3, 2 / 3)),
    # Few FLOPs to CIFAR accuracy on one CPU (docs/fast-training.md): the settings chosen on a
    # validation split; every field can be overridden, --model any DenseNet of the family.
    "fast": Recipe(
        model="densenet_bc46_k12",
        data="cifar10+",
        epochs=10,
        batch_size=128,
        lr=0.3,
        schedule="linear",
        warmup_epochs=1.0,
        weight_decay=5e-4,
        decay_norm_bias=False,
        optimizer="muon",
        muon_lr=0.02,
        label_smoothing=0.1,
        ema_decay=0.99,
        amp="bf16",
        train_sizes=(16, 16, 16, 16, 20, 24, 24, 28, 32, 32),
        whiten_stem=True,
        translate=2,
        flip="alternate",
        tta="flip-translate",
    ),  # fmt: skip
    # The bundled real data set: DenseNet-BC-40 (k=12) on 16x16 digits, minutes on a laptop CPU.
    "digits": Recipe(model="densenet_bc40_k12", data="digits+", epochs=20, batch_size=64),
    # A user's own folder of class sub-folders (or a labels CSV) from random weights: the ImageNet
    # preprocessing, a shorter schedule, and the fast recipe's optimisation: a linear one-cycle
    # schedule with one warm-up epoch, wd 5e-4, label smoothing (single-label) and, for 2-D
    # images, a whitened stem and Muon for the filters (docs/own-data/README.md measures each
    # against the paper's settings).
    "imagefolder": Recipe(
        model="densenet121",
        data="imagefolder",
        epochs=30,
        batch_size=32,
        schedule="linear",
        warmup_epochs=1.0,
        weight_decay=5e-4,
        label_smoothing=None,  # FINETUNE_SMOOTHING on single-label classes; multi-label targets keep 0 and 1
        whiten_stem=None,  # 2-D images: yes; volumes: no
        optimizer=None,  # 2-D images: muon; volumes: sgd
    ),  # fmt: skip
    # Fine-tuning named weights on a user's folder: new classifier, the weights' preprocessing,
    # a 10x lower lr on a cosine schedule with one warm-up epoch, label smoothing.
    "finetune": Recipe(
        model="densenet121",
        data="imagefolder",
        pretrained=True,
        epochs=10,
        batch_size=32,
        lr=0.01,
        schedule="cosine",
        warmup_epochs=1.0,
        label_smoothing=None,  # FINETUNE_SMOOTHING on single-label classes; multi-label targets keep 0 and 1
    ),  # fmt: skip
}

AUGMENTS = ("none", "crop", "crop-flip", "imagenet")
FINETUNE_SMOOTHING = 0.1  # the finetune recipe's label smoothing, for single-label classes only

RECIPE_FOR_DATA = {
    "cifar10": "cifar",
    "cifar10+": "cifar",
    "cifar100": "cifar",
    "cifar100+": "cifar",
    "svhn": "svhn",
    "imagenet": "imagenet",
    "digits": "digits",
    "digits+": "digits",
    "imagefolder": "imagefolder",
    "csv": "imagefolder",
}

AUGMENTED_DATA = {"cifar10+", "cifar100+", "digits+", "imagenet", "imagefolder", "csv"}


# What a field's values mean, where its default does not say (the train command's help).
FIELD_NOTES = {
    "optimizer": "sgd (the paper's: Nesterov SGD for every parameter) | muon: orthogonalised steps for the "
    "convolution filters at --muon-lr, SGD for the rest (BatchNorm, biases, classifier)",
    "memory_efficient": "the flag alone recomputes each dense layer's concat-BN-ReLU in backward; 'full' also "
    "its 1x1 conv and BN-ReLU, the transitions' and the ImageNet stem's BN-ReLU (less memory, more time: volumes)",
}
# What a field left at None means (resolved by resolve_recipe or at run time).
AUTO_MEANING = {
    "image_size": "named weights' size; image folders and CSVs: the model stem's (CIFAR 32, ImageNet 224); "
    "other data sets: their own",
    "verify_images": "image folders yes, ImageNet no",
    "weights": "none: random initialisation",
    "labels": "DATA_DIR/labels.csv",
    "augment": "chosen by the data set and image size",
    "loader": "resident for in-memory CIFAR/SVHN, else workers",
    "dropout": "0.2 without data augmentation, 0 with (the paper's rule)",
    "workers": "0 on the CPU, 8 on CUDA",
    "channels_last": "fp32 on the CPU; with --amp for ImageNet-stem models",
    "label_smoothing": f"{FINETUNE_SMOOTHING} on single-label classes, none on multi-label targets",
    "volume_size": "the volumes' own size (all alike)",
    "intensity_window": "a z-score per volume",
    "spatial_dims": "the data's: 3 for a CSV of volumes, else 2",
    "train_sizes": "every epoch at the input size",
    "whiten_stem": "yes for 2-D images from random weights (no pretrained or weights), no for volumes",
    "optimizer": "muon for 2-D images from random weights (no pretrained or weights), sgd for volumes and "
    "networks that start from weights",
    "inflate": "mean (I3D: each 2-D kernel repeated over depth, divided by the depth); center: in the middle slice",
}


def describe_default(name: str) -> str:
    """What a run uses for recipe field ``name`` when it is not given.

    The default run's value (the digits recipe) and, where they differ, each recipe's.
    """

    def show(value) -> str:
        if value is None:
            return AUTO_MEANING.get(name, "none")
        if isinstance(value, tuple):
            return ",".join(f"{v:.3g}" for v in value)
        return str(value)

    values = {recipe_name: show(getattr(recipe, name)) for recipe_name, recipe in RECIPES.items()}
    default = values[RECIPE_FOR_DATA[Recipe.data]]
    note = f"; {FIELD_NOTES[name]}" if name in FIELD_NOTES else ""
    if len(set(values.values())) == 1:
        return f"default: {default}{note}"
    others = ", ".join(f"{r} {v}" for r, v in values.items() if r != RECIPE_FOR_DATA[Recipe.data])
    return f"default run (digits): {default}; other recipes: {others}{note}"


def resolve_label_smoothing(recipe: Recipe, multilabel: bool) -> tuple[Recipe, str | None]:
    """The recipe with its label smoothing decided for the data (None: the finetune recipe's rule).

    Also a line to say when smoothing is left off multi-label targets or applied to them.
    """
    if recipe.label_smoothing is None:
        value = 0.0 if multilabel else FINETUNE_SMOOTHING
        note = (f"label smoothing: none on multi-label targets (the finetune recipe's {FINETUNE_SMOOTHING:g} is "
                "for single-label classes; --label-smoothing X asks for it)") if multilabel else None  # fmt: skip
        return replace(recipe, label_smoothing=value), note
    if multilabel and recipe.label_smoothing:
        x = recipe.label_smoothing
        note = f"label smoothing {x:g} on multi-label targets, as asked: 1 trains as {1 - x / 2:g}, 0 as {x / 2:g}"
        return recipe, note
    return recipe, None


def resolve_from_scratch(recipe: Recipe, spatial_dims: int) -> Recipe:
    """The recipe with ``whiten_stem`` and ``optimizer`` decided where they are None.

    Both follow one rule: a 2-D network from random weights whitens its stem and takes Muon for its
    filters; volumes and networks that start from weights (pretrained or a file) keep their stem
    and take SGD.
    """
    scratch_2d = spatial_dims == 2 and not (recipe.pretrained or recipe.weights)
    if recipe.whiten_stem is None:
        recipe = replace(recipe, whiten_stem=scratch_2d)
    if recipe.optimizer is None:
        recipe = replace(recipe, optimizer="muon" if scratch_2d else "sgd")
    return recipe


def base_recipe(name: str | None = None, data: str | None = None, pretrained: bool | str = False) -> Recipe:
    """The named recipe, or the one the data set implies.

    Args:
        name: ``cifar``, ``fast``, ``svhn``, ``imagenet``, ``digits``, ``imagefolder`` or ``finetune``;
            ``None``: the data set's (digits when neither is given; ``finetune`` for an image
            folder or a labels CSV with pretrained weights).
        data: The data set name, which replaces the recipe's.
        pretrained: Named weights to start from (``True``: the model's default).

    Returns:
        The recipe, before ``resolve_recipe``.

    Raises:
        ConfigError: An unknown recipe name (with the closest names).
    """
    if name is None and pretrained and (data or "imagefolder") in ("imagefolder", "csv"):
        name = "finetune"
    if name is None:
        name = RECIPE_FOR_DATA.get(data or "digits+", "digits")
    if name not in RECIPES:
        close = difflib.get_close_matches(name, list(RECIPES), n=2)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ConfigError(f"unknown recipe {name!r}; {hint}choose from {', '.join(RECIPES)}")
    recipe = RECIPES[name]
    recipe = replace(recipe, data=data) if data else recipe
    return replace(recipe, pretrained=pretrained) if pretrained else recipe


def resolve_recipe(recipe: Recipe, **overrides) -> Recipe:
    """Apply overrides, then the paper's data-dependent rules; the result has no ``None`` left to decide."""
    reject_unknown_fields(overrides, Recipe, "recipe")
    if overrides.get("weights") and "pretrained" not in overrides:
        overrides = {**overrides, "pretrained": False}  # a weights file replaces the recipe's named weights
    recipe = replace(recipe, **overrides)
    if recipe.dropout is None:
        recipe = replace(recipe, dropout=default_dropout(recipe.model, recipe.data))
    return recipe


def read_recipe_file(path: str | Path) -> Recipe:
    """A recipe from a run's ``config.json`` or a YAML/JSON file of recipe fields (flat, or under ``recipe:``)."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: no such file") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it ({exc.strerror or exc})") from exc
    try:
        data = yaml.safe_load(text) if path.suffix.lower() in (".yaml", ".yml") else json.loads(text)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        kind = "YAML" if path.suffix.lower() in (".yaml", ".yml") else "JSON"
        first = str(exc).strip().splitlines()[0]
        raise ConfigError(f"{path}: not valid {kind} ({first})") from exc
    if isinstance(data, dict) and isinstance(data.get("recipe"), dict):
        data = data["recipe"]
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected recipe fields (name: value), found {type(data).__name__}")
    if isinstance(data.get("lr_milestones"), list):
        data = {**data, "lr_milestones": tuple(data["lr_milestones"])}
    return Recipe.from_dict(data)


def default_dropout(model: str, data: str) -> float:
    """The dropout rate a run of ``model`` on ``data`` uses when none is given.

    The DenseNet paper's rule (0.2 without augmentation, else 0) for DenseNets; a baseline
    keeps its own paper's setting (none for He et al.'s ResNets, as registered for the WRNs).
    """
    from ..models.registry import get_config, is_densenet

    if is_densenet(model):
        return 0.0 if data in AUGMENTED_DATA else 0.2
    return float(get_config(model).dropout)
