"""One training step, one training epoch, one evaluation: functions that return dicts."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..data.determinism import derive_seed
from ..errors import TrainingDiverged
from .distributed import all_gather_arrays, all_reduce_sum
from .multilabel import masked_bce, multilabel_metrics, one_vs_rest_auroc
from .recipes import Recipe
from .runtime import Runtime
from .schedule import lr_at
from .tta import tta_views

if TYPE_CHECKING:
    from .flops import RunCost


def new_epoch_sums() -> dict:
    """Running sums of an epoch; ``data_seconds``: time spent waiting for batches."""
    return {"loss": 0.0, "correct": 0.0, "count": 0.0, "seconds": 0.0, "data_seconds": 0.0}


@dataclass
class TrainState:
    """What changes during training; everything in it goes into a checkpoint."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None = None
    step: int = 0  # optimiser steps taken
    epoch: int = 0  # epochs completed
    best: dict = field(default_factory=dict)
    # Running sums of the epoch in progress, so a mid-epoch resume reports the same metrics.
    epoch_sums: dict = field(default_factory=new_epoch_sums)
    stop_requested: bool = False  # set by the SIGINT handler
    # The exponential moving average of the weights (recipe ema_decay), updated after every step.
    ema: torch.optim.swa_utils.AveragedModel | None = None
    # FLOPs and seconds spent so far (:class:`.flops.RunCost` keeps it)
    cost: dict = field(default_factory=dict)

    def result_model(self, model: nn.Module) -> nn.Module:
        """What the run evaluates and reports: the EMA of the weights when kept, else ``model``."""
        return self.ema.module if self.ema is not None else model


def train_step(
    state: TrainState,
    images: torch.Tensor,
    targets: torch.Tensor,
    runtime: Runtime,
    lr: float,
    label_smoothing: float = 0.0,
    accum_steps: int = 1,
    pos_weight: torch.Tensor | None = None,
):
    """Forward, backward and SGD step; returns (summed loss, correct predictions) as tensors.

    Class-index targets (N,) train with cross-entropy; float targets (N, C) are multi-label:
    binary cross-entropy over the known cells (NaN: unknown, see :func:`masked_bce`), positives
    weighted by ``pos_weight`` (C,), and no "correct" count (0).
    With ``accum_steps`` > 1 the batch runs as that many chunks whose gradients add up
    before the one optimiser step (the mean loss over the whole batch, as without chunks).
    A parameter group with ``frozen_epochs`` gets lr 0 (no update) during the first epochs; one
    with ``lr_scale`` gets ``lr`` times it (``bias_lr_scale``, ``freeze_norm_scale``).
    """
    for group in state.optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0) if state.epoch >= group.get("frozen_epochs", 0) else 0.0
    state.optimizer.zero_grad(set_to_none=True)
    multilabel = targets.is_floating_point()
    # what the batch mean is over: images, or the known cells of a multi-label batch
    weight = (lambda y: (~torch.isnan(y)).sum().clamp(min=1)) if multilabel else (lambda y: y.shape[0])
    batch_weight = weight(targets)
    loss_sum = torch.zeros((), device=targets.device)
    correct = torch.zeros((), dtype=torch.long, device=targets.device)
    for x, y in zip(images.chunk(accum_steps), targets.chunk(accum_steps), strict=True):
        with runtime.autocast():
            logits = state.model(x)
            if multilabel:
                smoothed = y * (1 - label_smoothing) + label_smoothing / 2  # NaN stays NaN
                loss = masked_bce(logits.float(), smoothed, pos_weight)
            else:
                loss = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)
        share = weight(y) / batch_weight  # chunk mean -> its share of the batch mean
        scaled = loss * share
        (state.scaler.scale(scaled) if state.scaler is not None else scaled).backward()
        loss_sum += loss.detach() * share * targets.shape[0]
        if not multilabel:
            correct += (logits.detach().argmax(1) == y).sum()
    if state.scaler is not None:
        state.scaler.step(state.optimizer)
        state.scaler.update()
    else:
        state.optimizer.step()
    if state.ema is not None:
        state.ema.update_parameters(state.model)
    return loss_sum, correct


