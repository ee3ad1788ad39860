"""The benchmark harness runs and reports; it measures, so nothing here asserts a speed."""

import copy
import importlib.util
import json
import statistics
from pathlib import Path

import pytest
import torch
from torchvision.models import DenseNet as TorchvisionDenseNet

from densenets.bench import harness, memory, worker
from densenets.bench.harness import (
    FP32_REFERENCE,
    BenchConfig,
    Workload,
    _run_worker,
    baseline_of,
    contenders,
    paired_ratio,
    run_benchmarks,
)
from densenets.bench.memory import fit_growth
from densenets.bench.reference import check_same_outputs, torchvision_twin
from densenets.bench.report import to_markdown
from densenets.bench.worker import run
from densenets.deploy.calibration import int8_cpu_problem
from densenets.models import create_model

HAVE_ORT = bool(importlib.util.find_spec("onnxruntime") and importlib.util.find_spec("onnx"))
HAVE_OV = bool(importlib.util.find_spec("openvino") and importlib.util.find_spec("nncf"))


def test_torchvision_twin_has_our_weights_and_outputs():
    ours = create_model("densenet_bc16_k4").eval()
    twin = torchvision_twin(ours).eval()
    assert check_same_outputs(ours, twin, torch.randn(2, 3, 32, 32)) < 1e-5
    with torch.no_grad():
        twin.classifier.bias.add_(1.0)
    with pytest.raises(AssertionError, match="not timing them"):
        check_same_outputs(ours, twin, torch.randn(2, 3, 32, 32))


def test_growth_fit_tells_linear_from_quadratic():
    depths = [40, 100, 190, 250]
    assert abs(fit_growth(depths, [3.0 * d for d in depths])["loglog_slope"] - 1.0) < 1e-6
    assert abs(fit_growth(depths, [0.5 * d * d for d in depths])["loglog_slope"] - 2.0) < 1e-6
    assert fit_growth(depths, [d * d + 1.0 for d in depths])["quadratic"]["r2"] > 0.999


def test_paired_ratio_and_baseline_choice():
    r = paired_ratio([2.0, 3.0, 4.0], [1.0, 2.0, 1.0])
    assert r["per_round"] == [2.0, 1.5, 4.0] and (r["median"], r["min"], r["max"]) == (2.0, 1.5, 4.0)
    work = Workload("infer", "densenet_bc16_k4", 4, 32, "bf16")
    specs = contenders(work, torch.device("cpu"))
    ours = next(iter(specs))
    assert ours.startswith("densenets optimize_for_inference (")  # ours as a user runs it, first, backend named
    int8 = contenders(Workload("infer", "densenet_bc16_k4", 4, 32, "int8"), torch.device("cpu"))
    assert int8[FP32_REFERENCE]["precision"] == "fp32"  # int8's targets are also stated against fp32
    assert "torchvision torch.compile (freezing)" in specs  # every runtime a user could pick instead
    medians = {label: 1.0 for label in specs}
    medians.update({"torchvision channels_last": 1.5, "torchvision torch.compile (freezing)": 0.9})
    # the fastest torchvision row at the same precision, any runtime
    assert baseline_of(ours, specs, medians) == "torchvision torch.compile (freezing)"


def test_ours_through_a_runtime_is_paired_with_torchvision_through_it(monkeypatch):
    # contenders() only writes specs: both runtimes are taken as installed whether they are or not
    monkeypatch.setattr(harness, "onnxruntime_available", lambda device: True)
    monkeypatch.setattr(harness, "openvino_available", lambda device, precision="fp32": True)
    monkeypatch.setattr(harness, "default_backend", lambda precision, device="cpu": "openvino")
    int8 = contenders(Workload("infer", "densenet_bc16_k4", 4, 32, "int8"), torch.device("cpu"))
    ours = "densenets optimize_for_inference (OpenVINO)"
    assert list(int8) == [ours, "densenets through ONNX Runtime", "torchvision through ONNX Runtime",
                          "torchvision through OpenVINO", FP32_REFERENCE]  # fmt: skip
    assert {label for label, spec in int8.items() if spec["precision"] == "int8"} == set(int8) - {FP32_REFERENCE}
    medians = {label: 1.0 for label in int8}
    medians.update({"torchvision through OpenVINO": 0.5, FP32_REFERENCE: 0.1})  # fp32: never int8's baseline
    # through ONNX Runtime: torchvision through ONNX Runtime, though torchvision through OpenVINO is faster
    assert baseline_of("densenets through ONNX Runtime", int8, medians) == "torchvision through ONNX Runtime"
    assert baseline_of(ours, int8, medians) == "torchvision through OpenVINO"  # as a user runs it: the fastest
    medians["torchvision through ONNX Runtime"] = 0.2
    assert baseline_of(ours, int8, medians) == "torchvision through ONNX Runtime"


