"""A whole dense block as one autograd Function over a shared feature buffer (CPU fast path).

Why: in a dense block every layer re-normalises all earlier feature maps, so BatchNorm,
ReLU and concatenation cost grows quadratically with depth and, on a CPU, takes about as
long as the convolutions. Here the block keeps one NHWC buffer (N, H, W, C_total); each
layer writes its k new maps into it (no ``torch.cat``), BN statistics of every map are
computed once (they are the same for every layer that reads the map), and BN+ReLU on the
layer's input and its backward run as the fused kernels of ``cpu_kernels``. The backward
accumulates input gradients in place into one buffer instead of summing per-layer copies.

Outputs, gradients and running statistics equal the plain path (``DenseLayer.forward``)
to float rounding (tested). With ``memory_efficient`` the BN+ReLU output is recomputed in
the backward pass instead of stored, so memory grows linearly with depth, at the cost of
one extra fused pass per layer (no convolution is recomputed).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from .cpu_kernels import bn_relu_backward_apply, bn_relu_backward_reduce, bn_relu_forward, column_mean_var

_conv_backward = torch.ops.aten.convolution_backward
_bn_backward = torch.ops.aten.native_batch_norm_backward
_threshold_backward = torch.ops.aten.threshold_backward


def eligible(block: nn.Module, x: Tensor) -> bool:
    """Whether the fused path can run this block on this input."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or x.dim() != 4:
        return False
    if torch.is_autocast_enabled("cpu") or torch.jit.is_scripting() or torch.jit.is_tracing():
        return False
    if torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export():
        return False
    for layer in block.values():
        norms = [layer.norm1] + ([layer.norm2] if layer.bottleneck else [])
        for bn in norms:
            if type(bn) is not nn.BatchNorm2d or not bn.affine or not bn.track_running_stats:
                return False
            if bn.weight.dtype != torch.float32 or bn.weight.device.type != "cpu":
                return False
    return True


class _Token:
    """Marks who is using a piece of workspace; the workspace is free once its token is gone."""


class Workspace:
    """Float32 scratch memory kept by a block between steps.

    Large fresh allocations cost page faults on every step (glibc returns big blocks to
    the OS on free); reusing them does not. A piece is handed out together with a token
    (the autograd graph's, for what backward still needs; a local one for scratch) and is
    reused only after that token has been garbage collected.
    """

    MAX_PIECES = 4

    def __init__(self) -> None:
        self.pieces: list[list] = []  # [tensor, weakref to token or None]

    def take(self, numel: int, token: _Token) -> Tensor:
        for piece in self.pieces:
            tensor, ref = piece
            if tensor.numel() >= numel and (ref is None or ref() is None):
                piece[1] = weakref.ref(token)
                return tensor[:numel]
        free = [p for p in self.pieces if p[1] is None or p[1]() is None]
        if len(self.pieces) >= self.MAX_PIECES and free:
            self.pieces.remove(min(free, key=lambda p: p[0].numel()))
        tensor = torch.empty(numel)
        self.pieces.append([tensor, weakref.ref(token)])
        return tensor


@dataclass
class _Plan:
    layers: list  # the DenseLayer modules, in order
    growth_rate: int
    training: bool
    memory_efficient: bool
    keep: bool  # store what backward needs (False under no_grad / inference)
    workspace: Workspace


def block_forward(block: nn.Module, x: Tensor) -> Tensor:
    """Run a ``DenseBlock`` through the fused path; returns (N, C_total, H, W), channels-last."""
    layers = list(block.values())
    params = [p for layer in layers for p in _layer_params(layer)]
    keep = torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in params))
    workspace = block.__dict__.setdefault("_workspace", Workspace())
    plan = _Plan(layers, block.growth_rate, block.training, any(m.memory_efficient for m in layers), keep, workspace)
    return _DenseBlockFunction.apply(x, plan, *params)


def _layer_params(layer) -> list[Tensor]:
    params = [layer.norm1.weight, layer.norm1.bias, layer.conv1.weight]
    if layer.bottleneck:
        params += [layer.norm2.weight, layer.norm2.bias, layer.conv2.weight]
    return params


def _momentum(bn: nn.BatchNorm2d) -> float:
    """The running-average factor BatchNorm would use for this step (and count the step)."""
    bn.num_batches_tracked.add_(1)
    return 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum


# What each layer keeps for backward, in the order it is saved.
_SAVED = ("a", "b", "invstd", "z", "y", "m2", "is2", "mask1", "mask2")


