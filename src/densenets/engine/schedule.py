"""The learning rate as a function of the step, so a resumed run needs only the step."""

from __future__ import annotations

import math

from .recipes import Recipe


def milestone_epochs(recipe: Recipe) -> list[float]:
    """Epochs at which the rate is divided, e.g. [150, 225] for 300 CIFAR epochs (1.5, 2.25 for 3)."""
    return [fraction * recipe.epochs for fraction in recipe.lr_milestones]


def milestone_steps(recipe: Recipe, steps_per_epoch: int) -> list[int]:
    """Steps at which the rate is divided: at epoch starts for the paper's schedules (150 and 225
    of 300 epochs), and inside an epoch for a compressed one, so each division keeps its own stage."""
    return [round(fraction * recipe.epochs * steps_per_epoch) for fraction in recipe.lr_milestones]


def lr_at(step: int, recipe: Recipe, steps_per_epoch: int) -> float:
    """The rate for optimiser step ``step`` (0-based).

    ``schedule="step"`` (the paper's): ``lr * gamma ** (milestones passed)``, counted in steps
    (the paper's milestones fall on epoch starts). ``"cosine"``: from lr down to 0 at the last
    step; ``"linear"``: a straight line from lr to 0 at the last step (with the warm-up, the
    triangular one-cycle schedule of fast CIFAR training). Each after a linear warm-up of
    ``warmup_epochs`` (``lr * (step + 1) / warmup_steps``).
    """
    warmup = round(recipe.warmup_epochs * steps_per_epoch)
    if step < warmup:
        return recipe.lr * (step + 1) / warmup
    if recipe.schedule in ("cosine", "linear"):
        total = recipe.epochs * steps_per_epoch
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        if recipe.schedule == "linear":
            return recipe.lr * (1.0 - progress)
        return recipe.lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    passed = sum(step >= m for m in milestone_steps(recipe, steps_per_epoch))
    return recipe.lr * recipe.lr_gamma**passed
