import pytest
import torch
import torchvision

from densenets import DenseNet, DenseNetConfig, cifar_config, create_model, list_models
from densenets.errors import ConfigError
from densenets.models import UnknownModelError, get_config, register_model
from densenets.models.weights import clean_state_dict
from densenets.paper import PARAMS_10, PARAMS_100, PARAMS_IMAGENET

from .conftest import randomize_batchnorm

ALL = list_models("densenet*")  # the ResNet baselines: test_baselines.py


def _input_for(model: DenseNet, batch: int = 2) -> torch.Tensor:
    size = 64 if model.config.stem == "imagenet" else 32
    return torch.randn(batch, model.config.in_channels, size, size)


def test_registry_has_the_eleven_variants():
    assert len(ALL) == 11
    assert set(ALL) == set(PARAMS_10) | set(PARAMS_IMAGENET)


@pytest.mark.parametrize("name", ALL)
def test_parameter_count_matches_paper(name):
    model = create_model(name)
    n = sum(p.numel() for p in model.parameters())
    expected = PARAMS_IMAGENET.get(name) or PARAMS_10[name]
    assert n == expected


@pytest.mark.parametrize("name", sorted(PARAMS_100))
def test_parameter_count_with_100_classes(name):
    model = create_model(name, num_classes=100)
    assert sum(p.numel() for p in model.parameters()) == PARAMS_100[name]


@pytest.mark.parametrize("name", ALL)
def test_forward_backward_every_parameter_gets_a_gradient(name):
    model = create_model(name)
    x = _input_for(model)
    out = model(x)
    assert out.shape == (2, model.config.num_classes)
    assert torch.isfinite(out).all()
    out.logsumexp(1).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    assert all(p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize("name", ["densenet121", "densenet161", "densenet169", "densenet201"])
def test_torchvision_weights_load_strictly_and_outputs_match(name):
    reference = getattr(torchvision.models, name)()
    randomize_batchnorm(reference)
    ours = create_model(name)
    ours.load_state_dict(reference.state_dict(), strict=True)
    reference.eval()
    ours.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = reference(x)
        got = ours(x)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_legacy_and_wrapped_keys_load_through_clean_state_dict():
    reference = torchvision.models.densenet121()
    randomize_batchnorm(reference, seed=3)
    legacy = {}
    for key, value in reference.state_dict().items():
        for old, new in (("norm1", "norm.1"), ("norm2", "norm.2"), ("conv1", "conv.1"), ("conv2", "conv.2")):
            if "denselayer" in key:
                key = key.replace(f".{old}.", f".{new}.")
        legacy[f"module._orig_mod.{key}"] = value
    assert any(".norm.1." in k for k in legacy)
    ours = create_model("densenet121")
    with pytest.raises(RuntimeError):
        ours.load_state_dict(legacy)
    ours.load_state_dict(clean_state_dict(legacy), strict=True)
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[key], value, rtol=0, atol=0)


def _tiny(**kw) -> DenseNetConfig:
    base = dict(growth_rate=4, block_sizes=(3, 3), stem="cifar", init_channels=8, num_classes=5)
    base.update(kw)
    return DenseNetConfig(**base)


@pytest.mark.parametrize(
    "settings",
    [
        dict(bottleneck=True, compression=0.5),
        dict(bottleneck=False, compression=1.0),
        dict(bottleneck=True, compression=0.5, dropout=0.2),
        dict(bottleneck=True, compression=0.5, dropout=0.2, dropout_placement="torchvision"),
        dict(stem="imagenet", bottleneck=True, compression=0.5),
        # volumes and signals: the same recomputation on BatchNorm3d / BatchNorm1d
        dict(bottleneck=True, compression=0.5, dropout=0.2, spatial_dims=3),
        dict(stem="imagenet", bottleneck=True, compression=0.5, spatial_dims=3),
        dict(bottleneck=False, compression=1.0, spatial_dims=1),
    ],
)
@pytest.mark.parametrize("level", [True, "full"])
def test_memory_efficient_matches_normal_mode(settings, level):
    torch.manual_seed(1)
    normal = DenseNet(_tiny(**settings))
    efficient = DenseNet(_tiny(**settings), memory_efficient=level)
    efficient.load_state_dict(normal.state_dict())
    size = 32 if settings.get("stem") == "imagenet" else 8
    x = torch.randn(4, 3, *(size,) * settings.get("spatial_dims", 2))
    target = torch.randint(0, 5, (4,))
    results = []
    for model in (normal, efficient):
        torch.manual_seed(7)  # same dropout masks
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        out = model(x)
        loss = torch.nn.functional.cross_entropy(out, target)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        opt.step()
        buffers = {n: b.clone() for n, b in model.named_buffers()}
        results.append((out.detach(), grads, buffers))
    (out_a, grads_a, buf_a), (out_b, grads_b, buf_b) = results
    torch.testing.assert_close(out_b, out_a)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], msg=name)
    for name in buf_a:  # running stats (and num_batches_tracked) updated exactly once
        torch.testing.assert_close(buf_b[name], buf_a[name], msg=name)


