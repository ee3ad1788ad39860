"""The model behind the server: loaded, put on its backend and precision, and asked, by the
calls ``densenets predict`` and ``densenets explain`` make (one path from bytes to answer)."""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass

import torch
from torch import nn

from ..data.images import read_image
from ..data.transforms import image_transform
from ..deploy.precision import plan, with_precision
from ..engine.loading import load_model, loaded_notes
from ..engine.prediction import multilabel_thresholds, predict_batch
from ..engine.recipes import Recipe
from ..engine.runtime import make_runtime
from ..interpret.files import choose_classes, display_image, draw_overlay
from ..interpret.maps import METHODS, explain
from ..models.weights import LoadedModel
from .config import ServeConfig


@dataclass
class ServedModel:
    loaded: LoadedModel  # .model: the module predict runs (the chosen backend and precision)
    eager: nn.Module | None  # the fp32 module explain needs gradients of; None for exported runtimes
    backend: str
    precision: str
    precision_note: str
    weights: str  # the file loaded
    notes: list[str]
    ranked: int | None = None  # classes ranked per answer (the API's largest top_k); None: all

    @property
    def name(self) -> str:
        return self.loaded.name or type(self.loaded.model).__name__

    @property
    def classes(self) -> list[str]:
        n = self.loaded.model.config.num_classes
        return list(self.loaded.class_names) or [str(i) for i in range(n)]

    def decode(self, data: bytes, max_pixels: int) -> torch.Tensor:
        """The model's input (C, H, W) from an uploaded file, as predict reads a file on disk;
        raises what :data:`engine.prediction.UNREADABLE` names for anything not an image."""
        return image_transform(self.loaded.preprocess)(read_image(io.BytesIO(data), max_pixels))

    def predict(self, batch: torch.Tensor) -> list[dict]:
        """predict's answer for every image of ``batch`` (N, C, H, W), its ``ranked`` most
        probable classes ranked (building 1,000 entries per image cost 5.8 ms a batch of 16)."""
        return predict_batch(self.loaded, batch, top_k=min(self.ranked or len(self.classes), len(self.classes)))

    def explain(self, x: torch.Tensor, method: str, class_name: str | None, top_k: int | None) -> dict:
        """Heat maps of one image (C, H, W) as ``densenets explain`` chooses and draws them:
        ``{"method", "note", "explained": [{"class", "index", "probability", "map"}], "overlay_png"}``."""
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; valid methods: {', '.join(METHODS)}")
        model = self.eager
        names = self.classes
        if class_name is not None and class_name not in names:
            raise ValueError(f"unknown class {class_name!r}")
        thresholds = multilabel_thresholds(self.loaded)
        x = x[None].to(next(model.parameters()).device)
        with torch.no_grad():
            logits = model(x).float()[0]
        probs = logits.sigmoid() if thresholds else logits.softmax(0)
        chosen, note = choose_classes(probs, names, class_name, top_k, thresholds)
        maps = explain(model, x, targets=chosen, method=method)[0].cpu()  # (T, H, W)
        explained = [{"class": names[c], "index": c, "probability": float(probs[c])} for c in chosen]
        png = io.BytesIO()
        draw_overlay(display_image(x[0].cpu(), self.loaded.preprocess), maps, explained, png, method, bool(thresholds))
        for entry, heat in zip(explained, maps, strict=True):
            entry["map"] = [[round(v, 4) for v in row] for row in heat.tolist()]
        return {"method": method, "note": note, "explained": explained,
                "overlay_png": base64.b64encode(png.getvalue()).decode("ascii")}  # fmt: skip


def load_served(config: ServeConfig) -> ServedModel:
    """Load ``config.source`` as ``densenets predict`` does: same device rule, same precision step."""
    _, device = plan(config.precision, config.backend, config.device)
    device = make_runtime(Recipe(device=device)).device
    loaded = load_model(config.source, config.model_name, device=device)
    eager = loaded.model if next(loaded.model.parameters(), None) is not None else None
    loaded.model, info = with_precision(loaded, config.precision, config.calibration, config.backend, device.type)
    backend = "torch" if info["backend"] == "module" else info["backend"]
    if backend not in ("torch",):
        eager = None  # exported runtimes: no gradients, no feature maps to read
    loaded.model.eval()
    notes = loaded_notes(loaded)
    if hasattr(loaded.model, "dynamic_batch"):  # OpenVINO: one compile for every batch size the batcher forms
        loaded.model.dynamic_batch = True
        crop, channels = loaded.preprocess["crop"], loaded.preprocess["channels"]
        loaded.model.compiled_for((1, channels, crop, crop))  # compiled now, not on the first request
        notes.append(f"note: OpenVINO compiled once for batches of 1 to {config.max_batch} (dynamic batch dimension)")
    return ServedModel(loaded, eager, backend, config.precision, info["note"], str(loaded.source), notes,
                       config.max_top_k)  # fmt: skip
