"""Building a run: everything a recipe names (data, model, optimizer, EMA, DDP wrapping), the
run folder opened once all of it was built, and on resume the saved state restored."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .._version import __version__
from ..data import DataBundle, DataSpec, build_data
from ..data.csv_labels import multilabel_targets
from ..data.determinism import derive_seed
from ..data.resident import augment_batch, uint8_arrays
from ..data.volumes import minimum_size
from ..errors import ConfigError, DataError, TrainingDiverged, UserError
from ..models import build_model, config_from_dict, get_config
from ..models.channels import adapt_state_channels, describe_adaptation
from ..models.hub import fetch_pretrained
from ..models.inflate import DEFAULT_INFLATION, describe_inflation, inflate_state_dict, needs_inflation
from ..models.pretrained import PretrainedEntry, default_pretrained_cfg, get_weights_entry
from ..models.registry import ModelConfig
from ..models.weights import classifier_prefix, load_backbone, preprocessing_record
from ..models.whiten import whiten_stem
from .checkpoint import (
    FORMAT,
    capture_rng,
    load_checkpoint,
    remove_stale_temporaries,
    restore_rng,
    save_checkpoint,
    state_dict_from,
    unwrap_model,
)
from .distributed import DistInfo, run_on_main
from .loop import TrainState
from .multilabel import balanced_pos_weight
from .muon import FilterMuon
from .recipes import Recipe, resolve_from_scratch, resolve_label_smoothing
from .runfolder import RunFolder
from .runlog import CONFIG, LAST, read_json, write_json
from .runtime import Runtime


@dataclass
class Run:
    """Everything built from a recipe, shared by the epoch loop and the checkpoint writer."""

    recipe: Recipe
    runtime: Runtime
    run_dir: Path
    data: DataBundle
    model_config: ModelConfig
    config: dict
    state: TrainState
    steps_per_epoch: int
    per_rank_batch: int
    drop_last: bool
    pos_weight: torch.Tensor | None = None  # multi-label: the loss's weight of each class's positives (C,)

    def log(self, message: str) -> None:
        if self.runtime.dist.is_main:
            print(message, flush=True)

    def on_main(self, fn):
        """Run a file write on rank 0; an error there stops every rank (see ``run_on_main``)."""
        return run_on_main(fn, self.runtime.dist)

    def save(self, *names: str) -> None:
        """Rank 0 writes the checkpoint(s); every rank's state is identical under DDP.

        Weights or buffers (BatchNorm running statistics) that are no longer finite are
        never written over a good checkpoint.
        """
        self.on_main(lambda: self._write(names))

    def _write(self, names: tuple[str, ...]) -> None:
        s = self.state
        model = unwrap_model(s.model)
        bad = non_finite_tensors(model)
        if bad:
            shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
            raise TrainingDiverged(
                f"the weights became NaN or infinite by step {s.step} (epoch {s.epoch + 1}): {shown}"
            )
        payload = {
            "format": FORMAT,
            "model": model.state_dict(),
            "optimizer": s.optimizer.state_dict(),
            "scaler": s.scaler.state_dict() if s.scaler is not None else None,
            "step": s.step,
            "epoch": s.epoch,
            "best": dict(s.best),
            "epoch_sums": dict(s.epoch_sums),
            "cost": dict(s.cost),  # FLOPs and seconds so far (engine.flops)
            "rng": capture_rng(),
            "config": self.config,
        }
        if s.ema is not None:  # read first by evaluation and export (models.weights.state_dict_from)
            payload["ema"] = s.ema.module.state_dict()
            payload["ema_updates"] = int(s.ema.n_averaged)
        for name in names:
            save_checkpoint(self.run_dir / name, payload)


def non_finite_tensors(model: nn.Module) -> list[str]:
    """Names of the floating-point parameters and buffers of ``model`` holding NaN or infinity."""
    tensors = [*model.named_parameters(), *model.named_buffers()]
    return [name for name, t in tensors if t.is_floating_point() and not bool(t.detach().isfinite().all())]


# What may change when a run is resumed: how it executes, never what it computes.
RESUME_OVERRIDES = ("max_steps", "workers", "checkpoint_every", "device")


def recipe_to_run(recipe: Recipe | None, run_dir: Path, resume: bool, changes: dict | None) -> Recipe:
    """The recipe itself, or on resume the run's recorded recipe with the allowed changes."""
    if not resume:
        if recipe is None:
            raise ConfigError("fit needs a recipe unless resume=True")
        return recipe
    # runs recorded before the loader choice existed used worker processes
    recorded = Recipe.from_dict({"loader": "workers", **read_json(run_dir / CONFIG)["recipe"]})
    changes = changes or {}
    bad = sorted(set(changes) - set(RESUME_OVERRIDES))
    if bad:
        raise ConfigError(f"cannot change {bad} when resuming; only {', '.join(RESUME_OVERRIDES)} may change")
    return replace(recorded, **changes)


