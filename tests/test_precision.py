"""bf16 and int8 inference: each precision and backend runs, agrees with fp32 on a trained tiny
model (digits and an ImageFolder made from the digits), and bad calibration input is one line, exit 2."""

import functools
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from densenets.cli.main import main
from densenets.data import DataSpec, build_data
from densenets.deploy import calibration as int8_checks
from densenets.deploy import choice, folding, optimize_for_inference
from densenets.engine.evaluation import evaluate_checkpoint
from densenets.engine.loading import load_model
from densenets.engine.recipes import base_recipe, resolve_recipe
from densenets.engine.trainer import fit

pytest.importorskip("onnxruntime")
needs_vnni = pytest.mark.skipif(int8_checks.int8_cpu_problem() is not None, reason="int8 needs VNNI on this CPU")
HAS_OPENVINO = choice.installed("openvino", "int8")
needs_openvino = pytest.mark.skipif(
    not HAS_OPENVINO, reason="openvino and nncf are not installed (densenets[openvino])"
)

# Points of test error a path may lose against fp32 on these 360-image fixtures, where one image
# is 0.28 points. Which predictions move depends on the CPU's kernels: on a Zen 5 EPYC no bf16 path
# lost an image and OpenVINO's int8 scored 4 images better than fp32 on the ImageFolder model; on a
# Zen 4 EPYC (family 25 model 17) OpenVINO's bf16 lost 1 image on the folder (6.67% vs 6.39%) and
# int8 3 images on the digits (3.61% vs 2.78%) and 6 on the folder (8.06% vs 6.39%; ONNX Runtime 3),
# the same figures before and after round 4's changes. So the fixtures allow bf16 one image and
# int8 seven (2 points): a quantization that breaks the model shows as far more. The issue-21
# targets (bf16 within 0.2 points, int8 within 0.5) are checked on the 10,000 real CIFAR-10 test
# images by docs/inference_paths_accuracy.py, met on both CPUs with the same figures (bf16 +0.00,
# int8 +0.10 / +0.07; docs/records/inference-paths-cifar10/ and inference-paths-cifar10-zen4/).
TOLERANCE = {"bf16": 0.3, "int8": 2.0}
# The models must be trained well enough that few predictions sit on a knife edge: 12 epochs
# reach about 3-8% test error here.


def run_cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def train(data: str, data_dir: Path, run: Path) -> Path:
    recipe = resolve_recipe(
        base_recipe("digits"), model="densenet_bc22_k8", data=data, data_dir=str(data_dir),
        epochs=12, batch_size=32, workers=0, image_size=16,  # the digits' own size, for the folder too
    )  # fmt: skip
    fit(recipe, run, show_progress=False)
    return run


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    return train("digits", tmp_path_factory.mktemp("data"), tmp_path_factory.mktemp("digits") / "run")


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    """The digits written as PNG files in class folders (train/ and val/), trained as imagefolder."""
    root = tmp_path_factory.mktemp("digits_folder")
    bundle = build_data(DataSpec("digits", image_size=16))
    for part, dataset in (("train", bundle.train), ("val", bundle.test)):
        for i in range(len(dataset)):
            image, label = dataset[i]
            folder = root / part / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            pixels = (image[0] * bundle.preprocess["std"][0] + bundle.preprocess["mean"][0]).clamp(0, 1)
            Image.fromarray((pixels * 255).round().byte().numpy(), mode="L").save(folder / f"{i}.png")
    return train("imagefolder", root, tmp_path_factory.mktemp("folder") / "run")


def folder_data(run: Path) -> Path:
    """The image folder a run trained on, as its config.json records it."""
    return Path(json.loads((run / "config.json").read_text())["recipe"]["data_dir"])


@functools.cache
def fp32_error(run: Path) -> float:
    return evaluate_checkpoint(run, precision="fp32")["error"]


# Every (precision, backend) path; one this machine cannot run is a skip that says why.
PATHS = [
    pytest.param("bf16", "torch", id="bf16-torch"),
    pytest.param("int8", "onnxruntime", marks=needs_vnni, id="int8-onnxruntime"),
    pytest.param("bf16", "openvino", marks=needs_openvino, id="bf16-openvino"),
    pytest.param("int8", "openvino", marks=[needs_openvino, needs_vnni], id="int8-openvino"),
]


