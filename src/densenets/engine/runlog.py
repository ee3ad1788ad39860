"""Run-folder files a machine can read: config.json, metrics.jsonl, summary.json (+ TensorBoard)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from ..errors import UserError

BEST, LAST, CONFIG = "best.pt", "last.pt", "config.json"  # engine.loading chooses between the first two
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"


def strict(value):
    """``value`` with every NaN or infinity (nested in dicts and lists) as None: null in strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(v) for v in value]
    return value


def dumps(data, **kwargs) -> str:
    """Strict JSON text (NaN and infinities written as null, never as ``NaN`` / ``Infinity``)."""
    return json.dumps(strict(data), allow_nan=False, **kwargs)


def write_json(path: Path, data: dict) -> None:
    """Atomic strict-JSON write (temporary file + rename); NaN and infinities become null."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w") as f:
            f.write(dumps(data, indent=2, sort_keys=False))
            f.write("\n")
        os.replace(tmp, path)
    except OSError as exc:
        raise UserError(f"could not write {path}: {exc.strerror or exc}") from exc


def read_json(path: Path) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError as exc:
        raise UserError(f"{path}: no such file") from exc
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from exc


def read_metrics(run_dir: Path) -> list[dict]:
    """Per-epoch records of a run (later records for the same epoch win, e.g. after a resume)."""
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    by_epoch: dict[int, dict] = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line torn by a crash
                by_epoch[record["epoch"]] = record
    return [by_epoch[e] for e in sorted(by_epoch)]


def validation_score(record: dict) -> float | None:
    """What ranks an epoch: its validation error, or minus its validation macro AUROC (lower is
    better); None when validation cannot rank it (no validation split, or the figure is undefined)."""
    multilabel = "test_auroc" in record
    value = record.get("val_auroc" if multilabel else "val_error")
    if value is None or not math.isfinite(value):
        return None
    return -value if multilabel else value


def is_better(record: dict, incumbent: dict | None) -> bool:
    """The one rule for the best epoch, used by ``best.pt``, the summary, plot and report.

    An epoch that validation ranks beats one it cannot; between ranked epochs the lower
    validation error (higher validation macro AUROC) wins, the earlier one on a tie; while no
    epoch is ranked (no validation split, or the figure undefined so far) the later epoch wins,
    so the final epoch is the result.
    """
    if incumbent is None:
        return True
    new, old = validation_score(record), validation_score(incumbent)
    if new is None:
        return old is None
    return old is None or new < old


def unranked_reason(records: list[dict]) -> str:
    """Why validation cannot rank these epochs, in a few words."""
    multilabel = any("test_auroc" in r for r in records)
    key, what = ("val_auroc", "validation macro AUROC") if multilabel else ("val_error", "validation error")
    if not any(key in r for r in records):
        return "no validation split"
    return f"{what} undefined in every epoch (a class needs both label values among its known validation labels)"


def reported_result(records: list[dict]) -> dict:
    """The epoch whose test figure a run reports, by :func:`is_better` (the paper's protocol):
    the best validation epoch (SVHN), else the final epoch (CIFAR, or a validation split that
    cannot rank epochs: :func:`unranked_reason` says why). Choosing an epoch by its test figure would report an
    optimistic number. A multi-label run (records with ``test_auroc``) reports its macro AUROC.
    """
    chosen = None
    for record in records:
        if is_better(record, chosen):
            chosen = record
    metric = "test_auroc" if "test_auroc" in chosen else "test_error"
    if validation_score(chosen) is not None:
        return {metric: chosen[metric], "epoch": chosen["epoch"], "rule": "best validation epoch"}
    return {metric: chosen[metric], "epoch": chosen["epoch"], "rule": "final epoch"}


class RunLog:
    """Appends per-epoch metrics; mirrors them to TensorBoard when it is installed.

    ``note`` says when TensorBoard is not installed; any other TensorBoard failure is an error.
    """

    def __init__(self, run_dir: Path, enabled: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.note: str | None = None
        self._tb = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            self.note = "TensorBoard is not installed: metrics go to metrics.jsonl only (pip install tensorboard)"
            return
        folder = self.run_dir / "tensorboard"
        try:
            self._tb = SummaryWriter(str(folder))
        except OSError as exc:
            raise UserError(f"cannot write TensorBoard logs to {folder}: {exc.strerror or exc}") from exc

    def epoch(self, record: dict) -> None:
        if not self.enabled:
            return
        path = self.run_dir / METRICS
        try:
            with open(path, "a") as f:
                f.write(dumps(record) + "\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            raise UserError(f"could not append to {path}: {exc.strerror or exc}") from exc
        if self._tb is not None:
            try:
                for key, value in record.items():
                    if isinstance(value, (int, float)) and key != "epoch":
                        self._tb.add_scalar(key, value, record["epoch"])
                self._tb.flush()
            except OSError as exc:
                raise UserError(f"could not write TensorBoard logs in {self.run_dir}: {exc.strerror or exc}") from exc

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