def test_memory_efficient_mode_really_checkpoints():
    config = _tiny(bottleneck=True, compression=0.5)
    model = DenseNet(config)
    model.set_memory_efficient(True)
    assert model.memory_efficient and "memory_efficient" not in model.config.to_dict()
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    x = torch.randn(2, 3, 8, 8)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    efficient_saved = sum(saved)
    saved.clear()
    model.set_memory_efficient(False)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    assert efficient_saved < sum(saved)


def _saved_numel(model: DenseNet, x: torch.Tensor) -> int:
    """Elements autograd keeps for backward after one training forward (parameters excluded)."""
    params = {p.data_ptr() for p in model.parameters()}
    saved = {}

    def pack(t):
        if t.data_ptr() not in params:
            saved[t.data_ptr()] = t.numel()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.train()(x)
    return sum(saved.values())


def test_full_memory_level_keeps_less_than_the_concat_level_in_3d():
    # At the full level a 3-D DenseNet keeps its layers' inputs, not their 1x1 outputs (nor the
    # transitions' and the stem's BN-ReLU outputs): less than the concat level, which keeps less
    # than the normal mode.
    config = _tiny(stem="imagenet", bottleneck=True, compression=0.5, spatial_dims=3)
    model, x = DenseNet(config), torch.randn(2, 3, 16, 16, 16)
    kept = {}
    for level in (False, True, "full"):
        model.set_memory_efficient(level)
        assert model.memory_level == level
        kept[level] = _saved_numel(model, x)
    assert kept["full"] < kept[True] < kept[False]
    # what the full level still keeps beyond the blocks' own maps is small: no 1x1 output
    inner = config.bn_size * config.growth_rate
    one_inner_map = 2 * inner * 4**3  # a first block's 1x1 output: batch 2, 4^3 voxels after the stem
    assert kept[True] - kept["full"] >= config.block_sizes[0] * one_inner_map


def test_full_memory_level_runs_conv1_twice_and_conv2_once():
    torch.manual_seed(0)
    model = DenseNet(_tiny(bottleneck=True, compression=0.5), memory_efficient="full")
    hooks = []
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.register_forward_hook(lambda *_: hooks.append(1))
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        model(torch.randn(2, 3, 8, 8)).sum().backward()
    ran = {e.key: e.count for e in prof.key_averages()}
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    layers = sum(model.config.block_sizes)
    assert ran["aten::convolution"] == convs + layers  # each 1x1 conv once more, in backward
    assert len(hooks) == convs  # ... without firing its hooks again
    assert ran["aten::convolution_backward"] == convs


def test_full_memory_level_trains_under_bf16_autocast_in_3d():
    # conv1 is rebuilt in backward under the forward's autocast state (else: a bf16 input against
    # fp32 weights). Gradients are not compared: this torch's bf16 3-D backward differs between
    # two runs of the normal mode itself. Depth 24 leaves the second block 3 deep: at depth 2
    # torch 2.14.1's bf16 Conv3d weight gradient reads memory it never wrote (NaN now and then,
    # in the normal mode too; docs/volumes/bf16_depth2.py).
    torch.manual_seed(3)
    config = _tiny(stem="imagenet", bottleneck=True, compression=0.5, spatial_dims=3)
    normal, full = DenseNet(config), DenseNet(config, memory_efficient="full")
    full.load_state_dict(normal.state_dict())
    x, target = torch.randn(2, 3, 24, 16, 16), torch.randint(0, 5, (2,))
    losses = []
    for model in (normal, full):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(model(x).float(), target)
        loss.backward()
        losses.append(loss.detach())
    torch.testing.assert_close(losses[1], losses[0])
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in full.parameters())