@pytest.mark.parametrize(("precision", "backend"), PATHS)
@pytest.mark.parametrize("which", ["digits", "folder"])
def test_bf16_and_int8_test_error_close_to_fp32(which, precision, backend, request):
    run = request.getfixturevalue(f"{which}_run")
    fp32 = fp32_error(run)
    error = evaluate_checkpoint(run, precision=precision, backend=backend)["error"]
    print(f"{which}: test error fp32 {fp32:.2f}%, {precision} {backend} {error:.2f}%")
    assert fp32 < 25.0  # the model learnt (chance is 90%)
    # No path may lose more than the tolerance. A gain is not a failure: on 360 images one
    # image is 0.28 points, and OpenVINO's int8 once scored 6.94% against fp32's 8.06% on the
    # ImageFolder model (4 images better), which an absolute bound would have failed.
    assert error - fp32 <= TOLERANCE[precision], (fp32, error)


@needs_vnni
def test_eval_cli_names_the_precision_and_calibrates_on_a_folder(folder_run, tmp_path, capsys):
    code, out, err = run_cli(capsys, "eval", folder_run, "--precision", "int8", "--calibration",
                             folder_data(folder_run) / "train", "--out", tmp_path / "e")  # fmt: skip
    assert code == 0, err
    assert "precision: int8 (approximate" in out
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert metrics["precision"] == "int8"


@pytest.mark.parametrize("precision", ["fp32", "bf16", pytest.param("int8", marks=needs_vnni)])
def test_predict_runs_each_precision(digits_run, tmp_path, capsys, precision):
    image = tmp_path / "three.png"
    Image.new("L", (16, 16), 0).save(image)
    code, out, err = run_cli(capsys, "predict", digits_run, image, "--precision", precision, "--json",
                             "--top-k", "10")  # fmt: skip
    assert code == 0, err
    probabilities = [p["probability"] for p in json.loads(out)[0]["predictions"]]
    assert len(probabilities) == 10  # every class of the digits, so the probabilities sum to 1
    assert abs(sum(probabilities) - 1.0) < 0.05, (precision, probabilities)
    assert probabilities == sorted(probabilities, reverse=True)


@needs_vnni
def test_int8_onnx_export_is_checked_with_onnxruntime(digits_run, tmp_path, capsys):
    out_file = tmp_path / "model.int8.onnx"
    code, out, err = run_cli(capsys, "export", digits_run, "--format", "onnx", "--int8", "--calibration", "auto",
                             "--out", out_file)  # fmt: skip
    assert code == 0, err
    assert out_file.is_file() and "checked with onnxruntime" in out and "int8" in out and "ONNX Runtime" in out
    import onnx

    graph = onnx.load(str(out_file)).graph
    nodes = graph.node
    assert {"QuantizeLinear", "DequantizeLinear"} <= {node.op_type for node in nodes}
    # Every BatchNorm that follows a conv alone was folded into it: no Conv's output goes only to
    # a BatchNormalization (through the quantize/dequantize pairs). The BatchNorms left are the
    # pre-activation ones on concatenated maps (a block's input also travels on, so it cannot fold).
    consumers = {}
    for node in nodes:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def ops_reading(name: str) -> list[str]:
        found = []
        for node in consumers.get(name, []):
            qdq = node.op_type in ("QuantizeLinear", "DequantizeLinear")
            found += ops_reading(node.output[0]) if qdq else [node.op_type]
        return found

    read_by = [ops_reading(node.output[0]) for node in nodes if node.op_type == "Conv"]
    assert ["BatchNormalization"] not in read_by and ["Conv"] in read_by  # bottlenecks: conv1 -> conv2
    batchnorms = [node for node in nodes if node.op_type == "BatchNormalization"]
    model = load_model(digits_run).model
    kept = sum(isinstance(m, torch.nn.BatchNorm2d) for m in folding.folded_copy(model).modules())
    assert len(batchnorms) == kept < sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    # The classifier runs in float: quantized logits tie (1% of CIFAR-10's test images had two
    # classes level at the top), and the reported class then depends on how a caller breaks ties.
    (writer,) = [node for node in nodes if graph.output[0].name in node.output]
    assert writer.op_type == "Gemm", writer.op_type


def test_folded_copy_gives_the_same_outputs():
    from densenets import create_model

    model = create_model("densenet_bc16_k4").eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(folding.folded_copy(model)(x), model(x), rtol=1e-4, atol=1e-5)


