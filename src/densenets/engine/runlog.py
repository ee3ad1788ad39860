"""Run-folder files a machine can read: config.json, metrics.jsonl, summary.json (+ TensorBoard)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import UserError

BEST, LAST, CONFIG = "best.pt", "last.pt", "config.json"  # engine.loading chooses between the first two
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"


def write_json(path: Path, data: dict) -> None:
    """Atomic JSON write (temporary file + rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w") as f:
            json.dump(data, f, indent=2, sort_keys=False)
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


def reported_result(records: list[dict]) -> dict:
    """The epoch whose test error the paper's protocol reports, from a run's per-epoch records.

    With a validation split (SVHN) the epoch with the lowest validation error (the first
    one on a tie, as ``best.pt``); without one (CIFAR) the final epoch: choosing an epoch by
    its test error would report an optimistic number. A multi-label run (records with
    ``test_auroc``) reports its macro AUROC, ``test_auroc``, under the same rule (highest
    validation AUROC).
    """
    if any("test_auroc" in r for r in records):
        metric, val_metric, best = "test_auroc", "val_auroc", max
    else:
        metric, val_metric, best = "test_error", "val_error", min
    validated = [r for r in records if val_metric in r]
    if validated:  # max/min keep the first epoch on a tie
        chosen, rule = best(validated, key=lambda r: r[val_metric]), "best validation epoch"
    else:
        chosen, rule = records[-1], "final epoch"
    return {metric: chosen[metric], "epoch": chosen["epoch"], "rule": rule}


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
                f.write(json.dumps(record) + "\n")
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
