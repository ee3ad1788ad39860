"""Named weights through torch.hub's cache (offline), hubconf, pretrained_cfg, multi-scale features."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

import densenets
from densenets import create_model
from densenets.cli.main import main
from densenets.errors import CheckpointError, ConfigError
from densenets.models import DenseNet, get_config
from densenets.models.pretrained import PretrainedEntry, register_weights, unregister_weights

from .fakedata import write_image_folder

ROOT = Path(__file__).resolve().parents[1]
FAKE_MODEL = "densenet40_k12"  # small, registered (so hubconf exposes it), CIFAR stem


def legacy_keys(state: dict) -> dict:
    """torchvision's pre-0.3 names: denselayer1.norm1.weight -> denselayer1.norm.1.weight."""
    pattern = re.compile(r"(denselayer\d+\.(?:norm|relu|conv))(\d)\.")
    return {pattern.sub(r"\1.\2.", k): v for k, v in state.items()}


def write_fake_weights(cache: Path, model: str, seed: int = 1) -> tuple[Path, dict]:
    """A torchvision-style file (legacy keys) named <model>-<its own sha256 prefix>.pth, as torchvision names its."""
    torch.manual_seed(seed)
    reference = DenseNet(get_config(model))
    state = legacy_keys(reference.state_dict())
    assert "features.denseblock1.denselayer1.norm.1.weight" in state
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cache / "tmp.pth"
    torch.save(state, tmp)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()[:8]
    path = cache / f"{model}-{digest}.pth"
    tmp.rename(path)
    return path, reference.state_dict()


@pytest.fixture
def fake_entry(tmp_path, monkeypatch):
    """A registry entry for a fake weights file sitting in a temporary $TORCH_HOME/hub/checkpoints."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    path, state = write_fake_weights(tmp_path / "torch" / "hub" / "checkpoints", FAKE_MODEL)
    digest = path.stem.split("-")[1]
    entry = PretrainedEntry(
        model=FAKE_MODEL, tag="fake", url=f"https://weights.invalid/{path.name}", sha256=digest, num_classes=10,
        categories=tuple(f"c{i}" for i in range(10)), mean=(0.5,) * 3, std=(0.25,) * 3, input_size=(3, 32, 32),
        crop_pct=1.0,
    )  # fmt: skip
    register_weights(entry)
    yield entry, path, state
    unregister_weights(entry.name)


def test_pretrained_true_loads_legacy_torchvision_file_from_the_hub_cache(fake_entry):
    entry, _, state = fake_entry
    model = create_model(FAKE_MODEL, pretrained=True)
    for key, value in state.items():
        torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=0)
    assert model.pretrained_cfg["input_size"] == (3, 32, 32) and model.pretrained_cfg["tag"] == "fake"
    by_tag = create_model(FAKE_MODEL, pretrained="fake", num_classes=3)  # new head, pretrained body
    assert by_tag.classifier.out_features == 3 and by_tag.pretrained_cfg["num_classes"] == 3
    torch.testing.assert_close(by_tag.features.conv0.weight, state["features.conv0.weight"])
    with pytest.raises(ConfigError, match="tags: fake"):
        create_model(FAKE_MODEL, pretrained="imagenet21k")


def test_a_cached_file_with_another_hash_is_refused_in_one_line(tmp_path, monkeypatch):
    """torchvision's real entry: a file under its name whose sha256 does not start with a639ec97."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save({"features.conv0.weight": torch.zeros(64, 3, 7, 7)}, cache / "densenet121-a639ec97.pth")
    with pytest.raises(CheckpointError) as info:
        create_model("densenet121", pretrained=True)
    message = str(info.value)
    assert "\n" not in message and "a639ec97" in message and "densenet121-a639ec97.pth" in message