def _dropout_mask(like: Tensor, p: float) -> Tensor:
    # Same draws as F.dropout on CPU: bernoulli(1 - p) in the tensor's memory order, scaled.
    return torch.empty_like(like).bernoulli_(1 - p).div_(1 - p)


class _DenseBlockFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, plan: _Plan, *params: Tensor) -> Tensor:
        N, C0, H, W = x.shape
        k, L = plan.growth_rate, len(plan.layers)
        Ct, P = C0 + L * k, N * H * W
        buf = x.new_empty(N, H, W, Ct)
        buf[..., :C0].copy_(x.permute(0, 2, 3, 1))
        rows = buf.view(P, Ct)
        train = plan.training
        mean = var = None
        if train:  # batch statistics of every map, computed once
            mean, var = x.new_empty(Ct), x.new_empty(Ct)
            _chunk_stats(rows[:, :C0], mean[:C0], var[:C0])

        # BN+ReLU outputs: one arena for all layers when backward needs them, else one scratch.
        graph_token, scratch_token = _Token(), _Token()
        store = plan.keep and not plan.memory_efficient
        if store:
            arena = plan.workspace.take(P * sum(C0 + i * k for i in range(L)), graph_token)
        else:
            arena = plan.workspace.take(P * (Ct - k), scratch_token)
        offset = 0
        saved = []
        for i, layer in enumerate(plan.layers):
            C = C0 + i * k
            n1 = layer.norm1
            if train:
                invstd = (var[:C] + n1.eps).rsqrt()
                a = n1.weight * invstd
                b = n1.bias - mean[:C] * a
                f = _momentum(n1)
                n1.running_mean.mul_(1 - f).add_(mean[:C], alpha=f)
                n1.running_var.mul_(1 - f).add_(var[:C], alpha=f * P / max(P - 1, 1))
            else:
                invstd = (n1.running_var + n1.eps).rsqrt()
                a = n1.weight * invstd
                b = n1.bias - n1.running_mean * a
            a, b = a.detach(), b.detach()
            t = bn_relu_forward(rows[:, :C], a, b, out=arena[offset : offset + P * C].view(P, C))
            offset += P * C if store else 0
            t4 = t.view(N, H, W, C).permute(0, 3, 1, 2)
            z = F.conv2d(t4, layer.conv1.weight, None, 1, layer.conv1.padding)
            s = {"a": a, "b": b, "invstd": invstd.detach()}
            if train and layer.dropout > 0 and layer.dropout_after_conv1:
                s["mask1"] = _dropout_mask(z, layer.dropout)
                z = z * s["mask1"]
            if layer.bottleneck:
                n2 = layer.norm2
                f2 = _momentum(n2) if train else 0.0
                zn, m2, is2 = torch.native_batch_norm(
                    z, n2.weight, n2.bias, n2.running_mean, n2.running_var, train, f2, n2.eps
                )
                y = zn.relu_()
                out = F.conv2d(y, layer.conv2.weight, None, 1, 1)
                # memory-efficient: y is recomputed from z in backward (one cheap pass)
                s.update(z=z, y=None if plan.memory_efficient else y, m2=m2, is2=is2)
            else:
                out = z
            if train and layer.dropout > 0:
                s["mask2"] = _dropout_mask(out, layer.dropout)
                out = out * s["mask2"]
            buf[..., C : C + k].copy_(out.permute(0, 2, 3, 1))
            if train:
                _chunk_stats(rows[:, C : C + k], mean[C : C + k], var[C : C + k])
            saved.append(s)

        out = buf.permute(0, 3, 1, 2)  # (N, Ct, H, W) view, channels-last
        if plan.keep:  # everything through save_for_backward, so saved-tensor hooks see it
            per_layer = [s.get(key) for s in saved for key in _SAVED]
            ctx.save_for_backward(out, arena if store else None, mean, *params, *per_layer)
            ctx.plan, ctx.shape, ctx.num_params = plan, (N, C0, H, W), len(params)
            ctx.token = graph_token  # keeps the arena reserved while this graph can still run backward
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        out, arena, batch_mean, *rest = ctx.saved_tensors
        params, flat = rest[: ctx.num_params], rest[ctx.num_params :]
        n = len(_SAVED)
        saved = [dict(zip(_SAVED, flat[i * n : (i + 1) * n], strict=True)) for i in range(len(flat) // n)]
        plan, train = ctx.plan, ctx.plan.training
        N, C0, H, W = ctx.shape
        k, L = plan.growth_rate, len(plan.layers)
        Ct, P = C0 + L * k, N * H * W
        rows = out.permute(0, 2, 3, 1).reshape(P, Ct)  # a view of the forward buffer
        token = _Token()
        grad = plan.workspace.take(P * Ct, token).view(N, H, W, Ct)  # gradient w.r.t. every map
        grad.copy_(grad_out.permute(0, 2, 3, 1))
        scratch = None if arena is not None else plan.workspace.take(P * (Ct - k), token)
        grad_rows = grad.view(P, Ct)
        offsets, index = [], 0
        for layer in plan.layers:
            offsets.append(index)
            index += len(_layer_params(layer))

        per_layer: list[list[Tensor | None]] = [[] for _ in range(L)]
        for i in reversed(range(L)):
            layer, s, C = plan.layers[i], saved[i], C0 + i * k
            w1 = params[offsets[i] + 2]
            d_out = grad[..., C : C + k].permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
            if s["mask2"] is not None:
                d_out = d_out * s["mask2"]
            if layer.bottleneck:
                g2, w2, n2 = params[offsets[i] + 3], params[offsets[i] + 5], layer.norm2
                y = (
                    s["y"]
                    if s["y"] is not None
                    else _bn_relu_again(s["z"], s["m2"], s["is2"], g2, params[offsets[i] + 4], n2, train)
                )
                dy, dw2, _ = _conv_backward(
                    d_out, y, w2, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, [True, True, False]
                )
                dzn = _threshold_backward(dy, y, 0)
                dz, dg2, db2 = _bn_backward(
                    dzn, s["z"], g2, n2.running_mean, n2.running_var, s["m2"], s["is2"], train, n2.eps,
                    [True, True, True],
                )  # fmt: skip
            else:
                dz, dg2, db2, dw2 = d_out, None, None, None
            if s["mask1"] is not None:
                dz = dz * s["mask1"]
            x_rows = rows[:, :C]
            if arena is not None:
                start = P * (C0 * i + k * i * (i - 1) // 2)  # sum of P * C_j over earlier layers
                t = arena[start : start + P * C].view(P, C)
            else:
                t = bn_relu_forward(x_rows, s["a"], s["b"], out=scratch[: P * C].view(P, C))
            t4 = t.view(N, H, W, C).permute(0, 3, 1, 2)
            pad = list(layer.conv1.padding)
            dt4, dw1, _ = _conv_backward(dz, t4, w1, None, [1, 1], pad, [1, 1], False, [0, 0], 1, [True, True, False])
            dt = dt4.permute(0, 2, 3, 1).reshape(P, C)
            if dt.stride(1) != 1:
                dt = dt.contiguous()
            s1, s2 = bn_relu_backward_reduce(dt, x_rows, s["a"], s["b"])
            a, invstd = s["a"].double(), s["invstd"].double()
            if train:
                mean = batch_mean[:C].double()
                dgamma = invstd * (s2 - mean * s1)  # sum of g * x_hat
                k1 = (-a * s1 / P + a * mean * invstd * dgamma / P).float()
                k2 = (-a * invstd * dgamma / P).float()
            else:
                dgamma = invstd * (s2 - layer.norm1.running_mean.double() * s1)
                k1 = k2 = torch.zeros(C)
            bn_relu_backward_apply(dt, x_rows, s["a"], s["b"], k1, k2, grad_rows[:, :C])
            entry = [dgamma.float(), s1.float(), dw1]
            if layer.bottleneck:
                entry += [dg2, db2, dw2]
            per_layer[i] = entry

        grads = [g for entry in per_layer for g in entry]
        dx = grad[..., :C0].permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
        return (dx, None, *grads)


def _bn_relu_again(z: Tensor, mean: Tensor, invstd: Tensor, weight: Tensor, bias: Tensor, bn, train: bool) -> Tensor:
    """relu(BN(z)) as the forward computed it (batch statistics in training, running ones in eval)."""
    if not train:
        mean, invstd = bn.running_mean, (bn.running_var + bn.eps).rsqrt()
    scale = weight * invstd
    shift = bias - mean * scale
    return torch.addcmul(shift.view(1, -1, 1, 1), z, scale.view(1, -1, 1, 1)).relu_()


def _chunk_stats(rows: Tensor, mean_out: Tensor, var_out: Tensor) -> None:
    mean, var = column_mean_var(rows)
    mean_out.copy_(mean)
    var_out.copy_(var)
