"""The fine-tuning benchmark (densenets.bench.finetune) runs the engine's step and writes its table."""

import json

from densenets.bench.finetune import main, parse_setting


def test_finetune_bench_runs_on_a_tiny_model(tmp_path, capsys):
    assert parse_setting("512:bf16-me") == {"size": 512, "amp": "bf16", "memory_efficient": True}
    main(["--model", "densenet_bc16_k4", "--settings", "32:fp32,32:bf16-me", "--batch", "2", "--accum", "2",
          "--reps", "1", "--rounds", "1", "--threads", "1", "--out", str(tmp_path)])  # fmt: skip
    results = json.loads((tmp_path / "results.json").read_text())
    rows = results["rows"]
    assert [(r["size"], r["amp"], r["memory_efficient"]) for r in rows] == [(32, "none", False), (32, "bf16", True)]
    assert all(r["seconds_per_step"] > 0 and r["peak_rss_gib"] > 0 for r in rows)
    assert rows[0]["speedup_vs_fp32"]["median"] == 1.0
    assert "| 32x32 | bf16 autocast | yes |" in (tmp_path / "results.md").read_text()