def test_offline_without_a_cached_file_says_what_to_fetch_and_where(fake_entry, capsys):
    entry, path, _ = fake_entry
    path.unlink()
    with pytest.raises(CheckpointError) as info:
        create_model(FAKE_MODEL, pretrained=True)
    message = str(info.value)
    assert "\n" not in message and entry.url in message and entry.file_name in message
    assert str(path.parent) in message


def test_list_pretrained_shows_torchvision_files(capsys):
    assert main(["list", "--pretrained"]) == 0
    out = capsys.readouterr().out
    for name in ("densenet121-a639ec97.pth", "densenet161-8d451a50.pth", "densenet169-b2777c0a.pth"):
        assert name in out
    assert "74.43" in out  # published top-1 of densenet121


def test_hubconf_loads_every_variant_locally_and_with_pretrained_weights(fake_entry):
    _, _, state = fake_entry
    spec = importlib.util.spec_from_file_location("hubconf_under_test", ROOT / "hubconf.py")
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    assert hubconf.dependencies == ["torch", "torchvision"]
    assert all(callable(getattr(hubconf, name)) for name in densenets.list_models())
    model = torch.hub.load(str(ROOT), FAKE_MODEL, source="local", pretrained=True, num_classes=4)
    assert model.classifier.out_features == 4
    torch.testing.assert_close(model.features.conv0.weight, state["features.conv0.weight"])
    plain = torch.hub.load(str(ROOT), "densenet121", source="local")
    assert sum(p.numel() for p in plain.parameters()) == 7_978_856  # torchvision's count
    ours = torch.hub.load(str(ROOT), "densenet_bc40_k12", source="local", pretrained="cifar10")  # shipped weights
    assert ours.pretrained_cfg["tag"] == "cifar10" and ours.config.num_classes == 10


def test_pretrained_cfg_and_transforms_match_the_model():
    cifar = create_model("densenet_bc100_k12")
    imagenet = create_model("densenet121")
    for model, size in ((cifar, 32), (imagenet, 224)):
        cfg = model.pretrained_cfg
        assert {"mean", "std", "input_size", "interpolation", "crop_pct", "num_classes"} <= set(cfg)
        assert densenets.data_config(model)["input_size"] == (3, size, size)
        x = densenets.transforms(model)(Image.new("L", (300, 200), 128))  # grey in, RGB out for 3 channels
        assert x.shape == (3, size, size)
        assert densenets.transforms(model, train=True)(Image.new("RGB", (50, 70))).shape == (3, size, size)
    assert "Resize(size=256" in repr(densenets.transforms(imagenet))
    grey = create_model("densenet40_k12", in_channels=1)
    assert densenets.transforms(grey)(Image.new("RGB", (40, 40))).shape == (1, 32, 32)


def test_features_only_returns_stem_and_block_maps_with_feature_info():
    model = create_model("densenet121", features_only=True)
    maps = model(torch.randn(1, 3, 64, 64))
    assert model.feature_info.channels() == [64, 256, 512, 1024, 1024]
    assert model.feature_info.reduction() == [2, 4, 8, 16, 32]
    expected = [(64, 32, 32), (256, 16, 16), (512, 8, 8), (1024, 4, 4), (1024, 2, 2)]
    assert [tuple(m.shape[1:]) for m in maps] == expected
    some = create_model("densenet_bc100_k12", features_only=True, out_indices=(1, -1))
    assert len(some(torch.randn(2, 3, 32, 32))) == 2 and some.feature_info.reduction() == [1, 4]
    assert some.out_indices == (1, 3) and not hasattr(some.features, "norm5")
    with pytest.raises(ConfigError, match="out_indices"):
        create_model("densenet121", features_only=True, out_indices=(7,))


def test_features_equal_the_full_models_block_outputs():
    full = create_model("densenet_bc100_k12").eval()
    wrapped = densenets.models.DenseNetFeatures(full, out_indices=(1, 2, 3)).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        for got, expected in zip(wrapped(x), full.forward_blocks(x), strict=True):
            torch.testing.assert_close(got, expected)


