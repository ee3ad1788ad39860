"""Orthogonalised updates for convolution filters: Muon (Jordan et al., 2024) as airbench94_muon
applies it to a small CIFAR network, beside plain SGD for everything else.

A group marked ``orthogonal`` keeps a (Nesterov) momentum buffer per filter bank as SGD does,
then replaces the update by the nearest semi-orthogonal matrix of the same shape (all singular
values near 1), found by a few quintic Newton-Schulz iterations on the bank flattened to
(out channels, in channels x kernel). Before each step the bank is rescaled to Frobenius norm
sqrt(out channels), so a step of ``lr`` turns it by about ``lr`` of its norm whatever its size:
this is sound only where a BatchNorm follows the convolution (its output's scale is then
normalised away), as in every DenseNet, and it makes weight decay on the filters moot.
torch's own ``torch.optim.Muon`` takes 2-D parameters only; the other groups go through torch's
``torch.optim.sgd.sgd``, exactly as ``torch.optim.SGD`` would step them.
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch
from torch.optim.sgd import sgd
from torch.utils.flop_counter import FlopCounterMode

NEWTON_SCHULZ = (3.4445, -4.7750, 2.0315)  # quintic coefficients (Jordan et al.): fast growth near 0
NEWTON_SCHULZ_STEPS = 5


def orthogonalise(g: torch.Tensor, steps: int = NEWTON_SCHULZ_STEPS) -> torch.Tensor:
    """About U V^T for each matrix of ``g`` (..., m, n) = U S V^T, in fp32 (singular values in ~[0.7, 1.2])."""
    a, b, c = NEWTON_SCHULZ
    x = g.float()
    tall = x.shape[-2] > x.shape[-1]
    if tall:  # iterate on the wide side: the Gram matrix is the smaller one
        x = x.mT
    x = x / (torch.linalg.matrix_norm(x, keepdim=True) + 1e-7)  # singular values into (0, 1]
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.mT if tall else x


class FilterMuon(torch.optim.Optimizer):
    """Muon for the groups marked ``orthogonal=True`` (filter banks of 3 or more dimensions), SGD for the rest.

    Args:
        params: Parameter groups; an ``orthogonal`` group takes ``lr`` as the fraction of its
            banks' norm each step moves (scaled up by sqrt(m / n) for a tall m x n bank, so
            every bank moves by about that fraction), and ignores ``weight_decay``.
        lr, momentum, nesterov, weight_decay: As ``torch.optim.SGD``'s (dampening 0).
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, nesterov: bool = True, weight_decay: float = 0.0):
        defaults = {"lr": lr, "momentum": momentum, "nesterov": nesterov, "weight_decay": weight_decay}
        super().__init__(params, {**defaults, "orthogonal": False})
        for group in self.param_groups:
            if group["orthogonal"] and any(p.ndim < 3 for p in group["params"]):
                raise ValueError("orthogonal groups take convolution filters (3 or more dimensions) only")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params or (group["orthogonal"] and group["lr"] == 0):  # a frozen bank keeps its scale too
                continue
            buffers = [self.state[p].get("momentum_buffer") for p in params]
            if group["orthogonal"]:
                self._orthogonal_step(group, params, buffers)
                continue
            sgd(
                params,
                [p.grad for p in params],
                buffers,
                weight_decay=group["weight_decay"],
                momentum=group["momentum"],
                lr=group["lr"],
                dampening=0.0,
                nesterov=group["nesterov"],
                maximize=False,
            )
            for p, buf in zip(params, buffers, strict=True):
                self.state[p]["momentum_buffer"] = buf
        return loss

    def _orthogonal_step(self, group: dict, params: list, buffers: list) -> None:
        momentum = group["momentum"]
        by_shape: dict[torch.Size, list[tuple[torch.Tensor, torch.Tensor]]] = defaultdict(list)
        for p, buf in zip(params, buffers, strict=True):
            if buf is None:
                buf = self.state[p]["momentum_buffer"] = torch.zeros_like(p)
            buf.mul_(momentum).add_(p.grad)
            update = p.grad.add(buf, alpha=momentum) if group["nesterov"] else buf
            by_shape[p.shape].append((p, update))
        for shape, pairs in by_shape.items():  # banks of one shape orthogonalised together, as a batch
            m, n = shape[0], math.prod(shape[1:])
            steps = orthogonalise(torch.stack([u.reshape(m, n) for _, u in pairs]))
            scale = group["lr"] * math.sqrt(max(1.0, m / n))
            for (p, _), step in zip(pairs, steps, strict=True):
                p.mul_(math.sqrt(m) / p.norm().clamp(min=1e-12))
                p.add_(step.view_as(p).to(p.dtype), alpha=-scale)

    def update_flops(self) -> int:
        """FLOPs of the matrix products of one step's orthogonalisation (flop_counter, on meta tensors)."""
        shapes = defaultdict(int)
        for group in self.param_groups:
            if group["orthogonal"]:
                for p in group["params"]:
                    shapes[(p.shape[0], math.prod(p.shape[1:]))] += 1
        with FlopCounterMode(display=False) as counter:
            for (m, n), count in shapes.items():
                orthogonalise(torch.empty(count, m, n, device="meta"))
        return int(counter.get_total_flops())