def build_run(recipe: Recipe, runtime: Runtime, folder: RunFolder, resume: bool) -> Run:
    """Everything the recipe names; the run folder is opened only once all of it was built."""
    dist = runtime.dist
    if not resume:
        _refuse_existing_run(folder.path)
    entry = get_weights_entry(recipe.model, recipe.pretrained) if recipe.pretrained else None
    data = _load_data(recipe, entry, _start_preprocess(recipe, folder.path, resume))
    recipe, smoothing_note = resolve_label_smoothing(recipe, data.multilabel)  # recorded resolved in config.json
    recipe = resolve_from_scratch(recipe, data.spatial_dims)  # likewise
    data.notes = [*data.notes, *([smoothing_note] if smoothing_note else [])]
    model_config = get_config(
        recipe.model,
        num_classes=data.num_classes,
        in_channels=data.in_channels,
        dropout=recipe.dropout,
        init=recipe.init,
        **_spatial_dims(recipe, data),
    )
    if data.spatial_dims == 3 and min(data.preprocess["volume_size"]) < minimum_size(model_config):
        size = "x".join(map(str, data.preprocess["volume_size"]))
        raise DataError(
            f"{data.size_origin}: volumes of {size} are smaller than {recipe.model}'s minimum of "
            f"{minimum_size(model_config)} voxels a side; pass a larger --volume-size"
        )
    config = _run_config(recipe=recipe, model_config=model_config, data=data, runtime=runtime)
    if resume:
        config = _recorded_config(folder.path, config)
    per_rank_batch = _per_rank_batch(recipe, dist)
    model = _make_model(
        recipe=recipe, model_config=model_config, runtime=runtime, entry=entry, load_weights=not resume,
        class_names=data.class_names,
    )  # fmt: skip
    if recipe.whiten_stem and not resume:
        data.notes = [*data.notes, _whiten_stem(model, recipe, data)]
    optimizer = _make_optimizer(recipe, model)
    model = _wrap_model(model, recipe=recipe, runtime=runtime)
    scaler = torch.amp.GradScaler(runtime.device.type) if runtime.needs_grad_scaler else None
    state = TrainState(model=model, optimizer=optimizer, scaler=scaler, ema=_make_ema(recipe, model))
    steps_per_epoch, drop_last = _epoch_length(len(data.train), per_rank_batch, dist.world_size)
    run_on_main(lambda: _open_folder(folder, config=config, resume=resume), dist)
    run = Run(
        recipe=recipe,
        runtime=runtime,
        run_dir=folder.path,
        data=data,
        model_config=model_config,
        config=config,
        state=state,
        steps_per_epoch=steps_per_epoch,
        per_rank_batch=per_rank_batch,
        drop_last=drop_last,
        pos_weight=_pos_weight(recipe, data, runtime),
    )
    if resume:
        _restore(run)
    return run


def _spatial_dims(recipe: Recipe, data: DataBundle) -> dict:
    """The model's spatial_dims override: the data's (3 for volumes), or the recipe's where it agrees."""
    if recipe.spatial_dims is not None and recipe.spatial_dims != data.spatial_dims:
        raise ConfigError(f"--spatial-dims {recipe.spatial_dims}, but {recipe.data} holds {data.spatial_dims}-D inputs")
    return {} if data.spatial_dims == 2 else {"spatial_dims": data.spatial_dims}


def _pos_weight(recipe: Recipe, data: DataBundle, runtime: Runtime) -> torch.Tensor | None:
    """``balanced``: each class's positives weighted by negatives / positives among its known training labels."""
    if not data.multilabel or recipe.pos_weight == "none":
        return None
    return balanced_pos_weight(multilabel_targets(data.train)).to(runtime.device)