def test_hubconf_works_without_the_package_on_the_path(tmp_path):
    """A fresh clone: hubconf puts its own src/ first, whatever else is installed."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = (
        "import torch\n"
        f"m = torch.hub.load({str(ROOT)!r}, 'densenet40_k12', source='local')\n"
        "import densenets; print(densenets.__file__, type(m).__name__)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(ROOT / "src" / "densenets" / "__init__.py"), "DenseNet"]


def test_create_model_from_a_saved_model_keeps_its_weights_or_refuses_shape_changes(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(3)
    original = create_model("densenet_bc100_k12", num_classes=4)
    save_file({k: v.contiguous() for k, v in original.state_dict().items()}, str(tmp_path / "m.safetensors"))
    legacy = {**original.config.to_dict(), "memory_efficient": True}  # written before it became a runtime switch
    (tmp_path / "m.json").write_text(json.dumps({"model": legacy}))
    same = create_model(str(tmp_path / "m.json"), dropout=0.1, memory_efficient=True)
    assert same.config.dropout == 0.1 and same.memory_efficient
    for key, value in original.state_dict().items():
        torch.testing.assert_close(same.state_dict()[key], value, rtol=0, atol=0)
    with pytest.raises(ConfigError, match="would change the shapes") as info:
        create_model(str(tmp_path / "m.json"), num_classes=10)
    assert "\n" not in str(info.value)


def test_finetune_an_image_folder_from_named_weights_beats_chance(fake_entry, tmp_path, capsys):
    data = write_image_folder(tmp_path / "folder", classes=3, per_class=12, size=20)
    run = tmp_path / "run"
    code = main([
        "train", "--data", "imagefolder", "--data-dir", str(data), "--model", FAKE_MODEL, "--pretrained",
        "--image-size", "16", "--epochs", "3", "--batch-size", "12", "--accum-steps", "2", "--freeze-epochs", "1",
        "--lr", "0.05", "--run-dir", str(run), "--no-progress",
    ])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    assert f"starting from {FAKE_MODEL}.fake" in out and "new classifier for 3 classes" in out
    assert "augmentation: crop-flip (chosen for 16px images" in out
    config = json.loads((run / "config.json").read_text())
    recipe = config["recipe"]
    assert (recipe["schedule"], recipe["label_smoothing"], recipe["lr"]) == ("cosine", 0.1, 0.05)
    assert config["data"]["preprocess"]["mean"] == [0.5, 0.5, 0.5]  # the weights', not ImageNet's
    summary = json.loads((run / "summary.json").read_text())
    assert summary["final_test_error"] < 100 * (1 - 1 / 3)  # better than guessing among 3 classes


def test_freeze_epochs_keep_the_backbone_and_train_the_head(fake_entry, tmp_path):
    from densenets.engine import base_recipe, resolve_recipe
    from densenets.engine.trainer import fit

    _, _, state = fake_entry
    data = write_image_folder(tmp_path / "folder", classes=3, per_class=4, size=16)
    recipe = resolve_recipe(
        base_recipe(data="imagefolder", pretrained=True), model=FAKE_MODEL, data_dir=str(data), image_size=16,
        epochs=1, batch_size=6, freeze_epochs=1,
    )  # fmt: skip
    model = fit(recipe, tmp_path / "run", show_progress=False).model
    torch.testing.assert_close(model.features.conv0.weight, state["features.conv0.weight"], rtol=0, atol=0)
    assert model.classifier.bias.abs().sum() > 0  # the new head (bias initialised to zero) did train


def test_a_grey_image_folder_trains_a_one_channel_model_without_rgb_conversion(tmp_path, capsys):
    from densenets.engine import base_recipe, resolve_recipe
    from densenets.engine.trainer import fit

    for c in range(2):
        folder = tmp_path / "grey" / f"class_{c}"
        folder.mkdir(parents=True)
        for i in range(4):
            Image.new("L", (12, 12), 40 + 160 * c + i).save(folder / f"{i}.png")
    recipe = resolve_recipe(
        base_recipe("imagefolder"), model="densenet_bc16_k4", data_dir=str(tmp_path / "grey"), image_size=12,
        epochs=1, batch_size=4,
    )  # fmt: skip
    result = fit(recipe, tmp_path / "run", show_progress=False)
    out = capsys.readouterr().out
    assert result.model.config.in_channels == 1
    assert "augmentation: crop-flip (chosen for 12px images" in out and "grey images, one channel" in out


@pytest.mark.parametrize(
    ("model_name", "least_steps"),
    # BC-46, BC-100 and BC-64: an EMA of the counters of 3,900, 5,460 and 7,800 steps
    [
        ("densenet_bc40_k12", 9372),
        ("densenet_bc46_k12", 3700),
        ("densenet_bc100_k12", 5000),
        ("densenet_bc64_k16", 7000),
    ],
)
def test_our_cifar10_weights_load_by_name_offline_and_evaluate_by_name(
    model_name, least_steps, tmp_path, capsys, monkeypatch
):
    """The shipped CIFAR-10 weights: sha256-checked from the package, CIFAR's normalisation in
    pretrained_cfg, and `densenets eval NAME` reads the data set it names."""
    from .fakedata import write_cifar10

    name = f"{model_name}.cifar10"
    model = create_model(model_name, pretrained="cifar10")
    assert model.pretrained_cfg["mean"] == (0.4914, 0.4822, 0.4465)
    assert model.pretrained_cfg["input_size"] == (3, 32, 32) and model.config.num_classes == 10
    # trained, not freshly initialised: BatchNorm counted the run's steps and its statistics moved
    stem_bn = model.features.denseblock1.denselayer1.norm1
    assert int(stem_bn.num_batches_tracked) >= least_steps
    assert (stem_bn.running_var - 1).abs().max() > 0.1
    # the same weights as the file in the package, through `densenets eval` by name (the data set
    # comes from the entry; a tiny CIFAR-10 in the real format stands in for the real one here)
    from densenets.models.pretrained import CIFAR10_CLASSES

    write_cifar10(tmp_path / "data", n_train=10, n_test=20, names=list(CIFAR10_CLASSES))  # eval checks the names
    data, out_dir = str(tmp_path / "data"), str(tmp_path / "e")
    code = main(["eval", name, "--data-dir", data, "--out", out_dir])
    out = capsys.readouterr().out
    assert code == 0
    assert f"named weights {name}" in out and "cifar10 test set (20 images)" in out
    code = main(["list", "--pretrained"])
    assert code == 0 and name in capsys.readouterr().out
    monkeypatch.chdir(tmp_path)  # named weights export into the current folder, under their name
    assert main(["export", name, "--format", "safetensors"]) == 0
    assert (tmp_path / f"{name}.safetensors").is_file()
    assert (tmp_path / f"{name}.json").is_file()


def test_named_weights_keep_their_classifier_only_for_their_own_classes():
    """10 CIFAR-10 classes in order: the head is kept; 10 other classes (digits): a new head."""
    from densenets.engine.build_run import _init_from_pretrained
    from densenets.models.pretrained import CIFAR10_CLASSES, get_weights_entry

    entry = get_weights_entry("densenet_bc40_k12", "cifar10")
    shipped = create_model("densenet_bc40_k12", pretrained="cifar10")
    for classes, kept in ((list(CIFAR10_CLASSES), True), ([str(d) for d in range(10)], False)):
        model = DenseNet(get_config("densenet_bc40_k12", num_classes=10))
        _init_from_pretrained(model, entry, verbose=False, class_names=classes)
        assert torch.equal(model.classifier.weight, shipped.classifier.weight) == kept
        assert torch.equal(model.features.conv0.weight, shipped.features.conv0.weight)  # the body: always loaded
