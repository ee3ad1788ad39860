"""What create_model() returns behaves as a plain nn.Module, like torchvision's DenseNet:
hooks, parametrizations, pickling, deepcopy, fx and torch.export all see the real layers."""

import copy
import io
import pickle

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations, prune

from densenets import create_model
from densenets.bench.reference import torchvision_twin

from .conftest import randomize_batchnorm

NAME = "densenet_bc16_k4"  # a small DenseNet-BC with the CIFAR stem: 3 blocks of 2 layers
# the same contract for 1-D signals and 3-D volumes (inputs (2, 3, 32) and (2, 3, 8, 8, 8))
DIMS = [2, 1, 3]
CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def model_and_input(train: bool = False, spatial_dims: int = 2):
    torch.manual_seed(0)
    model = create_model(NAME, spatial_dims=spatial_dims)
    randomize_batchnorm(model)
    size = 8 if spatial_dims == 3 else 32
    return model.train(train), torch.randn(2, 3, *(size,) * spatial_dims)


@pytest.mark.parametrize("spatial_dims", DIMS)
@pytest.mark.parametrize("train", [False, True])
def test_every_submodule_forward_and_backward_hook_fires(train, spatial_dims):
    model, x = model_and_input(train, spatial_dims)
    x.requires_grad_()  # so that the stem's backward hook sees a gradient for its input
    fired, grads = set(), set()
    for name, module in model.named_modules():
        module.register_forward_hook(lambda m, i, o, name=name: fired.add(name))
        # Full backward hooks on layers with weights (what Grad-CAM uses): a BN's output feeds
        # an in-place ReLU, which torch forbids after a backward hook, on torchvision's too.
        if isinstance(module, CONVS):
            module.register_full_backward_hook(lambda m, gi, go, name=name: grads.add(name))
    model(x).sum().backward()
    names = {name for name, _ in model.named_modules()}
    assert fired == names
    assert grads == {n for n, m in model.named_modules() if isinstance(m, CONVS)}


def test_inner_activations_are_torchvisions():
    """Grad-CAM style capture on inner layers sees the same activations and gradients as on
    torchvision's DenseNet with the same weights."""
    ours, x = model_and_input()
    theirs = torchvision_twin(ours).eval()
    captured = []
    for model in (ours, theirs):
        store = {}
        layer = model.features.denseblock2.denselayer2.conv2

        def keep(module, inputs, output, store=store):
            store["act"] = output
            output.register_hook(lambda g: store.__setitem__("grad", g))

        handle = layer.register_forward_hook(keep)
        model(x)[:, 3].sum().backward()
        handle.remove()
        captured.append(store)
    torch.testing.assert_close(captured[0]["act"], captured[1]["act"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(captured[0]["grad"], captured[1]["grad"], rtol=1e-5, atol=1e-6)


def test_pruning_is_honoured_and_follows_weight_orig():
    model, x = model_and_input()
    conv = model.features.denseblock1.denselayer2.conv1
    reference = copy.deepcopy(model)
    prune.l1_unstructured(conv, "weight", amount=0.5)
    with torch.no_grad():
        conv.weight_orig.mul_(3.0)  # the pruned weight is recomputed from weight_orig
        reference.features.denseblock1.denselayer2.conv1.weight.copy_(conv.weight_orig * conv.weight_mask)
        got, expected = model(x), reference(x)
    assert int((conv.weight == 0).sum()) >= conv.weight.numel() // 2
    torch.testing.assert_close(got, expected)
    with torch.no_grad():
        assert not torch.allclose(got, create_model(NAME).eval()(x))


@pytest.mark.parametrize("kind", ["weight_norm", "spectral_norm"])
def test_weight_parametrizations_are_honoured(kind):
    model, x = model_and_input()
    reference = copy.deepcopy(model)
    conv = model.features.denseblock2.denselayer1.conv2
    getattr(parametrizations, kind)(conv)
    with torch.no_grad():
        if kind == "weight_norm":
            conv.parametrizations.weight.original0.mul_(2.0)  # g: doubles the effective weight
        effective = conv.weight.detach().clone()
        assert not torch.allclose(effective, reference.features.denseblock2.denselayer1.conv2.weight)
        reference.features.denseblock2.denselayer1.conv2.weight.copy_(effective)
        torch.testing.assert_close(model(x), reference(x))


@pytest.mark.parametrize("spatial_dims", DIMS)
@pytest.mark.parametrize("memory_efficient", [False, True, "full"])
def test_pickle_save_and_deepcopy_at_any_time(memory_efficient, spatial_dims):
    """Copies work when built, between forward and backward (the graph alive), and after backward."""
    model, x = model_and_input(train=True, spatial_dims=spatial_dims)
    model.set_memory_efficient(memory_efficient)
    check_copies(model, x, "built")
    out = model(x)
    check_copies(model, x, "between forward and backward")
    out.sum().backward()
    check_copies(model, x, "after backward")  # torch.save included: it reads the saved model back


def check_copies(model: nn.Module, x: torch.Tensor, moment: str) -> None:
    """deepcopy, pickle and torch.save of ``model`` now give the same network (compared in eval mode)."""
    with torch.no_grad():
        expected = model.eval()(x)
    model.train()
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model)), torch.load(buffer, weights_only=False)):
        assert type(clone) is type(model), moment
        with torch.no_grad():
            torch.testing.assert_close(clone.eval()(x), expected, msg=moment)


@pytest.mark.parametrize("spatial_dims", DIMS)
def test_fx_feature_extractor_works(spatial_dims):
    from torchvision.models.feature_extraction import create_feature_extractor

    model, x = model_and_input(spatial_dims=spatial_dims)
    nodes = {f"features.denseblock{i}": f"block{i}" for i in (1, 2, 3)}
    extractor = create_feature_extractor(model, return_nodes=nodes)
    got = extractor(x)
    expected = model.forward_blocks(x)
    assert list(got) == ["block1", "block2", "block3"]
    for name, want in zip(got, expected, strict=True):
        torch.testing.assert_close(got[name], want)


@pytest.mark.parametrize("spatial_dims", DIMS)
def test_torch_export_gives_the_same_outputs(spatial_dims):
    model, x = model_and_input(spatial_dims=spatial_dims)
    exported = torch.export.export(model, (x,))
    torch.testing.assert_close(exported.module()(x), model(x))


@pytest.mark.parametrize("spatial_dims", DIMS)
def test_fx_symbolic_trace_and_features_only(spatial_dims):
    model, x = model_and_input(spatial_dims=spatial_dims)
    traced = torch.fx.symbolic_trace(model)
    torch.testing.assert_close(traced(x), model(x))
    features = create_model(NAME, spatial_dims=spatial_dims, features_only=True)
    features.load_state_dict(model.state_dict(), strict=False)
    maps = features.eval()(x)
    assert [m.shape[1] for m in maps] == features.feature_info.channels()
    assert [x.shape[-1] // m.shape[-1] for m in maps] == features.feature_info.reduction() == [1, 1, 2, 4]
    assert all(m.dim() == x.dim() for m in maps)
    torch.testing.assert_close(maps[1:], model.forward_blocks(x))