def _refuse_existing_run(run_dir: Path) -> None:
    if (run_dir / LAST).exists():
        raise UserError(
            f"{run_dir} already holds a run; continue it with --resume {run_dir} or choose another --run-dir"
        )


def _start_preprocess(recipe: Recipe, run_dir: Path, resume: bool) -> dict | None:
    """The preprocessing recorded with the ``weights`` file a run on the user's images starts
    from (one of our checkpoints; None for others); on resume, the run's own record."""
    if not recipe.weights or recipe.data not in ("imagefolder", "csv"):
        return None
    if resume:
        return read_json(run_dir / CONFIG)["data"]["preprocess"]
    return preprocessing_record(load_checkpoint(recipe.weights))


def _load_data(recipe: Recipe, entry: PretrainedEntry | None, start: dict | None = None) -> DataBundle:
    """The data set; with named weights or one of our checkpoints, at their input size and normalisation."""
    spec = DataSpec(
        name=recipe.data,
        data_dir=recipe.data_dir,
        download=recipe.download,
        image_size=recipe.image_size,
        val_split=recipe.val_split,
        seed=recipe.seed,
        verify_images=recipe.verify_images,
        skip_bad_images=recipe.skip_bad_images,
        augment=recipe.augment,
        labels=recipe.labels,
        uncertain=recipe.uncertain,
        volume_size=recipe.volume_size,
        intensity_window=recipe.intensity_window,
    )
    size, why = _input_size(recipe, entry, start)
    spec = replace(spec, image_size=size)
    if entry is not None:
        # the images keep their channels: grey ones get a stem adapted from the RGB weights
        spec = replace(spec, mean=entry.mean, std=entry.std)
    elif start is not None:
        spec = replace(spec, mean=tuple(start["mean"]), std=tuple(start["std"]))
    data = build_data(spec)
    if why and data.spatial_dims == 2:  # volumes keep their own size (--volume-size), said in their note
        data.notes.insert(0, f"input size {data.image_size} px: {why}; --image-size to change")
    return data


def _input_size(recipe: Recipe, entry: PretrainedEntry | None, start: dict | None) -> tuple[int | None, str]:
    """The size images are read at when ``image_size`` is not given, and why: the named
    weights', the weights file's run's, else for the user's images the model stem's (32 px for
    a CIFAR stem, 224 for an ImageNet stem); other data sets keep their own size."""
    if recipe.image_size:
        return recipe.image_size, ""
    if entry is not None:
        return int(entry.input_size[-1]), f"the size of the weights {entry.name}"
    if start is not None:
        return int(start["crop"]), f"the size {recipe.weights} was trained at"
    if recipe.data not in ("imagefolder", "csv"):
        return None, ""
    config = get_config(recipe.model)
    stem = "CIFAR" if config.stem == "cifar" else "ImageNet"
    return int(default_pretrained_cfg(config)["input_size"][-1]), f"the {stem} stem's default"


def _run_config(*, recipe: Recipe, model_config: ModelConfig, data: DataBundle, runtime: Runtime) -> dict:
    """config.json: the resolved recipe, the model, the data and the environment.

    The preprocessing record also carries what predict and eval need to read the outputs:
    the class names, whether they are multi-label, and the per-class thresholds (set at the
    end of each epoch of a multi-label run, saved with its checkpoints; None single-label).
    """
    return {
        "recipe": recipe.to_dict(),
        "model": model_config.to_dict(),
        "data": {
            "name": data.name,
            "num_classes": data.num_classes,
            "in_channels": data.in_channels,
            "multilabel": data.multilabel,
            "preprocess": {
                **data.preprocess,
                "class_names": list(data.class_names),
                "multilabel": data.multilabel,
                "thresholds": None,
            },
            "augment": data.augment,
            "class_names": data.class_names,
            "sizes": {"train": len(data.train), "val": len(data.val) if data.val else 0, "test": len(data.test)},
        },
        "environment": {
            "densenets": __version__,
            "torch": str(torch.__version__),
            "device": str(runtime.device),
            "world_size": runtime.dist.world_size,
        },
    }


def _recorded_config(run_dir: Path, config: dict) -> dict:
    """On resume the run keeps its own config.json, which must describe the same model."""
    saved = read_json(run_dir / CONFIG)
    # compared as configs: files written before memory_efficient became a runtime switch carry it
    if config_from_dict(saved["model"]) != config_from_dict(config["model"]):
        raise UserError(f"{run_dir}/{CONFIG} describes a different model than the recipe builds")
    return saved


