"""Run-folder files a machine can read: config.json, metrics.jsonl, summary.json (+ TensorBoard)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import UserError
from ..models.weights import RUN_CHECKPOINTS

CONFIG = "config.json"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
BEST, LAST = RUN_CHECKPOINTS  # the files a run folder stands for (models.weights reads them)


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


class RunLog:
    """Appends per-epoch metrics; mirrors them to TensorBoard when it is installed."""

    def __init__(self, run_dir: Path, enabled: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self._tb = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.run_dir / "tensorboard"))
            except Exception:  # tensorboard not installed: JSON lines only
                self._tb = None

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
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "epoch":
                    self._tb.add_scalar(key, value, record["epoch"])
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
