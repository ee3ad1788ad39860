"""The fine-tuning benchmark (densenets.bench.finetune): its probe times the engine's step, its table
pairs each setting with the fp32 setting of the same size, round by round."""

import json
from argparse import Namespace

import pytest
import torch

from densenets.bench import finetune
from densenets.bench.finetune import main, parse_setting, probe


def test_probe_times_only_the_steps_after_the_warm_up(monkeypatch):
    steps = []
    real_step = torch.optim.SGD.step

    def counted_step(self, *args, **kwargs):
        steps.append(1)
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", counted_step)
    ticks = iter([10.0, 10.5, 20.0, 22.0, 30.0, 30.25])  # the timed steps take 0.5, 2 and 0.25 s
    result = probe(16, batch=2, accum=2, amp="none", memory_efficient=False, reps=3, model="densenet_bc16_k4",
                   warmup=2, clock=lambda: next(ticks))  # fmt: skip
    assert result["times"] == [0.5, 2.0, 0.25] and result["seconds"] == 0.5  # the median of the timed steps
    assert len(steps) == 2 + 3  # two warm-up steps, untimed, then three timed (one optimiser step each)
    assert result["peak_rss_bytes"] >= result["step_bytes"]


def fake_probe(seconds: dict):
    """A probe returning the given seconds per (size, amp, memory_efficient) and round."""
    calls = {}

    def run_probe(spec):
        key = (spec["size"], spec["amp"], spec["memory_efficient"])
        n = calls[key] = calls.get(key, -1) + 1
        return {"seconds": seconds[key][n], "times": [seconds[key][n]], "peak_rss_bytes": (n + 1) * 2**30,
                "step_bytes": 2**29, "peak_reset": True, "channels_last": True}  # fmt: skip

    return run_probe


def test_speedups_pair_each_setting_with_fp32_at_its_size_round_by_round(monkeypatch):
    seconds = {
        (32, "none", False): [2.0, 4.0, 3.0],
        (32, "bf16", True): [1.0, 1.0, 3.0],  # per-round ratios 2, 4, 1
        (64, "none", False): [8.0, 8.0, 8.0],
        (64, "bf16", False): [2.0, 4.0, 8.0],  # 4, 2, 1
        (96, "bf16", False): [1.0, 1.0, 1.0],  # no fp32 at 96 px
    }
    monkeypatch.setattr(finetune, "run_probe", fake_probe(seconds))
    args = Namespace(settings="32:fp32,32:bf16-me,64:fp32,64:bf16,96:bf16", batch=4, accum=2, reps=1, rounds=3,
                     model="densenet_bc16_k4", warmup=1, threads=1)  # fmt: skip
    rows = finetune.run(args)["rows"]
    assert [r["speedup_vs_fp32"] for r in rows] == [
        {"median": 1.0, "min": 1.0, "max": 1.0},
        {"median": 2.0, "min": 1.0, "max": 4.0},
        {"median": 1.0, "min": 1.0, "max": 1.0},
        {"median": 2.0, "min": 1.0, "max": 4.0},
        None,  # not a ratio against itself
    ]
    assert [r["seconds_per_step"] for r in rows] == [3.0, 1.0, 8.0, 4.0, 1.0]  # medians over rounds
    assert [r["images_per_s"] for r in rows] == [4 / 3, 4.0, 0.5, 1.0, 4.0]
    assert [r["peak_rss_gib"] for r in rows] == [3.0] * 5  # the largest round's peak
    table = finetune.to_markdown({"config": {**vars(args)}, "environment": {"cpu": "x", "cores": 2, "threads": 1,
                                                                            "torch": "t"}, "rows": rows})  # fmt: skip
    lines = table.splitlines()
    assert "| 32x32 | bf16 autocast | yes | 1.00 | 4.00 | 2.00x (1.00-4.00) | 3.00 | 0.50 |" in lines
    assert "| 96x96 | bf16 autocast | no | 1.00 | 4.00 | no fp32 row timed | 3.00 | 0.50 |" in lines


def test_finetune_bench_runs_its_probes_and_writes_its_table(tmp_path):
    assert parse_setting("512:bf16-me") == {"size": 512, "amp": "bf16", "memory_efficient": True}
    with pytest.raises(SystemExit, match="expected SIZE:fp32"):
        parse_setting("512:fp16")
    main(["--model", "densenet_bc16_k4", "--settings", "32:fp32,32:bf16-me", "--batch", "2", "--accum", "2",
          "--reps", "2", "--rounds", "1", "--threads", "1", "--out", str(tmp_path)])  # fmt: skip
    results = json.loads((tmp_path / "results.json").read_text())
    rows = results["rows"]
    assert [(r["size"], r["amp"], r["memory_efficient"]) for r in rows] == [(32, "none", False), (32, "bf16", True)]
    assert all(len(r["rounds"]) == 1 and len(r["rounds"][0]["times"]) == 2 for r in rows)  # one probe of two steps
    assert results["environment"]["threads"] == 1
    assert "| 32x32 | bf16 autocast | yes |" in (tmp_path / "results.md").read_text()
