"""Multi-label edges and the one best-epoch rule (issue 26, items 2 and 4)."""

from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image

from densenets.cli.main import main

CLASSES = ["Atelectasis", "Cardiomegaly", "Edema"]
TINY = ["--model", "densenet_bc16_k4", "--image-size", "16", "--batch-size", "8", "--no-progress"]


def strict_json(text: str):
    """``json.loads`` that refuses NaN and Infinity, as any strict JSON reader does."""

    def refuse(name):
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def write_csv_data(root, parts: dict[str, list[list[str]]]):
    """labels.csv (path, one column per class, split) and 16 px images whose labels the pixels tell
    (class c positive: channel c bright in the top half). ``parts``: split -> rows of label cells."""
    g = np.random.default_rng(1)
    (root / "img").mkdir(parents=True, exist_ok=True)
    lines = [",".join(["path", *CLASSES, "split"])]
    i = 0
    for split, rows in parts.items():
        for cells in rows:
            pixels = g.integers(0, 60, (16, 16, 3), dtype=np.uint8)
            for c, cell in enumerate(cells):
                if cell in ("1", "-1"):
                    pixels[:8, :, c] = 220
            Image.fromarray(pixels).save(root / "img" / f"{i:03d}.png")
            lines.append(",".join([f"img/{i:03d}.png", *cells, split]))
            i += 1
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root


def every_combination(n: int) -> list[list[str]]:
    return [[str((i >> c) & 1) for c in range(3)] for i in range(n)]


def train(data, run, *extra, epochs=2):
    args = ["train", "--data", "csv", "--data-dir", str(data), *TINY, "--epochs", str(epochs), "--lr", "0.05"]
    return main([*args, "--run-dir", str(run), *extra])


# --- item 2: one rule for the best epoch; strict JSON ----------------------------------------


def test_validation_that_cannot_rank_epochs_ends_cleanly_and_final_epoch_is_the_result(tmp_path, capsys):
    # every validation row has the same labels: no class has both values, AUROC undefined every epoch
    data = write_csv_data(tmp_path / "data", {"train": every_combination(16), "val": [["0", "1", "0"]] * 4,
                                              "test": every_combination(8)})  # fmt: skip
    run = tmp_path / "run"
    assert train(data, run, epochs=3) == 0
    out = capsys.readouterr().out
    assert "validation cannot rank epochs: validation macro AUROC undefined in every epoch" in out
    summary = strict_json((run / "summary.json").read_text())
    assert summary["best"]["epoch"] == 3 and summary["best"]["selected_on"] == "final"
    assert summary["reported"]["epoch"] == 3 and summary["reported"]["rule"] == "final epoch"
    records = [strict_json(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["val_auroc"] for r in records] == [None, None, None]
    best = torch.load(run / "best.pt", weights_only=True)
    assert best["epoch"] == 3  # the final epoch, as the summary says
    assert main(["eval", str(run), "--out", str(tmp_path / "eval")]) == 0
    assert "best.pt: the final epoch (validation cannot rank epochs" in capsys.readouterr().out
    strict_json((tmp_path / "eval" / "metrics.json").read_text())
    assert main(["plot", str(run), "--out", str(tmp_path / "plots")]) == 0
    assert main(["report", str(run)]) == 0
    assert f"densenet_bc16_k4 on csv: macro AUROC {records[-1]['test_auroc']:.3f}" in capsys.readouterr().out


def test_best_epoch_rule_is_one_for_checkpoint_summary_and_report():
    from densenets.engine.loop import TrainState
    from densenets.engine.reporting import select_best
    from densenets.engine.runlog import reported_result

    records = [
        {"epoch": 1, "test_auroc": 0.6, "val_auroc": None},
        {"epoch": 2, "test_auroc": 0.7, "val_auroc": 0.8},
        {"epoch": 3, "test_auroc": 0.9, "val_auroc": float("nan")},
        {"epoch": 4, "test_auroc": 0.5, "val_auroc": 0.8},  # a tie: the earlier epoch stays
    ]
    state = TrainState(model=torch.nn.Linear(1, 1), optimizer=None)
    chosen = []
    for record in records:
        state.epoch = record["epoch"]
        chosen.append(select_best(state, record))
    assert chosen == [True, True, False, False]
    assert state.best["epoch"] == reported_result(records)["epoch"] == 2


def test_run_log_and_summary_files_are_strict_json(tmp_path):
    from densenets.engine.runlog import RunLog, write_json

    log = RunLog(tmp_path, enabled=True)
    log.epoch({"epoch": 1, "step": 1, "val_auroc": float("nan"), "best": -float("inf")})
    log.close()
    write_json(tmp_path / "summary.json", {"auroc": float("inf"), "per_class": [float("nan"), 0.5]})
    assert strict_json((tmp_path / "metrics.jsonl").read_text()) == {"epoch": 1, "step": 1, "val_auroc": None,
                                                                      "best": None}  # fmt: skip
    assert strict_json((tmp_path / "summary.json").read_text()) == {"auroc": None, "per_class": [None, 0.5]}
