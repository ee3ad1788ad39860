"""The fused CPU block, its kernels and optimize_for_inference equal the plain path."""

import copy

import pytest
import torch

from densenets import DenseNet, DenseNetConfig, create_model
from densenets.models import cpu_kernels
from densenets.models.inference import optimize_for_inference

from .conftest import randomize_batchnorm

CL = torch.channels_last


def tiny(**kw) -> DenseNetConfig:
    base = dict(growth_rate=4, block_sizes=(3, 2), stem="cifar", init_channels=8, num_classes=5)
    base.update(kw)
    return DenseNetConfig(**base)


SETTINGS = [
    dict(bottleneck=True, compression=0.5),
    dict(bottleneck=False, compression=1.0),
    dict(bottleneck=True, compression=0.5, dropout=0.2),
    dict(bottleneck=False, compression=0.5, dropout=0.2, dropout_placement="torchvision"),
    dict(bottleneck=True, compression=0.5, memory_efficient=True),
    dict(bottleneck=True, compression=0.5, stem="imagenet"),
]


def train_step(model: DenseNet, x: torch.Tensor, y: torch.Tensor) -> tuple:
    torch.manual_seed(11)  # same dropout masks on both paths
    out = model(x)
    torch.nn.functional.cross_entropy(out, y).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return out.detach(), grads, {n: b.clone() for n, b in model.named_buffers()}


@pytest.mark.parametrize("settings", SETTINGS)
@pytest.mark.parametrize("kernels", ["compiled", "torch"])
def test_fused_block_equals_plain_layers(settings, kernels):
    if kernels == "compiled" and not cpu_kernels.available():
        pytest.skip("no C compiler: the compiled kernels are unavailable here")
    torch.manual_seed(0)
    efficient = settings.get("memory_efficient", False)
    config = tiny(**{k: v for k, v in settings.items() if k != "memory_efficient"})
    fused = DenseNet(config, memory_efficient=efficient).to(memory_format=CL)
    plain = copy.deepcopy(fused)
    plain.set_fused(False)
    size = 32 if settings.get("stem") == "imagenet" else 8
    x = torch.randn(4, 3, size, size).contiguous(memory_format=CL)
    y = torch.randint(0, 5, (4,))
    if kernels == "torch":
        with cpu_kernels.fallback():
            got = train_step(fused, x, y)
    else:
        got = train_step(fused, x, y)
    expected = train_step(plain, x, y)
    torch.testing.assert_close(got[0], expected[0], rtol=1e-5, atol=1e-5)
    for name in expected[1]:
        torch.testing.assert_close(got[1][name], expected[1][name], rtol=1e-4, atol=1e-5, msg=name)
    for name in expected[2]:  # running statistics updated once, to the same values
        torch.testing.assert_close(got[2][name], expected[2][name], rtol=1e-5, atol=1e-6, msg=name)
    fused.eval()
    plain.eval()
    with torch.no_grad():
        torch.testing.assert_close(fused(x), plain(x), rtol=1e-5, atol=1e-5)


