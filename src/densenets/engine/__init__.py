"""The training engine: recipes, the step/epoch/eval loop, checkpoints, distributed runs."""

from .recipes import RECIPES, Recipe, base_recipe, resolve_recipe
from .schedule import lr_at

__all__ = ["RECIPES", "Recipe", "base_recipe", "lr_at", "resolve_recipe"]
