"""Class activation maps: CAM (Zhou et al. 2016) and Grad-CAM (Selvaraju et al. 2017).

``explain(model, images)`` leaves the model as it found it: its train/eval mode (module by
module), every parameter's ``.grad`` and ``requires_grad``, and its hooks. Grad-CAM reads the
layer through one forward hook that is removed before returning, and takes gradients with
``torch.autograd.grad`` with respect to that layer's output only, so nothing accumulates in
``.grad``. The maps are normalised as pytorch-grad-cam does (ReLU, min-max to [0, 1], bilinear
resize to the input, min-max again; trilinear for a volume); on a layer that is not rewritten in
place afterwards they equal its ``GradCAM`` and captum's ``LayerGradCam`` (tested).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError

METHODS = ("cam", "gradcam")
NO_GRADIENTS = (
    "an optimize_for_inference, ONNX Runtime, OpenVINO or int8 module has no gradients: "
    "explain the model it was made from"
)


def explain(
    model: nn.Module,
    images: Tensor,
    targets: int | str | Sequence[int | str] | Tensor | None = None,
    method: str = "cam",
    layer: str | nn.Module | None = None,
    class_names: Sequence[str] | None = None,
) -> Tensor:
    """Heat maps of where ``model`` looks for each target class, in [0, 1] at the input's size.

    The model comes back as it was (train/eval mode of every module, gradients, hooks).

    Args:
        model: One of our models (DenseNets and the ResNet baselines).
        images: ``(N, C, H, W)``, preprocessed as the model expects, or volumes ``(N, C, D, H, W)``
            for a 3-D model: each ``H, W`` below is then ``D, H, W``.
        targets: ``None`` (each image's top prediction) or one class (index or name):
            maps ``(N, H, W)``; a sequence of T classes explained on every image:
            ``(N, T, H, W)``; a tensor ``(N,)`` of one class per image: ``(N, H, W)``, or
            ``(N, T)``: ``(N, T, H, W)``.
        method: ``"cam"``, exact for a global-average-pool + linear head (the classifier's
            weights times the final feature maps); ``"gradcam"`` at ``layer``.
        layer: For Grad-CAM, a module or its name (default the model's
            ``feature_map_layer``, the post-ReLU final map).
        class_names: For targets given by name (default
            ``model.pretrained_cfg["class_names"]``).

    Returns:
        The maps, scaled as pytorch-grad-cam scales them.

    Raises:
        ConfigError: An unknown method, class or layer, images that are not 4-D (or 5-D), or a call
            under ``torch.inference_mode()``.

    Example:
        >>> maps = densenets.explain(model, images, targets=["cat", 5])  # doctest: +SKIP
        >>> maps.shape  # doctest: +SKIP
        torch.Size([8, 2, 32, 32])
    """
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; valid methods: {', '.join(METHODS)}")
    if not isinstance(images, Tensor) or images.dim() not in (4, 5):
        raise ConfigError(
            "images must be a (N, C, H, W) tensor (or (N, C, D, H, W) volumes), "
            f"got {getattr(images, 'shape', type(images))}"
        )
    if torch.is_inference_mode_enabled():
        raise ConfigError("explain needs autograd; it was called under torch.inference_mode()")
    with _as_found(model), torch.enable_grad():
        model.eval()
        if method == "cam":
            if layer is not None:
                raise ConfigError("method='cam' reads the final feature map only; use method='gradcam' for a layer")
            scores, activations, weights_for = _cam(model, images)
        else:
            scores, activations, weights_for = _gradcam(model, images, _layer(model, layer))
        chosen, squeeze = _targets(targets, scores, class_names or _class_names(model))
        dtype = torch.promote_types(activations.dtype, torch.float32)  # bf16 maps are summed in fp32
        maps = torch.stack([weights_for(chosen[:, t]) for t in range(chosen.shape[1])], 1)  # (N, T, C)
        cams = torch.einsum("ntc,nc...->nt...", maps.to(dtype), activations.to(dtype))
    cams = normalise(cams, images.shape[2:])
    return cams[:, 0] if squeeze else cams


def normalise(cams: Tensor, size: Sequence[int]) -> Tensor:
    """(N, T, h, w) raw maps -> ReLU, min-max to [0, 1], bilinear resize to ``size``, min-max again.

    (N, T, d, h, w) maps of a volume are resized trilinearly to a 3-long ``size``.

    pytorch-grad-cam's order, kept so the maps equal its own: the first scaling's 1e-7 guard
    is not negligible for maps whose raw range is small (inner layers, ~1e-3).
    """
    cams = F.relu(cams.detach().to(torch.promote_types(cams.dtype, torch.float32)))
    n, t = cams.shape[:2]
    mode = {2: "bilinear", 3: "trilinear"}[len(size)]
    cams = _min_max(cams.reshape(n * t, 1, *cams.shape[2:]))
    cams = _min_max(F.interpolate(cams, size=tuple(size), mode=mode))
    return cams.reshape(n, t, *size)


def _min_max(maps: Tensor) -> Tensor:
    flat = maps.flatten(1)
    flat = flat - flat.amin(1, keepdim=True)
    return (flat / (flat.amax(1, keepdim=True) + 1e-7)).view_as(maps)


def _cam(model: nn.Module, images: Tensor):
    head = getattr(model, "classifier", None) or getattr(model, "fc", None)
    if getattr(model, "feature_map_layer", None) is None or not hasattr(model, "forward_head"):
        raise ConfigError(
            f"method='cam' needs the densenets model surface (feature_map_layer and a linear head), which a "
            f"{type(model).__name__} lacks: use method='gradcam' with layer=NAME; {NO_GRADIENTS}"
        )
    if not isinstance(head, nn.Linear):
        raise ConfigError(f"method='cam' needs a linear classifier, found {type(head).__name__}")
    with torch.no_grad():  # the model's own forward (and its users' hooks), the final map read by a hook
        scores, features = _forward(model, images, _layer(model, None))
    weight = head.weight.detach()
    return scores, features, lambda t: weight[t]


def _gradcam(model: nn.Module, images: Tensor, module: nn.Module):
    scores, activations = _forward(model, images, module)

    def weights_for(t: Tensor) -> Tensor:
        # Images are independent in eval mode, so one backward of the summed scores serves all.
        score = scores.gather(1, t[:, None]).sum()
        (grad,) = torch.autograd.grad(score, activations, retain_graph=True)
        return grad.flatten(2).mean(2)  # (N, C): alpha_c of Grad-CAM, the mean over h, w (and d)

    return scores.detach(), activations.detach(), weights_for


def _forward(model: nn.Module, images: Tensor, module: nn.Module) -> tuple[Tensor, Tensor]:
    """The model's scores, and ``module``'s output as a leaf that the scores' graph starts from."""
    captured: list[Tensor] = []
    shape = "(N, C, h, w)" if images.dim() == 4 else "(N, C, d, h, w)"

    def hook(_module, _inputs, output):
        if not isinstance(output, Tensor) or output.dim() != images.dim():
            raise ConfigError(f"a heat map needs a layer with a {shape} output, got {getattr(output, 'shape', output)}")
        if torch.is_inference(output):
            raise ConfigError(f"the layer's output carries no gradients: {NO_GRADIENTS}")
        # A fresh leaf: gradients stop here (nothing upstream, no parameter .grad), and the
        # clone handed on keeps our copy intact if a later op rewrites it in place.
        leaf = output.detach().requires_grad_(torch.is_grad_enabled())
        captured.append(leaf)
        return leaf.clone()

    handle = module.register_forward_hook(hook)
    try:
        scores = model(images)
    finally:
        handle.remove()
    if len(captured) != 1:
        raise ConfigError(
            f"the layer ran {len(captured)} times in one forward pass; pick a module that runs "
            "once (e.g. a block, not a ReLU shared by its convolutions)"
        )
    if not isinstance(scores, Tensor) or scores.dim() != 2:
        raise ConfigError(f"explain needs a classifier's (N, classes) scores, got {getattr(scores, 'shape', scores)}")
    return scores, captured[0]


def _layer(model: nn.Module, layer: str | nn.Module | None) -> nn.Module:
    if isinstance(layer, nn.Module):
        return layer
    if layer is None:
        layer = getattr(model, "feature_map_layer", None)
        if layer is None:
            raise ConfigError(
                f"a {type(model).__name__} names no final feature map (feature_map_layer): pass layer=NAME; "
                + NO_GRADIENTS
            )
    try:
        return model.get_submodule(layer)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n][-5:]
        raise ConfigError(
            f"no layer {layer!r} in {type(model).__name__}; its last layers: {', '.join(names)}"
        ) from None


