"""Memory-efficient dense layers: recompute concat-BN-ReLU in backward, not the convolution.

A dense layer's first BN and ReLU run on the concatenation of every earlier map in the
block, so what autograd keeps for them (the concatenation for BN, the BN-ReLU output for
ReLU and the 1x1 convolution) grows quadratically with depth. Pleiss et al. (2017) keep
only the layer's inputs and recompute the cheap part -- concatenation, BatchNorm and ReLU
-- during backward, while the convolution's backward runs once, from the recomputed input.

Here that is done with ``torch.autograd.graph.saved_tensors_hooks`` around the layer's own
modules: the big tensors those modules save are replaced by a recipe that rebuilds them
when backward first asks, and kept until that layer's backward is done. The modules run
as usual in forward (hooks, parametrizations, any BatchNorm type), and the convolution
is not run again, unlike ``torch.utils.checkpoint``, which recomputes it as well.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class _Rebuild:
    """Rebuilds one layer's concatenation ("concat") and BN-ReLU output ("activated").

    Each is computed when backward first unpacks it and dropped after its last unpacking
    (counted at packing), so a layer's backward holds no more than it needs. Unpacked
    again (``retain_graph=True``), it is recomputed.
    """

    def __init__(self, features: list[Tensor], norm: nn.Module, relu: nn.Module) -> None:
        self.features, self.norm, self.relu = features, norm, relu
        self.cache: dict[str, Tensor] = {}
        self.pending = {"concat": 0, "activated": 0}

    def pack(self, kind: str) -> str:
        self.pending[kind] += 1
        return kind

    def take(self, kind: str) -> Tensor:
        value = self._value(kind)
        self.pending[kind] -= 1
        if self.pending[kind] <= 0:
            self.cache.pop(kind, None)
        return value

    def _value(self, kind: str) -> Tensor:
        if kind not in self.cache:
            with torch.no_grad():
                if kind == "concat":
                    f = self.features
                    self.cache[kind] = torch.cat(f, 1) if len(f) > 1 else f[0]
                else:
                    x = renormalise(self.norm, self._value("concat"))
                    # A replaced activation runs as the module it is (hooks included).
                    self.cache[kind] = F.relu(x, inplace=True) if type(self.relu) is nn.ReLU else self.relu(x)
        return self.cache[kind]


def renormalise(bn: nn.Module, x: Tensor) -> Tensor:
    """BN of x as in the forward pass, without updating the running statistics again.

    In training mode the batch statistics are computed again from the same input (the same
    arithmetic, so the same values); the running-statistic update lands on throwaway copies.
    A BatchNorm subclass (e.g. SyncBatchNorm, whose statistics come from every rank) runs
    its own forward with those copies swapped in.
    """
    updates = bn.training and bn.running_mean is not None  # this forward moves the running statistics
    if type(bn) in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d):
        mean, var = bn.running_mean, bn.running_var
        if updates:
            mean, var = mean.clone(), var.clone()
        momentum = 0.0 if bn.momentum is None else bn.momentum
        return F.batch_norm(x, mean, var, bn.weight, bn.bias, bn.training or mean is None, momentum, bn.eps)
    if not updates:
        return bn(x)
    kept = {name: bn._buffers[name] for name in ("running_mean", "running_var", "num_batches_tracked")}
    try:
        for name, buffer in kept.items():
            if buffer is not None:
                bn._buffers[name] = buffer.clone()
        return bn(x)
    finally:
        bn._buffers.update(kept)


@contextlib.contextmanager
def _replace_saved(matches, rebuild: _Rebuild, kind: str):
    """Inside: a saved tensor that `matches` is kept as a note to rebuild `kind`, not as data."""

    def pack(t: Tensor):
        return (True, rebuild.pack(kind)) if matches(t) else (False, t)

    def unpack(packed):
        is_recipe, value = packed
        return rebuild.take(value) if is_recipe else value

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        yield


def _same_data(a: Tensor):
    ptr, shape = a.data_ptr(), a.shape
    return lambda t: t.data_ptr() == ptr and t.shape == shape


def first_conv_recomputed(features: list[Tensor], norm: nn.Module, relu: nn.Module, conv: nn.Module) -> Tensor:
    """conv(relu(norm(cat(features)))) keeping only `features` (and small tensors) for backward."""
    rebuild = _Rebuild(list(features), norm, relu)  # a copy: the block appends to its list
    x = torch.cat(features, 1) if len(features) > 1 else features[0]
    with _replace_saved(_same_data(x), rebuild, "concat"):
        x = norm(x)
    with _replace_saved(_same_data(x), rebuild, "activated"):
        x = relu(x)
        return conv(x)