def _per_rank_batch(recipe: Recipe, dist: DistInfo) -> int:
    if recipe.batch_size % dist.world_size:
        raise ConfigError(f"batch_size {recipe.batch_size} is not divisible by the {dist.world_size} processes")
    return recipe.batch_size // dist.world_size


def _make_model(
    *,
    recipe: Recipe,
    model_config: ModelConfig,
    runtime: Runtime,
    entry: PretrainedEntry | None,
    load_weights: bool,
    class_names: list[str] | None = None,
) -> nn.Module:
    """The network on its device, from the recipe's seed, its ``weights`` file or its named weights."""
    torch.manual_seed(derive_seed(recipe.seed, "init"))
    model: nn.Module = build_model(model_config)
    if recipe.memory_efficient:
        model.set_memory_efficient(recipe.memory_efficient)  # True or "full"; DenseNets only: a baseline refuses
    if recipe.weights and load_weights:
        _init_from_weights(
            model, recipe.weights, runtime.dist.is_main, recipe.data in ("imagefolder", "csv"), recipe.inflate
        )
    elif entry is not None and load_weights:
        _init_from_pretrained(model, entry, runtime.dist.is_main, class_names, recipe.inflate)
    if recipe.sync_bn and runtime.device.type != "cuda":
        raise ConfigError(
            "sync_bn needs CUDA (torch's SyncBatchNorm is GPU-only); CPU ranks use per-rank BN statistics"
        )
    if recipe.sync_bn and runtime.dist.enabled:
        if recipe.memory_efficient:
            raise ConfigError("sync_bn cannot be combined with memory_efficient (recomputation would sync twice)")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(runtime.device)
    if runtime.channels_last and getattr(model_config, "spatial_dims", 2) == 2:  # channels_last is 4-D only
        model = model.to(memory_format=torch.channels_last)
    return model


def _init_from_weights(
    model: nn.Module, path: str, verbose: bool, user_images: bool = False, inflate: str | None = None
) -> None:
    """Start from pretrained weights; a classifier for another number of classes is re-initialised,
    a 3-channel stem for grey images adapted (models.channels: with the normalisation the file's
    run recorded, else timm's plain sum)."""
    data = load_checkpoint(path)
    recorded = preprocessing_record(data) or {}  # a file without a record: the data's own normalisation
    mean, std = recorded.get("mean"), recorded.get("std")
    state, new_mean, new_std, adapted = adapt_state_channels(state_dict_from(data), model, mean, std)
    state = _inflate(state, model, verbose, inflate)
    if verbose and user_images and mean is not None:  # the data read with it: _start_preprocess
        print(f"{path}: normalised as its run was: mean {_rounded(new_mean)}, std {_rounded(new_std)}", flush=True)
    if adapted and verbose:
        print(f"{path}: {describe_adaptation(model.config.in_channels, std)}", flush=True)
    head = classifier_prefix(model)
    theirs = state.get(head + "weight")
    if load_backbone(model, state, path) and verbose and theirs is not None:
        print(f"{path}: {theirs.shape[0]} classes in the file, {model.config.num_classes} in the data: "
              "classifier re-initialised", flush=True)  # fmt: skip


def _init_from_pretrained(
    model: nn.Module,
    entry: PretrainedEntry,
    verbose: bool,
    class_names: list[str] | None = None,
    inflate: str | None = None,
) -> None:
    """Start from named weights; the classifier is new unless the data's classes are the weights'
    (the same names in the same order; ImageNet's 1000 classes by number)."""
    theirs = list(entry.categories) if entry.categories != "imagenet" else None
    other_classes = theirs is not None and class_names is not None and list(class_names) != theirs
    state, mean, std, adapted = adapt_state_channels(fetch_pretrained(entry), model, entry.mean, entry.std)
    state = _inflate(state, model, verbose, inflate)
    replaced = load_backbone(model, state, entry.file_name, new_head=other_classes)
    size = (model.config.in_channels, *entry.input_size[1:])
    model.pretrained_cfg = {
        **entry.pretrained_cfg(), "mean": tuple(mean), "std": tuple(std), "input_size": size,
        "num_classes": model.config.num_classes, "class_names": class_names,
    }  # fmt: skip
    if verbose:
        head = f"new classifier for {model.config.num_classes} classes" if replaced else "its classifier kept"
        print(f"starting from {entry.name} ({entry.file_name}): {head}; input {'x'.join(map(str, size))}, "
              f"mean {_rounded(mean)}, std {_rounded(std)}", flush=True)  # fmt: skip
        if adapted:
            print(f"{describe_adaptation(model.config.in_channels, entry.std)}, from {list(entry.mean)} / "
                  f"{list(entry.std)} (see densenets.models.channels)", flush=True)  # fmt: skip


