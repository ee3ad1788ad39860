"""DenseNets for volumes (issue 29): MONAI's DenseNet weights in and out, and 3-D from 2-D weights."""

import pytest
import torch

from densenets import create_model
from densenets.models.weights import to_monai_state_dict

from .conftest import randomize_batchnorm

monai_nets = pytest.importorskip("monai.networks.nets")  # the dev extra's reference


@pytest.mark.parametrize(
    ("monai_name", "name", "spatial_dims"),
    [
        ("DenseNet121", "densenet121", 3),
        ("DenseNet121", "densenet121", 2),
        ("DenseNet169", "densenet169", 1),
        ("DenseNet201", "densenet201", 1),
        ("DenseNet264", "densenet264", 1),
    ],
)
def test_monai_weights_load_and_give_monais_outputs(tmp_path, monai_name, name, spatial_dims):
    torch.manual_seed(0)
    reference = getattr(monai_nets, monai_name)(spatial_dims=spatial_dims, in_channels=1, out_channels=2)
    randomize_batchnorm(reference)
    torch.save(reference.state_dict(), tmp_path / "monai.pt")
    ours = create_model(name, spatial_dims=spatial_dims, in_channels=1, num_classes=2, weights=tmp_path / "monai.pt")
    x = torch.randn(2, 1, *(32,) * spatial_dims)
    with torch.no_grad():
        expected = reference.eval()(x)
        torch.testing.assert_close(ours.eval()(x), expected, atol=1e-5, rtol=0)
        # and back: our state dict in MONAI's keys loads strictly into MONAI's model
        back = getattr(monai_nets, monai_name)(spatial_dims=spatial_dims, in_channels=1, out_channels=2)
        back.load_state_dict(to_monai_state_dict(ours.state_dict()), strict=True)
        torch.testing.assert_close(back.eval()(x), expected, atol=1e-5, rtol=0)


def _depth_constant(x: torch.Tensor, depth: int) -> torch.Tensor:
    return x.unsqueeze(2).expand(-1, -1, depth, -1, -1).contiguous()  # (N, C, D, H, W)


@pytest.mark.parametrize("in_channels", [3, 1])
def test_center_inflation_gives_the_2d_output_on_a_depth_constant_volume(in_channels):
    flat = create_model("densenet_bc40_k12", pretrained="cifar10", in_channels=in_channels).eval()
    volume = create_model("densenet_bc40_k12", pretrained="cifar10", in_channels=in_channels, spatial_dims=3)
    volume.eval()
    assert volume.features.conv0.weight.shape[2:] == (3, 3, 3)
    assert "inflate='center'" in volume.pretrained_cfg["notes"][0] and "default" in volume.pretrained_cfg["notes"][0]
    assert volume.pretrained_cfg["input_size"] == (in_channels, 32, 32, 32)
    x = torch.randn(2, in_channels, 32, 32)
    with torch.no_grad():
        expected = flat(x)
        torch.testing.assert_close(volume(_depth_constant(x, 5)), expected, atol=1e-4, rtol=0)
        # and it is the real network at work: a volume that varies along depth gives another answer
        varied = _depth_constant(x, 5) + torch.randn(2, in_channels, 5, 32, 32)
        assert (volume(varied) - expected).abs().max() > 1e-2


def test_center_inflation_is_exact_through_the_imagenet_stem(tmp_path):
    tiny = dict(growth_rate=4, block_sizes=(2, 2), init_channels=8, num_classes=3)
    flat = create_model("densenet121", **tiny)
    randomize_batchnorm(flat)
    torch.save(flat.state_dict(), tmp_path / "flat.pt")  # a bare 2-D state dict, as torchvision's
    volume = create_model("densenet121", **tiny, spatial_dims=3, weights=tmp_path / "flat.pt", inflate="center")
    assert "default" not in volume.pretrained_cfg["notes"][0]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(volume.eval()(_depth_constant(x, 9)), flat.eval()(x), atol=1e-4, rtol=0)


def test_mean_inflation_repeats_each_kernel_over_depth():
    flat = create_model("densenet_bc40_k12", pretrained="cifar10")
    volume = create_model("densenet_bc40_k12", pretrained="cifar10", spatial_dims=3, inflate="mean")
    assert "I3D" in volume.pretrained_cfg["notes"][0]
    w2, w3 = flat.features.denseblock2.denselayer3.conv2.weight, volume.features.denseblock2.denselayer3.conv2.weight
    assert w3.shape == (*w2.shape[:2], 3, *w2.shape[2:])
    for d in range(3):
        torch.testing.assert_close(w3[:, :, d], w2 / 3)
    for key in ("features.norm5.running_var", "classifier.weight", "features.transition1.norm.weight"):
        torch.testing.assert_close(volume.state_dict()[key], flat.state_dict()[key], rtol=0, atol=0)


def test_inflation_is_refused_where_it_means_nothing(tmp_path):
    from densenets.errors import ConfigError

    with pytest.raises(ConfigError, match="inflate must be one of center, mean"):
        create_model("densenet_bc40_k12", pretrained="cifar10", spatial_dims=3, inflate="middle")
    with pytest.raises(ConfigError, match="inflate= needs 2-D weights"):
        create_model("densenet_bc40_k12", spatial_dims=3, inflate="center")
    with pytest.raises(ConfigError, match="holds no 2-D kernels"):
        create_model("densenet_bc40_k12", pretrained="cifar10", inflate="center")  # a 2-D model
