"""Multi-label edges and the one best-epoch rule (issue 26, items 2 and 4)."""

from __future__ import annotations

import json

import numpy as np
import pytest
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


# --- item 4: multi-label edges -------------------------------------------------------------


def test_uncertain_labels_are_mapped_in_training_rows_only(tmp_path):
    from densenets.data import DataSpec, build_data

    parts = {"train": [["-1", "0", "1"], *every_combination(8)], "val": [["-1", "1", "0"], ["0", "0", "1"]]}
    data = write_csv_data(tmp_path, {**parts, "test": [["1", "-1", "0"]]})
    bundle = build_data(DataSpec(name="csv", data_dir=str(data), image_size=16, uncertain="ones"))
    assert bundle.train[0][1].tolist() == [1.0, 0.0, 1.0]  # training row: -1 read as positive
    assert torch.isnan(bundle.val[0][1][0]) and torch.isnan(bundle.test[0][1][1])  # elsewhere unknown
    assert "ones (positive in training rows only; validation and test rows keep them unknown" in bundle.notes[0]


def test_multilabel_run_says_smoothing_thresholds_per_class_class_count_and_one_sided_classes(tmp_path, capsys):
    # Edema: positive in every training row (no negatives), no positive in validation
    train_rows = [[a, b, "1"] for a, b, _ in every_combination(16)]
    val_rows = [["1", "0", "0"], ["0", "1", "0"], ["-1", "0", "0"], ["0", "0", "0"]]
    data = write_csv_data(tmp_path / "data", {"train": train_rows, "val": val_rows, "test": every_combination(8)})
    run = tmp_path / "run"
    extra = ["--label-smoothing", "0.1", "--pos-weight", "balanced", "--uncertain", "zeros"]
    assert train(data, run, *extra, epochs=1) == 0
    out = capsys.readouterr().out
    assert "label smoothing 0.1 on multi-label targets, as asked" in out
    assert "train loss (smoothed 0.1, not comparable with test)" in out
    assert "warning: class(es) Edema (no negative) have one label value in the training split" in out
    assert "Edema 1.00" in out  # its pos_weight: 1, not 0
    assert "val macro AUROC" in out and "over 2 of 3 classes" in out
    summary = strict_json((run / "summary.json").read_text())
    assert summary["threshold_sources"] == {"Atelectasis": "max F1 on validation",
                                            "Cardiomegaly": "max F1 on validation",
                                            "Edema": "0.5: class Edema has no positives in validation"}  # fmt: skip
    assert summary["thresholds"][2] == 0.5 and "0.5 for Edema: not both label values" in summary["threshold_source"]
    assert summary["final_test_auroc_classes"] == 3
    assert main(["eval", str(run), "--out", str(tmp_path / "eval")]) == 0
    out = capsys.readouterr().out
    assert "over 3 of 3 classes" in out and "Edema: 0.5: class Edema has no positives in validation" in out
    metrics = strict_json((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["auroc_classes"] == 3 and metrics["threshold_sources"] == summary["threshold_sources"]


def test_finetune_recipe_leaves_multilabel_targets_unsmoothed_unless_asked():
    from dataclasses import replace

    from densenets.engine.recipes import base_recipe, resolve_label_smoothing

    finetune = base_recipe("finetune", data="csv")
    multi, note = resolve_label_smoothing(finetune, multilabel=True)
    assert multi.label_smoothing == 0.0 and "none on multi-label targets" in note
    assert resolve_label_smoothing(finetune, multilabel=False)[0].label_smoothing == 0.1
    asked, note = resolve_label_smoothing(replace(finetune, label_smoothing=0.1), multilabel=True)
    assert asked.label_smoothing == 0.1 and "as asked" in note


def test_a_class_without_negatives_keeps_a_positive_weight():
    from densenets.engine.multilabel import balanced_pos_weight

    targets = torch.tensor([[1.0, 1.0], [0.0, 1.0], [0.0, 1.0], [float("nan"), 1.0]])
    assert balanced_pos_weight(targets).tolist() == [2.0, 1.0]  # was 0 for the second class


def test_thresholds_that_are_not_one_per_class_stop_in_one_line():
    from densenets.engine.evaluation import multilabel_evaluation
    from densenets.engine.multilabel import multilabel_metrics
    from densenets.errors import CheckpointError

    probs, targets = np.array([[0.2, 0.7, 0.4], [0.8, 0.1, 0.6]]), np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 1.0]])
    metrics = {**multilabel_metrics(probs, targets), "count": 2, "loss": 0.5, "probs": probs, "targets": targets}
    with pytest.raises(CheckpointError, match="carries 2 thresholds for its 3 classes"):
        multilabel_evaluation({}, metrics, CLASSES, {"thresholds": [0.2, 0.3]}, None)


def test_eval_in_bf16_counts_changed_validation_decisions_and_rechooses_thresholds(tmp_path, capsys):
    data = write_csv_data(tmp_path / "data", {"train": every_combination(16), "val": every_combination(8),
                                              "test": every_combination(8)})  # fmt: skip
    run = tmp_path / "run"
    assert train(data, run, epochs=1) == 0
    capsys.readouterr()
    out_dir = tmp_path / "eval"
    assert main(["eval", str(run), "--precision", "bf16", "--backend", "torch", "--out", str(out_dir)]) == 0
    out = capsys.readouterr().out
    metrics = strict_json((out_dir / "metrics.json").read_text())
    assert metrics["precision"] == "bf16"  # the numeric precision, not overwritten by per-class PPV
    assert set(metrics["ppv"]) == set(CLASSES)
    assert metrics["precision_val_images"] == 8
    changed = metrics["precision_positives_changed"]
    assert f"bf16: at the saved thresholds (chosen on fp32 outputs) {changed} validation decisions change" in out
    assert set(metrics["precision_thresholds"]) == set(CLASSES)
    assert "re-chosen on the validation split for bf16" in out
    # predict at bf16 says the same of the run's own validation split (it rebuilds the split)
    image = sorted(data.rglob("*.png"))[0]
    assert main(["predict", str(run), str(image), "--precision", "bf16", "--backend", "torch"]) == 0
    out = capsys.readouterr().out
    assert f"bf16: at the saved thresholds (chosen on fp32 outputs) {changed} validation decisions change" in out
    assert "predict uses the saved ones" in out
