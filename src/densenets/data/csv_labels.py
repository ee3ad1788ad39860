"""Images listed in a CSV file with their labels: single-label, or multi-label as CheXpert writes it.

``labels.csv`` has a ``path`` column (relative to the CSV file), then either one ``label``
column (single-label: any class names) or one column per class holding ``1``, ``0``,
blank (unknown) or ``-1`` (uncertain), which makes the data multi-label. An optional
``split`` column holds ``train``, ``val`` or ``test``.

Multi-label targets are float vectors (C,) with NaN where the label is unknown (blank, or
uncertain under ``uncertain="ignore"``): the loss and the metrics leave those cells out.
``uncertain="ones"|"zeros"`` is for training rows (:func:`map_uncertain`): validation and
test rows keep an uncertain label unknown, so thresholds and test figures use known labels only.
Every problem stops in one line naming the CSV line.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset, Subset

from ..errors import DataError

UNCERTAIN = ("ignore", "ones", "zeros")  # what -1 becomes: unknown (masked), positive or negative
SPLITS = ("train", "val", "test")
_VALUES = {"1": 1.0, "1.0": 1.0, "0": 0.0, "0.0": 0.0, "-1": -1.0, "-1.0": -1.0, "": math.nan}


@dataclass
class LabelTable:
    """The rows of a labels CSV, checked: one entry per image."""

    csv_path: Path
    paths: list[Path]  # absolute image paths
    lines: list[int]  # the CSV line of each row (header = line 1), for messages
    class_names: list[str]
    # single-label: class indices; multi-label: (N, C) floats, 1 / 0 / NaN (unknown)
    targets: list[int] | torch.Tensor
    multilabel: bool
    splits: list[str] | None  # None: the CSV has no split column
    uncertain_cells: torch.Tensor | None = None  # multi-label: (N, C) True where the CSV says -1

    def where(self, line: int) -> str:
        return f"{self.csv_path} line {line}"


def read_label_csv(path: str | Path, uncertain: str = "ignore") -> LabelTable:
    """Read and check a labels CSV (format in the module docstring); image files are checked separately."""
    if uncertain not in UNCERTAIN:
        raise DataError(f"uncertain must be one of {', '.join(UNCERTAIN)}; got {uncertain!r}")
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = [h.strip() for h in next(reader, [])]
            rows = [(reader.line_num, row) for row in reader if any(cell.strip() for cell in row)]
    except FileNotFoundError as exc:
        raise DataError(f"{path}: no such labels file (pass --labels FILE or put labels.csv in --data-dir)") from exc
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read it as CSV ({type(exc).__name__}: {exc})") from exc
    if "path" not in header:
        raise DataError(f"{path}: no 'path' column (the header is {', '.join(header) or 'empty'})")
    duplicated = sorted({h for h in header if header.count(h) > 1})
    if duplicated:
        raise DataError(f"{path}: column(s) {', '.join(duplicated)} appear twice in the header")
    class_columns = [h for h in header if h not in ("path", "split")]
    if not class_columns:
        raise DataError(f"{path}: no label columns besides path/split (a 'label' column, or one per class)")
    if not rows:
        raise DataError(f"{path}: no rows")
    multilabel = class_columns != ["label"]
    uncertain_cells = torch.zeros(len(rows), len(class_columns), dtype=torch.bool) if multilabel else None
    if "label" in class_columns and multilabel:
        raise DataError(f"{path}: a 'label' column is for single-label data; multi-label data has one column per class")
    index = {h: i for i, h in enumerate(header)}

    def where(line: int) -> str:
        return f"{path} line {line}"

    paths, lines, splits, raw_labels = [], [], [], []
    first_line: dict[Path, int] = {}
    for line, row in rows:
        if len(row) != len(header):
            raise DataError(f"{where(line)}: {len(row)} fields, the header has {len(header)}")
        name = row[index["path"]].strip()
        if not name:
            raise DataError(f"{where(line)}: empty path")
        image = (path.parent / name).resolve()
        if image in first_line:
            raise DataError(f"{where(line)}: duplicate path {name} (first on line {first_line[image]})")
        first_line[image] = line
        if "split" in index:
            split = row[index["split"]].strip().lower()
            if split not in SPLITS:
                raise DataError(f"{where(line)}: split {row[index['split']]!r} is not one of {', '.join(SPLITS)}")
            splits.append(split)
        paths.append(image)
        lines.append(line)
        raw_labels.append([row[index[c]].strip() for c in class_columns])

    if multilabel:
        targets = torch.empty(len(rows), len(class_columns))
        for r, (line, cells) in enumerate(zip(lines, raw_labels, strict=True)):
            for c, cell in enumerate(cells):
                value = _VALUES.get(cell)
                if value is None:
                    raise DataError(
                        f"{where(line)}: {class_columns[c]} is {cell!r}; labels are 1, 0, -1 (uncertain) or blank"
                    )
                if value == -1.0:
                    uncertain_cells[r, c] = True
                    value = {"ignore": math.nan, "ones": 1.0, "zeros": 0.0}[uncertain]
                targets[r, c] = value
        class_names = class_columns
    else:
        for line, (cell,) in zip(lines, raw_labels, strict=True):
            if not cell:
                raise DataError(f"{where(line)}: empty label")
        class_names = sorted({cell for (cell,) in raw_labels})
        lookup = {name: i for i, name in enumerate(class_names)}
        targets = [lookup[cell] for (cell,) in raw_labels]
    splits = splits if "split" in index else None
    return LabelTable(path, paths, lines, class_names, targets, multilabel, splits, uncertain_cells)


def map_uncertain(table: LabelTable, uncertain: str) -> LabelTable:
    """The table with its uncertain (-1) labels read as ``uncertain`` (ignore: unknown, ones, zeros),
    for the training rows; the other splits keep ``table`` (-1 unknown)."""
    if not table.multilabel or uncertain == "ignore" or table.uncertain_cells is None:
        return table
    value = {"ones": 1.0, "zeros": 0.0}[uncertain]
    return replace(table, targets=torch.where(table.uncertain_cells, value, table.targets))


def check_positives(table: LabelTable, train_rows: list[int]) -> None:
    """Every class needs a positive training label: without one it can be neither learnt nor given
    a threshold."""
    if not train_rows:
        raise DataError(f"{table.csv_path}: no training rows")
    if table.multilabel:
        positives = (table.targets[train_rows] == 1).sum(0)
        missing = [name for name, n in zip(table.class_names, positives.tolist(), strict=True) if n == 0]
    else:
        seen = {table.targets[i] for i in train_rows}
        missing = [name for i, name in enumerate(table.class_names) if i not in seen]
    if missing:
        names = ", ".join(missing)
        raise DataError(f"{table.csv_path}: class(es) {names} have no positive label in the training split")


def check_images(table: LabelTable, verify: bool, skip_bad: bool) -> tuple[list[int], list[str]]:
    """(rows to keep, messages of the rows left out): every image must exist, and with ``verify`` decode.

    A missing or unreadable image stops with its CSV line, or with ``skip_bad`` is left out.
    """
    keep, skipped = [], []
    for i, (image, line) in enumerate(zip(table.paths, table.lines, strict=True)):
        problem = None
        if not image.is_file():
            problem = f"image {image} not found"
        elif verify:
            try:
                with Image.open(image) as opened:
                    opened.verify()
            except Exception as exc:  # PIL raises many types for damaged files
                problem = f"{image} is not a readable image ({type(exc).__name__})"
        if problem is None:
            keep.append(i)
        elif skip_bad:
            skipped.append(f"line {line}")
        else:
            raise DataError(f"{table.where(line)}: {problem}; fix the row or pass --skip-bad-images")
    return keep, skipped


class CsvImageDataset(Dataset):
    """The images of chosen rows of a :class:`LabelTable`: (transformed image, target)."""

    def __init__(self, table: LabelTable, rows: list[int], transform, loader: Callable[[str], Image.Image]) -> None:
        self.table, self.rows, self.transform, self.loader = table, list(rows), transform, loader
        self.classes = table.class_names

    @property
    def targets(self) -> list[int] | torch.Tensor:
        if self.table.multilabel:
            return self.table.targets[self.rows]
        return [self.table.targets[r] for r in self.rows]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int):
        row = self.rows[index]
        image = self.loader(str(self.table.paths[row]))
        if self.transform is not None:
            image = self.transform(image)
        return image, self.table.targets[row]


def multilabel_targets(dataset: Dataset) -> torch.Tensor:
    """The (N, C) targets of a multi-label :class:`CsvImageDataset`, through ``Subset`` and seeding wrappers."""
    if isinstance(dataset, Subset):
        return multilabel_targets(dataset.dataset)[list(dataset.indices)]
    if isinstance(dataset, CsvImageDataset):
        return dataset.targets
    inner = getattr(dataset, "dataset", None)
    if inner is None:
        raise TypeError(f"{type(dataset).__name__} holds no multi-label targets")
    return multilabel_targets(inner)
