"""Which weights a path means, and loading them.

A run folder (its ``best.pt`` or ``last.pt``, by the run's own protocol), a weights file, or
registered weights by name.

The files themselves are read by ``models.weights``; named weights are fetched by ``models.hub``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError
from ..models.hub import load_named
from ..models.pretrained import PretrainedEntry, named_weights
from ..models.weights import LoadedModel, load_file
from .runlog import BEST, CONFIG, LAST, read_metrics, reported_result, unranked_reason


def choose_checkpoint(path: str | Path) -> tuple[Path, str]:
    """The file ``path`` means, and a few words on why.

    A run folder means ``best.pt`` only when the run chose it on a validation split (the
    paper's SVHN protocol); otherwise ``last.pt``, the final epoch the paper reports for
    CIFAR, since a ``best.pt`` chosen on the test set would report an optimistic error.
    """
    entry = _named_entry(path)
    if entry is not None:
        return Path(entry.name), f"named weights {entry.name} ({entry.source}; {entry.training or entry.dataset})"
    path = Path(path)
    if not path.is_dir():
        return path, "the file given"
    best, last = path / BEST, path / LAST
    val_size, multilabel = _validation_split(path)
    validated = val_size > 0
    if best.is_file() and validated:
        records = read_metrics(path)
        if records and reported_result(records)["rule"] == "final epoch":
            return best, f"best.pt: the final epoch (validation cannot rank epochs: {unranked_reason(records)})"
        what = "highest validation macro AUROC" if multilabel else "lowest validation error"
        return best, f"best.pt: the epoch with the {what}"
    if last.is_file():
        if validated:
            why = "this run chooses on a validation split, but holds no best.pt: no epoch was completed"
        else:
            why = "this run has no validation split"
            why += "; best.pt was chosen on the test set" if best.is_file() else ""
        return last, f"last.pt: {_where_it_stopped(path, last, _recipe(path))} ({why})"
    if best.is_file():
        return best, "best.pt (the folder holds no last.pt)"
    raise CheckpointError(f"{path}: a folder without {BEST} or {LAST}")


def _where_it_stopped(run_dir: Path, last: Path, recipe: dict) -> str:
    """``last.pt`` in words: the final epoch, an earlier epoch, or a step inside an epoch."""
    try:  # mmap: only the few numbers are read here, not the weights
        ckpt = torch.load(last, map_location="cpu", weights_only=True, mmap=True)
        step, epoch = int(ckpt["step"]), int(ckpt["epoch"])
    except Exception:  # not our checkpoint, or damaged: loading it says what is wrong
        return "the last checkpoint"
    epochs = int(recipe.get("epochs") or 0)
    records = read_metrics(run_dir)
    if records and records[-1]["step"] == step:  # saved at the end of an epoch
        if epochs and epoch >= epochs:
            return "the final epoch"
        return f"epoch {epoch} of {epochs or '?'}, where the run stopped early"
    max_steps = int(recipe.get("max_steps") or 0)
    cause = f"where max_steps={max_steps} stopped it" if max_steps and step >= max_steps else "saved mid-epoch"
    return f"step {step}, inside epoch {epoch + 1} of {epochs or '?'}, {cause} (not the end of an epoch)"


def _named_entry(path: str | Path) -> PretrainedEntry | None:
    """The registered weights ``path`` names (``densenet_bc40_k12.cifar10``), unless a file or folder has that name."""
    return named_weights(str(path)) if not Path(path).exists() else None


def _validation_split(run_dir: Path) -> tuple[int, bool]:
    """(validation images, multi-label) of a run: ``--val-split`` or a labels CSV's val rows.

    Which checkpoint is the result depends on it, so a config.json that cannot be read is an
    error naming it, never taken for a run without a validation split.
    """
    path = run_dir / CONFIG
    try:
        config = json.loads(path.read_text())
        data = config.get("data") or {}
        size = (data.get("sizes") or {}).get("val", config["recipe"]["val_split"])
        return int(size or 0), bool(data.get("multilabel"))
    except OSError as exc:
        why = "no such file" if isinstance(exc, FileNotFoundError) else f"cannot read it ({exc.strerror or exc})"
        problem = f"{why}; it says whether the run chose best.pt on a validation split"
    except json.JSONDecodeError as exc:
        problem = f"not valid JSON ({exc})"
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        problem = f"no readable recipe.val_split or data.sizes.val ({type(exc).__name__}: {exc})"
    raise CheckpointError(f"{path}: {problem}; pass the checkpoint file itself (best.pt or last.pt) instead")


def _recipe(run_dir: Path) -> dict:
    """The recipe in the run's config.json; empty when it cannot be read."""
    try:
        recipe = json.loads((run_dir / CONFIG).read_text())["recipe"]
        return recipe if isinstance(recipe, dict) else {}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def resolve_checkpoint_path(path: str | Path) -> Path:
    """The checkpoint file ``path`` means (see :func:`choose_checkpoint`)."""
    return choose_checkpoint(path)[0]


def load_model(path: str | Path, model_name: str | None = None, device: str | torch.device = "cpu") -> LoadedModel:
    """Load a model for evaluation, prediction, analysis or export (in eval mode).

    From a run folder, a weights file or a registered name.

    The model's ``pretrained_cfg`` describes the input it was trained on.
    """
    entry = _named_entry(path)
    if entry is not None:
        return load_named(entry, device)
    return load_file(resolve_checkpoint_path(path), model_name, device)


def load(source: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """A trained model in eval mode, with the preprocessing of the run that made it.

    ``model.pretrained_cfg`` holds that preprocessing (mean, std, ``input_size``,
    ``crop_pct``) and what the outputs mean (``class_names``, ``thresholds``,
    ``multilabel``), so ``densenets.transforms(model)`` rebuilds the run's test-time input.

    Args:
        source: A run folder (the checkpoint ``choose_checkpoint`` picks: ``best.pt`` only
            where a validation split chose it, else ``last.pt``), a checkpoint or weights
            file, an exported ``model.json``, or registered weights by name
            (``"densenet_bc40_k12.cifar10"``).
        device: Where to put the model.

    Returns:
        The model in eval mode.

    Raises:
        CheckpointError: A missing, unreadable or wrong-architecture file (one line naming it).

    Example:
        >>> model = densenets.load("runs/ft-pre")  # doctest: +SKIP
        >>> model.pretrained_cfg["class_names"]  # doctest: +SKIP
    """
    return load_model(source, device=device).model


def loaded_notes(loaded: LoadedModel) -> list[str]:
    """The lines every command prints about the model it loaded: which weights, what was assumed."""
    return ([f"weights: {loaded.weights}"] if loaded.weights else []) + [f"note: {n}" for n in loaded.notes]
