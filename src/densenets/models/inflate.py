"""3-D DenseNets from 2-D weights: every kernel inflated along a new depth axis.

``"center"`` puts each 2-D kernel k x k in the middle depth slice of a k x k x k kernel (zeros
elsewhere). With the convs' zero padding, a volume that is constant along depth then gives
exactly the 2-D network's output on one slice: each depth position of a conv sees the 2-D
conv of the slice, max- and average-pooling over depth of a constant keep it, BatchNorm is
per channel, and the global average over depth of a constant is that constant. ``"mean"``
repeats the kernel over depth divided by the depth (I3D, Carreira & Zisserman 2017): on a
constant volume it agrees away from the depth borders, where the zero padding enters.
BatchNorm and the classifier are copied unchanged.
"""

from __future__ import annotations

from torch import Tensor, nn

from ..errors import ConfigError

INFLATIONS = ("center", "mean")
DEFAULT_INFLATION = "mean"  # fine-tuned better than center with two seeds per arm (docs/volumes.md)


def inflate_kernel(weight: Tensor, depth: int, mode: str = DEFAULT_INFLATION) -> Tensor:
    """(O, I, k, k) -> (O, I, depth, k, k) by ``mode`` ("center" or "mean")."""
    if mode not in INFLATIONS:
        raise ConfigError(f"inflate must be one of {', '.join(INFLATIONS)}; got {mode!r}")
    if mode == "mean":
        return weight.unsqueeze(2).repeat(1, 1, depth, 1, 1) / depth
    if depth % 2 == 0:
        raise ConfigError(f"inflate='center' needs an odd kernel depth (a middle slice), got {depth}")
    out = weight.new_zeros(*weight.shape[:2], depth, *weight.shape[2:])
    out[:, :, depth // 2] = weight
    return out


def needs_inflation(state: dict[str, Tensor], model: nn.Module) -> bool:
    """Whether ``state`` holds 2-D kernels where ``model`` has 3-D ones."""
    own = model.state_dict()
    return any(k in own and v.dim() == 4 and own[k].dim() == 5 for k, v in state.items())


def inflate_state_dict(state: dict[str, Tensor], model: nn.Module, mode: str = DEFAULT_INFLATION) -> dict[str, Tensor]:
    """``state`` (a 2-D network's) with each conv kernel inflated to the depth of ``model``'s."""
    own = model.state_dict()
    out = {}
    for key, value in state.items():
        target = own.get(key)
        if target is not None and value.dim() == 4 and target.dim() == 5:
            value = inflate_kernel(value, int(target.shape[2]), mode)
        out[key] = value
    return out


def describe_inflation(mode: str, chosen: bool = True) -> str:
    """What was done, in one line (the loader's note)."""
    how = {
        "center": "each 2-D kernel in the middle depth slice (a depth-constant volume gives the 2-D output)",
        "mean": "each 2-D kernel repeated over depth and divided by the depth (I3D)",
    }[mode]
    default = "" if chosen else " (the default; inflate='center' keeps the 2-D output on depth-constant volumes)"
    return f"2-D weights inflated to 3-D, inflate={mode!r}: {how}; BatchNorm and classifier copied{default}"