def test_memory_level_is_checked():
    with pytest.raises(ConfigError, match="false, true or 'full'"):
        DenseNet(_tiny(), memory_efficient="yes")
    with pytest.raises(ConfigError, match="false, true or 'full'"):
        DenseNet(_tiny()).set_memory_efficient(1)


def test_memory_efficient_mode_runs_each_convolution_once():
    # Only concat-BN-ReLU is recomputed in backward: each convolution's forward runs once a
    # step (torch.utils.checkpoint ran conv1 again), and its hooks fire once.
    torch.manual_seed(0)
    model = DenseNet(_tiny(bottleneck=True, compression=0.5), memory_efficient=True)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    hooks = []
    for conv in convs:
        conv.register_forward_hook(lambda *_: hooks.append(1))
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        model(torch.randn(2, 3, 8, 8)).sum().backward()
    ran = {e.key: e.count for e in prof.key_averages()}
    assert ran["aten::convolution"] == len(convs) == len(hooks)
    assert ran["aten::convolution_backward"] == len(convs)
    assert all(p.grad is not None for p in model.parameters())


class _SubclassedBN(torch.nn.BatchNorm2d):
    """A BatchNorm the memory-efficient mode must run as itself (as SyncBatchNorm)."""


def test_memory_efficient_mode_with_replaced_norm_and_activation_matches_normal_mode():
    torch.manual_seed(2)
    normal = DenseNet(_tiny(bottleneck=True, compression=0.5))
    efficient = DenseNet(_tiny(bottleneck=True, compression=0.5), memory_efficient=True)
    efficient.load_state_dict(normal.state_dict())
    for model in (normal, efficient):
        for layer in model.modules():
            if hasattr(layer, "norm1"):
                bn = _SubclassedBN(layer.norm1.num_features)
                bn.load_state_dict(layer.norm1.state_dict())
                layer.norm1 = bn
                layer.relu1 = torch.nn.LeakyReLU(0.1, inplace=True)  # recomputed as itself, not as a ReLU
    x, target = torch.randn(4, 3, 8, 8), torch.randint(0, 5, (4,))
    for model in (normal, efficient):
        torch.nn.functional.cross_entropy(model(x), target).backward()
    for (name, a), b in zip(normal.named_parameters(), efficient.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, msg=name)
    for (name, a), b in zip(normal.named_buffers(), efficient.buffers(), strict=True):
        torch.testing.assert_close(b, a, msg=name)  # running statistics updated once


