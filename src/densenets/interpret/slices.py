"""A heat map of a volume drawn as three orthogonal slices through its peak, over the volume's slices.

The volume is (C, D, H, W) as the model sees it; the slices are named as for a (z, y, x) scan:
axial fixes the depth D (an H x W picture), coronal fixes H (D x W), sagittal fixes W (D x H).
"""

from __future__ import annotations

from pathlib import Path

import torch

VIEWS = ("axial", "coronal", "sagittal")


def peak(heat: torch.Tensor) -> tuple[int, int, int]:
    """(d, h, w) of the largest value of a (D, H, W) map (the first one, in row-major order, on ties)."""
    d, h, w = heat.shape
    index = int(heat.flatten().argmax())
    return index // (h * w), index // w % h, index % w


def orthogonal_slices(volume: torch.Tensor, at: tuple[int, int, int]) -> list[torch.Tensor]:
    """The axial, coronal and sagittal slices of a (..., D, H, W) tensor through the voxel ``at``."""
    d, h, w = at
    return [volume[..., d, :, :], volume[..., :, h, :], volume[..., :, :, w]]


def draw_volume_overlay(volume, maps, explained: list[dict], path: Path, method: str, multilabel: bool) -> None:
    """One row per explained class: its map's three orthogonal slices through the map's peak, over the
    volume's first channel (min-max scaled for display) at the same slices."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    grey = volume[0].float()
    grey = (grey - grey.min()) / (grey.max() - grey.min()).clamp_min(1e-7)
    kind = "sigmoid" if multilabel else "softmax"
    fig = Figure(figsize=(5.4, 2.1 * len(explained)))
    FigureCanvasAgg(fig)
    for row, (heat, e) in enumerate(zip(maps, explained, strict=True)):
        at = peak(heat)
        pictures, heats = orthogonal_slices(grey, at), orthogonal_slices(heat, at)
        for col, (view, picture, hot) in enumerate(zip(VIEWS, pictures, heats, strict=True)):
            ax = fig.add_subplot(len(explained), 3, 3 * row + col + 1)
            ax.imshow(picture.numpy(), cmap="gray", vmin=0, vmax=1)
            ax.imshow(hot.numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=1)
            where = f"{'dhw'[col]}={at[col]}"
            title = f"{e['class']} {100 * e['probability']:.1f}%" if col == 0 else f"({method}, {kind})"
            ax.set_title(f"{title}\n{view} {where}" if col < 2 else f"{view} {where}", fontsize=7)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
