"""State-dict interop: torchvision's key names, legacy keys, wrapper prefixes.

This is the one place where foreign state dicts are cleaned before loading.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from torch import Tensor

# DataParallel/DDP ("module.") and torch.compile ("_orig_mod.") wrap the real keys.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")

# Old torchvision/Lua-converted checkpoints: "denselayer1.norm.1.weight" -> "denselayer1.norm1.weight".
_LEGACY_KEY = re.compile(
    r"(denselayer\d+\.(?:norm|relu|conv))\.(\d+)\.(weight|bias|running_mean|running_var|num_batches_tracked)$"
)


def strip_wrapper_prefixes(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Remove ``module.`` and ``_orig_mod.`` prefixes (in any order, repeated)."""
    out = {}
    for key, value in state_dict.items():
        changed = True
        while changed:
            changed = False
            for prefix in _WRAPPER_PREFIXES:
                if key.startswith(prefix):
                    key = key[len(prefix) :]
                    changed = True
        out[key] = value
    return out


def convert_legacy_keys(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename legacy ``norm.1`` / ``conv.2``-style dense-layer keys to ``norm1`` / ``conv2``."""
    return {_LEGACY_KEY.sub(r"\1\2.\3", key): value for key, value in state_dict.items()}


def clean_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Everything needed before ``load_state_dict``: prefixes stripped, legacy keys renamed."""
    return convert_legacy_keys(strip_wrapper_prefixes(state_dict))
