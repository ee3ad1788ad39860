"""The learning rate as a function of the step, so a resumed run needs only the step."""

from __future__ import annotations

from .recipes import Recipe


def milestone_epochs(recipe: Recipe) -> list[int]:
    """Epochs at which the rate is divided, e.g. [150, 225] for 300 CIFAR epochs."""
    return [round(fraction * recipe.epochs) for fraction in recipe.lr_milestones]


def lr_at(step: int, recipe: Recipe, steps_per_epoch: int) -> float:
    """Step schedule of the paper: ``lr * gamma ** (milestones passed)``, changing at epoch starts."""
    epoch = step // steps_per_epoch
    passed = sum(epoch >= m for m in milestone_epochs(recipe))
    return recipe.lr * recipe.lr_gamma**passed
