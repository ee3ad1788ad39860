"""Writing checkpoints: atomic saves of the training state, RNG state, unwrapped models.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so it loads
with ``torch.load(weights_only=True)``: no pickled objects, no code run on load. Reading
any weights file (ours or anyone's) is ``models.weights``; ``load_checkpoint`` is its reader.
"""

from __future__ import annotations

import contextlib
import os
import random
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import CheckpointError
from ..models.weights import CHECKPOINT_FORMAT as FORMAT
from ..models.weights import read_file as load_checkpoint
from ..models.weights import state_dict_from

__all__ = [
    "FORMAT",
    "capture_rng",
    "load_checkpoint",
    "remove_stale_temporaries",
    "restore_rng",
    "save_checkpoint",
    "state_dict_from",
    "unwrap_model",
]


def unwrap_model(model: nn.Module) -> nn.Module:
    """The bare model inside DDP and/or torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def save_checkpoint(path: str | os.PathLike, payload: dict) -> None:
    """Write ``payload`` so that ``path`` always holds either the old or the new file, never a torn one.

    Writes a temporary file in the same folder, fsyncs it, renames it over ``path``
    (atomic on POSIX) and fsyncs the folder.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        _remove_quietly(tmp)
        reason = exc.strerror or str(exc)
        raise CheckpointError(f"could not write checkpoint {path}: {reason}; the previous file is untouched") from exc
    except BaseException:
        _remove_quietly(tmp)
        raise


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete temporary files left by a process killed while writing a checkpoint."""
    removed = []
    for path in Path(folder).glob(".*.pt.tmp-*"):
        _remove_quietly(path)
        removed.append(path)
    return removed


# --------------------------------------------------------------------------------------
# RNG state: captured into plain tensors / lists so that weights_only loading accepts it
# --------------------------------------------------------------------------------------


def capture_rng() -> dict:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": _to_lists(random.getstate()),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(_plain, np_state[2:])],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_lists(value):
    return [_to_lists(v) for v in value] if isinstance(value, (tuple, list)) else value


def _plain(value):
    return value.item() if hasattr(value, "item") else value


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()
