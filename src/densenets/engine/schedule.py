"""The learning rate as a function of the step, so a resumed run needs only the step."""

from __future__ import annotations

import math

from .recipes import Recipe


def milestone_epochs(recipe: Recipe) -> list[int]:
    """Epochs at which the rate is divided, e.g. [150, 225] for 300 CIFAR epochs."""
    return [round(fraction * recipe.epochs) for fraction in recipe.lr_milestones]


def lr_at(step: int, recipe: Recipe, steps_per_epoch: int) -> float:
    """The rate for optimiser step ``step`` (0-based).

    ``schedule="step"`` (the paper's): ``lr * gamma ** (milestones passed)``, changing at epoch
    starts. ``"cosine"``: from lr down to 0 at the last step. Either after a linear warm-up of
    ``warmup_epochs`` (``lr * (step + 1) / warmup_steps``).
    """
    warmup = round(recipe.warmup_epochs * steps_per_epoch)
    if step < warmup:
        return recipe.lr * (step + 1) / warmup
    if recipe.schedule == "cosine":
        total = recipe.epochs * steps_per_epoch
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return recipe.lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    epoch = step // steps_per_epoch
    passed = sum(epoch >= m for m in milestone_epochs(recipe))
    return recipe.lr * recipe.lr_gamma**passed
