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

The ``"full"`` level (:func:`dense_layer_recomputed`, :func:`norm_relu_recomputed`) goes
further for volumes, where a layer's second half (the 1x1 convolution's ``bn_size * k`` maps,
its BN and ReLU) outweighs the concatenation at small batches: it rebuilds the whole layer but
the 3x3 convolution in backward, running the 1x1 convolution a second time, and rebuilds the
BN-ReLU of the transitions and of the ImageNet stem from their inputs.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class _Rebuild:
    """Rebuilds one layer's tensors from its inputs, each kind from the one before it.

    "concat": the concatenation of ``features``; "activated": norm-relu of it; with
    ``conv``, ``norm2`` and ``relu2`` (the "full" level) also "inner": ``conv`` of
    "activated", and "inner_activated": norm2-relu2 of "inner". Each is computed when
    backward first unpacks it (under the forward's autocast state) and dropped after its
    last unpacking (counted at packing), so a layer's backward holds no more than it needs.
    Unpacked again (``retain_graph=True``), it is recomputed.
    """

    def __init__(self, features: list[Tensor], norm: nn.Module, relu: nn.Module, conv: nn.Module | None = None,
                 norm2: nn.Module | None = None, relu2: nn.Module | None = None) -> None:  # fmt: skip
        self.features, self.norm, self.relu = features, norm, relu
        self.conv, self.norm2, self.relu2 = conv, norm2, relu2
        device = features[0].device.type
        if device == "meta":  # the FLOP count's shape-only copy: torch has no autocast state for meta
            device = "cpu"
        self.autocast = (device, torch.get_autocast_dtype(device), torch.is_autocast_enabled(device))
        self.cache: dict[str, Tensor] = {}
        self.pending = {"concat": 0, "activated": 0, "inner": 0, "inner_activated": 0}

    def pack(self, kind: str) -> str:
        self.pending[kind] += 1
        return kind

    def take(self, kind: str) -> Tensor:
        device, dtype, enabled = self.autocast
        with torch.no_grad(), torch.autocast(device, dtype=dtype, enabled=enabled):
            value = self._value(kind)
        self.pending[kind] -= 1
        if self.pending[kind] <= 0:
            self.cache.pop(kind, None)
        return value

    def _value(self, kind: str) -> Tensor:
        """The tensor `kind`, kept in the cache only while backward still has to unpack it."""
        if kind in self.cache:
            return self.cache[kind]
        if kind == "concat":
            f = self.features
            value = torch.cat(f, 1) if len(f) > 1 else f[0]
        elif kind == "activated":
            value = _activate(self.norm, self.relu, self._value("concat"))
        elif kind == "inner":
            value = _convolve(self.conv, self._value("activated"))
        else:
            value = _activate(self.norm2, self.relu2, self._value("inner"))
        if self.pending[kind] > 0:
            self.cache[kind] = value
        return value


def _activate(norm: nn.Module, relu: nn.Module, x: Tensor) -> Tensor:
    x = renormalise(norm, x)
    # A replaced activation runs as the module it is (hooks included).
    return F.relu(x, inplace=True) if type(relu) is nn.ReLU else relu(x)


def _convolve(conv: nn.Module, x: Tensor) -> Tensor:
    """conv(x) again without firing its hooks a second time (a replaced conv runs as itself)."""
    if type(conv) in (nn.Conv1d, nn.Conv2d, nn.Conv3d):
        return conv._conv_forward(x, conv.weight, conv.bias)
    return conv(x)


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


def dense_layer_recomputed(features: list[Tensor], norm1: nn.Module, relu1: nn.Module, conv1: nn.Module,
                           norm2: nn.Module, relu2: nn.Module, conv2: nn.Module) -> Tensor:  # fmt: skip
    """conv2(relu2(norm2(conv1(relu1(norm1(cat(features))))))) keeping only `features` (and small
    tensors) for backward: everything up to conv2's input is rebuilt there, conv1 included."""
    rebuild = _Rebuild(list(features), norm1, relu1, conv1, norm2, relu2)
    x = torch.cat(features, 1) if len(features) > 1 else features[0]
    with _replace_saved(_same_data(x), rebuild, "concat"):
        x = norm1(x)
    with _replace_saved(_same_data(x), rebuild, "activated"):
        inner = conv1(relu1(x))
    with _replace_saved(_same_data(inner), rebuild, "inner"):
        x = norm2(inner)
    with _replace_saved(_same_data(x), rebuild, "inner_activated"):
        return conv2(relu2(x))


def norm_relu_recomputed(x: Tensor, norm: nn.Module, relu: nn.Module, then) -> Tensor:
    """then(relu(norm(x))) keeping `x` but not relu(norm(x)) for backward (rebuilt there from `x`)."""
    rebuild = _Rebuild([x], norm, relu)
    y = norm(x)
    with _replace_saved(_same_data(y), rebuild, "activated"):
        return then(relu(y))
