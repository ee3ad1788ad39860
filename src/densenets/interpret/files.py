"""``densenets explain``: heat maps of image files drawn over the images, one PNG per file.

A 3-D model's inputs are volumes (``.npy``, NIfTI): each map is a volume, saved as ``.npy``
(T, D, H, W) next to a PNG of three orthogonal slices through its peak (:mod:`.slices`).

Which classes are explained: ``class_name`` if given; for a multi-label model every class at
or above its operating point (the thresholds saved with it); otherwise the ``top_k`` most
probable. Unreadable files are skipped and named, as ``densenets predict`` does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..engine.prediction import multilabel_thresholds, read_images
from ..errors import ConfigError
from ..models.weights import LoadedModel
from .maps import METHODS, explain
from .slices import draw_volume_overlay


def explain_files(
    loaded: LoadedModel,
    paths: list[str | Path],
    out_dir: str | Path,
    method: str = "cam",
    class_name: str | None = None,
    top_k: int | None = None,
    layer: str | None = None,
) -> list[dict]:
    """One record per path: ``{"file", "overlay", "method", "explained": [{"class", "index",
    "probability"}], "note"}`` (and ``"map"``, the .npy of a volume's maps), or ``{"file", "error"}``
    for a file that cannot be read."""
    from ..engine.prediction import input_reader

    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; valid methods: {', '.join(METHODS)}")
    if top_k is not None and top_k < 1:
        raise ConfigError("--top-k must be >= 1")
    model = loaded.model.eval()
    names = list(loaded.class_names) or [str(i) for i in range(model.config.num_classes)]
    if class_name is not None and class_name not in names:
        shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
        raise ConfigError(f"unknown class {class_name!r}; this model's classes: {shown}")
    thresholds = multilabel_thresholds(loaded)
    device = next(model.parameters()).device
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    reader, transform = input_reader(loaded.preprocess)
    records, ready = read_images(paths, transform, reader)
    used: set[str] = set()
    for index, tensor in ready:
        x = tensor[None].to(device)
        with torch.no_grad():
            logits = model(x).float()[0]
        probs = logits.sigmoid() if thresholds else logits.softmax(0)
        chosen, note = choose_classes(probs, names, class_name, top_k, thresholds)
        maps = explain(model, x, targets=chosen, method=method, layer=layer)[0]  # (T, H, W) or (T, D, H, W)
        explained = [{"class": names[c], "index": c, "probability": float(probs[c])} for c in chosen]
        overlay = out_dir / _unique_name(Path(records[index]["file"]).stem, used)
        label = method if layer is None else f"{method} {layer.removeprefix('features.')}"
        if maps.dim() == 4:  # a volume
            np.save(overlay.with_suffix(".npy"), maps.float().cpu().numpy())
            draw_volume_overlay(tensor.cpu(), maps.cpu(), explained, overlay, label, bool(thresholds))
            records[index]["map"] = str(overlay.with_suffix(".npy"))
        else:
            draw_overlay(display_image(tensor, loaded.preprocess), maps, explained, overlay, label, bool(thresholds))
        records[index].update(overlay=str(overlay), method=method, explained=explained, note=note)
    return records


def choose_classes(probs, names, class_name, top_k, thresholds) -> tuple[list[int], str]:
    if class_name is not None:
        return [names.index(class_name)], "as asked"
    order = probs.argsort(descending=True).tolist()
    if thresholds is None:
        return order[: top_k or 1], "most probable"
    above = [c for c in order if probs[c] >= thresholds[0][c]][: top_k or None]
    if above:
        return above, "at or above their thresholds"
    return order[:1], "no class reaches its threshold: the most probable shown"


def _unique_name(stem: str, used: set[str]) -> str:
    name, n = f"{stem}.png", 1
    while name in used:
        n += 1
        name = f"{stem}-{n}.png"
    used.add(name)
    return name


def display_image(tensor: torch.Tensor, preprocess: dict) -> torch.Tensor:
    """The model's input (C, H, W) back in [0, 1]: what the map is drawn over."""
    mean = torch.tensor(preprocess["mean"])[:, None, None]
    std = torch.tensor(preprocess["std"])[:, None, None]
    return (tensor * std + mean).clamp(0, 1)


def draw_overlay(image, maps, explained: list[dict], path: Path, method: str, multilabel: bool) -> None:
    """The input, then one panel per explained class: the heat map over the image, class and probability."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    picture = image.permute(1, 2, 0).numpy()
    grey = picture.shape[-1] == 1
    panels = 1 + len(explained)
    fig = Figure(figsize=(1.8 * panels, 2.1))
    FigureCanvasAgg(fig)
    kind = "sigmoid" if multilabel else "softmax"
    for i in range(panels):
        ax = fig.add_subplot(1, panels, i + 1)
        ax.imshow(picture[..., 0] if grey else picture, cmap="gray" if grey else None, vmin=0, vmax=1)
        if i == 0:
            ax.set_title(f"input ({method}, {kind})", fontsize=8)
        else:
            ax.imshow(maps[i - 1].numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=1)
            e = explained[i - 1]
            ax.set_title(f"{e['class']} {100 * e['probability']:.1f}%", fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def format_line(record: dict) -> str:
    """One line per file, for the terminal."""
    if "error" in record:
        return f"{record['file']}: skipped, {record['error']}"
    classes = ", ".join(f"{e['class']} {100 * e['probability']:.1f}%" for e in record["explained"])
    return f"{record['file']}: {classes} ({record['note']}; {record['method']}) -> {record['overlay']}"