def _targets(targets, scores: Tensor, names: Sequence[str]) -> tuple[Tensor, bool]:
    """(N, T) class indices, and whether the caller asked for one map per image."""
    n, num_classes = scores.shape
    if targets is None:
        chosen, squeeze = scores.argmax(1)[:, None], True
    elif isinstance(targets, Tensor):
        if targets.dim() not in (1, 2) or targets.shape[0] != n:
            raise ConfigError(f"a targets tensor must be (N,) or (N, T) with N = {n}, got {tuple(targets.shape)}")
        chosen, squeeze = targets.reshape(n, -1).long(), targets.dim() == 1
    else:
        single = isinstance(targets, (int, str))
        indices = [_index(t, names, num_classes) for t in ([targets] if single else list(targets))]
        if not indices:
            raise ConfigError("targets is empty")
        chosen, squeeze = torch.tensor(indices).expand(n, -1), single
    if chosen.numel() and (chosen.min() < 0 or chosen.max() >= num_classes):
        raise ConfigError(f"target classes must be in 0..{num_classes - 1}")
    return chosen.to(scores.device), squeeze


def _index(target: int | str, names: Sequence[str], num_classes: int) -> int:
    if isinstance(target, str):
        if target in names:
            return list(names).index(target)
        if target.isdigit() and not names:
            return int(target)
        known = ", ".join(list(names)[:10]) + (", ..." if len(names) > 10 else "") if names else "none known"
        raise ConfigError(f"unknown class {target!r}; classes: {known}")
    if isinstance(target, bool) or not isinstance(target, int) or not 0 <= target < num_classes:
        raise ConfigError(f"target class {target!r} is not in 0..{num_classes - 1}")
    return target


def _class_names(model: nn.Module) -> list[str]:
    return list((getattr(model, "pretrained_cfg", None) or {}).get("class_names") or [])


@contextmanager
def _as_found(model: nn.Module):
    """Restore each module's train/eval mode on the way out (a model may mix them, e.g. frozen BN)."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def peak_cells(maps: Tensor, grid: tuple[int, int] = (2, 2)) -> Tensor:
    """(..., H, W) maps -> (...) the row-major index of the grid cell holding each map's maximum.

    The pointing game on a mosaic: a map points at the right tile when its peak cell holds the class.
    """
    h, w = maps.shape[-2:]
    peak = maps.flatten(-2).argmax(-1)
    rows, cols = peak // w, peak % w
    return (rows * grid[0] // h) * grid[1] + cols * grid[1] // w
