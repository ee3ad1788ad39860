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


def pixel_counts(pixels: np.ndarray, colours: list[str]) -> list[int]:
    """How many pixels have exactly each of ``colours`` ("#rrggbb")."""
    flat = pixels.reshape(-1, 3)
    return [int((flat == [int(c[i : i + 2], 16) for i in (1, 3, 5)]).all(axis=1).sum()) for c in colours]


def colours_drawn(pixels: np.ndarray, colours: list[str], min_pixels: int = 10) -> list[str]:
    """Those of ``colours`` ("#rrggbb") that appear exactly in at least ``min_pixels`` pixels."""
    return [c for c, n in zip(colours, pixel_counts(pixels, colours), strict=True) if n >= min_pixels]


def colormap_colours(name: str, values) -> list[str]:
    """The "#rrggbb" colours that matplotlib's colormap ``name`` gives ``values`` in [0, 1] (as imshow draws them)."""
    import matplotlib

    rgba = matplotlib.colormaps[name](np.asarray(values, dtype=float), bytes=True)
    return ["#{:02x}{:02x}{:02x}".format(*colour[:3]) for colour in np.atleast_2d(rgba)]
