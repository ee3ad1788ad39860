"""Three-channel weights for a model with another number of input channels (timm's ``in_chans``).

Only the stem's first convolution depends on the number of input channels. For one channel
its RGB filters are summed, for other counts repeated and scaled by 3/C, as timm's
``adapt_input_conv`` does; the weights' normalisation follows.

One channel, exactly: the adapted model takes ``(g - m) / s`` with m and s the averages of
the channels' mean and std, and its filter is ``W = s * sum_c W_c / s_c`` (each channel's std
folded into the filter; with equal stds this is timm's plain sum). On a grey image g it
computes exactly what the original model computes on the RGB image ``g + (m_c - m)``: the
grey image replicated to RGB when the channels' means are equal, otherwise that image
tinted by the means' spread (CIFAR-10's statistics: +0.0180, +0.0088, -0.0269 of the pixel
range). No one-channel input can do better with unequal means: the original model's zero
padding stands for its mean colour, which is not grey.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..data.transforms import channel_statistics
from ..errors import ConfigError


def stem_key(model: nn.Module) -> str:
    """The name of the stem convolution's weight: the first parameter of 3 or more dimensions
    (``features.conv0.weight`` for a DenseNet of any ``spatial_dims``, ``conv1.weight`` for the ResNets)."""
    for name, param in model.named_parameters():
        if param.dim() >= 3:
            return name
    raise ConfigError(f"{type(model).__name__} has no convolution to adapt")


def adapt_input_conv(
    weight: Tensor,
    in_channels: int,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> tuple[Tensor, list[float] | None, list[float] | None]:
    """A (O, 3, k, k) stem filter (1-D, 3-D: (O, 3, k), (O, 3, k, k, k)) for ``in_channels`` inputs,
    with the normalisation that goes with it.

    Returns the new filter and the mean/std (lists of ``in_channels`` values; None where
    none was given). One channel: ``s * sum_c W_c / s_c`` with m, s the channels' average
    mean and std (see the module's docstring); other counts: timm's repeat and 3/C scale,
    the statistics repeated the same way.
    """
    have = int(weight.shape[1])
    if have == in_channels:
        return weight, _list(mean), _list(std)
    if have != 3:
        raise ConfigError(f"can only adapt 3-channel weights to another channel count; these take {have}")
    if in_channels < 1:
        raise ConfigError(f"in_channels must be positive, got {in_channels}")
    w = weight.float()
    spatial = [1] * (w.dim() - 2)
    new_mean, new_std = channel_statistics(mean or [0.0] * 3, std or [1.0] * 3, in_channels)
    if in_channels == 1:
        stds = torch.tensor(list(std) if std is not None else [1.0, 1.0, 1.0], dtype=torch.float32)
        adapted = new_std[0] * (w / stds.view(1, 3, *spatial)).sum(1, keepdim=True)
    else:
        adapted = w.repeat(1, math.ceil(in_channels / 3), *spatial)[:, :in_channels] * (3 / in_channels)
    return adapted.to(weight.dtype), (new_mean if mean is not None else None), (new_std if std is not None else None)


def adapt_state_channels(
    state: dict[str, Tensor],
    model: nn.Module,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> tuple[dict[str, Tensor], list[float] | None, list[float] | None, bool]:
    """``state`` with its stem filter adapted to ``model``'s input channels.

    Returns (state, mean, std, adapted): the normalisation the adapted model takes, and
    whether anything changed (False: the file already has the model's channel count, or
    holds no stem filter for it).
    """
    key = stem_key(model)
    want = int(model.state_dict()[key].shape[1])
    theirs = state.get(key)
    if theirs is None or theirs.dim() < 3 or int(theirs.shape[1]) == want:
        return state, _list(mean), _list(std), False
    weight, new_mean, new_std = adapt_input_conv(theirs, want, mean, std)
    return {**state, key: weight}, new_mean, new_std, True


def describe_adaptation(in_channels: int, std: Sequence[float] | None = None) -> str:
    """How the stem was adapted, in a few words (the run's first lines say it)."""
    if in_channels == 1:
        folded = ", each channel's std folded in" if std is not None and len(set(std)) > 1 else ""
        return f"stem adapted to 1 channel: the RGB filters summed (timm's in_chans{folded})"
    return (
        f"stem adapted to {in_channels} channels: the RGB filters repeated and scaled by 3/{in_channels} "
        "(timm's in_chans)"
    )


def _list(values: Sequence[float] | None) -> list[float] | None:
    return None if values is None else [float(v) for v in values]
