"""Grey images and input sizes by default, and defaults that are said (issue 26, item 3 and
"defaults invented without a note")."""

from __future__ import annotations

import hashlib
import json
import shlex
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from densenets import create_model
from densenets.cli.main import main
from densenets.data import DataSpec, build_data
from densenets.models import DenseNet, get_config
from densenets.models.pretrained import get_weights_entry, register_weights, unregister_weights

ROOT = Path(__file__).resolve().parents[1]


def readme_command(start: str) -> list[str]:
    """The README's command line that starts with ``start``, as printed (its comment dropped)."""
    lines = [line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith(start)]
    assert len(lines) == 1, f"the README no longer prints one command starting {start!r}"
    return shlex.split(lines[0], comments=True)


def write_grey_xrays(root: Path, size: int = 20) -> Path:
    """A CheXpert-style labels.csv over grey PNGs, 2 rows per split, each class positive and
    negative in every split (as few images as a run can use: the README's command at 224 px)."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    rows = [
        ("p1", "1", "0", "1", "train"),
        ("p2", "0", "1", "0", "train"),
        ("p3", "1", "0", "1", "val"),
        ("p4", "0", "1", "0", "val"),
        ("p5", "1", "0", "0", "test"),
        ("p6", "0", "1", "1", "test"),
    ]
    lines = ["path,Atelectasis,Cardiomegaly,Edema,split"]
    for name, *labels, split in rows:
        Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8), mode="L").save(
            root / "images" / f"{name}.png"
        )
        lines.append(",".join([f"images/{name}.png", *labels, split]))
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def offline_densenet121(tmp_path, monkeypatch):
    """densenet121's named ImageNet weights as random weights in a temporary hub cache (no
    network): the registry entry points at a file whose sha256 it names, as torchvision's does."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.manual_seed(1)
    tmp = cache / "tmp.pth"
    torch.save(DenseNet(get_config("densenet121")).state_dict(), tmp)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()[:8]
    tmp.rename(cache / f"densenet121-{digest}.pth")
    real = get_weights_entry("densenet121", True)
    unregister_weights(real.name)
    register_weights(replace(real, url=f"https://weights.invalid/densenet121-{digest}.pth", sha256=digest))
    yield
    unregister_weights(real.name)
    register_weights(real)


# ---------------------------------------------------------------------------------------
# grey images at the default size
# ---------------------------------------------------------------------------------------


def test_the_readme_multilabel_command_runs_as_printed_on_grey_xrays(
    tmp_path, monkeypatch, offline_densenet121, capsys
):
    """The README's multi-label command on grey X-rays used to stop before training: "augment
    imagenet needs RGB images; use crop or crop-flip for grey images"."""
    command = readme_command("densenets train --data csv --data-dir xrays/")
    write_grey_xrays(tmp_path / "xrays")
    monkeypatch.chdir(tmp_path)  # the command's relative xrays/ and its default runs/ folder
    code = main(command[1:])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "input 1x224x224" in out  # the weights' size, the stem adapted to one channel
    assert "augmentation imagenet on grey images: random-resized crop, flip, brightness and contrast" in out
    assert "grey images, one channel" in out
    (run,) = (tmp_path / "runs").iterdir()
    config = json.loads((run / "config.json").read_text())
    assert config["data"]["augment"] == "imagenet" and config["data"]["preprocess"]["channels"] == 1
    assert config["data"]["preprocess"]["crop"] == 224
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs_completed"] == config["recipe"]["epochs"]


def write_folder(root: Path, size: int, grey: bool, per_class: int = 4) -> Path:
    """Class folders (no split) of ``size`` x ``size`` PNGs, two classes told apart by brightness."""
    rng = np.random.default_rng(0)
    for c in range(2):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            shape = (size, size) if grey else (size, size, 3)
            pixels = np.clip(70 + 110 * c + rng.integers(-30, 31, shape), 0, 255).astype(np.uint8)
            Image.fromarray(pixels, mode="L" if grey else "RGB").save(root / f"class{c}" / f"{i}.png")
    return root


def test_a_grey_folder_at_the_default_size_trains_with_a_grey_safe_imagenet_augmentation(tmp_path):
    """Was: DataError "augment imagenet needs RGB images"; the colour steps are left out and said."""
    for augment in (None, "imagenet"):
        bundle = build_data(
            DataSpec(name="imagefolder", data_dir=str(write_folder(tmp_path / str(augment), 24, grey=True)),
                     augment=augment)
        )  # fmt: skip
        assert bundle.augment == "imagenet" and bundle.in_channels == 1
        image, _ = bundle.train[0]
        assert image.shape == (1, 224, 224)  # one channel: no RGB lighting broadcast onto it
        assert bundle.notes == [
            "augmentation imagenet on grey images: random-resized crop, flip, brightness and contrast "
            "(no saturation or PCA lighting: grey images)"
        ]
    rgb = build_data(DataSpec(name="imagefolder", data_dir=str(write_folder(tmp_path / "rgb", 24, grey=False))))
    assert rgb.augment == "imagenet" and rgb.notes == [] and rgb.train[0][0].shape == (3, 224, 224)