def make_folder(root: Path, names: list[str], channels: str = "L", size: int = 16) -> Path:
    for name in names:
        (root / name).mkdir(parents=True, exist_ok=True)
        Image.new(channels, (size, size)).save(root / name / "a.png")
    return root


@needs_vnni
@pytest.mark.parametrize(
    "case, message",
    [
        ("empty", "holds no image files"),
        ("missing", "does not exist"),
        ("classes", "class folders the model does not know"),
    ],
)
def test_bad_calibration_folder_is_one_line_exit_2(case, message, digits_run, tmp_path, capsys):
    folder = tmp_path / "calib"
    if case == "empty":
        folder.mkdir()
    elif case == "classes":
        make_folder(folder, ["cat", "dog"])
    code, out, err = run_cli(capsys, "eval", digits_run, "--precision", "int8", "--calibration", folder)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


@needs_vnni
def test_bad_calibration_tensors_name_the_problem(digits_run):
    from densenets.errors import DataError

    model = load_model(digits_run).model  # 1 channel, 10 classes
    with pytest.raises(DataError, match="3 channels but the model takes 1"):
        optimize_for_inference(model, precision="int8", calibration=torch.rand(4, 3, 16, 16))
    with pytest.raises(DataError, match=r"shape \(N, 1, H, W\)"):
        optimize_for_inference(model, precision="int8", calibration=torch.rand(4, 16, 16))
    with pytest.raises(DataError, match="labels run to 11"):
        optimize_for_inference(model, precision="int8", calibration=[(torch.rand(2, 1, 16, 16), torch.tensor([0, 11]))])
    with pytest.raises(DataError, match="no images"):
        optimize_for_inference(model, precision="int8", calibration=[])


def test_int8_without_vnni_or_its_runtime_is_one_line_exit_2(digits_run, monkeypatch, capsys):
    monkeypatch.setattr(int8_checks, "int8_cpu_check", lambda: (False, "this CPU has no VNNI int8 instructions"))
    code, _, err = run_cli(capsys, "eval", digits_run, "--precision", "int8")
    assert code == 2 and "int8 needs a CPU with VNNI" in err and len(err.strip().splitlines()) == 1
    monkeypatch.undo()
    modules = __import__("sys").modules
    monkeypatch.setitem(modules, "onnxruntime.quantization", None)
    code, _, err = run_cli(capsys, "predict", digits_run, digits_run / "config.json", "--precision", "int8",
                           "--backend", "onnxruntime")  # fmt: skip
    assert code == 2 and "pip install 'densenets[export]'" in err and len(err.strip().splitlines()) == 1
    for name in ("openvino", "nncf"):  # the extra missing: one line naming it, eval and export alike
        monkeypatch.setitem(modules, name, None)
        code, _, err = run_cli(capsys, "eval", digits_run, "--precision", "int8", "--backend", "openvino")
        assert code == 2 and "pip install 'densenets[openvino]'" in err and len(err.strip().splitlines()) == 1
        code, _, err = run_cli(capsys, "export", digits_run, "--format", "openvino", "--int8")
        assert code == 2 and "pip install 'densenets[openvino]'" in err and len(err.strip().splitlines()) == 1
        monkeypatch.delitem(modules, name)


@pytest.mark.parametrize("command", ["eval", "predict"])
def test_int8_on_a_gpu_device_is_refused_alike_by_eval_and_predict(command, digits_run, capsys):
    """int8 runs on the CPU only: both commands refuse an explicit GPU the same way (and say where auto runs)."""
    extra = [digits_run / "config.json"] if command == "predict" else []
    code, _, err = run_cli(capsys, command, digits_run, *extra, "--precision", "int8", "--device", "cuda")
    assert code == 2 and "on the CPU; leave out --device or pass --device cpu" in err
    assert len(err.strip().splitlines()) == 1


@needs_vnni
def test_default_int8_and_bf16_name_the_fastest_installed_backend(digits_run, tmp_path, capsys):
    for precision in ("bf16", "int8"):
        code, out, err = run_cli(capsys, "eval", digits_run, "--precision", precision, "--out", tmp_path / precision)
        assert code == 0, err
        name = choice.NAMES[choice.default_backend(precision)]
        assert f"backend {name}" in out and f"the fastest installed for {precision}" in out


