"""``densenets train``: parse a recipe from the command line and call ``fit``."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from ..engine.recipes import (
    MEMORY_VALUES,
    RECIPES,
    Recipe,
    base_recipe,
    describe_default,
    read_recipe_file,
    resolve_recipe,
)
from ..errors import UserError
from .options import add_dataclass_options, collect_overrides, parse_overrides


def add_parser(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a DenseNet (or a ResNet baseline) with the paper's protocol (default: DenseNet-BC-40 on digits)",
        description="Train a DenseNet or one of the paper's ResNet baselines. Start from a named recipe (chosen by "
        "--data when not given), "
        "override any field, or repeat a run from its config.json.",
    )
    p.add_argument("--recipe", choices=sorted(RECIPES), help="base protocol (default: implied by --data)")
    p.add_argument(
        "--config", metavar="FILE", help="a recipe in YAML or JSON, or a run's config.json (other options override it)"
    )
    p.add_argument("--dry-run", action="store_true", help="print the resolved recipe (JSON) and stop")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from RUN_DIR/last.pt")
    p.add_argument(
        "--run-dir", metavar="DIR", help="where to write checkpoints and logs (default: runs/<data>-<model>-<time>)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar (epoch lines are always printed)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override any recipe field")
    group = p.add_argument_group(
        "recipe fields (each overrides the recipe; the help gives the value a run uses when it is not given)"
    )
    add_dataclass_options(group, Recipe, describe_default, flag_values={"memory_efficient": MEMORY_VALUES})
    p.set_defaults(run=run_train)


def recipe_from_args(args) -> Recipe:
    overrides = {**parse_overrides(args.set), **collect_overrides(args, Recipe)}
    if args.config:
        base = read_recipe_file(args.config)
    else:
        base = base_recipe(args.recipe, overrides.get("data"), overrides.get("pretrained", False))
    return resolve_recipe(base, **overrides)


def default_run_dir(recipe: Recipe) -> Path:
    # Under torchrun every rank must pick the same folder: use the job's id, not the clock.
    stamp = os.environ.get("TORCHELASTIC_RUN_ID") if int(os.environ.get("WORLD_SIZE", 1)) > 1 else None
    stamp = stamp or time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{recipe.data.replace('+', 'plus')}-{recipe.model}-{stamp}"


def run_train(args) -> int:
    from ..engine.trainer import fit

    if args.resume:
        overrides = {**parse_overrides(args.set), **collect_overrides(args, Recipe)}
        if args.config or args.recipe:
            raise UserError("--resume continues a run as recorded in its config.json; drop --config/--recipe")
        fit(None, Path(args.resume), resume=True, show_progress=not args.no_progress, resume_overrides=overrides)
        return 0
    recipe = recipe_from_args(args)
    if args.dry_run:
        print(json.dumps(recipe.to_dict(), indent=2))
        return 0
    if args.dropout is None and "dropout" not in parse_overrides(args.set) and not args.config:
        from ..models.registry import is_densenet

        if not is_densenet(recipe.model):
            print(f"{recipe.model}: dropout {recipe.dropout:g}, its own paper's setting (the DenseNet rule, 0.2 "
                  "without augmentation, is for DenseNets; --dropout overrides)", flush=True)  # fmt: skip
    run_dir = Path(args.run_dir) if args.run_dir else default_run_dir(recipe)
    fit(recipe, run_dir, show_progress=not args.no_progress)
    return 0
