"""What a written figure shows: its pixel size and the colours drawn in it, read back from the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

# matplotlib's default colour cycle (tab10): line k of a plot is drawn in CYCLE[k] (its grey, the
# eighth, left out: anti-aliased grey lines and text hit it)
CYCLE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2"]


def figure_pixels(path: Path, inches: tuple[float, float], dpi: int = 130) -> np.ndarray:
    """The RGB pixels of a PNG figure, checked to decode at ``inches`` x ``dpi`` and not to be blank."""
    with Image.open(path) as image:
        image.load()
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.shape[:2] == (round(inches[1] * dpi), round(inches[0] * dpi)), (path, pixels.shape)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 20, f"{path}: (almost) blank"
    return pixels


def colours_drawn(pixels: np.ndarray, colours: list[str]) -> list[str]:
    """Those of ``colours`` ("#rrggbb") that appear exactly in at least 10 pixels."""
    flat = pixels.reshape(-1, 3)
    found = []
    for colour in colours:
        rgb = [int(colour[i : i + 2], 16) for i in (1, 3, 5)]
        if (flat == rgb).all(axis=1).sum() >= 10:
            found.append(colour)
    return found