def test_fused_path_runs_by_default_on_cpu_and_not_under_autocast():
    model = DenseNet(tiny())
    calls = []
    original = cpu_kernels.bn_relu_forward

    def spy(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    from densenets.models import fused_block

    fused_block.bn_relu_forward = spy
    try:
        model(torch.randn(2, 3, 8, 8))
        assert calls
        calls.clear()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(torch.randn(2, 3, 8, 8))
        assert not calls
    finally:
        fused_block.bn_relu_forward = original


def test_gradient_wrt_input_in_eval_mode():
    torch.manual_seed(0)
    fused = DenseNet(tiny()).eval()
    randomize_batchnorm(fused)
    plain = copy.deepcopy(fused)
    plain.set_fused(False)
    grads = []
    data = torch.randn(2, 3, 8, 8)
    for model in (fused, plain):
        x = data.clone().requires_grad_()
        model(x).sum().backward()
        grads.append(x.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def test_memory_efficient_fused_saves_less_for_backward():
    def saved_numel(model):
        total = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: total.append(t.numel()) or t, lambda t: t):
            model(torch.randn(4, 3, 16, 16))
        return sum(total)

    # Normal mode stores every layer's BN-ReLU output (quadratic in depth); memory-efficient
    # mode stores only the block buffer and per-layer bottleneck maps (linear).
    ratios = []
    for depth in (6, 12, 24):
        model = DenseNet(tiny(block_sizes=(depth,)))
        normal = saved_numel(model)
        model.set_memory_efficient(True)
        ratios.append(saved_numel(model) / normal)
    assert ratios[0] < 1 and ratios[2] < ratios[1] < ratios[0] and ratios[2] < 0.5


@pytest.mark.parametrize("P,C,ld", [(300, 7, 7), (5000, 33, 50), (4097, 64, 100)])
def test_compiled_kernels_equal_torch_versions(P, C, ld):
    if not cpu_kernels.available():
        pytest.skip("no C compiler here")
    g = torch.Generator().manual_seed(0)
    buf = torch.randn(P, ld, generator=g)
    x = buf[:, :C]
    a, b = torch.randn(C, generator=g), torch.randn(C, generator=g)
    grad = torch.randn(P, C, generator=g)
    k1, k2 = torch.randn(C, generator=g), torch.randn(C, generator=g)
    acc_c, acc_t = torch.randn(P, ld, generator=g), None
    acc_t = acc_c.clone()
    results = []
    for use_torch in (False, True):
        ctx = (
            cpu_kernels.fallback() if use_torch else torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t)
        )
        with ctx:
            acc = acc_t if use_torch else acc_c
            cpu_kernels.bn_relu_backward_apply(grad, x, a, b, k1, k2, acc[:, :C])
            results.append(
                (cpu_kernels.bn_relu_forward(x, a, b), *cpu_kernels.bn_relu_backward_reduce(grad, x, a, b),
                 *cpu_kernels.column_mean_var(x), acc)
            )  # fmt: skip
    for got, expected in zip(results[0], results[1], strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)
    assert torch.equal(acc_c[:, C:], acc_t[:, C:])  # columns beyond C untouched


@pytest.mark.parametrize("name", ["densenet121", "densenet_bc100_k12", "densenet40_k12", "densenet_c40_k12"])
def test_optimize_for_inference_matches_eval_model(name):
    torch.manual_seed(0)
    model = create_model(name)
    randomize_batchnorm(model, seed=1)
    with torch.no_grad():  # keep activations O(1) so that a relative check is meaningful
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.mul_(4.0)
    model.eval()
    fast = optimize_for_inference(model)
    size = 64 if model.config.stem == "imagenet" else 32
    for batch in (1, 3):
        x = torch.randn(batch, 3, size, size)
        with torch.no_grad():
            expected = model(x)
        got = fast(x)
        scale = expected.abs().max().item()
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5 * max(scale, 1.0))
    with pytest.raises(RuntimeError, match="eval-only"):
        fast.train()


@pytest.mark.parametrize("name", ["densenet_bc16_k4", "densenet121"])
def test_onnxruntime_backend_matches_eval_model(name):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = create_model(name)
    randomize_batchnorm(model, seed=2)
    model.eval()
    fast = optimize_for_inference(model, backend="onnxruntime")
    sizes = (32, 40) if model.config.stem == "cifar" else (64, 96)
    for batch, size in zip((1, 5), sizes, strict=True):  # batch and image size are dynamic
        x = torch.randn(batch, 3, size, size)
        with torch.no_grad():
            expected = model(x)
        got = fast(x)
        assert isinstance(got, torch.Tensor) and got.shape == expected.shape
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * max(expected.abs().max().item(), 1.0))
    with pytest.raises(RuntimeError, match="eval-only"):
        fast.train()
    with pytest.raises(ValueError, match="expected images of shape"):
        fast(torch.randn(2, 1, 32, 32))


def test_optimize_for_inference_rejects_unknown_backend():
    with pytest.raises(ValueError, match="valid backends: torch, onnxruntime"):
        optimize_for_inference(create_model("densenet_bc16_k4"), backend="tensorrt")
