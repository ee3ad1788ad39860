"""``densenets predict``: top-k classes for image (or volume) files, unreadable files reported by name."""

from __future__ import annotations

import csv
import glob
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

from ..data.images import read_image
from ..data.transforms import image_transform
from ..data.volumes import VolumeTransform, is_volume, read_volume
from ..errors import DataError
from ..models.weights import LoadedModel


def multilabel_thresholds(loaded: LoadedModel) -> tuple[list[float], str] | None:
    """(per-class thresholds, where they come from) of a multi-label model; None for single-label.
    A thresholds list that is not one per class stops in one line (:func:`.evaluation.saved_thresholds`)."""
    from .evaluation import saved_thresholds

    if not loaded.preprocess.get("multilabel"):
        return None
    names = [_name(loaded.class_names, c) for c in range(loaded.model.config.num_classes)]
    thresholds, source, _ = saved_thresholds(loaded.preprocess, names)
    return thresholds, source


# What decoding an image file can raise: reported per file, never a crash (predict, explain, serve).
UNREADABLE = (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError,
              Image.DecompressionBombWarning)  # fmt: skip


def input_reader(preprocess: dict):
    """(read a file, transform) for a model's input: volumes (a ``volume_size`` recorded) or images."""
    if preprocess.get("volume_size"):
        return read_volume, VolumeTransform(preprocess)
    return read_image, image_transform(preprocess)


def read_images(
    paths: list[str | Path], transform, reader=read_image
) -> tuple[list[dict], list[tuple[int, torch.Tensor]]]:
    """One record per path, ``{"file"}`` or ``{"file", "error"}`` (why it cannot be read), and
    ``(record index, transform(reader(path)))`` for each readable one (predict and explain)."""
    records: list[dict] = []
    ready: list[tuple[int, torch.Tensor]] = []
    for path in paths:
        try:
            tensor = transform(reader(path))
        except DataError as exc:  # a volume: unreadable, wrong dimensions, NaN or Inf
            records.append({"file": str(path), "error": str(exc)})
            continue
        except FileNotFoundError:
            records.append({"file": str(path), "error": "no such file"})
            continue
        except IsADirectoryError:
            records.append({"file": str(path), "error": "is a folder"})
            continue
        except UNREADABLE as exc:
            records.append({"file": str(path), "error": unreadable_reason(exc)})
            continue
        records.append({"file": str(path)})
        ready.append((len(records) - 1, tensor))
    return records, ready


def unreadable_reason(exc: BaseException) -> str:
    return f"not a readable image ({type(exc).__name__}: {exc})"


def predict_images(loaded: LoadedModel, paths: list[str | Path], top_k: int = 5, batch_size: int = 32) -> list[dict]:
    """One record per path: ``{"file", "predictions": [{"class", "index", "probability"}]}``,
    or ``{"file", "error"}`` for a file that cannot be read as an image.

    A multi-label model gives every class's sigmoid probability instead, and ``positives``: the
    classes at or above their thresholds (:func:`multilabel_thresholds`), most probable first.
    """
    reader, transform = input_reader(loaded.preprocess)
    records, ready = read_images(paths, transform, reader)
    for start in range(0, len(ready), batch_size):
        chunk = ready[start : start + batch_size]
        answers = predict_batch(loaded, torch.stack([t for _, t in chunk]), top_k)
        for (index, _), answer in zip(chunk, answers, strict=True):
            records[index].update(answer)
    return records


def predict_batch(loaded: LoadedModel, batch: torch.Tensor, top_k: int = 5) -> list[dict]:
    """One answer per image of ``batch`` (N, C, H, W) or volume (N, C, D, H, W), preprocessed by
    :func:`input_reader`'s transform:
    ``{"predictions": [...]}``, or ``{"probabilities", "positives"}`` for a multi-label model
    (predict and serve: one path from tensor to answer)."""
    multilabel = multilabel_thresholds(loaded)
    model = loaded.model.eval()
    device = next(model.parameters(), torch.empty(0)).device  # an ONNX Runtime (int8) module has none: CPU
    names = loaded.class_names
    with torch.inference_mode():
        logits = model(batch.to(device)).float()
    answers = []
    if multilabel is not None:
        for row in logits.sigmoid().tolist():
            above = [c for c, p in enumerate(row) if p >= multilabel[0][c]]
            answers.append({"probabilities": {_name(names, c): p for c, p in enumerate(row)},
                            "positives": [_name(names, c) for c in sorted(above, key=lambda c: -row[c])]})  # fmt: skip
        return answers
    top = logits.softmax(1).topk(max(1, min(top_k, model.config.num_classes)), dim=1)
    for values, classes in zip(top.values.tolist(), top.indices.tolist(), strict=True):
        ranked = zip(values, classes, strict=True)
        answers.append({"predictions": [{"class": _name(names, c), "index": c, "probability": p} for p, c in ranked]})
    return answers


def _name(names: list[str], index: int) -> str:
    return names[index] if index < len(names) else str(index)


def expand_image_paths(items: list[str]) -> list[str]:
    """Files as given; folders as the image files under them; patterns (``*``, ``?``, ``[``, ``**``)
    as their matches. Sorted within each item; an item that matches nothing is kept, to be reported."""
    out: list[str] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = sorted(str(p) for p in path.rglob("*") if p.is_file() and _is_image(p))
        elif any(ch in item for ch in "*?["):
            found = sorted(p for p in glob.glob(item, recursive=True) if Path(p).is_file() and _is_image(Path(p)))
        else:
            found = [item]
        out.extend(found or [item])
    return out


def _is_image(path: Path) -> bool:
    return has_file_allowed_extension(str(path), IMG_EXTENSIONS) or is_volume(path)


def write_predictions_csv(records: list[dict], path: str | Path, top_k: int) -> None:
    """One row per file: ``file, class_1, probability_1, ..., class_k, probability_k, error``."""
    header = ["file"] + [f"{name}_{i}" for i in range(1, top_k + 1) for name in ("class", "probability")] + ["error"]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for record in records:
            row = [record["file"]]
            predictions = record.get("predictions", [])
            for i in range(top_k):
                p = predictions[i] if i < len(predictions) else None
                row += [p["class"], f"{p['probability']:.6f}"] if p else ["", ""]
            writer.writerow([*row, record.get("error", "")])


def write_multilabel_csv(records: list[dict], path: str | Path, class_names: list[str]) -> None:
    """One row per file: ``file``, one probability column per class, ``positives`` (``;``-separated), ``error``."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", *class_names, "positives", "error"])
        for record in records:
            probs = record.get("probabilities", {})
            cells = [f"{probs[name]:.6f}" if name in probs else "" for name in class_names]
            writer.writerow([record["file"], *cells, ";".join(record.get("positives", [])), record.get("error", "")])


def format_predictions(records: list[dict]) -> str:
    lines = []
    for record in records:
        lines.append(record["file"])
        if "error" in record:
            lines.append(f"  error: {record['error']}")
            continue
        if "positives" in record:
            lines.append(f"  positives: {', '.join(record['positives']) or '(none)'}")
            ranked = sorted(record["probabilities"].items(), key=lambda kv: -kv[1])
            lines.append("  " + "  ".join(f"{name} {100 * p:.1f}%" for name, p in ranked))
            continue
        for p in record["predictions"]:
            lines.append(f"  {100 * p['probability']:6.2f}%  {p['class']}")
    return "\n".join(lines)
