"""The pointing game (Zhang et al. 2016) on 2x2 mosaics of real CIFAR-10 images.

    python docs/pointing_game.py MODEL MOSAIC_DIR [--split test] [--layer NAME ...] [--out FILE.jsonl]

MODEL is what ``densenets explain`` takes (a run folder, a checkpoint, named weights);
MOSAIC_DIR is written by ``docs/make_mosaics.py`` (``images/``, ``tiles.csv``, ``labels.csv``).
For every mosaic of the split and every class present in it, the CAM and Grad-CAM maps of
that class are computed (``densenets.explain``); a hit is a map whose maximum falls in a tile
holding that class. Reported: hits / (mosaic, class) pairs, the chance rate (the share of
tiles holding the class, averaged over the pairs), and the same over mosaics with two or
three classes only (a one-class mosaic is a hit wherever the maximum falls). ``--layer``
adds Grad-CAM at inner layers (e.g. ``features.denseblock2``, twice the final resolution); at
the final map Grad-CAM is CAM (global pooling + linear head), so those two rows agree.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import torch

import densenets
from densenets.data.transforms import image_transform
from densenets.engine.loading import load_model
from densenets.engine.prediction import read_images


def read_tiles(mosaic_dir: Path, split: str) -> list[tuple[Path, list[str]]]:
    with open(mosaic_dir / "tiles.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    tiles = ["top_left", "top_right", "bottom_left", "bottom_right"]
    return [(mosaic_dir / r["path"], [r[t] for t in tiles]) for r in rows if Path(r["path"]).name.startswith(split)]


def pointing_game(model_source: str, mosaic_dir: Path, split: str = "test", layers=(), batch: int = 50) -> dict:
    loaded = load_model(model_source)
    names = loaded.class_names
    items = read_tiles(mosaic_dir, split)
    records, ready = read_images([p for p, _ in items], image_transform(loaded.preprocess))
    if len(ready) != len(items):
        raise SystemExit(f"unreadable mosaics: {[r for r in records if 'error' in r][:3]}")
    runs = {"cam": ("cam", None), "gradcam": ("gradcam", None)} | {f"gradcam:{n}": ("gradcam", n) for n in layers}
    counts = {name: {"all": [0, 0], "2-3 classes": [0, 0]} for name in runs}
    chance = {"all": [], "2-3 classes": []}
    size = None
    for start in range(0, len(items), batch):
        x = torch.stack([t for _, t in ready[start : start + batch]])
        size = tuple(x.shape[-2:])
        layouts = [tiles for _, tiles in items[start : start + batch]]
        present = [sorted(set(t) - {""}) for t in layouts]  # blank: a noise tile (make_mosaics.py --single)
        width = max(len(p) for p in present)
        # (N, T) targets, padded with each mosaic's first class (the padding is not scored)
        targets = torch.tensor([[names.index(c) for c in p + p[:1] * (width - len(p))] for p in present])
        for name, (method, layer) in runs.items():
            maps = densenets.explain(loaded.model, x, targets=targets, method=method, layer=layer)  # (N, T, H, W)
            quadrant = densenets.interpret.peak_cells(maps)  # (N, T): 0..3 as tiles.csv orders the tiles
            for i, (p, tiles) in enumerate(zip(present, layouts, strict=True)):
                for t, c in enumerate(p):
                    hit = int(tiles[int(quadrant[i, t])] == c)
                    for group in ("all", "2-3 classes") if len(p) > 1 else ("all",):
                        counts[name][group][0] += hit
                        counts[name][group][1] += 1
                        if name == "cam":
                            chance[group].append(tiles.count(c) / 4)
    result = {
        "model": model_source,
        "mosaics": len(items),
        "split": split,
        "input": list(size),
        "pairs": {g: counts["cam"][g][1] for g in chance},
        "chance": {g: round(sum(v) / len(v), 4) for g, v in chance.items()},
    }
    for method, groups in counts.items():
        result[method] = {g: {"hits": h, "pointing_game": round(h / n, 4)} for g, (h, n) in groups.items()}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("mosaic_dir", type=Path)
    parser.add_argument("--split", default="test")
    parser.add_argument("--layer", nargs="*", default=[], help="also Grad-CAM at these layers")
    parser.add_argument("--out", type=Path, help="append the result as one JSON line to this file")
    args = parser.parse_args()
    result = pointing_game(args.model, args.mosaic_dir, args.split, args.layer)
    print(json.dumps(result))
    if args.out:
        with open(args.out, "a") as f:
            f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
