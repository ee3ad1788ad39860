"""A small set of real photographs in the CSV layout: a class-balanced subset of CIFAR-10.

    python docs/own-data/make_cifar_subset.py CIFAR_DIR OUT_DIR [--train 100 --val 20 --test 50 --download]

``CIFAR_DIR`` holds CIFAR-10's python version (``cifar-10-batches-py``; ``--download`` fetches it
with torchvision). ``OUT_DIR/labels.csv`` has the columns ``path, label, split`` that ``densenets
train --data csv`` reads, the labels by class name: per class ``--train`` and ``--val`` images from
CIFAR-10's training images (disjoint) and ``--test`` from its test images, 32x32 PNGs. It stands in
for a user's own small set of photographs trained from random weights.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from densenets.data.datasets import _CIFAR10 as CIFAR10  # torchvision's class, its batches read without pickle.load


def take(labels: list[int], per_class: tuple[int, ...], rng: np.random.Generator) -> list[list[int]]:
    """For each count in ``per_class``, that many indices of each class, the groups disjoint."""
    labels = np.asarray(labels)
    groups: list[list[int]] = [[] for _ in per_class]
    for c in np.unique(labels):
        index = rng.permutation(np.flatnonzero(labels == c))
        if len(index) < sum(per_class):
            raise SystemExit(f"class {c} has {len(index)} images, fewer than the {sum(per_class)} asked for")
        start = 0
        for group, n in zip(groups, per_class, strict=True):
            group.extend(int(i) for i in index[start : start + n])
            start += n
    return [sorted(g) for g in groups]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cifar_dir", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--train", type=int, default=100, help="training images per class (default 100)")
    parser.add_argument("--val", type=int, default=20, help="validation images per class (default 20)")
    parser.add_argument("--test", type=int, default=50, help="test images per class (default 50)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--download", action="store_true", help="fetch CIFAR-10 into CIFAR_DIR if missing")
    args = parser.parse_args()
    if min(args.train, args.val, args.test) < 1:
        parser.error("--train, --val and --test must be at least 1")
    rng = np.random.default_rng(args.seed)
    train = CIFAR10(args.cifar_dir, train=True, download=args.download)
    test = CIFAR10(args.cifar_dir, train=False, download=args.download)
    train_ids, val_ids = take(train.targets, (args.train, args.val), rng)
    (test_ids,) = take(test.targets, (args.test,), rng)
    (args.out_dir / "images").mkdir(parents=True, exist_ok=True)
    with open(args.out_dir / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "split"])
        for split, source, ids in (("train", train, train_ids), ("val", train, val_ids), ("test", test, test_ids)):
            for i in ids:
                image, label = source[i]
                path = f"images/{split}_{i:05d}.png"
                image.save(args.out_dir / path)
                writer.writerow([path, source.classes[label], split])
    counts = f"{len(train_ids)} train, {len(val_ids)} val, {len(test_ids)} test"
    print(f"{len(train_ids) + len(val_ids) + len(test_ids)} CIFAR-10 images ({counts}) -> {args.out_dir}")


if __name__ == "__main__":
    main()