def train_one_epoch(
    state: TrainState,
    loader,
    recipe: Recipe,
    runtime: Runtime,
    steps_per_epoch: int,
    on_step: Callable[[TrainState], None] | None = None,
    show_progress: bool = True,
    pos_weight: torch.Tensor | None = None,
    cost: RunCost | None = None,
) -> dict:
    """Train until the end of the epoch (or ``recipe.max_steps``); returns the epoch's metrics
    (multi-label data: the loss, no error). ``cost`` counts each step's FLOPs."""
    state.model.train()
    sums = state.epoch_sums
    start_step = state.step - state.epoch * steps_per_epoch
    total = steps_per_epoch - start_step
    bar = tqdm(
        total=total,
        desc=f"epoch {state.epoch + 1}/{recipe.epochs}",
        disable=not show_progress or not runtime.dist.is_main or None,
        leave=False,
        file=sys.stderr,
        dynamic_ncols=True,
    )
    tick = waiting_since = time.perf_counter()
    multilabel = False
    for images, targets in loader:
        if recipe.max_steps and state.step >= recipe.max_steps:
            break
        images, targets = runtime.to_device(images), targets.to(runtime.device, non_blocking=True)
        sums["data_seconds"] = sums.get("data_seconds", 0.0) + time.perf_counter() - waiting_since
        # Dropout masks depend only on (seed, step, rank): resume reproduces them exactly.
        torch.manual_seed(derive_seed(recipe.seed, "step", state.step, runtime.dist.rank))
        lr = lr_at(state.step, recipe, steps_per_epoch)
        multilabel = targets.is_floating_point()
        loss_sum, correct = train_step(
            state, images, targets, runtime, lr, recipe.label_smoothing, recipe.accum_steps, pos_weight
        )
        loss_value = loss_sum.item()
        if not math.isfinite(loss_value):
            raise TrainingDiverged(f"the loss became {loss_value} at step {state.step + 1} (epoch {state.epoch + 1})")
        state.step += 1
        now = time.perf_counter()
        sums["loss"] += loss_value
        sums["correct"] += correct.item()
        sums["count"] += targets.shape[0]
        sums["seconds"] += now - tick
        tick = now
        if cost is not None:  # a new shape is counted once (seconds on a big model): not training time
            cost.train_step(images, targets)
            tick = time.perf_counter()
        bar.update(1)
        accuracy = {} if multilabel else {"acc": f"{100 * sums['correct'] / sums['count']:.1f}%"}
        bar.set_postfix(
            loss=f"{sums['loss'] / sums['count']:.3f}",
            **accuracy,
            img_s=f"{sums['count'] * runtime.dist.world_size / max(sums['seconds'], 1e-9):.0f}",
            lr=f"{lr:g}",
        )
        if on_step is not None:
            on_step(state)
        if state.stop_requested:
            break
        waiting_since = time.perf_counter()
    bar.close()
    loss, correct, count, seconds, data_seconds = all_reduce_sum(
        [sums["loss"], sums["correct"], sums["count"], sums["seconds"], sums.get("data_seconds", 0.0)], runtime.device
    )
    seconds /= runtime.dist.world_size
    data_seconds /= runtime.dist.world_size
    count = max(count, 1.0)
    return {
        "train_loss": loss / count,
        **({} if multilabel else {"train_error": 100.0 * (1.0 - correct / count)}),
        "train_images": int(count),
        "train_seconds": seconds,
        "data_wait_seconds": data_seconds,
        "images_per_s": count / max(seconds, 1e-9),
        "lr": lr_at(max(state.step - 1, 0), recipe, steps_per_epoch),
    }


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader,
    runtime: Runtime,
    confusion: bool = False,
    cost: RunCost | None = None,
    tta: str = "none",
) -> dict:
    """Loss, top-1/top-5 accuracy and error (%) over a loader, summed over all ranks; for
    multi-label targets (float (N, C)) the loss, AUROC and AP instead (:func:`_multilabel_result`).

    Batches of shape (N, n_crops, C, H, W) are ten-crop testing: the crops' logits are
    averaged (the authors sum them: the same argmax) and the loss is that of the mean.
    With ``confusion``, also the confusion matrix (rows: true class), per-class accuracy and each
    class's one-vs-rest AUROC of the softmax with their macro mean (``auroc``, ``auroc_macro``).
    ``cost`` counts each batch's forward FLOPs. ``tta`` (:mod:`.tta`): each image's logits
    averaged over its mirrored / shifted views, like the crops.
    """
    model.eval()
    loss_sum = correct1 = correct5 = count = 0.0
    multilabel_batches: list[tuple[torch.Tensor, torch.Tensor]] = []  # (logits, targets) on the CPU
    scored: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # with confusion: (softmax, top-1, targets)
    for images, targets in loader:
        targets = targets.to(runtime.device)
        if tta != "none":
            images = tta_views(images, tta)  # (N, V, C, H, W): averaged as crops are
        if cost is not None:
            cost.eval_batch(model, images.flatten(0, 1) if _has_views(model, images) else images)
        logits = _logits(model, images, runtime)
        if targets.is_floating_point():
            multilabel_batches.append((logits.cpu(), targets.cpu()))
            continue
        loss_sum += F.cross_entropy(logits, targets, reduction="sum").item()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        correct1 += (top[:, 0] == targets).sum().item()
        correct5 += (top == targets[:, None]).any(dim=1).sum().item()
        count += targets.numel()
        if confusion:
            scored.append((logits.softmax(1).cpu(), top[:, 0].cpu(), targets.cpu()))
    if multilabel_batches:
        return _multilabel_result(multilabel_batches)
    loss_sum, correct1, correct5, count = all_reduce_sum([loss_sum, correct1, correct5, count], runtime.device)
    count = max(count, 1.0)
    result = {
        "loss": loss_sum / count,
        "top1": 100.0 * correct1 / count,
        "top5": 100.0 * correct5 / count,
        "error": 100.0 * (1.0 - correct1 / count),
        "count": int(count),
    }
    if scored:
        probs, predicted, labels = (torch.cat(parts) for parts in zip(*scored, strict=True))
        n = probs.shape[1]
        matrix = torch.bincount(labels * n + predicted, minlength=n * n).view(n, n)
        result["confusion"] = matrix.tolist()
        result["per_class_accuracy"] = (100.0 * matrix.diag() / matrix.sum(1).clamp(min=1)).tolist()
        result.update(one_vs_rest_auroc(probs.numpy(), labels.numpy()))
    return result


