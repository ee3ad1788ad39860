"""Import layers (checked by import-linter), the version's one place, the scikit-learn pin, and the
process-wide state the runtimes used to change: logging, NNCF's level, the caller's model, the VNNI check."""

import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import densenets
from densenets.bench.report import to_markdown
from densenets.cli.main import main
from densenets.deploy import calibration, optimize_for_inference
from densenets.deploy.precision import with_precision
from densenets.errors import UserError
from densenets.hardware import cpu_info
from densenets.models import CifarResNetConfig, create_model
from densenets.models import registry as model_registry
from densenets.models.weights import LoadedModel

SRC = Path(densenets.__file__).parents[1]  # the src/ folder these tests import densenets from
PYPROJECT = SRC.parent / "pyproject.toml"
LINT = "import sys, importlinter.cli as c; sys.exit(c.lint_imports(sys.argv[1], no_cache=True, no_logo=True))"


def lint_imports(src: Path, config: Path, cwd: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` on the densenets package under ``src`` (PYTHONPATH), with ``config``'s contracts."""
    pytest.importorskip("importlinter", reason="import-linter is not installed (densenets[dev])")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(src)}
    return subprocess.run([sys.executable, "-c", LINT, str(config)], cwd=cwd, env=env, capture_output=True, text=True)


def test_import_contracts_hold(tmp_path):
    result = lint_imports(SRC, PYPROJECT, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(
    "module, line, broken",
    [
        ("deploy/graph.py", "from . import onnx_runtime", "No import circle"),  # the old deploy circle's shape
        ("models/layers.py", "from ..engine import loop", "Layers"),  # an upward import
        ("engine/build_run.py", "from .. import __version__", "Layers"),  # the old version import: -> interpret
    ],
)
def test_import_contracts_break_on_a_circle_or_an_upward_import(tmp_path, module, line, broken):
    copy = tmp_path / "src" / "densenets"
    shutil.copytree(SRC / "densenets", copy, ignore=shutil.ignore_patterns("__pycache__", "weights"))
    with (copy / module).open("a") as f:
        f.write(f"\n{line}  # noqa\n")
    result = lint_imports(tmp_path / "src", PYPROJECT, tmp_path)
    assert result.returncode == 1 and f"{broken}" in result.stdout.split("Broken contracts")[-1], result.stdout


def test_version_has_one_place_and_the_cli_prints_it(capsys):
    tomllib = pytest.importorskip("tomllib")
    from densenets._version import __version__

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"densenets {__version__}"
    assert densenets.__version__ == __version__
    project = tomllib.loads(PYPROJECT.read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "densenets._version.__version__"}


def test_scikit_learn_is_pinned_where_youdens_thresholds_need_it():
    """engine/multilabel.choose_thresholds skips roc_curve's first threshold as the infinite one:
    scikit-learn returns inf there since 1.3 (before: max score + 1, a finite "predict nothing")."""
    tomllib = pytest.importorskip("tomllib")
    from packaging.requirements import Requirement
    from sklearn.metrics import roc_curve

    deps = [Requirement(d) for d in tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]]
    (sklearn,) = [d for d in deps if d.name == "scikit-learn"]
    assert "1.2.2" not in sklearn.specifier and "1.3.0" in sklearn.specifier
    assert roc_curve([0, 1], [0.2, 0.8])[2][0] == float("inf")


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_onnxruntime_quantization_leaves_the_processs_logging_alone(monkeypatch, capfd):
    """It used to call logging.disable(WARNING) for the whole process while it ran, and ONNX Runtime's
    logging.warning left a root handler behind (logging.basicConfig)."""
    pytest.importorskip("onnxruntime.quantization")
    from densenets.deploy.graph import onnx_bytes, plain_eval_copy
    from densenets.deploy.quantize import quantize_onnx

    model = create_model("densenet_bc16_k4")
    graph = onnx_bytes(plain_eval_copy(model), torch.zeros(1, 3, 32, 32))
    user = logging.getLogger("a_user_of_densenets")
    records = Records()
    monkeypatch.setattr(user, "handlers", [records])
    monkeypatch.setattr(user, "propagate", False)
    monkeypatch.setattr(logging.root, "handlers", [])  # a process that configured no logging

    def batches():  # read while the quantizer runs
        user.warning("the user's own warning")
        logging.getLogger().warning("a root warning of the user's")
        yield torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))

    quantize_onnx(graph, batches())
    assert records.messages == ["the user's own warning"]
    assert logging.root.handlers == [] and logging.root.manager.disable == logging.NOTSET
    err = capfd.readouterr().err
    assert "a root warning of the user's" in err  # Python's last-resort handler: nothing hid it
    assert "is out-of-range for weight" not in err  # the quantizer's known noisy line stays out


def test_nncf_level_is_restored_and_its_warnings_and_output_pass(monkeypatch, capsys):
    """NNCF was set to ERROR for good and stdout and stderr swallowed; now only its INFO lines and
    progress bars are hidden, and only while it quantizes."""
    nncf = pytest.importorskip("nncf")
    from densenets.deploy import openvino

    logger = logging.getLogger("nncf")
    records = Records()
    monkeypatch.setattr(logger, "handlers", [*logger.handlers, records])
    monkeypatch.setattr(logger, "level", logging.INFO)
    before = [logger.level] + [h.level for h in logger.handlers]

    def fake_quantize(model, dataset, **options):
        logger.info("an INFO line of NNCF")
        logger.warning("a warning of NNCF")
        print("Statistics collection ━━━━━━━━━━━━━━━━━━ 100% 8/8 • 0:00:00 • 0:00:00")
        print("a line NNCF printed")
        return "quantized"

    monkeypatch.setattr(nncf, "quantize", fake_quantize)
    assert openvino.quantize(object(), [torch.zeros(2, 3, 4, 4)]) == "quantized"
    assert [logger.level] + [h.level for h in logger.handlers] == before
    assert records.messages == ["a warning of NNCF"]
    out = capsys.readouterr().out
    assert "a line NNCF printed" in out and "Statistics collection" not in out


def loaded_model(model: nn.Module) -> LoadedModel:
    preprocess = {"mean": [0.5] * 3, "std": [0.25] * 3, "crop": 32, "channels": 3}
    return LoadedModel(model, preprocess, [str(i) for i in range(10)], Path("tiny.pt"))


@pytest.mark.parametrize("precision, backend", [("fp32", "onnxruntime"), ("bf16", "torch"), ("fp32", "openvino")])
def test_with_precision_leaves_the_callers_model_as_it_was(monkeypatch, precision, backend):
    """It used to move the caller's model to the CPU in place (``loaded.model = loaded.model.cpu()``)."""
    pytest.importorskip(backend if backend != "torch" else "torch")
    model = create_model("densenet_bc16_k4").to(memory_format=torch.channels_last)
    loaded = loaded_model(model)
    applied = []
    original_apply = nn.Module._apply
    monkeypatch.setattr(
        nn.Module, "_apply", lambda self, fn, *a, **k: applied.append(self) or original_apply(self, fn, *a, **k)
    )
    fast, info = with_precision(loaded, precision, backend=backend, device="cpu")
    assert loaded.model is model
    assert [f"{type(m).__name__}._apply" for m in applied if m is model] == []  # no .cpu()/.to()/.float() on it
    assert model.features.conv0.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (fast(x) - model.eval()(x)).abs().max() < (0.1 if precision == "bf16" else 1e-3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU: the caller's model must stay on it")
def test_with_precision_leaves_a_gpu_model_on_the_gpu():
    pytest.importorskip("onnxruntime")
    model = create_model("densenet_bc16_k4").cuda()
    fast, info = with_precision(loaded_model(model), "fp32", backend="onnxruntime", device="cpu")
    assert next(model.parameters()).is_cuda and info["device"] == "cpu"


def fake_x86(monkeypatch, cpuinfo: Path) -> None:
    monkeypatch.setattr(calibration.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(calibration, "CPUINFO", cpuinfo)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")  # what was taken for VNNI


def test_without_cpuinfo_int8_says_vnni_could_not_be_checked(monkeypatch, tmp_path):
    """AVX-512 was taken for VNNI when /proc/cpuinfo was missing; Skylake has one without the other."""
    pytest.importorskip("onnxruntime.quantization")
    fake_x86(monkeypatch, tmp_path / "missing")
    assert calibration.int8_cpu_check()[0] is None and calibration.int8_cpu_problem() is None
    note = calibration.check_int8_ready("onnxruntime")
    assert note and "could not check this CPU for VNNI" in note and "missing" in note
    model = create_model("densenet_bc16_k4")
    with pytest.warns(calibration.UncheckedCpuWarning, match="could not check this CPU for VNNI"):
        optimize_for_inference(model, backend="onnxruntime", precision="int8", calibration=torch.randn(8, 3, 32, 32))
    (tmp_path / "avx512").write_text("flags\t\t: fpu sse avx2 avx512f avx512bw\n")
    fake_x86(monkeypatch, tmp_path / "avx512")
    with pytest.raises(UserError, match="no VNNI"):
        calibration.check_int8_ready("onnxruntime")
    (tmp_path / "vnni").write_text("flags\t\t: fpu sse avx2 avx512f avx512_vnni\n")
    fake_x86(monkeypatch, tmp_path / "vnni")
    assert calibration.check_int8_ready("onnxruntime") is None


def test_bench_report_says_the_cpu_flags_could_not_be_read(tmp_path):
    info = cpu_info(tmp_path / "missing")
    env = {"cpu": "x", "device": "cpu", "threads": 1, "cores": 1, "torch": "2", "matmul_peak_gflops": {},
           "cpuinfo": info}  # fmt: skip
    text = to_markdown({"environment": env, "config": {"rounds": 1, "reps": 1, "warmup": 0}})
    assert info["flags"] is None and "could not be read" in text and "as /proc/cpuinfo reports" not in text


@pytest.fixture(scope="module")
def resnet_run(tmp_path_factory):
    """A tiny CIFAR ResNet (8 layers) trained one epoch on the digits."""
    from densenets.engine.recipes import base_recipe, resolve_recipe
    from densenets.engine.trainer import fit

    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(model_registry._REGISTRY, "resnet8_tiny", CifarResNetConfig("basic", 8))
        recipe = resolve_recipe(
            base_recipe("digits"), model="resnet8_tiny", data="digits", data_dir=str(tmp_path_factory.mktemp("data")),
            epochs=1, batch_size=64, workers=0, image_size=16,
        )  # fmt: skip
        run = tmp_path_factory.mktemp("resnet") / "run"
        fit(recipe, run, show_progress=False)
    return run


@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_eval_bf16_of_a_resnet_run(resnet_run, tmp_path, capsys, backend):
    """It ended in "TypeError: optimize_for_inference expects a densenets DenseNet, got CifarResNet"."""
    import json

    assert main(["eval", str(resnet_run), "--out", str(tmp_path / "fp32")]) == 0
    code = main(["eval", str(resnet_run), "--precision", "bf16", "--backend", backend, "--out", str(tmp_path / "bf16")])
    out = capsys.readouterr().out
    assert code == 0 and "precision: bf16" in out
    fp32, bf16 = (json.loads((tmp_path / p / "metrics.json").read_text()) for p in ("fp32", "bf16"))
    assert bf16["precision"] == "bf16" and bf16["count"] == fp32["count"]
    assert abs(bf16["loss"] - fp32["loss"]) < 0.02  # bfloat16 rounding, not another model
