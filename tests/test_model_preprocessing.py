"""A model carries the preprocessing of the run that made it (issue 19, items 1, 2 and 7):
eval normalises as predict does, ``densenets.load`` and ``create_model(weights=)`` give the
run's ``pretrained_cfg``, and three-channel weights adapt to one-channel input in the stem."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import densenets
from densenets import create_model
from densenets.cli.main import main
from densenets.models import DenseNet, get_config
from densenets.models.channels import adapt_input_conv, adapt_state_channels
from densenets.models.pretrained import get_weights_entry

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
    _finetune_from_cifar10(data, tmp_path / "run", capsys)
    _assert_eval_matches_training(tmp_path / "run", tmp_path, capsys)


def test_eval_of_an_rgb_folder_uses_the_weights_normalisation_not_imagenets(tmp_path, capsys):
    """Fine-tuned from CIFAR-10 weights, the run normalised with CIFAR-10's mean/std; eval used to
    rebuild the folder with ImageNet's and report another loss without a word."""
    data = write_image_folder(tmp_path / "photos", classes=2, per_class=6, size=20)
    _finetune_from_cifar10(data, tmp_path / "run", capsys)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["data"]["preprocess"]["mean"] == list(CIFAR_MEAN)
    _assert_eval_matches_training(tmp_path / "run", tmp_path, capsys)
