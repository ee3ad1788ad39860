"""Fetching named weights (:mod:`.pretrained` holds the entries): torch.hub's cache or a file
shipped in the package, sha256-checked every time, then loaded like any weights file."""

from __future__ import annotations

import hashlib
import pickle
from importlib import resources
from pathlib import Path

import torch
from torch import Tensor

from ..errors import CheckpointError
from .pretrained import PretrainedEntry, imagenet_categories, preprocess_from_cfg
from .registry import build_model, get_config
from .weights import LoadedModel, load_weights, read_file, ready, state_dict_from


def hub_cache_dir() -> Path:
    """Where torch.hub keeps weights files: ``$TORCH_HOME/hub/checkpoints``."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_pretrained(entry: PretrainedEntry, progress: bool = False) -> dict[str, Tensor]:
    """The cleaned state dict of a named entry.

    A URL entry goes through ``torch.hub.load_state_dict_from_url`` (hash-checked download
    into the hub cache; a cached file is used offline). torch.hub checks the hash only while
    downloading, so the file's sha256 is checked here as well, every time.
    """
    if entry.package_file is not None:
        path = Path(str(resources.files("densenets") / "weights" / entry.package_file))
        if not path.is_file():
            raise CheckpointError(f"weights {entry.name}: {path} is missing from the installed package")
        _check_sha256(entry, path)
        return state_dict_from(read_file(path))
    cached = hub_cache_dir() / entry.file_name
    if cached.is_file():
        _check_sha256(entry, cached)
    try:
        data = torch.hub.load_state_dict_from_url(
            entry.url, map_location="cpu", progress=progress, check_hash=True, file_name=entry.file_name,
            weights_only=True,
        )  # fmt: skip
    except (OSError, ValueError) as exc:  # URLError is an OSError; offline, DNS, proxy, disk
        if cached.is_file():
            raise CheckpointError(f"{cached}: not a readable weights file ({exc}); delete it to fetch again") from exc
        raise CheckpointError(
            f"pretrained weights {entry.name} are not in the cache and could not be downloaded "
            f"({type(exc).__name__}); fetch {entry.url} and put {entry.file_name} in {hub_cache_dir()}/"
        ) from exc
    except RuntimeError as exc:  # torch.hub's hash mismatch on download, or a damaged file
        raise CheckpointError(f"weights {entry.name} ({entry.file_name}): {str(exc).splitlines()[0]}") from exc
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"{cached}: refused to load: not a plain weights file ({exc})") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{cached}: expected a dict of tensors, found {type(data).__name__}")
    _check_sha256(entry, cached)  # just downloaded: torch.hub checked the name's prefix, we check the entry's
    return state_dict_from(data)


def _check_sha256(entry: PretrainedEntry, path: Path) -> None:
    if not entry.sha256:
        return
    actual = sha256_of(path)
    if not actual.startswith(entry.sha256):
        raise CheckpointError(
            f"{path}: sha256 {actual[:12]}... does not start with {entry.sha256} as registered for {entry.name}; "
            f"the file is damaged or not {entry.file_name}: delete it and download {entry.url or 'it'} again"
        )


def entry_class_names(entry: PretrainedEntry) -> list[str]:
    if entry.categories == "imagenet":
        return imagenet_categories()
    return list(entry.categories)


def entry_preprocess(entry: PretrainedEntry) -> dict:
    """A named entry's test-time preprocessing in the run-config form (data.transforms)."""
    return preprocess_from_cfg(entry.pretrained_cfg())


def load_named(entry: PretrainedEntry, device: str | torch.device = "cpu") -> LoadedModel:
    """Registered weights by name (``densenets eval densenet_bc40_k12.cifar10``): fetched, checked, loaded."""
    config = get_config(entry.model, num_classes=entry.num_classes, in_channels=entry.input_size[0])
    model = build_model(config)
    load_weights(model, fetch_pretrained(entry), entry.file_name)
    recipe = {"model": entry.model, **({"data": entry.data} if entry.data else {})}
    loaded = LoadedModel(
        model, entry_preprocess(entry), entry_class_names(entry), Path(entry.name), entry.model, {"recipe": recipe},
        class_names_recorded=entry.categories != "imagenet",  # torchvision's names; ImageNet folders are wnids
    )  # fmt: skip
    return ready(loaded, device)
