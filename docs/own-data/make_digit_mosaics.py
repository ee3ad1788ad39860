"""A small single-label image set in the CSV layout, from scikit-learn's digits (no download).

    python docs/own-data/make_digit_mosaics.py OUT_DIR [--count 600 --tile 32 --seed 0]

Each image is a 2x2 mosaic of ``tile``-pixel tiles in RGB: one digit (8x8, upscaled by nearest
neighbour to three quarters of a tile, in a random colour, at a random place in a random tile)
over colour noise; the label is the digit. ``OUT_DIR/labels.csv`` has the columns ``path,
label, split`` that ``densenets train --data csv`` reads: two thirds of the images train, a
sixth validate, a sixth test, drawn from disjoint digits. It stands in for a user's own small
data set trained from random weights: ten classes a trained network separates almost perfectly.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits


def mosaic(digit: np.ndarray, rng: np.random.Generator, tile: int) -> np.ndarray:
    """One (2*tile, 2*tile, 3) uint8 image holding ``digit`` (8x8, values 0-16)."""
    side = 2 * tile
    image = rng.normal(128, 40, size=(side, side, 3)).clip(0, 255)
    scale = max(1, (3 * tile // 4) // 8)
    glyph = np.kron(digit / 16.0, np.ones((scale, scale)))[..., None]  # (8*scale, 8*scale, 1) in [0, 1]
    colour = rng.uniform(0, 255, size=3)
    row, col = rng.integers(0, 2, size=2) * tile + rng.integers(0, tile - glyph.shape[0] + 1, size=2)
    patch = image[row : row + glyph.shape[0], col : col + glyph.shape[1]]
    patch[:] = (1 - glyph) * patch + glyph * colour
    return image.astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--count", type=int, default=600, help="images in all (default 600)")
    parser.add_argument("--tile", type=int, default=32, help="tile side in pixels; images are twice it")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.count < 6 or args.tile < 8:
        parser.error("--count must be at least 6 and --tile at least 8")
    rng = np.random.default_rng(args.seed)
    digits = load_digits()
    order = rng.permutation(len(digits.target))[: args.count]
    n_val = n_test = args.count // 6
    splits = ["val"] * n_val + ["test"] * n_test + ["train"] * (args.count - n_val - n_test)
    (args.out_dir / "images").mkdir(parents=True, exist_ok=True)
    with open(args.out_dir / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "split"])
        for i, (index, split) in enumerate(zip(order, splits, strict=True)):
            path = f"images/{split}_{i:04d}.png"
            Image.fromarray(mosaic(digits.images[index], rng, args.tile)).save(args.out_dir / path)
            writer.writerow([path, str(digits.target[index]), split])
    print(f"{args.count} images ({splits.count('train')} train, {n_val} val, {n_test} test) -> {args.out_dir}")


if __name__ == "__main__":
    main()
