"""A model carries the preprocessing of the run that made it (issue 19, items 1, 2 and 7):
eval normalises as predict does, ``densenets.load`` and ``create_model(weights=)`` give the
run's ``pretrained_cfg``, and three-channel weights adapt to one-channel input in the stem."""

from __future__ import annotations

import torch

import densenets
from densenets import create_model
from densenets.models import DenseNet, get_config
from densenets.models.channels import adapt_input_conv, adapt_state_channels
from densenets.models.pretrained import get_weights_entry

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
