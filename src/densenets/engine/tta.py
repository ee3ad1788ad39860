"""Test-time augmentation: each image seen as a few mirrored and shifted views, logits averaged.

``"flip"``: the image and its left-right mirror (2 views). ``"flip-translate"``: those two,
each also shifted one pixel up-left and one down-right (6 views), the border filled with
zeros, which after normalisation is the mean colour, as the training crops pad. The views
travel as a (N, V, C, H, W) batch, the layout ten-crop testing already uses, so evaluation
averages their logits in one place.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

TTA_MODES = ("none", "flip", "flip-translate")


def _shift(images: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """(N, C, H, W) moved by (dy, dx) pixels, zeros coming in at the border."""
    h, w = images.shape[-2:]
    padded = F.pad(images, (1, 1, 1, 1))
    return padded[..., 1 - dy : 1 - dy + h, 1 - dx : 1 - dx + w]


def tta_views(images: torch.Tensor, mode: str) -> torch.Tensor:
    """(N, C, H, W) -> (N, V, C, H, W): the views ``mode`` averages over (V = 1, 2 or 6)."""
    if mode not in TTA_MODES:
        raise ValueError(f"unknown test-time augmentation {mode!r}; choose from {', '.join(TTA_MODES)}")
    views = [images]
    if mode != "none":
        views.append(images.flip(-1))
    if mode == "flip-translate":
        views += [_shift(v, d, d) for v in views[:2] for d in (-1, 1)]
    return torch.stack(views, 1)
