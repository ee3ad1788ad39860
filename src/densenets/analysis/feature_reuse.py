"""Figure 5 of the paper: how strongly each layer uses each earlier layer's feature maps.

For dense block b, every conv that reads the block's concatenated maps (each layer's first
conv), and the layer after the block (the transition's conv, or the classifier after the
last block), is a *target*. Its *sources* are the block input and the outputs of the
earlier layers of the block; source s owns a contiguous slice of the target's input
channels. The value of (s, target) is the mean absolute weight of that slice:

    value(s, t) = sum |W_t[o, c, i, j]| over o, c in maps(s), i, j  /  (C_out * m_s * kh * kw)

i.e. the L1 norm of the weights reading s, normalised by the number of input maps of s
(m_s) and averaged over output filters and kernel positions.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError
from ..models import DenseBlock, DenseNet, Transition


def _slice_mean(weight: torch.Tensor, start: int, stop: int) -> float:
    return weight.detach()[:, start:stop].abs().mean().item()


def feature_reuse(model: DenseNet) -> list[dict]:
    """One record per dense block: sources, targets, and the (sources x targets) matrix.

    ``matrix[s][t]`` is None where target t does not read source s (a layer reads only
    earlier layers).
    """
    if not isinstance(model, DenseNet):
        raise ConfigError(
            f"feature reuse (Figure 5) reads the weights of dense connections; a {type(model).__name__} has none"
        )
    children = list(model.features.named_children())
    results = []
    for index, (name, block) in enumerate(children):
        if not isinstance(block, DenseBlock):
            continue
        layers = list(block.values())
        k, c0 = block.growth_rate, block.in_channels
        sources = [("block input", 0, c0)] + [
            (f"layer {j}", c0 + (j - 1) * k, c0 + j * k) for j in range(1, len(layers) + 1)
        ]
        after = next((m for _, m in children[index + 1 :] if isinstance(m, Transition)), None)
        is_last = not any(isinstance(m, DenseBlock) for _, m in children[index + 1 :])
        targets: list[tuple[str, torch.Tensor]] = [
            (f"layer {j}", layer.conv1.weight) for j, layer in enumerate(layers, 1)
        ]
        if is_last and isinstance(model.classifier, nn.Linear):
            targets.append(("classifier", model.classifier.weight))
        elif not is_last and after is not None:
            targets.append(("transition", after.conv.weight))
        matrix: list[list[float | None]] = [[None] * len(targets) for _ in sources]
        for t, (_, weight) in enumerate(targets):
            readable = t + 1  # target t (0-based) reads the block input and layers 1..t
            for s in range(min(readable, len(sources))):
                _, start, stop = sources[s]
                matrix[s][t] = _slice_mean(weight, start, stop)
        results.append(
            {
                "block": name,
                "sources": [s[0] for s in sources],
                "targets": [t[0] for t in targets],
                "matrix": matrix,
            }
        )
    return results


def save_feature_reuse(results: list[dict], out_dir: str | Path, title: str = "") -> list[Path]:
    """Write the matrices as JSON and the heat maps (one panel per block) as PNG and SVG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "feature_reuse.json"
    json_path.write_text(json.dumps(results, indent=2))
    fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 4.2), squeeze=False)
    for ax, block in zip(axes[0], results, strict=True):
        values = np.array([[math.nan if v is None else v for v in row] for row in block["matrix"]], dtype=float)
        image = ax.imshow(np.ma.masked_invalid(values), cmap="jet", origin="upper", aspect="auto")
        ax.set_title(block["block"].replace("denseblock", "Dense block "))
        n_targets, n_sources = values.shape[1], values.shape[0]
        ax.set_xticks(range(n_targets))
        ax.set_xticklabels([_short(t) for t in block["targets"]], fontsize=6, rotation=90)
        ax.set_yticks(range(n_sources))
        ax.set_yticklabels([_short(s) for s in block["sources"]], fontsize=6)
        ax.set_xlabel("target layer (l)")
        ax.set_ylabel("source layer (s)")
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    paths = [json_path]
    for ext in ("png", "svg"):
        path = out_dir / f"feature_reuse.{ext}"
        fig.savefig(path, dpi=130)
        paths.append(path)
    plt.close(fig)
    return paths


def _short(label: str) -> str:
    return {"block input": "in", "classifier": "cls", "transition": "tr"}.get(label, label.replace("layer ", ""))