def _inflate(state: dict, model: nn.Module, verbose: bool, mode: str | None = None) -> dict:
    """2-D weights for a 3-D model (volumes): inflated by ``mode`` (None: the default rule), said in one line."""
    if not needs_inflation(state, model):
        if mode is not None:
            dims = getattr(model.config, "spatial_dims", 2)
            raise ConfigError(
                f"inflate={mode!r} turns 2-D weights into a 3-D model's; here the model is {dims}-D and the "
                "weights hold no 2-D kernels it lacks: leave out inflate"
            )
        return state
    if verbose:
        print(describe_inflation(mode or DEFAULT_INFLATION, chosen=mode is not None), flush=True)
    return inflate_state_dict(state, model, mode or DEFAULT_INFLATION)


WHITEN_IMAGES = 5000  # training images whose patches set the whitened stem


def _whiten_stem(model: nn.Module, recipe: Recipe, data: DataBundle) -> str:
    """Set the stem from up to WHITEN_IMAGES training images, normalised as the network sees them
    (the same images on every rank: drawn from the run's seed)."""
    if data.spatial_dims != 2:
        raise ConfigError("whiten_stem is for 2-D images")
    g = torch.Generator().manual_seed(derive_seed(recipe.seed, "whiten"))
    pick = torch.randperm(len(data.train), generator=g)[:WHITEN_IMAGES]
    try:
        images, _ = uint8_arrays(data.train)
        mean, std = (torch.tensor(data.preprocess[k], dtype=torch.float32) for k in ("mean", "std"))
        x = augment_batch(images[pick], mean, std).contiguous()
    except ConfigError:  # not in memory: the training transform's tensors
        x = torch.stack([data.train[int(i)][0] for i in pick[:1000]])
    return whiten_stem(model, x.to(next(model.parameters()).device))


def _rounded(values: list[float]) -> list[float]:
    return [round(v, 4) for v in values]


def _make_ema(recipe: Recipe, model: nn.Module) -> torch.optim.swa_utils.AveragedModel | None:
    """torch's AveragedModel as an EMA of the parameters and the BatchNorm statistics."""
    if not recipe.ema_decay:
        return None
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(recipe.ema_decay), use_buffers=True)


def _make_optimizer(recipe: Recipe, model: nn.Module) -> torch.optim.Optimizer:
    kind = FilterMuon if recipe.optimizer == "muon" else torch.optim.SGD  # both: no dampening (the paper's)
    return kind(
        _param_groups(model, recipe),
        lr=recipe.lr,
        momentum=recipe.momentum,
        nesterov=recipe.nesterov,
        weight_decay=recipe.weight_decay,
    )


