"""``densenets eval RUN`` scores the run's own test rows, for every kind of data and seed.

Each case trains a tiny run (1 epoch) through the CLI, then checks that eval of the run folder,
and of its exported model, reads exactly the run's test rows (compared by file path, or by the
pixels for in-memory sets), none of them a training or validation row, and reports the run's
final test figure and loss; and that ``--calibration auto`` reads only the run's training rows.
A flat folder or a CSV without a split column is split by the run's seed: seed 7 is where an
eval that rebuilt the data with seed 0 scored rows the run had trained on.
"""

import json

import pytest
from PIL import Image
from torch.utils.data import DataLoader, Subset

from densenets.cli import main
from densenets.data import build_data
from densenets.data.csv_labels import CsvImageDataset
from densenets.data.determinism import EpochSeededDataset
from densenets.data.recorded import recorded_spec
from densenets.deploy.precision import auto_calibration_set
from densenets.engine import build_run, evaluation
from densenets.engine.loading import load_model
from densenets.errors import ConfigError

from .fakedata import class_images, write_cifar10, write_image_folder
from .test_multilabel import write_chexpert_run_data

KINDS = [
    "flat-folder", "split-folders", "csv", "csv-split", "csv-multilabel", "csv-multilabel-split", "digits", "cifar10",
]  # fmt: skip


def write_labels_csv(root, n=30, classes=3, split=False):
    """Coloured images in root/img and a single-label labels.csv (with a train/val/test column when ``split``)."""
    images, labels = class_images(n, classes, size=16)
    (root / "img").mkdir(parents=True)
    rows = ["path,label" + (",split" if split else "")]
    for i, (pixels, label) in enumerate(zip(images, labels, strict=True)):
        Image.fromarray(pixels).save(root / "img" / f"{i:03d}.png")
        part = ("train", "train", "train", "val", "test")[i % 5]
        rows.append(f"img/{i:03d}.png,c{label}" + (f",{part}" if split else ""))
    (root / "labels.csv").write_text("\n".join(rows) + "\n")


def make_data(kind: str, root) -> list[str]:
    """Write the kind's files under ``root``; the train options that read them."""
    if kind == "digits":
        return ["--data", "digits", "--image-size", "8", "--val-split", "100"]
    if kind == "cifar10":
        write_cifar10(root, n_train=40, n_test=20)
        return ["--data", "cifar10", "--data-dir", str(root), "--val-split", "8"]
    if kind in ("flat-folder", "split-folders"):
        write_image_folder(root, classes=3, per_class=10, size=16, split=kind == "split-folders")
        return ["--data", "imagefolder", "--data-dir", str(root), "--val-split", "4"]
    if kind in ("csv", "csv-split"):
        write_labels_csv(root, split=kind == "csv-split")
        return ["--data", "csv", "--data-dir", str(root)] + (["--val-split", "4"] if kind == "csv" else [])
    if kind == "csv-multilabel":
        write_chexpert_run_data(root, n_train=40, n_val=0, n_test=0, split=False)
        return ["--data", "csv", "--data-dir", str(root), "--val-split", "8"]
    write_chexpert_run_data(root, n_train=16, n_val=8, n_test=8)  # csv-multilabel-split: val rows in the CSV
    return ["--data", "csv", "--data-dir", str(root)]


def row_ids(dataset) -> list:
    """What each row of ``dataset`` is, whatever wraps it: the image's path, or its pixels and label."""
    indices = None
    while isinstance(dataset, (Subset, EpochSeededDataset)):
        if isinstance(dataset, Subset):
            inner = list(dataset.indices)
            indices = inner if indices is None else [inner[i] for i in indices]
        dataset = dataset.dataset
    indices = range(len(dataset)) if indices is None else indices
    if isinstance(dataset, CsvImageDataset):
        return [str(dataset.table.paths[dataset.rows[i]]) for i in indices]
    if hasattr(dataset, "samples"):  # torchvision's ImageFolder
        return [dataset.samples[i][0] for i in indices]
    if hasattr(dataset, "images"):  # the digits, in memory
        return [(dataset.images[i].numpy().tobytes(), int(dataset.labels[i])) for i in indices]
    return [(dataset.data[i].tobytes(), int(dataset.targets[i])) for i in indices]  # CIFAR's arrays


