"""A multi-label image set from real CIFAR-10 images: 2x2 mosaics labelled with the classes present.

    python docs/make_mosaics.py CIFAR_DIR OUT_DIR [--train 4000 --val 500 --test 1000 --tile 32] [--single]

CIFAR_DIR holds ``cifar-10-batches-py`` (``torchvision.datasets.CIFAR10(CIFAR_DIR, download=True)`` writes it).
Each mosaic has 1 to 3 distinct classes spread over its four tiles (every class at least
once); ``OUT_DIR/labels.csv`` has the format ``densenets train --data csv`` reads, the one
CheXpert uses: ``path`` (relative to the CSV), one column per class holding 1, 0, blank
(unknown) or -1 (uncertain), and a ``split`` column. Training and validation mosaics are
made from disjoint CIFAR training images, test mosaics from the CIFAR test set. In the
training split a fraction of label cells is left blank (``--blank``) and a fraction of
positives is written as -1 (``--uncertain``), as in CheXpert's training labels;
validation and test labels are complete.

``OUT_DIR/tiles.csv`` says which class sits in which tile (``top_left, top_right,
bottom_left, bottom_right``), for localisation checks (e.g. a pointing game on saliency
maps): the tile of class c in a ``2*tile`` pixel mosaic spans rows/columns
``[r*tile, (r+1)*tile)``.

``--single`` makes a single-label set instead: one CIFAR image per mosaic in a random tile,
colour noise around grey in the other three (blank in ``tiles.csv``), and ``labels.csv`` with one
``label`` column (the pointing game for a model trained on single labels).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
from PIL import Image

from densenets.data.cifar_files import read_batch

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
TILES = ["top_left", "top_right", "bottom_left", "bottom_right"]


def read_cifar(root: Path, train: bool) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 32, 32, 3) uint8, labels (N,)) of the CIFAR-10 python batches under ``root``."""
    folder = root / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    images, labels = [], []
    for name in names:
        batch = read_batch(folder / name, "CIFAR-10")
        images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(np.asarray(batch["labels"]))
    return np.concatenate(images), np.concatenate(labels)


def mosaic_layouts(n: int, rng: np.random.Generator) -> list[list[int]]:
    """``n`` lists of four class indices: 1-3 distinct classes, each in at least one tile."""
    layouts = []
    for _ in range(n):
        k = int(rng.integers(1, 4))
        classes = rng.choice(len(CLASSES), size=k, replace=False).tolist()
        tiles = classes + rng.choice(classes, size=4 - k).tolist()
        layouts.append([int(c) for c in rng.permutation(tiles)])
    return layouts


def single_layouts(n: int, rng: np.random.Generator) -> list[list[int]]:
    """``n`` lists of four tiles: one class index at a random position, -1 (noise) elsewhere."""
    layouts = []
    for _ in range(n):
        layout = [-1] * 4
        layout[int(rng.integers(4))] = int(rng.integers(len(CLASSES)))
        layouts.append(layout)
    return layouts


def draw(layouts: list[list[int]], images: np.ndarray, labels: np.ndarray, rng, tile: int) -> list[Image.Image]:
    """One mosaic per layout from images not used before (``images`` is consumed without repeats)."""
    pools = {c: list(rng.permutation(np.flatnonzero(labels == c))) for c in range(len(CLASSES))}
    out = []
    for layout in layouts:
        canvas = Image.new("RGB", (2 * tile, 2 * tile))
        for position, c in enumerate(layout):
            if c < 0:  # noise around grey, no class
                noise = np.clip(rng.normal(128, 40, (tile, tile, 3)), 0, 255).astype(np.uint8)
                canvas.paste(Image.fromarray(noise), ((position % 2) * tile, (position // 2) * tile))
                continue
            if not pools[c]:
                raise SystemExit(f"not enough {CLASSES[c]} images for this many mosaics; ask for fewer")
            piece = Image.fromarray(images[pools[c].pop()])
            if tile != 32:
                piece = piece.resize((tile, tile), Image.BILINEAR)
            canvas.paste(piece, ((position % 2) * tile, (position // 2) * tile))
        out.append(canvas)
    return out


def label_cells(layout: list[int], split: str, rng, blank: float, uncertain: float) -> list[str]:
    """'1'/'0' per class; in the training split some cells blank and some positives '-1'."""
    cells = []
    for c in range(len(CLASSES)):
        value = "1" if c in layout else "0"
        if split == "train":
            if value == "1" and rng.random() < uncertain:
                value = "-1"
            elif rng.random() < blank:
                value = ""
        cells.append(value)
    return cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cifar_dir", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--train", type=int, default=4000)
    parser.add_argument("--val", type=int, default=500)
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--tile", type=int, default=32, help="tile side in pixels (mosaic: twice this)")
    parser.add_argument("--blank", type=float, default=0.05, help="training label cells left blank (unknown)")
    parser.add_argument("--uncertain", type=float, default=0.05, help="training positives written as -1")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--single", action="store_true", help="one CIFAR image per mosaic, noise elsewhere")
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    train_images, train_labels = read_cifar(args.cifar_dir, train=True)
    test_images, test_labels = read_cifar(args.cifar_dir, train=False)
    # validation mosaics come from a held-out tenth of the CIFAR training images
    held_out = np.zeros(len(train_labels), dtype=bool)
    held_out[rng.permutation(len(train_labels))[: len(train_labels) // 10]] = True
    sources = {
        "train": (train_images[~held_out], train_labels[~held_out], args.train),
        "val": (train_images[held_out], train_labels[held_out], args.val),
        "test": (test_images, test_labels, args.test),
    }
    (args.out_dir / "images").mkdir(parents=True, exist_ok=True)
    labels_path, tiles_path = args.out_dir / "labels.csv", args.out_dir / "tiles.csv"
    with open(labels_path, "w", newline="") as f, open(tiles_path, "w", newline="") as g:
        labels_csv, tiles_csv = csv.writer(f), csv.writer(g)
        labels_csv.writerow(["path", "label", "split"] if args.single else ["path", *CLASSES, "split"])
        tiles_csv.writerow(["path", *TILES])
        for split, (images, labels, count) in sources.items():
            layouts = single_layouts(count, rng) if args.single else mosaic_layouts(count, rng)
            mosaics = draw(layouts, images, labels, rng, args.tile)
            for i, (layout, mosaic) in enumerate(zip(layouts, mosaics, strict=True)):
                path = f"images/{split}_{i:05d}.png"
                mosaic.save(args.out_dir / path)
                if args.single:
                    labels_csv.writerow([path, CLASSES[max(layout)], split])
                else:
                    labels_csv.writerow([path, *label_cells(layout, split, rng, args.blank, args.uncertain), split])
                tiles_csv.writerow([path, *(CLASSES[c] if c >= 0 else "" for c in layout)])
    total = args.train + args.val + args.test
    print(f"wrote {total} mosaics ({2 * args.tile}x{2 * args.tile}) and labels.csv, tiles.csv to {args.out_dir}")


if __name__ == "__main__":
    main()