def _installed_nothing(monkeypatch):
    """Contenders as on a machine with neither ONNX Runtime nor OpenVINO: the same rows wherever the test runs."""
    monkeypatch.setattr(harness, "onnxruntime_available", lambda device: False)
    monkeypatch.setattr(harness, "openvino_available", lambda device, precision="fp32": False)
    monkeypatch.setattr(harness, "default_backend", lambda precision, device="cpu": "torch")


def test_harness_tables_from_injected_timings(tmp_path, monkeypatch):
    """Medians, throughput, baselines and per-round ratios computed from known timings."""
    _installed_nothing(monkeypatch)
    monkeypatch.setattr(harness, "matmul_peak_gflops", lambda device, dtype: 100.0)
    ours_infer = "densenets optimize_for_inference (PyTorch)"
    seconds = {  # per round, by label
        "densenets": [1.0, 2.0, 1.2],  # median 1.2 (mean 1.4)
        "densenets, default allocator": [2.0, 2.0, 2.0],
        "torchvision NCHW": [3.0, 3.0, 3.0],  # median 3: the fastest torchvision, so the baseline
        "torchvision channels_last": [2.0, 4.0, 9.0],  # median 4
        ours_infer: [0.5, 0.25, 1.0],
        "torchvision channels_last infer": [1.0, 1.0, 1.0],
    }
    specs = {}
    for task, (model, batch, size) in (("train", harness.workloads("train", True)[0]),
                                       ("infer", harness.workloads("infer", True)[0])):  # fmt: skip
        for label, spec in contenders(Workload(task, model, batch, size), torch.device("cpu"), True).items():
            specs[json.dumps(spec, sort_keys=True)] = label + (
                " infer" if task == "infer" and "torchvision" in label else ""
            )
    calls = []

    def fake_worker(spec):
        label = specs[json.dumps({k: v for k, v in spec.items() if k not in ("reps", "warmup", "ir_cache")},
                                 sort_keys=True)]  # fmt: skip
        calls.append(label)
        return {"median_s": seconds[label][calls.count(label) - 1]}

    monkeypatch.setattr(harness, "_run_worker", fake_worker)
    config = BenchConfig(device="cpu", rounds=3, precisions=("fp32",), quick=True, out_dir=str(tmp_path), log=False)
    results = run_benchmarks(config)
    train = {r["impl"]: r for r in results["train"][0]["rows"]}
    labels = list(train)
    assert calls[:12] == labels + labels[1:] + labels[:1] + labels[2:] + labels[:2]  # rounds in rotated order
    assert train["densenets"]["seconds"] == 1.2 and train["densenets"]["images_per_s"] == 8 / 1.2
    assert all(row["baseline"] == "torchvision NCHW" for row in train.values())
    ratio = train["densenets"]["ratio"]
    assert ratio["per_round"] == pytest.approx([3.0, 1.5, 2.5])
    assert (ratio["median"], ratio["min"], ratio["max"]) == pytest.approx((2.5, 1.5, 3.0))
    assert train["torchvision channels_last"]["ratio"]["per_round"] == pytest.approx([1.5, 0.75, 1 / 3])
    headline = results["train"][0]["headline"]
    assert (headline["ours"], headline["baseline"]) == ("densenets", "torchvision NCHW")
    assert headline["per_round"] == pytest.approx([3.0, 1.5, 2.5]) and headline["median"] == pytest.approx(2.5)
    infer = results["infer"][0]
    assert [r["impl"] for r in infer["rows"]] == [ours_infer, "torchvision channels_last"]
    assert infer["headline"]["per_round"] == [2.0, 4.0, 1.0] and infer["headline"]["median"] == 2.0
    assert infer["rows"][0]["images_per_s"] == 4 / 0.5
    row = train["densenets"]
    assert row["fraction_of_matmul_peak"] == pytest.approx(row["gflops_per_s"] / 100.0)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["train"] == results["train"] and saved["infer"] == results["infer"]
    markdown = (tmp_path / "results.md").read_text()
    assert markdown == to_markdown(results)
    assert "Headline: **densenets" in markdown and "| torchvision channels_last | cl | tuned | fp32 |" in markdown


