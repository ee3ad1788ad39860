"""Every other execution of the network gives the plain path's outputs and gradients:
memory-efficient mode, channels_last, optimize_for_inference and ONNX Runtime."""

import copy

import pytest
import torch

from densenets import DenseNet, DenseNetConfig, create_model
from densenets.deploy import optimize_for_inference

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
    dict(bottleneck=True, compression=0.5, stem="imagenet"),
]


def train_step(model: DenseNet, x: torch.Tensor, y: torch.Tensor) -> tuple:
    torch.manual_seed(11)  # same dropout masks on both paths
    out = model(x)
    torch.nn.functional.cross_entropy(out, y).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return out.detach(), grads, {n: b.clone() for n, b in model.named_buffers()}


@pytest.mark.parametrize("settings", SETTINGS)
@pytest.mark.parametrize("mode", ["memory_efficient", "channels_last"])
def test_execution_modes_equal_plain_layers(settings, mode):
    torch.manual_seed(0)
    plain = DenseNet(tiny(**settings))
    if mode == "channels_last" and settings.get("dropout"):
        # torch draws dropout masks in memory order, so NHWC training masks differ from NCHW ones:
        # forward and backward are compared in eval mode (no dropout, BN on its running statistics)
        randomize_batchnorm(plain)
        plain.eval()
    other = copy.deepcopy(plain)
    size = 32 if settings.get("stem") == "imagenet" else 8
    x = torch.randn(4, 3, size, size)
    y = torch.randint(0, 5, (4,))
    if mode == "memory_efficient":
        other.set_memory_efficient(True)
        x_other = x
    else:
        other = other.to(memory_format=CL)
        x_other = x.contiguous(memory_format=CL)
    got, expected = train_step(other, x_other, y), train_step(plain, x, y)
    torch.testing.assert_close(got[0], expected[0], rtol=1e-5, atol=1e-5)
    for name in expected[1]:
        torch.testing.assert_close(got[1][name], expected[1][name], rtol=1e-4, atol=1e-5, msg=name)
    for name in expected[2]:  # running statistics updated once, to the same values
        torch.testing.assert_close(got[2][name], expected[2][name], rtol=1e-5, atol=1e-6, msg=name)
    other.eval()
    plain.eval()
    with torch.no_grad():
        torch.testing.assert_close(other(x_other), plain(x), rtol=1e-5, atol=1e-5)


def test_memory_efficient_memory_grows_linearly_with_depth():
    def saved_bytes(model):
        storages = {}  # what autograd keeps for backward, each storage counted once

        def pack(t):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(torch.randn(4, 3, 16, 16))
        return sum(storages.values())

    normal, efficient = [], []
    for depth in (12, 24):
        model = DenseNet(tiny(block_sizes=(depth,)))
        normal.append(saved_bytes(model))
        model.set_memory_efficient(True)
        efficient.append(saved_bytes(model))
    # Normal mode keeps every layer's concatenation and BN-ReLU output (quadratic in depth);
    # memory-efficient mode recomputes them in backward (linear).
    assert normal[1] / normal[0] > 2.6
    assert efficient[1] / efficient[0] < 2.1
    assert efficient[1] < 0.4 * normal[1]


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
    fast = optimize_for_inference(model, backend="torch")
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


RUNTIMES = {"onnxruntime": ("onnx", "onnxruntime"), "openvino": ("openvino",)}


@pytest.mark.parametrize("backend", list(RUNTIMES))
@pytest.mark.parametrize("name", ["densenet_bc16_k4", "densenet121"])
def test_runtime_backends_match_eval_model(name, backend):
    for module in RUNTIMES[backend]:
        pytest.importorskip(module, reason=f"{module} is not installed (densenets[export] or densenets[openvino])")
    torch.manual_seed(0)
    model = create_model(name)
    randomize_batchnorm(model, seed=2)
    model.eval()
    fast = optimize_for_inference(model, backend=backend)
    assert fast.backend == backend
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


def test_optimize_for_inference_rejects_unknown_backend_and_unsupported_precision():
    with pytest.raises(ValueError, match="valid backends: torch, onnxruntime, openvino"):
        optimize_for_inference(create_model("densenet_bc16_k4"), backend="tensorrt")
    with pytest.raises(ValueError, match="use backend 'onnxruntime' or 'openvino'"):
        optimize_for_inference(create_model("densenet_bc16_k4"), backend="torch", precision="int8")


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_openvino_bf16_and_int8_stay_close_to_fp32(precision):
    pytest.importorskip("openvino", reason="openvino is not installed (densenets[openvino])")
    pytest.importorskip("nncf", reason="nncf is not installed (densenets[openvino])")
    from densenets.deploy.calibration import int8_cpu_problem

    if precision == "int8" and int8_cpu_problem() is not None:
        pytest.skip(f"int8 needs VNNI on this CPU ({int8_cpu_problem()})")
    torch.manual_seed(0)
    model = create_model("densenet_bc16_k4").eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
    scale = expected.abs().max().item()
    calibration = {"calibration": torch.randn(32, 3, 32, 32)} if precision == "int8" else {}
    fast = optimize_for_inference(model, backend="openvino", precision=precision, **calibration)
    assert fast.backend == "openvino"
    assert (fast(x) - expected).abs().max().item() < {"bf16": 0.05, "int8": 0.25}[precision] * scale


def test_models_import_no_runtime_and_the_public_name_still_works():
    """Runtimes live in densenets.deploy, which imports models/; models/ never imports it back."""
    import ast
    from pathlib import Path

    import densenets
    from densenets import deploy

    models_dir = Path(densenets.__file__).parent / "models"
    for path in models_dir.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                target = "." * node.level + (node.module or "")
                assert "deploy" not in target and "engine" not in target, f"{path.name} imports {target}"
    assert densenets.optimize_for_inference is deploy.optimize_for_inference
