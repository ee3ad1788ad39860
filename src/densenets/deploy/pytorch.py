"""``optimize_for_inference(model)`` (the PyTorch backend): an eval-only DenseNet with BatchNorm folded away.

What changes against the training module (results equal to float rounding, tested):

- every BatchNorm that follows a conv (the stem's, each bottleneck's second) is folded
  into that conv's weights and a bias;
- every BatchNorm that precedes a ReLU (on the block's concatenated maps, in transitions
  and the head) becomes one multiply-add (``torch.addcmul``) and an in-place ReLU;
- each block writes its layers' outputs into one preallocated NHWC buffer instead of
  concatenating, so the quadratic copying of ``torch.cat`` disappears;
- transitions pool before their 1x1 conv (both are linear: same result, 4x fewer FLOPs);
- everything runs channels-last.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models.batchnorm import batchnorm_scale_shift
from ..models.densenet import DenseBlock, DenseLayer, DenseNet, Transition
from .folding import fold_conv_bn


def _fold_after(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """conv followed by BN, as one channels-last conv: (weight, bias)."""
    weight, bias = fold_conv_bn(conv, bn)
    return weight.contiguous(memory_format=torch.channels_last), bias


def bn_relu_forward(rows: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """relu(a * rows + b) for rows (P, C), a strided view; returns a new contiguous (P, C)."""
    return torch.addcmul(b, rows, a).relu_()


def _cl(weight: Tensor) -> Tensor:
    return weight.detach().clone().contiguous(memory_format=torch.channels_last)


class _Layer(nn.Module):
    def __init__(self, layer: DenseLayer) -> None:
        super().__init__()
        a, b = batchnorm_scale_shift(layer.norm1)
        self.register_buffer("a", a)
        self.register_buffer("b", b)
        self.bottleneck = layer.bottleneck
        self.padding = layer.conv1.padding
        if layer.bottleneck:
            w1, b1 = _fold_after(layer.conv1, layer.norm2)
            self.register_buffer("w1", w1)
            self.register_buffer("b1", b1)
            self.register_buffer("w2", _cl(layer.conv2.weight))
        else:
            self.register_buffer("w1", _cl(layer.conv1.weight))

    def forward(self, rows: Tensor, shape: tuple[int, int, int]) -> Tensor:
        """rows: (P, C) inputs of this layer, a view of the block buffer; returns (N, k, H, W)."""
        N, H, W = shape
        t = bn_relu_forward(rows, self.a, self.b).view(N, H, W, -1).permute(0, 3, 1, 2)
        if not self.bottleneck:
            return F.conv2d(t, self.w1, None, 1, self.padding)
        z = F.conv2d(t, self.w1, self.b1).relu_()
        return F.conv2d(z, self.w2, None, 1, 1)


class _Block(nn.Module):
    def __init__(self, block: DenseBlock) -> None:
        super().__init__()
        self.layers = nn.ModuleList(_Layer(layer) for layer in block.values())
        self.in_channels, self.out_channels, self.growth = block.in_channels, block.out_channels, block.growth_rate

    def forward(self, x: Tensor) -> Tensor:
        N, C0, H, W = x.shape
        buf = x.new_empty(N, H, W, self.out_channels)
        buf[..., :C0].copy_(x.permute(0, 2, 3, 1))
        rows = buf.view(N * H * W, self.out_channels)
        C = C0
        for layer in self.layers:
            out = layer(rows[:, :C], (N, H, W))
            buf[..., C : C + self.growth].copy_(out.permute(0, 2, 3, 1))
            C += self.growth
        return buf.permute(0, 3, 1, 2)  # (N, C, H, W) channels-last view


class _Transition(nn.Module):
    def __init__(self, transition: Transition) -> None:
        super().__init__()
        a, b = batchnorm_scale_shift(transition.norm)
        self.register_buffer("a", a)
        self.register_buffer("b", b)
        self.register_buffer("w", _cl(transition.conv.weight))

    def forward(self, x: Tensor) -> Tensor:
        N, C, H, W = x.shape
        t = bn_relu_forward(x.permute(0, 2, 3, 1).reshape(N * H * W, C), self.a, self.b)
        t = t.view(N, H, W, C).permute(0, 3, 1, 2)
        return F.conv2d(F.avg_pool2d(t, 2), self.w)


class _EvalOnly(nn.Module):
    """A module that stays in eval mode: ``train(True)`` is refused in one line."""

    def train(self, mode: bool = True) -> _EvalOnly:
        if mode:
            raise RuntimeError("an optimize_for_inference model is eval-only; train the original module")
        return super().train(False)


class InferenceDenseNet(_EvalOnly):
    """Eval-only DenseNet from :func:`optimize_for_inference`; same outputs as the source model."""

    def __init__(self, model: DenseNet) -> None:
        super().__init__()
        model = copy.deepcopy(model).eval().float()
        self.config = model.config
        f = model.features
        self.imagenet_stem = model.config.stem == "imagenet"
        if self.imagenet_stem:
            w, b = _fold_after(f.conv0, f.norm0)
            self.register_buffer("stem_w", w)
            self.register_buffer("stem_b", b)
        else:
            self.register_buffer("stem_w", _cl(f.conv0.weight))
            self.stem_b = None
        stages = []
        for module in f.children():
            if isinstance(module, DenseBlock):
                stages.append(_Block(module))
            elif isinstance(module, Transition):
                stages.append(_Transition(module))
        self.stages = nn.ModuleList(stages)
        a, b = batchnorm_scale_shift(f.norm5)
        self.register_buffer("head_a", a)
        self.register_buffer("head_b", b)
        self.classifier = copy.deepcopy(model.classifier)
        self.num_features = model.num_features
        self.train(False)

    @torch.inference_mode()
    def forward(self, x: Tensor) -> Tensor:
        x = x.contiguous(memory_format=torch.channels_last).to(self.stem_w.dtype)
        if self.imagenet_stem:
            x = F.max_pool2d(F.conv2d(x, self.stem_w, self.stem_b, 2, 3).relu_(), 3, 2, 1)
        else:
            x = F.conv2d(x, self.stem_w, None, 1, 1)
        for stage in self.stages:
            x = stage(x)
        N, C, H, W = x.shape
        t = bn_relu_forward(x.permute(0, 2, 3, 1).reshape(N * H * W, C), self.head_a, self.head_b)
        return self.classifier(t.view(N, H * W, C).mean(1)).float()


class InferenceCopy(_EvalOnly):
    """Eval-only copy of a network without a folded form here (the ResNet baselines, 1-D and 3-D
    DenseNets) in ``dtype``:
    bf16 weights and activations, fp32 logits, like :class:`InferenceDenseNet` at bf16."""

    def __init__(self, model: nn.Module, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.model = copy.deepcopy(model).eval().to(dtype)
        self.config = model.config
        self.dtype = dtype
        self.train(False)

    @torch.inference_mode()
    def forward(self, x: Tensor) -> Tensor:
        return self.model(x.to(self.dtype)).float()