def test_backbone_surface():
    model = create_model("densenet121")
    model.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        blocks = model.forward_blocks(x)
        features = model.forward_features(x)
        logits = model(x)
        pooled = model.forward_head(features, pre_logits=True)
    assert [b.shape[1] for b in blocks] == [info["num_chs"] for info in model.feature_info] == [256, 512, 1024, 1024]
    assert [64 // b.shape[-1] for b in blocks] == [info["reduction"] for info in model.feature_info] == [4, 8, 16, 32]
    assert features.shape == (1, model.num_features, 2, 2)
    assert pooled.shape == (1, 1024)
    torch.testing.assert_close(model.forward_head(features), logits)
    model.reset_classifier(7)
    assert model(x).shape == (1, 7) and model.config.num_classes == 7
    model.reset_classifier(0)
    assert model(x).shape == (1, 1024)


@pytest.mark.parametrize(
    ("depth", "bottleneck", "valid"),
    [
        (41, False, "7, 10, 13"),
        (6, False, "7, 10"),
        (100, False, None),
        (42, True, "10, 16, 22"),
        (40, True, None),
        (100, True, None),
    ],
)
def test_cifar_builder_accepts_only_possible_depths(depth, bottleneck, valid):
    if valid is None:
        config = cifar_config(depth, 12, bottleneck=bottleneck)
        assert sum(config.block_sizes) * (2 if bottleneck else 1) == depth - 4
        return
    with pytest.raises(ValueError, match=valid):
        cifar_config(depth, 12, bottleneck=bottleneck)


def test_cifar_names_build_any_combination():
    assert get_config("densenet_bc40_k12").block_sizes == (6, 6, 6)
    assert get_config("densenet_bc40_k12").init_channels == 24
    assert get_config("densenet40_k12").init_channels == 16
    assert get_config("densenet_c40_k12").compression == 0.5
    assert get_config("densenet_b40_k12").bottleneck and get_config("densenet_b40_k12").compression == 1.0
    with pytest.raises(ConfigError, match="positive multiple of 6"):
        get_config("densenet_bc41_k12")


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        (dict(growth_rate=0), "growth_rate"),
        (dict(compression=0.0), "compression"),
        (dict(compression=1.5), "compression"),
        (dict(stem="resnet"), "stem"),
        (dict(dropout_placement="after"), "dropout_placement"),
        (dict(init="xavier"), "init"),
        (dict(spatial_dims=4), "spatial_dims"),
        (dict(colour=3), "colour"),
    ],
)
def test_invalid_settings_name_the_field(overrides, field):
    with pytest.raises(ConfigError, match=field):
        create_model("densenet_bc100_k12", **overrides)


def test_unknown_model_suggests_close_names():
    with pytest.raises(UnknownModelError, match="densenet121"):
        create_model("densnet121")


def test_duplicate_registration_is_an_error():
    with pytest.raises(ValueError, match="already registered"):
        register_model("densenet121", get_config("densenet121"))


def test_init_schemes():
    for scheme, fan in (
        ("fan_out", lambda w: w.shape[0] * w.shape[2] * w.shape[3]),
        ("fan_in", lambda w: w[0].numel()),
    ):
        model = create_model("densenet40_k12", init=scheme)
        w = model.features.denseblock3.denselayer12.conv1.weight
        expected = (2.0 / fan(w)) ** 0.5
        assert abs(w.std().item() - expected) / expected < 0.05
    assert torch.all(model.classifier.bias == 0)


def test_dropout_placement_counts():
    paper = create_model("densenet_bc100_k12", dropout=0.2)
    tv = create_model("densenet_bc100_k12", dropout=0.2, dropout_placement="torchvision")
    x = torch.ones(1, 3, 32, 32)

    def dropout_calls(model):
        calls = []
        handle = torch.nn.functional.dropout
        try:
            torch.nn.functional.dropout = lambda t, *a, **k: (calls.append(1), handle(t, *a, **k))[1]
            model(x)
        finally:
            torch.nn.functional.dropout = handle
        return len(calls)

    # paper: 1x1 and 3x3 of each of 48 layers, plus 2 transitions; torchvision: one per layer.
    assert dropout_calls(paper) == 2 * 48 + 2
    assert dropout_calls(tv) == 48


@pytest.mark.parametrize("spatial_dims", [1, 3])
def test_spatial_dims_build_the_same_network_in_another_dimension(spatial_dims):
    flat, other = create_model("densenet121"), create_model("densenet121", spatial_dims=spatial_dims, num_classes=2)
    assert other.state_dict().keys() == flat.state_dict().keys()  # the same names, so the same contract
    for key, value in other.state_dict().items():
        want = flat.state_dict()[key].shape
        if key.endswith(".weight") and value.dim() > 2:  # convs: one kernel axis fewer or more
            assert value.shape == want[:2] + want[2:3] * spatial_dims, key
        elif not key.startswith("classifier."):
            assert value.shape == want, key
    x = torch.randn(1, 1, *(32,) * spatial_dims).expand(1, 3, *(32,) * spatial_dims)
    assert other.eval()(x).shape == (1, 2)
    assert other.config.to_dict()["spatial_dims"] == spatial_dims
    assert "spatial_dims" in flat.config.to_dict() and flat.config.spatial_dims == 2
    assert len(other.pretrained_cfg["input_size"]) == 1 + spatial_dims
