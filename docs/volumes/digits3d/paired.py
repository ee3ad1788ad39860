"""Paired comparison of runs on the same volumes: each run's errors and McNemar's exact test per pair.

    PYTHONPATH=src python docs/volumes/digits3d/paired.py DATA_DIR RUN_A RUN_B [RUN_C ...] [--out FILE]

Each run is loaded as ``densenets eval`` loads it (``best.pt``, chosen on the validation split) and
classifies DATA_DIR's val and test volumes with its own preprocessing. For each pair of runs and each
split: the volumes only one of the two classifies correctly (b: only the first, c: only the second)
and the two-sided exact McNemar p-value, 2 * P(X <= min(b, c)) for X ~ Binomial(b + c, 1/2).
"""

from __future__ import annotations

import argparse
import json
import math
from itertools import combinations
from pathlib import Path

import torch

from densenets import load
from densenets.data.volumes import VolumeTransform, read_volume


def predictions(run: Path, data_dir: Path, split: str) -> tuple[list[bool], list[str]]:
    model = load(run)
    preprocess = json.loads((run / "config.json").read_text())["data"]["preprocess"]
    transform = VolumeTransform(preprocess)
    rows = [line.split(",") for line in (data_dir / "labels.csv").read_text().split("\n")[1:] if line]
    rows = [(path, int(label)) for path, label, where in rows if where == split]
    correct = []
    with torch.no_grad():
        for start in range(0, len(rows), 64):
            chunk = rows[start : start + 64]
            batch = torch.stack([transform(read_volume(data_dir / path)) for path, _ in chunk])
            guesses = model(batch).argmax(1).tolist()
            correct += [g == label for g, (_, label) in zip(guesses, chunk, strict=True)]
    return correct, [path for path, _ in rows]


def mcnemar_exact(b: int, c: int) -> float:
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2**n
    return min(1.0, 2 * tail)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    result = {"errors": {}, "pairs": []}
    correct = {}
    for run in args.runs:
        for split in ("val", "test"):
            correct[run.name, split], _ = predictions(run, args.data_dir, split)
            right = correct[run.name, split]
            result["errors"].setdefault(run.name, {})[split] = 100 * (1 - sum(right) / len(right))
    for a, b in combinations([r.name for r in args.runs], 2):
        for split in ("val", "test"):
            only_a = sum(x and not y for x, y in zip(correct[a, split], correct[b, split], strict=True))
            only_b = sum(y and not x for x, y in zip(correct[a, split], correct[b, split], strict=True))
            result["pairs"].append({"a": a, "b": b, "split": split, "only_a_right": only_a, "only_b_right": only_b,
                                    "mcnemar_exact_p": mcnemar_exact(only_a, only_b)})  # fmt: skip
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