def train_on_folder(folder: Path, run: Path, capsys, *extra: str) -> tuple[str, dict]:
    code = main(["train", "--data", "imagefolder", "--data-dir", str(folder), "--epochs", "1", "--batch-size", "4",
                 "--run-dir", str(run), "--no-progress", *extra])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    return out, json.loads((run / "config.json").read_text())["data"]["preprocess"]


def test_a_cifar_stem_model_from_scratch_reads_a_32px_folder_at_32px_and_says_so(tmp_path, capsys):
    """Was: 224x224 (49x the compute of 32x32) without a word."""
    folder = write_folder(tmp_path / "small", 32, grey=False)
    out, preprocess = train_on_folder(folder, tmp_path / "run", capsys, "--model", "densenet_bc40_k12")
    assert "input size 32 px: the CIFAR stem's default; --image-size to change" in out
    assert preprocess["crop"] == 32 and preprocess["resize"] == 32
    assert "augmentation: crop-flip (chosen for 32px images" in out
    out, preprocess = train_on_folder(
        folder, tmp_path / "asked", capsys, "--model", "densenet_bc40_k12", "--image-size", "40"
    )
    assert preprocess["crop"] == 40 and "input size" not in out


def test_an_imagenet_stem_model_from_scratch_reads_images_at_224px_and_says_so(tmp_path, capsys):
    folder = write_folder(tmp_path / "small", 32, grey=False, per_class=2)
    out, preprocess = train_on_folder(folder, tmp_path / "run", capsys, "--model", "densenet121", "--max-steps", "1")
    assert "input size 224 px: the ImageNet stem's default; --image-size to change" in out
    assert preprocess["crop"] == 224


# ---------------------------------------------------------------------------------------
# defaults the loaders assume are said
# ---------------------------------------------------------------------------------------

SMALL = "densenet_bc16_k4"


def test_a_checkpoint_or_export_without_a_preprocessing_record_says_imagenets_is_assumed(tmp_path):
    """Was: ImageNet's mean, std and 224 px crop without a word."""
    from safetensors.torch import save_file

    from densenets.engine.loading import load_model, loaded_notes

    model = create_model(SMALL, num_classes=3)
    config = {"model": model.config.to_dict(), "recipe": {"model": SMALL}}
    torch.save({"model": model.state_dict(), "config": config}, tmp_path / "old.pt")
    save_file(model.state_dict(), tmp_path / "old.safetensors")
    (tmp_path / "old.json").write_text(json.dumps({"model": model.config.to_dict(), "name": SMALL}))
    for path in (tmp_path / "old.pt", tmp_path / "old.json"):
        loaded = load_model(path)
        assert loaded.preprocess["mean"] == [0.485, 0.456, 0.406] and loaded.preprocess["crop"] == 224
        (note,) = loaded.notes
        assert note.startswith(f"{path.name} records no preprocessing: assumed ImageNet's (224 px centre crop of 256")
        assert f"note: {note}" in loaded_notes(loaded)
    with pytest.warns(UserWarning, match="old.pt records no preprocessing: assumed ImageNet's"):
        create_model(SMALL, num_classes=3, weights=tmp_path / "old.pt")
    # with a record: nothing assumed, nothing said
    config["data"] = {"preprocess": {"mean": [0.5] * 3, "std": [0.25] * 3, "resize": None, "crop": 32, "channels": 3}}
    torch.save({"model": model.state_dict(), "config": config}, tmp_path / "new.pt")
    assert load_model(tmp_path / "new.pt").notes == []


def test_create_model_from_a_bare_state_dict_says_the_cifar_stem_default_is_kept(tmp_path):
    """Was: pretrained_cfg kept mean 0.5 / std 0.25 for the weights without a word."""
    torch.save(create_model(SMALL, num_classes=3).state_dict(), tmp_path / "bare.pth")
    with pytest.warns(UserWarning, match=r"bare.pth records no normalisation: pretrained_cfg keeps the CIFAR stem's "
                      r"default \(32 px, mean \[0.5, 0.5, 0.5\], std \[0.25, 0.25, 0.25\]\)"):  # fmt: skip
        model = create_model(SMALL, num_classes=3, weights=tmp_path / "bare.pth")
    assert model.pretrained_cfg["mean"] == (0.5, 0.5, 0.5)


@pytest.mark.parametrize("content", [None, "{not json", json.dumps({"data": {}}), json.dumps(["recipe"])])
def test_an_unreadable_config_json_is_an_error_naming_it_not_a_run_without_validation(tmp_path, capsys, content):
    """Was: "last.pt: ... (this run has no validation split)", the wrong checkpoint for a run that
    chose best.pt on a validation split."""
    from densenets.engine.loading import choose_checkpoint
    from densenets.errors import CheckpointError

    run = tmp_path / "run"
    run.mkdir()
    if content is not None:  # None: the run folder lacks it
        (run / "config.json").write_text(content)
    for name in ("best.pt", "last.pt"):
        torch.save({"step": 1, "epoch": 1}, run / name)
    with pytest.raises(CheckpointError, match=f"^{run / 'config.json'}: "):
        choose_checkpoint(run)
    assert main(["eval", str(run)]) != 0
    assert f"{run / 'config.json'}: " in capsys.readouterr().err
