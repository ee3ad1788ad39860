"""A volume classification task made from real images: scikit-learn's 8x8 digits placed in noisy volumes.

Each volume (D, H, W) is Gaussian noise; one digit, upsampled (nearest) to about half the plane's
side, is added over ``thickness`` consecutive depth slices at a random depth and a random
in-plane position, and the volume is labelled by the digit's class. So the class is there, but
the network must find which slices hold it: the 2-D content is real, its depth is not fixed.
Digits are taken in scikit-learn's order (the first 1,437 for train and val, the last 360 for
test, as ``--data digits`` splits them) so no digit image is in two splits.

    python docs/make_volumes.py OUT [--count 1797] [--size 16 32 32] [--noise 0.5] [--seed 0]
    densenets train --data csv --data-dir OUT --model densenet_bc40_k12 --epochs 30 [--pretrained]

Writes ``OUT/vNNNN.npy`` (float32, (D, H, W)) and ``OUT/labels.csv`` (path, label, split).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

DIGITS_TRAIN = 1437  # scikit-learn's digits: the first 1,437 train (val held out of them), the last 360 test


def make_volumes(out: str | Path, count: int = 1797, size=(16, 32, 32), noise: float = 0.5, seed: int = 0,
                 thickness: int = 2, val_fraction: float = 0.15) -> Path:  # fmt: skip
    """Write ``count`` volumes and labels.csv into ``out``; returns the labels.csv path."""
    from sklearn.datasets import load_digits

    depth, height, width = (int(s) for s in size)
    scale = max(1, min(height, width) // 16)  # 8x8 -> about half the plane's side
    side = 8 * scale
    if side > min(height, width) or thickness > depth:
        raise SystemExit(f"a volume of {depth}x{height}x{width} is too small for a {thickness}x{side}x{side} digit")
    digits = load_digits()
    images, labels = digits.images / 16.0, digits.target  # pixels in [0, 1]
    train_ids = np.arange(DIGITS_TRAIN)
    test_ids = np.arange(DIGITS_TRAIN, len(images))
    rng = np.random.default_rng(seed)
    n_test = round(count * len(test_ids) / len(images))
    n_val = round((count - n_test) * val_fraction)
    chosen = [(i, "test") for i in rng.choice(test_ids, n_test, replace=False)]
    picked = rng.choice(train_ids, count - n_test, replace=False)
    chosen += [(i, "val") for i in picked[:n_val]] + [(i, "train") for i in picked[n_val:]]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lines = ["path,label,split"]
    for n, (index, split) in enumerate(chosen):
        volume = rng.normal(0.0, noise, (depth, height, width)).astype(np.float32)
        digit = np.kron(images[index], np.ones((scale, scale))).astype(np.float32)
        z = rng.integers(0, depth - thickness + 1)
        y, x = rng.integers(0, height - side + 1), rng.integers(0, width - side + 1)
        volume[z : z + thickness, y : y + side, x : x + side] += digit
        name = f"v{n:04d}.npy"
        np.save(out / name, volume)
        lines.append(f"{name},{labels[index]},{split}")
    path = out / "labels.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="folder for the .npy volumes and labels.csv")
    parser.add_argument("--count", type=int, default=1797, help="volumes to write (at most 1,797, one per digit)")
    parser.add_argument("--size", type=int, nargs=3, default=(16, 32, 32), metavar=("D", "H", "W"))
    parser.add_argument("--noise", type=float, default=0.5, help="the noise's standard deviation (digits are 0..1)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not 1 <= args.count <= 1797:
        raise SystemExit("--count must be 1..1797 (one volume per digit image)")
    path = make_volumes(args.out, args.count, args.size, args.noise, args.seed)
    print(f"{args.count} volumes of {'x'.join(map(str, args.size))} written to {path.parent}, labels in {path}")


if __name__ == "__main__":
    main()
