"""The one checkpoint module: atomic writes, safe loads, RNG state, clean weights.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so it loads
with ``torch.load(weights_only=True)``: no pickled objects, no code run on load.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import random
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import CheckpointError
from ..models.weights import clean_state_dict

FORMAT = "densenets-checkpoint/1"


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


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint or weights file safely; any problem raises one clear :class:`CheckpointError`."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder, not a checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: file is empty")
    if path.suffix == ".safetensors":
        return {"model": _load_safetensors(path)}
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "global" in str(exc).lower() or "weights only" in str(exc).lower():
            raise CheckpointError(
                f"{path}: refused to load: the file contains pickled Python objects that could run code "
                f"(only tensors and plain containers are accepted). {_unsafe_detail(exc)}"
            ) from exc
        raise CheckpointError(f"{path}: not a readable checkpoint ({first})") from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, UnicodeDecodeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"{path}: truncated or corrupted checkpoint ({first})") from exc
    except Exception as exc:  # anything else a hostile or damaged file can provoke
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__})") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a dict of tensors, found {type(data).__name__}")
    return data


def _unsafe_detail(exc: Exception) -> str:
    for line in str(exc).splitlines():
        if "GLOBAL" in line or "Unsupported" in line:
            return line.strip()
    return ""


def _load_safetensors(path: Path) -> dict:
    try:
        from safetensors.torch import load_file
    except ImportError as exc:
        raise CheckpointError(f"{path}: reading .safetensors needs `pip install safetensors`") from exc
    try:
        return load_file(str(path))
    except Exception as exc:
        raise CheckpointError(f"{path}: truncated or corrupted safetensors file ({exc})") from exc


def state_dict_from(data: dict) -> dict:
    """The model weights inside a loaded file: our checkpoint, a bare state dict, or ``{"state_dict": ...}``."""
    for key in ("model", "state_dict", "model_state_dict"):
        if key in data and isinstance(data[key], dict):
            data = data[key]
            break
    tensors = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError("the file holds no model weights (no tensors found)")
    return clean_state_dict(tensors)


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