def test_default_backend_falls_back_when_the_fastest_is_missing(monkeypatch):
    for precision in ("fp32", "bf16"):
        assert choice.default_backend(precision, "cuda") == "torch"  # OpenVINO and ONNX Runtime run on CPUs
    monkeypatch.setattr(choice, "installed", lambda backend, precision="fp32": True)
    assert [choice.default_backend(p) for p in ("fp32", "bf16", "int8")] == ["openvino"] * 3
    monkeypatch.setattr(choice, "installed", lambda backend, precision="fp32": backend != "openvino")
    assert choice.default_backend("int8") == "onnxruntime"
    assert choice.default_backend("bf16") == "torch"
    assert choice.default_backend("fp32") == "torch"


@needs_openvino
@needs_vnni
def test_openvino_exports_are_ir_plus_json_and_checked(digits_run, tmp_path, capsys):
    import openvino as ov

    for flags, precision in (([], "fp32"), (["--int8", "--calibration", "auto"], "int8")):
        xml = tmp_path / f"{precision}.xml"
        code, out, err = run_cli(capsys, "export", digits_run, "--format", "openvino", *flags, "--out", xml)
        assert code == 0, err
        assert xml.is_file() and xml.with_suffix(".bin").is_file() and "checked" in out
        meta = json.loads(xml.with_suffix(".json").read_text())
        assert meta["precision"] == precision and meta["openvino"]["xml"] == xml.name
        assert meta["preprocess"]["channels"] == 1 and len(meta["class_names"]) == 10
        ops = {op.get_type_name() for op in ov.Core().read_model(str(xml)).get_ops()}
        assert ("FakeQuantize" in ops) == (precision == "int8"), ops


@needs_openvino
def test_predict_through_openvino_names_it(digits_run, tmp_path, capsys):
    image = tmp_path / "blank.png"
    Image.new("L", (16, 16), 0).save(image)
    code, out, err = run_cli(capsys, "predict", digits_run, image, "--precision", "bf16", "--backend", "openvino")
    assert code == 0, err
    assert "backend OpenVINO on the CPU" in out and "%" in out


def test_calibration_without_int8_is_refused(digits_run, capsys):
    code, _, err = run_cli(capsys, "eval", digits_run, "--precision", "bf16", "--calibration", "auto")
    assert code == 2 and "--calibration is for --precision int8 only" in err


@needs_vnni
def test_bench_int8_rows_are_like_for_like_and_run(monkeypatch):
    from densenets import create_model
    from densenets.bench import worker
    from densenets.bench.harness import FP32_REFERENCE, Workload, contenders

    specs = contenders(Workload("infer", "densenet_bc16_k4", 2, 32, "int8"), torch.device("cpu"))
    precision = {label: spec["precision"] for label, spec in specs.items()}
    ours = f"densenets optimize_for_inference ({choice.NAMES[choice.default_backend('int8')]})"
    assert next(iter(specs)) == ours and precision[ours] == "int8"
    assert precision["torchvision through ONNX Runtime"] == "int8"  # like-for-like peers: same runtime, precision
    assert precision[FP32_REFERENCE] == "fp32"  # the reference issue 11's targets are stated against
    # (with OpenVINO installed or not: tests/test_bench.py, runtimes taken as installed)
    built = {}
    monkeypatch.setattr(worker, "inference_fn", lambda model, x, *a: built.update(model=model, x=x))
    for label in (ours, "torchvision through ONNX Runtime"):  # each int8 contender computes near fp32
        worker.build(specs[label])
        torch.manual_seed(0)
        with torch.no_grad():
            expected = create_model("densenet_bc16_k4").eval()(built["x"].float().contiguous())
        error = (built["model"](built["x"]) - expected).abs().max().item()
        assert error < 0.25 * expected.abs().max().item(), (label, error)


@needs_openvino
@needs_vnni
def test_openvino_int8_logs_nothing_about_cuda():
    """OpenVINO's converter imports nncf.torch when NNCF is installed, which imports
    torch.utils.cpp_extension, which logs "No CUDA runtime is found" on CPU-only machines with
    CUDA_HOME set: every OpenVINO command would print it among its own output."""
    code = ("import torch; from densenets import optimize_for_inference; from densenets.models import create_model; "
            "optimize_for_inference(create_model('densenet_bc16_k4'), backend='openvino', precision='int8', "
            "calibration=torch.rand(2, 3, 32, 32)); print('ok')")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
    assert "CUDA" not in done.stderr, done.stderr