def test_worker_times_each_call_after_the_warm_up(monkeypatch):
    calls = []
    monkeypatch.setattr(worker, "build", lambda spec: lambda: calls.append(1))
    ticks = iter([0.0, 4.0, 10.0, 11.0, 20.0, 22.0])  # the timed calls take 4, 1 and 2 s
    result = run({"device": "cpu", "reps": 3, "warmup": 2}, clock=lambda: next(ticks))
    assert result == {"samples_s": [4.0, 1.0, 2.0], "median_s": 2.0}
    assert len(calls) == 2 + 3  # the warm-up calls run, untimed


def _capture_built(monkeypatch) -> dict:
    """Record the model, input and autocast dtype the worker hands to its timed function."""
    captured: dict = {}

    def capture(real):
        def wrapper(model, x, *args):
            captured.update(model=model, x=x, amp=args[-1] if args else None)
            return real(model, x, *args)

        return wrapper

    monkeypatch.setattr(worker, "training_step_fn", capture(worker.training_step_fn))
    monkeypatch.setattr(worker, "inference_fn", capture(worker.inference_fn))
    return captured


def _ours(x: torch.Tensor) -> torch.Tensor:
    """The worker's model (seed 0) as a plain module, in fp32: the outputs every form must give."""
    torch.manual_seed(0)
    with torch.no_grad():
        return create_model("densenet_bc16_k4").eval()(x.float().contiguous())


