"""Test-time augmentation: each image seen as a few mirrored and shifted views, logits averaged.

``"flip"``: the image and its left-right mirror (2 views). ``"flip-translate"``: those two,
each also shifted one pixel up-left and one down-right (6 views); ``"flip-translate-10"``:
shifted one pixel along both diagonals, each way (10 views). The border fills with zeros,
which after normalisation is the mean colour, as the training crops pad. The views
travel as a (N, V, C, H, W) batch, the layout ten-crop testing already uses, so evaluation
averages their logits in one place.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

TTA_MODES = ("none", "flip", "flip-translate", "flip-translate-10")
# the one-pixel (dy, dx) shifts each mode adds to the image and its mirror
_SHIFTS = {"flip-translate": ((-1, -1), (1, 1)), "flip-translate-10": ((-1, -1), (1, 1), (-1, 1), (1, -1))}


def _shift(images: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """(N, C, H, W) moved by (dy, dx) pixels, zeros coming in at the border."""
    h, w = images.shape[-2:]
    padded = F.pad(images, (1, 1, 1, 1))
    return padded[..., 1 - dy : 1 - dy + h, 1 - dx : 1 - dx + w]


def tta_views(images: torch.Tensor, mode: str) -> torch.Tensor:
    """(N, C, H, W) -> (N, V, C, H, W): the views ``mode`` averages over (V = 1, 2, 6 or 10)."""
    if mode not in TTA_MODES:
        raise ValueError(f"unknown test-time augmentation {mode!r}; choose from {', '.join(TTA_MODES)}")
    views = [images]
    if mode != "none":
        views.append(images.flip(-1))
    views += [_shift(v, dy, dx) for v in views[:2] for dy, dx in _SHIFTS.get(mode, ())]
    return torch.stack(views, 1)