def _multilabel_result(batches: list[tuple[torch.Tensor, torch.Tensor]]) -> dict:
    """Masked BCE, AUROC and AP over every rank's outputs; the sigmoid ``probs`` and ``targets``
    (N, C) are kept for thresholds and curves."""
    logits, targets = all_gather_arrays([torch.cat([x for x, _ in batches]), torch.cat([t for _, t in batches])])
    probs = logits.sigmoid()
    metrics = multilabel_metrics(probs.numpy(), targets.numpy())
    return {
        "loss": masked_bce(logits, targets).item(),
        **metrics,
        "count": int(targets.shape[0]),
        "probs": probs.numpy(),
        "targets": targets.numpy(),
    }


def _logits(model: nn.Module, images: torch.Tensor, runtime: Runtime) -> torch.Tensor:
    crops = _has_views(model, images)
    if crops:
        n, c = images.shape[:2]
        images = images.flatten(0, 1)
    images = runtime.to_device(images)
    with runtime.autocast():
        logits = model(images).float()
    if crops:
        # The authors' code (fb.resnet.torch) sums the crops' outputs, the logits, before
        # the argmax; their mean ranks classes the same and keeps the loss on the usual scale.
        logits = logits.view(n, c, -1).mean(1)
    return logits


def _has_views(model: nn.Module, images: torch.Tensor) -> bool:
    """(N, V, C, *spatial): ten crops or TTA views of each image, not a batch of volumes."""
    return images.dim() == _spatial_dims(model) + 3


def _spatial_dims(model: nn.Module) -> int:
    """The spatial dimensions a (DDP-, EMA- or compile-wrapped) model takes: 3 for volumes, else 2."""
    inner = getattr(model, "module", model)
    return getattr(getattr(inner, "config", None), "spatial_dims", 2)