_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def _param_groups(model: nn.Module, recipe: Recipe) -> list[dict]:
    """The optimiser's parameter groups.

    One group, or with ``freeze_epochs`` the classifier apart from a backbone held at lr 0.
    Without ``decay_norm_bias`` each group splits in two: the weights of convolutions and linear
    layers (more than one dimension) keep the weight decay, the rest (BatchNorm scales and
    shifts, biases) get none. ``bias_lr_scale`` and ``freeze_norm_scale`` split off the shifts
    and biases (their lr times the scale) and the BatchNorm scales (lr 0) as groups of their own;
    the training step multiplies each group's lr by its ``lr_scale``. With ``optimizer="muon"``
    the convolution filters (3 or more dimensions) form an ``orthogonal`` group of their own at
    ``muon_lr`` (no weight decay: the optimiser holds their norm).
    """
    named = list(model.named_parameters())
    if recipe.freeze_epochs:
        prefix = classifier_prefix(model)
        body = [p for n, p in named if not n.startswith(prefix)]
        head = [p for n, p in named if n.startswith(prefix)]
        groups = [{"params": body, "frozen_epochs": recipe.freeze_epochs}, {"params": head}]
    else:
        groups = [{"params": [p for _, p in named]}]
    norm_scales = {id(m.weight) for m in model.modules() if isinstance(m, _BATCH_NORMS) and m.affine}
    no_decay = {} if recipe.decay_norm_bias else {"weight_decay": 0.0}
    settings = {  # by kind of parameter: what its group sets beyond the optimiser's defaults
        "matrix": {},
        "scale": {**no_decay, "lr_scale": 0.0} if recipe.freeze_norm_scale else no_decay,
        "shift": {**no_decay, "lr_scale": recipe.bias_lr_scale} if recipe.bias_lr_scale != 1 else no_decay,
        "filter": {"orthogonal": True, "weight_decay": 0.0, "lr_scale": recipe.muon_lr / recipe.lr},
    }
    muon = recipe.optimizer == "muon"

    def kind(p: nn.Parameter) -> str:
        if p.ndim > 2 and muon:
            return "filter"
        return "matrix" if p.ndim > 1 else "scale" if id(p) in norm_scales else "shift"

    split = []
    for group in groups:
        shared: dict[tuple, dict] = {}  # kinds with the same settings share one group, in the order first met
        for p in group["params"]:
            extra = settings[kind(p)]
            shared.setdefault(tuple(sorted(extra.items())), {**group, **extra, "params": []})["params"].append(p)
        split += shared.values()
    return split


def _wrap_model(model: nn.Module, *, recipe: Recipe, runtime: Runtime) -> nn.Module:
    """DDP across ranks, then ``torch.compile`` when asked; checkpoints unwrap both."""
    if runtime.dist.enabled:
        ids = [runtime.device.index] if runtime.device.type == "cuda" else None
        # Stochastic depth skips whole units on some steps: their parameters get no gradient then.
        skips = getattr(getattr(model, "config", None), "stochastic_depth", 0) > 0
        model = DistributedDataParallel(model, device_ids=ids, find_unused_parameters=skips)
    if recipe.compile:
        model = torch.compile(model)
    return model


def _epoch_length(train_size: int, per_rank_batch: int, world_size: int) -> tuple[int, bool]:
    """(steps per epoch, drop_last): full batches only, unless the data is smaller than one batch."""
    per_rank_samples = -(-train_size // world_size)
    drop_last = per_rank_samples >= per_rank_batch
    return (per_rank_samples // per_rank_batch if drop_last else 1), drop_last


def _open_folder(folder: RunFolder, *, config: dict, resume: bool) -> None:
    """Create and lock the run folder (rank 0), then record the config or clear a crash's leftovers."""
    folder.open()
    if resume:
        remove_stale_temporaries(folder.path)
    else:
        _refuse_existing_run(folder.path)  # another run may have finished here meanwhile
        write_json(folder.path / CONFIG, config)


def _restore(run: Run) -> None:
    ckpt = load_checkpoint(run.run_dir / LAST, map_location=run.runtime.device)
    s = run.state
    try:
        unwrap_model(s.model).load_state_dict(ckpt["model"])
        s.optimizer.load_state_dict(ckpt["optimizer"])
        if s.scaler is not None and ckpt.get("scaler"):
            s.scaler.load_state_dict(ckpt["scaler"])
        s.step, s.epoch = int(ckpt["step"]), int(ckpt["epoch"])
        s.best = dict(ckpt.get("best") or {})
        s.epoch_sums = dict(ckpt["epoch_sums"])
        s.cost = dict(ckpt.get("cost") or {})  # absent before the count: it then starts at this step
        restore_rng(ckpt["rng"])
        if s.ema is not None:
            s.ema.module.load_state_dict(ckpt["ema"])
            s.ema.n_averaged.fill_(int(ckpt["ema_updates"]))
        saved = ckpt.get("config", {}).get("data", {}).get("preprocess", {})
        for key in ("thresholds", "threshold_source"):  # chosen at the last completed epoch
            if key in saved:
                run.config["data"]["preprocess"][key] = saved[key]
    except (KeyError, RuntimeError, ValueError) as exc:
        raise UserError(f"{run.run_dir / LAST}: cannot resume from it ({type(exc).__name__}: {exc})") from exc
    run.log(f"resuming {run.run_dir} at step {s.step} (epoch {s.epoch + 1}/{run.recipe.epochs})")
