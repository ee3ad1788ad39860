"""CSV-labelled data, multi-label loss, AUROC and operating points (issue 19, items 3-6)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from densenets.data import DataSpec, build_data
from densenets.data.csv_labels import read_label_csv
from densenets.engine.multilabel import (
    balanced_pos_weight,
    choose_thresholds,
    masked_bce,
    multilabel_metrics,
    one_vs_rest_auroc,
    operating_points,
)
from densenets.errors import DataError

from .pictures import CYCLE, colours_drawn, figure_pixels

CLASSES = ["Atelectasis", "Cardiomegaly", "Edema"]


def write_images(root, names, size=16, grey=False):
    g = np.random.default_rng(0)
    (root / "img").mkdir(parents=True, exist_ok=True)
    for name in names:
        shape = (size, size) if grey else (size, size, 3)
        Image.fromarray(g.integers(0, 255, shape, dtype=np.uint8)).save(root / "img" / name)


def write_chexpert(root, rows=None, header=None, split=True):
    """A CheXpert-style labels.csv: path, one column per finding (1, 0, blank, -1), split."""
    header = header or ["path", *CLASSES, *(["split"] if split else [])]
    rows = rows or [
        ["img/a.png", "1", "0", "", "train"],
        ["img/b.png", "0", "1", "-1", "train"],
        ["img/c.png", "1.0", "", "1", "train"],
        ["img/d.png", "0", "0", "0", "train"],
        ["img/e.png", "1", "1", "0", "val"],
        ["img/f.png", "0", "0", "1", "val"],
        ["img/g.png", "1", "0", "0", "test"],
        ["img/h.png", "0", "1", "1", "test"],
    ]
    if not split:
        rows = [r[:-1] for r in rows]
    write_images(root, [r[0].split("/")[-1] for r in rows if r[0]])
    lines = [",".join(header), *(",".join(r) for r in rows)]
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root / "labels.csv"


def test_chexpert_csv_reads_blanks_and_uncertain_as_masked(tmp_path):
    path = write_chexpert(tmp_path)
    table = read_label_csv(path)
    assert table.multilabel and table.class_names == CLASSES
    t = table.targets
    assert t[0].tolist()[:2] == [1.0, 0.0] and math.isnan(t[0, 2])  # blank: unknown
    assert math.isnan(t[1, 2])  # -1 under "ignore": masked like unknown
    assert t[2, 0] == 1.0  # "1.0" as CheXpert writes it
    assert read_label_csv(path, uncertain="ones").targets[1, 2] == 1.0
    assert read_label_csv(path, uncertain="zeros").targets[1, 2] == 0.0
    bundle = build_data(DataSpec(name="csv", data_dir=str(tmp_path), image_size=16))
    assert bundle.multilabel and bundle.num_classes == 3
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (4, 2, 2)
    assert "splits from the split column: 4 train / 2 val / 2 test" in bundle.notes[0]
    image, target = bundle.test[1]
    assert image.shape == (3, 16, 16) and target.tolist() == [0.0, 1.0, 1.0]


def test_single_label_csv_and_seeded_split(tmp_path):
    rows = [[f"img/{i}.png", "cat" if i % 2 else "dog"] for i in range(10)]
    write_images(tmp_path, [f"{i}.png" for i in range(10)], grey=True)
    (tmp_path / "labels.csv").write_text("path,label\n" + "\n".join(",".join(r) for r in rows) + "\n")
    bundle = build_data(DataSpec(name="csv", data_dir=str(tmp_path), image_size=16))
    assert not bundle.multilabel and bundle.class_names == ["cat", "dog"]
    assert bundle.in_channels == 1  # grey images: one channel, as image folders
    assert (len(bundle.train), len(bundle.test)) == (8, 2)
    assert "seeded split (seed 0) of 10 rows into 8 train / 2 test" in bundle.notes[0]
    assert build_data(DataSpec(name="csv", data_dir=str(tmp_path), image_size=16)).test.rows == bundle.test.rows


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda rows: rows[2].__setitem__(1, "2"), "line 4: Atelectasis is '2'; labels are 1, 0, -1"),
        (lambda rows: rows[3].__setitem__(0, "img/a.png"), "line 5: duplicate path img/a.png (first on line 2)"),
        (lambda rows: rows[1].__setitem__(0, "img/missing.png"), "line 3: image"),
        (lambda rows: rows[5].__setitem__(4, "holdout"), "line 7: split 'holdout' is not one of train, val, test"),
    ],
)
def test_bad_rows_stop_in_one_line_naming_the_row(tmp_path, change, message):
    rows = [
        ["img/a.png", "1", "0", "", "train"],
        ["img/b.png", "0", "1", "-1", "train"],
        ["img/c.png", "1", "", "1", "train"],
        ["img/d.png", "0", "0", "0", "train"],
        ["img/e.png", "1", "1", "0", "val"],
        ["img/f.png", "0", "0", "1", "test"],
    ]
    write_chexpert(tmp_path, rows)
    change(rows)
    text = "path," + ",".join(CLASSES) + ",split\n" + "\n".join(",".join(r) for r in rows) + "\n"
    (tmp_path / "labels.csv").write_text(text)
    with pytest.raises(DataError, match="labels.csv " + message.replace("(", r"\(").replace(")", r"\)")) as info:
        build_data(DataSpec(name="csv", data_dir=str(tmp_path), image_size=16))
    assert "\n" not in str(info.value)


def test_unreadable_image_names_its_row(tmp_path):
    write_chexpert(tmp_path)
    (tmp_path / "img" / "c.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"labels.csv line 4: .*c.png is not a readable image"):
        build_data(DataSpec(name="csv", data_dir=str(tmp_path), image_size=16))


def test_class_without_a_positive_training_label_and_csv_without_path(tmp_path):
    rows = [
        ["img/a.png", "1", "0", "", "train"],
        ["img/b.png", "0", "1", "-1", "train"],  # Edema's only training positive is uncertain
        ["img/c.png", "0", "0", "1", "test"],
    ]
    write_chexpert(tmp_path, rows)
    with pytest.raises(DataError, match="class\\(es\\) Edema have no positive label in the training split"):
        build_data(DataSpec(name="csv", data_dir=str(tmp_path), image_size=16))
    build_data(DataSpec(name="csv", data_dir=str(tmp_path), image_size=16, uncertain="ones"))  # -1 -> 1: fine
    (tmp_path / "labels.csv").write_text("file,Edema\nimg/a.png,1\n")
    with pytest.raises(DataError, match="no 'path' column \\(the header is file, Edema\\)"):
        read_label_csv(tmp_path / "labels.csv")


def test_masked_loss_equals_hand_computed_bce():
    logits = torch.tensor([[2.0, -1.0, 0.5], [-0.5, 1.5, -2.0]])
    targets = torch.tensor([[1.0, math.nan, 0.0], [0.0, 1.0, math.nan]])

    def bce(x, y, w=1.0):  # -[w y log s(x) + (1 - y) log(1 - s(x))]
        s = 1 / (1 + math.exp(-x))
        return -(w * y * math.log(s) + (1 - y) * math.log(1 - s))

    known = [(0, 0), (0, 2), (1, 0), (1, 1)]
    expected = sum(bce(logits[i, j].item(), targets[i, j].item()) for i, j in known) / 4
    assert masked_bce(logits, targets).item() == pytest.approx(expected, rel=1e-6)
    pos_weight = torch.tensor([3.0, 2.0, 1.0])
    expected_w = sum(bce(logits[i, j].item(), targets[i, j].item(), pos_weight[j].item()) for i, j in known) / 4
    assert masked_bce(logits, targets, pos_weight).item() == pytest.approx(expected_w, rel=1e-6)
    # the unknown cells get no gradient
    x = logits.clone().requires_grad_()
    masked_bce(x, targets).backward()
    assert x.grad[0, 1] == 0 and x.grad[1, 2] == 0 and x.grad[0, 0] != 0
    assert balanced_pos_weight(torch.tensor([[1.0, 0], [0, 0], [0, math.nan], [math.nan, 1]])).tolist() == [2.0, 2.0]


def test_auroc_equals_sklearn_on_known_scores():
    from sklearn.metrics import average_precision_score, roc_auc_score

    probs = np.array([[0.9, 0.2], [0.4, 0.8], [0.6, 0.3], [0.1, 0.7], [0.3, 0.9]])
    targets = np.array([[1, 0], [0, 1], [1, np.nan], [0, 1], [1, 0]], dtype=float)
    m = multilabel_metrics(probs, targets)
    assert m["auroc"][0] == pytest.approx(roc_auc_score([1, 0, 1, 0, 1], probs[:, 0]))
    assert m["auroc"][1] == pytest.approx(roc_auc_score([0, 1, 1, 0], probs[[0, 1, 3, 4], 1]))  # NaN row left out
    assert m["average_precision"][0] == pytest.approx(average_precision_score([1, 0, 1, 0, 1], probs[:, 0]))
    assert m["auroc_macro"] == pytest.approx(sum(m["auroc"]) / 2)
    known = ~np.isnan(targets)
    assert m["auroc_micro"] == pytest.approx(roc_auc_score(targets[known], probs[known]))
    assert m["auroc"][0] == pytest.approx(5 / 6)  # 5 of the 6 (positive, negative) pairs ranked right
    # a class with one label value only has no AUROC, and is left out of the macro mean
    one_sided = multilabel_metrics(probs, np.array([[1, 0], [0, 0], [1, 0], [0, 0], [1, 0]], dtype=float))
    assert math.isnan(one_sided["auroc"][1]) and one_sided["auroc_macro"] == pytest.approx(5 / 6)


def test_single_label_auroc_is_sklearns_one_vs_rest_macro():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    probs = torch.tensor(rng.normal(size=(60, 4))).softmax(1).numpy()
    targets = np.arange(60) % 4
    m = one_vs_rest_auroc(probs, targets)
    assert m["auroc_macro"] == pytest.approx(roc_auc_score(targets, probs, multi_class="ovr", average="macro"))
    assert m["auroc"][2] == pytest.approx(roc_auc_score(targets == 2, probs[:, 2])) and m["auroc_classes"] == 4
    # a class absent from the targets has no AUROC and stays out of the mean
    absent = one_vs_rest_auroc(probs, np.where(targets == 3, 0, targets))
    assert math.isnan(absent["auroc"][3]) and absent["auroc_classes"] == 3
    assert absent["auroc_macro"] == pytest.approx(np.mean(absent["auroc"][:3]))


def test_thresholds_on_a_crafted_case():
    # positives at 0.9, 0.8, 0.3; negatives at 0.5, 0.4 and ten at 0.1
    probs = np.array([[0.9], [0.8], [0.3], [0.5], [0.4], *[[0.1]] * 10])
    targets = np.array([[1], [1], [1], [0], [0], *[[0]] * 10], dtype=float)
    # F1 (TN do not count): >= 0.8: TP 2, FP 0, FN 1 -> 4/5; >= 0.3: TP 3, FP 2 -> 6/8
    assert choose_thresholds(probs, targets, "f1") == [pytest.approx(0.8)]
    # Youden (sensitivity + specificity - 1): >= 0.8: 2/3 + 1 - 1; >= 0.3: 1 + 10/12 - 1 (the best)
    assert choose_thresholds(probs, targets, "youden") == [pytest.approx(0.3)]
    points = operating_points(probs, targets, [0.3])
    assert points["sensitivity"] == [1.0] and points["specificity"] == [pytest.approx(10 / 12)]
    assert points["f1"] == [pytest.approx(6 / 8)] and points["precision"] == [pytest.approx(3 / 5)]
    # no both-label class: the default 0.5
    assert choose_thresholds(probs, np.ones_like(targets), "f1") == [0.5]


def _strict_json(text: str):
    """json.loads that refuses NaN and Infinity (not JSON; json.dumps writes them by default)."""

    def refuse(name):
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_undefined_auroc_is_null_in_metrics_json_and_left_out_of_the_means(tmp_path):
    from densenets.engine.evaluation import multilabel_evaluation

    probs = np.array([[0.9, 0.2, 0.7], [0.4, 0.8, 0.6], [0.6, 0.3, 0.1], [0.1, 0.7, 0.9]])
    targets = np.array([[1, 1, 0], [0, 1, 1], [1, 1, 0], [0, math.nan, 1]])  # class B: no negative
    metrics = {**multilabel_metrics(probs, targets), "probs": probs, "targets": targets, "count": 4, "loss": 0.5}
    head = {"data": "csv", "checkpoint": "best.pt"}
    result = multilabel_evaluation(head, metrics, ["A", "B", "C"], {"thresholds": [0.5, 0.5, 0.5]}, tmp_path)
    saved = _strict_json((tmp_path / "metrics.json").read_text())
    assert saved["auroc"] == {"A": 1.0, "B": None, "C": 0.75} and saved["auroc_macro"] == 0.875  # (1 + 0.75) / 2
    assert saved["average_precision"]["B"] is None and saved["known_labels"] == {"A": 4, "B": 3, "C": 4}
    assert saved == _strict_json(json.dumps(result))
    per_class = (tmp_path / "per_class.csv").read_text().splitlines()
    assert per_class[2].startswith("B,,")  # an empty cell, not "nan"
    # every class undefined: null for the means too, and the ROC figure draws no curve
    one_sided = np.ones_like(targets)
    metrics = {**multilabel_metrics(probs, one_sided), "probs": probs, "targets": one_sided, "count": 4, "loss": 0.5}
    multilabel_evaluation(head, metrics, ["A", "B", "C"], {}, tmp_path / "none")
    saved = _strict_json((tmp_path / "none" / "metrics.json").read_text())
    assert saved["auroc_macro"] is None and saved["auroc_micro"] is None and set(saved["auroc"].values()) == {None}
    assert colours_drawn(figure_pixels(tmp_path / "none" / "roc.png", (6.4, 5.6)), CYCLE) == []


def test_multilabel_accumulation_gives_the_same_step_as_one_batch():
    """Chunks weigh by their known cells, so a masked batch steps the same with or without accumulation."""
    import copy

    from densenets.engine.loop import TrainState, train_step
    from densenets.engine.recipes import Recipe
    from densenets.engine.runtime import make_runtime
    from densenets.models import create_model

    model = create_model("densenet_bc16_k4", num_classes=3).eval()
    x = torch.randn(8, 3, 8, 8)
    y = torch.randint(0, 2, (8, 3)).float()
    y[:4, 0] = math.nan  # the first chunk has fewer known cells than the second
    y[1, 2] = math.nan
    runtime = make_runtime(Recipe(device="cpu"))
    results = []
    for accum in (1, 2):
        m = copy.deepcopy(model)
        state = TrainState(m, torch.optim.SGD(m.parameters(), lr=0.1))
        loss, _ = train_step(state, x, y, runtime, 0.1, accum_steps=accum, pos_weight=torch.tensor([1.0, 2.0, 3.0]))
        results.append((loss, [p.detach().clone() for p in m.parameters()]))
    torch.testing.assert_close(results[1][0], results[0][0])
    for a, b in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


def write_chexpert_run_data(root, n_train=16, n_val=8, n_test=8, split=True):
    """Images whose labels the pixels tell (class c present: channel c bright in the top half), a
    CheXpert-style CSV with blanks and -1 in the training rows."""
    g = np.random.default_rng(1)
    (root / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, part in enumerate(["train"] * n_train + ["val"] * n_val + ["test"] * n_test):
        labels = [(i >> c) & 1 for c in range(3)]  # 8 rows in a row: every combination, both values per class
        pixels = g.integers(0, 60, (16, 16, 3), dtype=np.uint8)
        for c, v in enumerate(labels):
            if v:
                pixels[:8, :, c] = 220
        Image.fromarray(pixels).save(root / "img" / f"{i:03d}.png")
        cells = [str(v) for v in labels]
        if part == "train" and i % 5 == 1:
            cells[0] = ""  # unknown
        if part == "train" and i % 7 == 2 and cells[1] == "1":
            cells[1] = "-1"  # uncertain
        rows.append([f"img/{i:03d}.png", *cells, *([part] if split else [])])
    header = ["path", *CLASSES, *(["split"] if split else [])]
    (root / "labels.csv").write_text("\n".join(",".join(r) for r in [header, *rows]) + "\n")


def test_chexpert_style_csv_trains_evaluates_and_predicts_via_the_cli(tmp_path, capsys):
    from densenets.cli.main import main

    data, run = tmp_path / "data", tmp_path / "run"
    write_chexpert_run_data(data)
    args = ["train", "--data", "csv", "--data-dir", str(data), "--model", "densenet_bc16_k4", "--image-size", "16",
            "--epochs", "2", "--batch-size", "8", "--lr", "0.05", "--pos-weight", "balanced", "--run-dir", str(run),
            "--no-progress"]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "multi-label, 3 classes" in out and "macro AUROC" in out
    assert " err " not in out and "error" not in out.split("run folder")[1]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"test_auroc", "val_auroc", "test_auroc_per_class", "test_ap_per_class", "thresholds"} <= set(records[-1])
    assert "test_error" not in records[-1]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["final_test_auroc"] == pytest.approx(records[-1]["test_auroc"])
    ckpt = torch.load(run / "best.pt", weights_only=True)
    pre = ckpt["config"]["data"]["preprocess"]
    assert pre["multilabel"] is True and pre["class_names"] == CLASSES and len(pre["thresholds"]) == 3

    assert main(["eval", str(run), "--out", str(tmp_path / "eval")]) == 0
    out = capsys.readouterr().out
    assert "best.pt" in out and "macro AUROC" in out and "Cardiomegaly" in out
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert {"auroc_macro", "auroc_micro", "auroc", "average_precision", "thresholds"} <= set(metrics)
    assert set(metrics["auroc"]) == set(CLASSES)
    best = max(records, key=lambda r: r["val_auroc"])  # best.pt: the highest validation AUROC
    assert metrics["auroc_macro"] == pytest.approx(best["test_auroc"], abs=1e-6)
    assert list(metrics["thresholds"].values()) == pytest.approx(pre["thresholds"])
    roc = figure_pixels(tmp_path / "eval" / "roc.png", (6.4, 5.6))
    assert colours_drawn(roc, CYCLE) == CYCLE[:3]  # one ROC curve per class, each class with both labels

    csv_out = tmp_path / "pred.csv"
    assert main(["predict", str(run), str(data / "img" / "030.png"), str(data / "img"), "--csv", str(csv_out)]) == 0
    lines = csv_out.read_text().splitlines()
    assert lines[0] == "file," + ",".join(CLASSES) + ",positives,error"
    assert len(lines) == 1 + 1 + 32

    assert main(["plot", str(run), "--out", str(tmp_path / "plots")]) == 0
    curves = figure_pixels(tmp_path / "plots" / "auroc_curves.png", (10, 4.2))
    assert colours_drawn(curves, CYCLE) == CYCLE[:1]  # the one run's AUROC and loss curves
    assert not (tmp_path / "plots" / "error_curves.png").exists()
    capsys.readouterr()
    assert main(["report", str(run)]) == 0
    assert f"densenet_bc16_k4 on csv: macro AUROC {best['test_auroc']:.3f}" in capsys.readouterr().out


def test_without_a_validation_split_thresholds_are_half_and_the_output_says_so(tmp_path, capsys):
    from densenets.cli.main import main

    data, run = tmp_path / "data", tmp_path / "run"
    write_chexpert_run_data(data, n_train=24, n_val=0, n_test=0, split=False)
    args = ["train", "--data", "csv", "--data-dir", str(data), "--model", "densenet_bc16_k4", "--image-size", "16",
            "--epochs", "1", "--batch-size", "8", "--run-dir", str(run), "--no-progress"]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "seeded split (seed 0) of 24 rows into 19 train / 5 test" in out
    assert "thresholds 0.5" in out
    assert main(["predict", str(run), str(data / "img" / "001.png")]) == 0
    assert "0.5 for every class" in capsys.readouterr().out
