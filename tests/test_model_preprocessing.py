"""A model carries the preprocessing of the run that made it (issue 19, items 1, 2 and 7):
eval normalises as predict does, ``densenets.load`` and ``create_model(weights=)`` give the
run's ``pretrained_cfg``, and three-channel weights adapt to one-channel input in the stem."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import densenets
from densenets import create_model
from densenets.cli.main import main
from densenets.engine.evaluation import evaluate_checkpoint
from densenets.errors import CheckpointError, ConfigError
from densenets.models import DenseNet, get_config
from densenets.models.channels import adapt_input_conv, adapt_state_channels
from densenets.models.pretrained import CIFAR10_CLASSES, get_weights_entry

from .fakedata import write_image_folder

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.247, 0.2435, 0.2616)


def _trained_like(name: str, seed: int = 0, **overrides) -> DenseNet:
    """A model in eval mode, in float64, with BatchNorm statistics that are not the identity."""
    torch.manual_seed(seed)
    model = DenseNet(get_config(name, **overrides)).double()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _grey(n: int = 2, size: int = 32) -> torch.Tensor:
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(1))  # (N, 1, H, W) in [0, 1]


def test_a_grey_image_through_the_adapted_stem_equals_it_replicated_to_rgb_through_the_original():
    """Equal per-channel normalisation: summed filters give exactly the RGB-replicated result."""
    small_imagenet_stem = {"block_sizes": (2, 2), "num_classes": 10}
    for name, size, overrides in (("densenet_bc40_k12", 32, {}), ("densenet121", 64, small_imagenet_stem)):
        original = _trained_like(name, **overrides)
        grey_model = DenseNet(get_config(name, in_channels=1, **overrides)).double().eval()
        state, mean, std, adapted = adapt_state_channels(original.state_dict(), grey_model, (0.5,) * 3, (0.25,) * 3)
        grey_model.load_state_dict(state)
        assert adapted and (mean, std) == ([0.5], [0.25])
        g = _grey(size=size).double()
        with torch.no_grad():
            rgb = original((g.repeat(1, 3, 1, 1) - 0.5) / 0.25)
            one = grey_model((g - 0.5) / 0.25)
        torch.testing.assert_close(one, rgb, atol=1e-5, rtol=0)


def test_pretrained_weights_take_one_channel_with_the_normalisation_folded_into_the_stem():
    """Our CIFAR-10 weights (unequal per-channel mean/std) for one channel: the std is folded into
    the summed filter, the mean averaged; the grey image equals the RGB image g + (m_c - m)."""
    original = create_model("densenet_bc40_k12", pretrained="cifar10").eval()
    grey_model = create_model("densenet_bc40_k12", pretrained="cifar10", in_channels=1).eval()
    m, s = sum(CIFAR_MEAN) / 3, sum(CIFAR_STD) / 3
    cfg = grey_model.pretrained_cfg
    assert cfg["input_size"] == (1, 32, 32)
    torch.testing.assert_close(torch.tensor(cfg["mean"]), torch.tensor([m]))
    torch.testing.assert_close(torch.tensor(cfg["std"]), torch.tensor([s]))
    assert tuple(densenets.transforms(grey_model).transforms[-1].mean) == cfg["mean"]
    g = _grey()
    mean, std = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        one = grey_model((g - m) / s)
        tinted = original((g + (mean - m) - mean) / std)
        replicated = original((g - mean) / std)
    torch.testing.assert_close(one, tinted, atol=1e-5, rtol=0)
    assert torch.equal(one.argmax(1), replicated.argmax(1))  # a tint of under 3% of the pixel range
    # the rest of the network is the shipped one
    assert torch.equal(grey_model.classifier.weight, original.classifier.weight)


def test_other_channel_counts_repeat_and_rescale_the_filters_as_timm_does():
    weight = torch.randn(8, 3, 3, 3)
    six, mean, std = adapt_input_conv(weight, 6, CIFAR_MEAN, CIFAR_STD)
    torch.testing.assert_close(six, torch.cat([weight, weight], 1) * 0.5)
    assert mean == [float(v) for v in CIFAR_MEAN * 2] and len(std) == 6
    two, _, _ = adapt_input_conv(weight, 2)
    torch.testing.assert_close(two, weight[:, :2] * 1.5)
    model = create_model("densenet_bc40_k12", pretrained="cifar10", in_channels=2)
    assert model.pretrained_cfg["input_size"] == (2, 32, 32) and len(model.pretrained_cfg["mean"]) == 2
    assert get_weights_entry("densenet_bc40_k12", "cifar10").input_size[0] == 3


# ---------------------------------------------------------------------------------------
# eval normalises as the model was trained (item 1)
# ---------------------------------------------------------------------------------------


def _grey_folder(root: Path, per_class: int = 6) -> Path:
    """The README's digits folder in miniature: 16x16 grey PNGs, train/ and val/, two classes."""
    rng = np.random.default_rng(0)
    for part, n in (("train", per_class), ("val", per_class // 2)):
        for c in range(2):
            folder = root / part / str(c)
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = np.clip(60 + 120 * c + rng.integers(-40, 41, (16, 16)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels, mode="L").save(folder / f"{i}.png")
    return root


def _finetune_from_cifar10(data: Path, run: Path, capsys) -> str:
    code = main([
        "train", "--data", "imagefolder", "--data-dir", str(data), "--model", "densenet_bc40_k12", "--pretrained",
        "--augment", "crop", "--epochs", "1", "--batch-size", "6", "--run-dir", str(run), "--no-progress",
    ])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    return out


def _assert_eval_matches_training(run: Path, tmp_path: Path, capsys) -> dict:
    final = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert main(["eval", str(run), "--out", str(tmp_path / "eval")]) == 0, capsys.readouterr().out
    result = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert result["error"] == final["test_error"]
    assert result["loss"] == pytest.approx(final["test_loss"], rel=1e-5)
    return result


def test_eval_of_the_readme_grey_finetuning_flow_equals_the_runs_final_test_error(tmp_path, capsys):
    """Grey PNGs fine-tuned from 3-channel weights: eval used to read the folder as one channel
    and stop in the stem (weight of size [24, 3, 3, 3], expected input[N, 1, 32, 32])."""
    data = _grey_folder(tmp_path / "digits")
    out = _finetune_from_cifar10(data, tmp_path / "run", capsys)
    # the stem adapted to one channel (no conversion to RGB), and the first lines say so
    assert "input 1x32x32, mean [0.4734], std [0.2507]" in out
    assert "stem adapted to 1 channel: the RGB filters summed (timm's in_chans, each channel's std folded in)" in out
    assert "grey images, one channel; normalised with mean [0.4734], std [0.2507]" in out
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["model"]["in_channels"] == 1 and config["data"]["preprocess"]["channels"] == 1
    _assert_eval_matches_training(tmp_path / "run", tmp_path, capsys)


def test_a_run_that_read_grey_images_as_rgb_still_evaluates_on_its_grey_folder(rgb_run, tmp_path):
    """Runs made before the stem was adapted took grey folders as RGB (3-channel model): eval reads
    the folder with the model's 3 channels, as predict does, equal to an RGB copy of the folder."""
    grey, rgb = tmp_path / "grey", tmp_path / "rgb"
    for path in (rgb_run.parent / "photos").rglob("*.png"):
        for root, mode in ((grey, "L"), (rgb, "RGB")):
            target = root / path.relative_to(rgb_run.parent / "photos")
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.open(path).convert("L").convert(mode).save(target)
    on_grey = evaluate_checkpoint(rgb_run, data_dir=str(grey))  # was: RuntimeError in the stem
    on_rgb = evaluate_checkpoint(rgb_run, data_dir=str(rgb))
    assert (on_grey["error"], on_grey["loss"]) == (on_rgb["error"], on_rgb["loss"])


@pytest.fixture(scope="module")
def rgb_fit(tmp_path_factory):
    """An RGB folder fine-tuned from our CIFAR-10 weights: normalised with CIFAR-10's mean/std."""
    from densenets.engine import base_recipe, resolve_recipe
    from densenets.engine.trainer import fit

    root = tmp_path_factory.mktemp("rgb")
    data = write_image_folder(root / "photos", classes=2, per_class=6, size=20)
    recipe = resolve_recipe(
        base_recipe(data="imagefolder", pretrained=True), model="densenet_bc40_k12", data_dir=str(data),
        augment="crop", epochs=1, batch_size=6,
    )  # fmt: skip
    return root / "run", fit(recipe, root / "run", show_progress=False).model


@pytest.fixture(scope="module")
def rgb_run(rgb_fit) -> Path:
    return rgb_fit[0]


def test_eval_of_an_rgb_folder_uses_the_weights_normalisation_not_imagenets(rgb_run, tmp_path, capsys):
    """Fine-tuned from CIFAR-10 weights, the run normalised with CIFAR-10's mean/std; eval used to
    rebuild the folder with ImageNet's and report another loss without a word."""
    config = json.loads((rgb_run / "config.json").read_text())
    assert config["data"]["preprocess"]["mean"] == list(CIFAR_MEAN)
    _assert_eval_matches_training(rgb_run, tmp_path, capsys)


def test_eval_refuses_data_whose_class_names_are_not_the_models(rgb_run, tmp_path):
    """The same number of classes under other names, or in another order: one line, both lists."""
    photos = rgb_run.parent / "photos"
    renamed = tmp_path / "renamed"
    shutil.copytree(photos, renamed)
    for part in ("train", "val"):
        (renamed / part / "class_0").rename(renamed / part / "cat")
        (renamed / part / "class_1").rename(renamed / part / "dog")
    with pytest.raises(ConfigError) as info:
        evaluate_checkpoint(rgb_run, data_dir=str(renamed))
    message = str(info.value)
    assert "\n" not in message and "data [cat, dog]" in message and "model [class_0, class_1]" in message
    # the right names in another order: a checkpoint whose classifier counts them the other way round
    checkpoint = torch.load(rgb_run / "last.pt", weights_only=True)
    checkpoint["config"]["data"]["class_names"] = ["class_1", "class_0"]
    torch.save(checkpoint, tmp_path / "swapped.pt")
    with pytest.raises(ConfigError, match=r"another order.*data \[class_0, class_1\], model \[class_1, class_0\]"):
        evaluate_checkpoint(tmp_path / "swapped.pt", data_dir=str(photos))


# ---------------------------------------------------------------------------------------
# a trained model carries its preprocessing (item 2)
# ---------------------------------------------------------------------------------------


def _assert_cifar_preprocessing(model: torch.nn.Module) -> None:
    cfg = model.pretrained_cfg
    assert (cfg["mean"], cfg["std"], cfg["input_size"]) == (CIFAR_MEAN, CIFAR_STD, (3, 32, 32))
    assert (cfg["class_names"], cfg["thresholds"], cfg["multilabel"]) == (["class_0", "class_1"], None, False)
    assert densenets.data_config(model)["mean"] == CIFAR_MEAN
    assert tuple(densenets.transforms(model).transforms[-1].std) == CIFAR_STD


def test_load_and_create_model_give_the_runs_preprocessing(rgb_fit):
    """densenets.load(RUN | CHECKPOINT) and create_model(name, weights=CHECKPOINT): the run's
    CIFAR-10 mean/std and class names (create_model used to report mean 0.5 / std 0.25), as
    the model fit returned carries them."""
    rgb_run, trained = rgb_fit
    _assert_cifar_preprocessing(trained)
    for model in (densenets.load(rgb_run), densenets.load(rgb_run / "last.pt")):
        assert model.pretrained_cfg == trained.pretrained_cfg
        _assert_cifar_preprocessing(model)
        assert not model.training
    built = create_model("densenet_bc40_k12", weights=rgb_run / "last.pt", num_classes=2)
    _assert_cifar_preprocessing(built)
    with pytest.raises(CheckpointError, match="is a folder, not a checkpoint file"):
        create_model("densenet_bc40_k12", weights=rgb_run, num_classes=2)
    named = densenets.load("densenet_bc40_k12.cifar10")
    assert named.pretrained_cfg["class_names"] == list(CIFAR10_CLASSES) and named.pretrained_cfg["mean"] == CIFAR_MEAN
    # one channel from the run's weights: the stem adapted with the run's own normalisation
    grey = create_model("densenet_bc40_k12", weights=rgb_run / "last.pt", num_classes=2, in_channels=1)
    assert grey.pretrained_cfg["input_size"] == (1, 32, 32)
    assert grey.pretrained_cfg["mean"] == pytest.approx((sum(CIFAR_MEAN) / 3,))


def test_thresholds_and_multilabel_travel_from_the_checkpoint_and_old_files_get_defaults(rgb_run, tmp_path):
    checkpoint = torch.load(rgb_run / "last.pt", weights_only=True)
    preprocess = checkpoint["config"]["data"]["preprocess"]
    for key in ("thresholds", "multilabel"):  # a file written before these keys
        preprocess.pop(key, None)
    torch.save(checkpoint, tmp_path / "old.pt")
    cfg = densenets.load(tmp_path / "old.pt").pretrained_cfg
    assert (cfg["thresholds"], cfg["multilabel"]) == (None, False)
    preprocess.update(thresholds=[0.25, 0.75], multilabel=True)
    torch.save(checkpoint, tmp_path / "multilabel.pt")
    for model in (
        densenets.load(tmp_path / "multilabel.pt"),
        create_model("densenet_bc40_k12", weights=tmp_path / "multilabel.pt", num_classes=2),
    ):
        assert (model.pretrained_cfg["thresholds"], model.pretrained_cfg["multilabel"]) == ([0.25, 0.75], True)


def test_finetuning_from_a_checkpoint_reads_the_images_as_its_run_did(rgb_run, tmp_path, capsys):
    """--weights RUN/last.pt on grey images: the run's CIFAR-10 normalisation averaged to one
    channel and the stem adapted with it (was: ImageNet-style defaults and a stem that did not fit)."""
    from densenets.engine import base_recipe, resolve_recipe
    from densenets.engine.trainer import fit

    data = _grey_folder(tmp_path / "digits", per_class=4)
    recipe = resolve_recipe(
        base_recipe("finetune", data="imagefolder"), model="densenet_bc40_k12", data_dir=str(data),
        weights=str(rgb_run / "last.pt"), augment="crop", epochs=1, batch_size=4,
    )  # fmt: skip
    model = fit(recipe, tmp_path / "run", show_progress=False).model
    out = capsys.readouterr().out
    assert "normalised as its run was: mean [0.4734], std [0.2507]" in out
    assert "stem adapted to 1 channel" in out
    assert model.config.in_channels == 1 and model.pretrained_cfg["mean"] == pytest.approx((sum(CIFAR_MEAN) / 3,))
    final = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    result = evaluate_checkpoint(tmp_path / "run")
    assert result["error"] == final["test_error"] and result["loss"] == pytest.approx(final["test_loss"], rel=1e-5)


def test_a_grey_multilabel_csv_from_rgb_weights_loads_with_its_thresholds(tmp_path, capsys):
    """CheXpert's case in miniature: grey images, a multi-label CSV, RGB weights. The stem is
    adapted, and densenets.load gives the run's class names, thresholds and multilabel flag."""
    from densenets.engine import base_recipe, resolve_recipe
    from densenets.engine.trainer import fit

    from .test_multilabel import CLASSES, write_chexpert_run_data

    data = tmp_path / "xrays"
    write_chexpert_run_data(data)
    for path in (data / "img").glob("*.png"):
        Image.open(path).convert("L").save(path)
    recipe = resolve_recipe(
        base_recipe(data="csv", pretrained=True), model="densenet_bc40_k12", data_dir=str(data), image_size=16,
        epochs=1, batch_size=8,
    )  # fmt: skip
    trained = fit(recipe, tmp_path / "run", show_progress=False).model
    assert "stem adapted to 1 channel" in capsys.readouterr().out and trained.config.in_channels == 1
    recorded = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["config"]["data"]["preprocess"]
    cfg = densenets.load(tmp_path / "run").pretrained_cfg
    assert cfg == trained.pretrained_cfg
    assert (cfg["multilabel"], cfg["class_names"], cfg["input_size"]) == (True, CLASSES, (1, 16, 16))
    assert len(cfg["thresholds"]) == 3 and cfg["thresholds"] == pytest.approx(recorded["thresholds"])