@pytest.mark.parametrize("task", ["train", "infer"])
@pytest.mark.parametrize("impl", ["densenets", "torchvision"])
@pytest.mark.parametrize("layout", ["nchw", "cl"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_worker_settings_build_what_they_name(monkeypatch, task, impl, layout, precision):
    captured = _capture_built(monkeypatch)
    spec = {"task": task, "model": "densenet_bc16_k4", "batch": 2, "size": 16, "device": "cpu", "impl": impl,
            "layout": layout, "allocator": "default", "precision": precision, "form": "module", "reps": 1}  # fmt: skip
    step = worker.build(spec)
    model, x = captured["model"], captured["x"]
    assert isinstance(model, TorchvisionDenseNet) == (impl == "torchvision")
    assert captured["amp"] == (torch.bfloat16 if precision == "bf16" else None)  # bf16: autocast, fp32: none
    memory_format = torch.channels_last if layout == "cl" else torch.contiguous_format
    assert x.is_contiguous(memory_format=memory_format)
    assert model.features.conv0.weight.is_contiguous(memory_format=memory_format)
    assert model.training == (task == "train")
    with torch.no_grad():
        torch.testing.assert_close(copy.deepcopy(model).eval()(x), _ours(x), rtol=1e-4, atol=1e-5)
    before = [p.detach().clone() for p in model.parameters()]
    step()
    changed = any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert changed == (task == "train")  # a training step updates the weights; inference does not


SPEC = {"task": "infer", "model": "densenet_bc16_k4", "batch": 2, "size": 16, "device": "cpu",
        "impl": "densenets", "layout": "cl", "allocator": "tuned", "precision": "fp32", "reps": 1}  # fmt: skip


def test_worker_optimised_form_and_bad_specs(monkeypatch):
    from densenets.deploy.choice import default_backend

    captured = _capture_built(monkeypatch)
    worker.build({**SPEC, "form": "optimized", "backend": "torch"})
    assert type(captured["model"]).__name__ == "InferenceDenseNet"  # optimize_for_inference's PyTorch module
    with torch.no_grad():
        torch.testing.assert_close(captured["model"](captured["x"]), _ours(captured["x"]), rtol=1e-4, atol=1e-5)
    worker.build({**SPEC, "form": "optimized"})  # no backend named: the one optimize_for_inference picks
    modules = {"torch": "InferenceDenseNet", "openvino": "OpenVinoModule", "onnxruntime": "OnnxRuntimeModule"}
    assert type(captured["model"]).__name__ == modules[default_backend("fp32")]
    for bad, match in (({"layout": "nhwc"}, "layout must be"), ({"impl": "timm"}, "impl must be"),
                       ({"form": "optimized", "impl": "torchvision"}, "our DenseNet only"),
                       ({"task": "train", "form": "optimized"}, "only the module form trains"),
                       ({"form": "openvino", "graph": "fused"}, "graph must be"),
                       ({"form": "compile", "precision": "int8"}, "fp32 or bf16")):  # fmt: skip
        with pytest.raises(ValueError, match=match):
            run({**SPEC, "form": "module", **bad})


@pytest.mark.skipif(not HAVE_ORT, reason="onnx and onnxruntime are not installed (densenets[export])")
@pytest.mark.parametrize("impl", ["densenets", "torchvision"])
def test_worker_onnxruntime_form_runs_either_model_with_its_outputs(monkeypatch, impl):
    captured = _capture_built(monkeypatch)
    worker.build({**SPEC, "impl": impl, "layout": "nchw", "form": "onnxruntime"})
    assert type(captured["model"]).__name__ == "OnnxRuntimeModule"
    torch.testing.assert_close(captured["model"](captured["x"]), _ours(captured["x"]), rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not HAVE_OV, reason="openvino and nncf are not installed (densenets[openvino])")
@pytest.mark.parametrize("graph", ["module", "folded", "conv_then_pool"])
def test_worker_openvino_graphs_are_exact_reformulations(monkeypatch, graph):
    """Each graph variant timed through OpenVINO computes what our module does (fp32)."""
    captured = _capture_built(monkeypatch)
    worker.build({**SPEC, "layout": "nchw", "form": "openvino", "graph": graph})
    out = captured["model"](captured["x"])
    torch.testing.assert_close(out, _ours(captured["x"]), rtol=1e-3, atol=1e-4)


@pytest.mark.skipif(not HAVE_OV, reason="openvino and nncf are not installed (densenets[openvino])")
@pytest.mark.skipif(int8_cpu_problem() is not None, reason="int8 needs VNNI on this CPU")
def test_worker_openvino_int8_stays_near_fp32(monkeypatch):
    captured = _capture_built(monkeypatch)
    worker.build({**SPEC, "layout": "nchw", "form": "openvino", "graph": "folded", "precision": "int8"})
    expected = _ours(captured["x"])
    error = (captured["model"](captured["x"]) - expected).abs().max().item()
    assert error < 0.25 * expected.abs().max().item()


def test_worker_process_prints_its_samples():
    """The harness's side of a worker: a fresh process, its result read from the last line."""
    result = _run_worker({**SPEC, "form": "module", "reps": 2, "warmup": 1})
    assert len(result["samples_s"]) == 2 and result["median_s"] == statistics.median(result["samples_s"])


def test_memory_probe_measures_each_default_path():
    ours, x = memory.probe_model("densenet_bc16_k4", "densenets", False, 2, 16, torch.device("cpu"))
    assert ours.features.conv0.weight.is_contiguous(memory_format=torch.channels_last)
    assert x.is_contiguous(memory_format=torch.channels_last)
    theirs, _ = memory.probe_model("densenet_bc16_k4", "torchvision", True, 2, 16, torch.device("cpu"))
    assert theirs.features.conv0.weight.is_contiguous()
    assert all(layer.memory_efficient for layer in theirs.modules() if hasattr(layer, "memory_efficient"))
    with pytest.raises(ValueError, match="impl must be densenets or torchvision"):
        memory.probe_model("densenet_bc16_k4", "ours", False, 2, 16, torch.device("cpu"))


DOCS = Path(__file__).resolve().parent.parent / "docs"

# Records where the rule knowingly picks the slower layout, and why it stands (none at present:
# the H200's bf16 DenseNet-BC-100 record, once listed here, is what the stem rule now follows).
LAYOUT_EXCEPTIONS: set[tuple[str, str, str]] = set()


def measured_training_layouts() -> list[tuple[str, str, str, bool]]:
    """(device, model, precision, channels_last was faster) for torchvision's training in the
    committed benchmark records (docs/bench-cpu/*/results.json, docs/bench-h200/results-*.json)."""
    found = []
    for path in sorted(DOCS.glob("bench-cpu/*/results.json")):
        for table in json.loads(path.read_text()).get("train", []):
            speed = {
                row["setting"]["layout"]: row["images_per_s"]
                for row in table["rows"]
                if row["setting"]["impl"] == "torchvision" and row["setting"].get("allocator") == "tuned"
            }
            if {"cl", "nchw"} <= speed.keys():
                found.append(("cpu", table["model"], table["precision"], speed["cl"] > speed["nchw"]))
    for path in sorted(DOCS.glob("bench-h200/results-*.json")):
        precision = "bf16" if "bf16" in path.name else "fp32"
        rows = json.loads(path.read_text()).get("train", [])
        speed = {(r["model"], r["impl"]): r["images_per_s"] for r in rows}
        for model, impl in speed:
            channels_last = speed.get((model, "torchvision, channels_last"))
            if impl == "torchvision" and channels_last is not None:
                found.append(("cuda", model, precision, channels_last > speed[model, impl]))
    return found


def test_default_layout_rule_follows_the_measurements():
    """The training engine's default layout is the one the committed records measured faster
    for torchvision's own DenseNets, on each device and precision, except the listed records."""
    from densenets.engine.runtime import default_channels_last, model_stem

    measured = measured_training_layouts()
    assert len(measured) >= 8, "the benchmark records this test reads are missing"
    amp = {"fp32": None, "bf16": torch.bfloat16}
    disagree = [
        (device, model, precision)
        for device, model, precision, channels_last_faster in measured
        if default_channels_last(torch.device(device), amp[precision], model_stem(model)) != channels_last_faster
    ]
    assert set(disagree) == LAYOUT_EXCEPTIONS


def test_memory_target_from_injected_peaks_and_timings(monkeypatch):
    _installed_nothing(monkeypatch)
    peaks = {("densenets", False): 400, ("densenets", True): 100, ("torchvision", True): 160}  # MiB
    monkeypatch.setattr(harness, "measure_step_memory", lambda name, impl, eff, *a: peaks[impl, eff] * 2**20)
    timed = {}

    def fake_rounds(specs, cfg, log):
        timed.update(specs)
        return {
            "normal": [1.0, 1.2],
            "memory-efficient": [1.5, 1.5],
            "torchvision NCHW, memory-efficient": [3.0, 2.4],  # median 2.7
            "torchvision channels_last, memory-efficient": [2.0, 3.0],
        }  # median 2.5: the faster layout

    monkeypatch.setattr(harness, "time_rounds", fake_rounds)
    config = BenchConfig(device="cpu", quick=True, log=False)
    target = harness.efficient_target(config, torch.device("cpu"), lambda *_: None)
    assert (target["model"], target["batch"]) == ("densenet_bc28_k4", 8)
    assert [spec.get("memory_efficient", False) for spec in timed.values()] == [False, True, True, True]
    assert [spec["impl"] for spec in timed.values()] == ["densenets", "densenets", "torchvision", "torchvision"]
    assert (target["peak_mib_normal"], target["peak_mib_efficient"], target["peak_mib_torchvision_efficient"]) == (
        400, 100, 160)  # fmt: skip
    assert target["memory_ratio"] == 0.25
    assert (target["seconds_normal"], target["seconds_efficient"]) == (1.1, 1.5)
    assert target["time_ratio"]["per_round"] == [1.5, 1.25]  # memory-efficient / normal
    assert target["torchvision_row"] == "torchvision channels_last, memory-efficient"
    assert target["seconds_torchvision_efficient"] == 2.5
    assert target["vs_torchvision"]["per_round"] == pytest.approx([2.0 / 1.5, 3.0 / 1.5])
    from densenets.bench import report

    text = "\n".join(report.memory_table({"efficient_target": target}))
    assert "25% of the normal mode's memory; step 1.50 s vs 1.10 s" in text
    assert "Against torchvision's memory-efficient mode (torchvision channels_last, memory-efficient" in text


def test_memory_target_failure_keeps_what_was_measured(monkeypatch):
    from densenets.bench import report

    peaks = {("densenets", False): 5, ("densenets", True): 2, ("torchvision", True): 3}  # MiB

    def measure(name, impl, efficient, *args):
        return peaks[impl, efficient] * 2**20

    monkeypatch.setattr(harness, "measure_step_memory", measure)

    def killed(*_):
        raise RuntimeError("benchmark worker failed: killed (out of memory?)")

    monkeypatch.setattr(harness, "time_rounds", killed)
    config = BenchConfig(device="cpu", memory_target="densenet_bc40_k12:16", log=False)
    target = harness.efficient_target(config, torch.device("cpu"), lambda *_: None)
    assert (target["model"], target["batch"]) == ("densenet_bc40_k12", 16)
    assert (target["peak_mib_normal"], target["peak_mib_efficient"], target["peak_mib_torchvision_efficient"]) == (
        5, 2, 3)  # fmt: skip
    assert target["memory_ratio"] == 0.4 and "out of memory" in target["error"]
    assert not any(key.startswith("seconds") or key.endswith("ratio") and key != "memory_ratio" for key in target)
    text = "\n".join(report.memory_table({"efficient_target": target}))
    assert "normal 5 MiB, memory-efficient 2 MiB, torchvision memory-efficient (NCHW) 3 MiB" in text
    assert "Not measured further" in text and "Memory-efficient mode:" not in text


@pytest.mark.parametrize("bad", ["densenet_bc40_k12", "densenet_bc40_k12:0", "resnet110:8", "densenet_nosuch:8"])
def test_bench_refuses_a_bad_memory_target_in_one_line(tmp_path, capsys, bad):
    from densenets.cli import main

    assert main(["bench", "--sections", "memory-target", "--memory-target", bad, "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("densenets: error:") and len(err.splitlines()) == 1
    assert not (tmp_path / "b").exists()


def test_default_backend_order_follows_the_latest_cpu_record():
    """choice.FASTEST_FIRST puts first, at each precision, the backend under which ours ran
    fastest in the committed CPU record it cites (every candidate timed in the same rounds)."""
    from densenets.deploy import choice

    record = json.loads((DOCS / "bench-cpu" / "run9" / "results.json").read_text())
    backend_of = {name: backend for backend, name in choice.NAMES.items()}
    checked = 0
    for work in record["infer"]:
        if work["model"] != "densenet121" or work["batch"] != 16:
            continue
        ours = {}  # "densenets optimize_for_inference (OpenVINO)", "densenets through PyTorch" -> img/s
        for row in work["rows"]:
            if row["impl"].startswith("densenets"):
                name = row["impl"].removesuffix(")").split("(")[-1].split(" through ")[-1]
                ours[backend_of[name]] = row["images_per_s"]
        order = [b for b in choice.FASTEST_FIRST[work["precision"]] if b in ours]
        assert max(ours, key=ours.__getitem__) == order[0], (work["precision"], ours)
        checked += 1
    assert checked == 3, "the record should hold fp32, bf16 and int8 at batch 16"