def same_figure(got, expected) -> bool:
    """Equal to float rounding; an AUROC that no class defines is None (JSON) or NaN on both sides."""
    if got is None or expected is None or got != got or expected != expected:
        return (got is None or got != got) and (expected is None or expected != expected)
    return got == pytest.approx(expected, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("seed", [0, 7])
@pytest.mark.parametrize("kind", KINDS)
def test_eval_of_a_run_scores_the_run_s_own_test_rows(kind, seed, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    built, evaluated = [], []
    monkeypatch.setattr(build_run, "build_data", lambda spec: built.append(build_data(spec)) or built[-1])
    monkeypatch.setattr(evaluation, "DataLoader", lambda data, **kw: evaluated.append(data) or DataLoader(data, **kw))
    args = ["train", *make_data(kind, tmp_path / "data"), "--model", "densenet_bc16_k4", "--epochs", "1",
            "--batch-size", "16", "--workers", "0", "--seed", str(seed), "--run-dir", str(run),
            "--no-progress"]  # fmt: skip
    if kind in ("flat-folder", "split-folders", "csv", "csv-split"):
        args += ["--image-size", "16"]
    assert main(args) == 0, capsys.readouterr().err
    (data,) = built
    train_rows, test_rows = row_ids(data.train), row_ids(data.test)
    seen = set(train_rows) | set(row_ids(data.val) if data.val is not None else [])
    summary = json.loads((run / "summary.json").read_text())
    last = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
    key = "auroc_macro" if data.multilabel else "error"
    final = summary["final_test_auroc"] if data.multilabel else summary["final_test_error"]

    exported = tmp_path / "model.safetensors"
    assert main(["export", str(run), "--format", "safetensors", "--out", str(exported)]) == 0
    for source in (run, exported.with_suffix(".json")):  # the run folder, and the exported model
        assert main(["eval", str(source), "--out", str(tmp_path / f"eval-{source.name}")]) == 0
        metrics = json.loads((tmp_path / f"eval-{source.name}" / "metrics.json").read_text())
        rows = row_ids(evaluated.pop())
        assert rows == test_rows, f"{source.name}: eval read other rows than the run's test rows"
        assert not set(rows) & seen, f"{source.name}: eval scored rows the run trained or validated on"
        assert same_figure(metrics[key], final), (source.name, metrics[key], final)
        assert same_figure(metrics["loss"], last["test_loss"]), (source.name, metrics["loss"], last["test_loss"])

    for source in (run, exported.with_suffix(".json")):
        calibration = set(row_ids(auto_calibration_set(load_model(source))))
        assert calibration and calibration <= set(train_rows), f"{source}: calibration outside the training rows"


PREPROCESS = {"mean": [0.5], "std": [0.25], "resize": 16, "crop": 16, "channels": 1}


def test_another_data_dir_keeps_the_run_s_split_and_reads_its_own_labels_csv():
    config = {"recipe": {"data": "csv", "data_dir": "run-data", "seed": 7, "val_split": 4, "labels": "a.csv",
                         "uncertain": "ones"}, "data": {"augment": "crop"}}  # fmt: skip
    spec, notes = recorded_spec(config, PREPROCESS)
    assert (spec.seed, spec.val_split, spec.labels, spec.uncertain, spec.augment) == (7, 4, "a.csv", "ones", "crop")
    assert (spec.image_size, spec.channels, spec.mean, spec.std) == (16, 1, (0.5,), (0.25,)) and not notes
    other, _ = recorded_spec(config, PREPROCESS, data_dir="elsewhere")
    assert (other.data_dir, other.seed, other.val_split, other.labels) == ("elsewhere", 7, 4, None)
    assert recorded_spec(config, PREPROCESS, data_dir="run-data")[0].labels == "a.csv"  # the run's own folder


def test_a_record_without_the_seed_is_read_with_the_defaults_and_says_so():
    old_export = {"recipe": {"data": "imagefolder", "data_dir": "folder"}}  # what exports wrote before the record
    spec, notes = recorded_spec(old_export, PREPROCESS)
    assert (spec.seed, spec.val_split) == (0, 0)
    assert notes == [
        "the model does not record its run's seed, val_split: imagefolder read with seed 0, val_split 0 (the "
        "defaults); a run with others split or labelled its images differently"
    ]
    assert not recorded_spec({"recipe": {"data": "cifar10"}}, PREPROCESS)[1]  # a fixed test set: nothing assumed
    with pytest.raises(ConfigError, match="pass --data NAME"):
        recorded_spec({}, PREPROCESS)
