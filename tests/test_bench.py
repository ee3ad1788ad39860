"""The benchmark harness runs and reports; it measures, so nothing here asserts a speed."""

import importlib.util
import json

from densenets.bench.harness import BenchConfig, run_benchmarks, to_markdown
from densenets.bench.memory import fit_growth
from densenets.bench.reference import check_same_outputs, torchvision_twin
from densenets.models import create_model


def test_torchvision_twin_has_our_weights_and_outputs():
    ours = create_model("densenet_bc16_k4").eval()
    twin = torchvision_twin(ours).eval()
    import torch

    assert check_same_outputs(ours, twin, torch.randn(2, 3, 32, 32)) < 1e-5


def test_growth_fit_tells_linear_from_quadratic():
    depths = [40, 100, 190, 250]
    assert abs(fit_growth(depths, [3.0 * d for d in depths])["loglog_slope"] - 1.0) < 1e-6
    assert abs(fit_growth(depths, [0.5 * d * d for d in depths])["loglog_slope"] - 2.0) < 1e-6
    assert fit_growth(depths, [d * d + 1.0 for d in depths])["quadratic"]["r2"] > 0.999


def test_quick_harness_writes_tables(tmp_path):
    config = BenchConfig(device="cpu", reps=1, rounds=1, sections=("infer",), quick=True, out_dir=str(tmp_path))
    results = run_benchmarks(config)
    rows = results["infer"]
    expected = {"torchvision", "densenets module", "densenets optimize_for_inference"}
    if importlib.util.find_spec("onnxruntime") and importlib.util.find_spec("onnx"):
        expected.add("densenets optimize_for_inference, onnxruntime")
    assert {r["impl"] for r in rows} == expected
    assert all(r["images_per_s"] > 0 and r["ratio_vs_torchvision"] > 0 for r in rows)
    assert [r["ratio_vs_torchvision"] for r in rows if r["impl"] == "torchvision"] == [1.0, 1.0]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["environment"]["matmul_peak_gflops"] > 0
    markdown = (tmp_path / "results.md").read_text()
    assert markdown == to_markdown(results) and "| densenet_bc16_k4 | 4 | 32x32 | torchvision |" in markdown


def test_every_worker_variant_builds_and_runs():
    import pytest

    from densenets.bench.worker import VARIANTS, run

    have_ort = importlib.util.find_spec("onnxruntime") and importlib.util.find_spec("onnx")
    for variant in VARIANTS:
        if variant == "onnxruntime" and not have_ort:
            continue
        for task in ("train", "infer"):
            if variant == "onnxruntime" and task == "train":
                continue
            spec = {"task": task, "model": "densenet_bc16_k4", "batch": 2, "size": 16, "device": "cpu",
                    "variant": variant, "reps": 1, "warmup": 1}  # fmt: skip
            samples = run(spec)["samples_s"]
            assert len(samples) == 1 and samples[0] > 0, (variant, task)
    with pytest.raises(KeyError):
        run({"task": "infer", "model": "densenet_bc16_k4", "batch": 1, "size": 16, "device": "cpu", "variant": "nope",
             "reps": 1})  # fmt: skip
