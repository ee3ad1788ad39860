"""Static facts about a model (a DenseNet or a ResNet baseline): parameters, FLOPs, block
channels, depth."""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..models import DenseNetConfig, TorchvisionResNetConfig, build_model, create_model
from ..models.densenet import Transition
from ..models.registry import ModelConfig
from ..models.resnet_imagenet import torchvision_published
from ..paper import baseline_params_m, paper_params, paper_params_rounded


def default_input_size(config: ModelConfig) -> int:
    """32 for the CIFAR/SVHN stem, 224 for the ImageNet stem (the paper's input sizes)."""
    return 224 if config.stem == "imagenet" else 32


def paper_depth(config: ModelConfig) -> int:
    """Layer count as the paper counts it: every conv plus the classifier.

    DenseNet: stem conv + (1 or 2 convs per dense layer) + one conv per transition + FC.
    A ResNet's depth is its name's (its own paper's count).
    """
    if not isinstance(config, DenseNetConfig):
        return config.depth
    per_layer = 2 if config.bottleneck else 1
    return 1 + per_layer * sum(config.block_sizes) + (len(config.block_sizes) - 1) + 1


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@lru_cache(maxsize=64)
def variant_cost(name: str, num_classes: int | None = None) -> tuple[int, int]:
    """(parameters, forward FLOPs per image at the paper's input size) of a named variant.

    Built on the meta device: shapes only, no memory and no arithmetic.
    """
    overrides = {} if num_classes is None else {"num_classes": num_classes}
    with torch.device("meta"):
        model = create_model(name, **overrides)
    return count_parameters(model), count_flops(model, default_input_size(model.config))


def count_flops(model: nn.Module, input_size: int, batch_size: int = 1) -> int:
    """Forward FLOPs (2 per multiply-add) of convs and the classifier, per batch, as the paper counts them.

    The paper's transition runs its 1x1 conv before the 2x2 pool; ours pools first where
    that gives the same output (no dropout), doing a quarter of the work. The count is the
    paper's: each transition conv at the resolution before pooling.
    """
    device = next(model.parameters()).device
    x = torch.zeros(batch_size, model.config.in_channels, input_size, input_size, device=device)
    skipped: list[int] = []

    def add_pre_pool_work(module: Transition, inputs: tuple) -> None:
        n, c, h, w = inputs[0].shape
        skipped.append(2 * n * c * module.conv.out_channels * (h * w - (h // 2) * (w // 2)))

    hooks = [
        m.register_forward_pre_hook(add_pre_pool_work)
        for m in model.modules()
        if isinstance(m, Transition) and m.pools_first
    ]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return int(counter.get_total_flops()) + sum(skipped)


def model_summary(model: nn.Module, input_size: int | None = None, name: str | None = None) -> dict:
    """A JSON-able description of ``model``; ``name`` looks up the paper's parameter count."""
    config = model.config
    size = input_size or default_input_size(config)
    blocks = []
    for info in model.feature_info:
        blocks.append(
            {
                "block": info["module"].rsplit(".", 1)[-1],
                "layers": info["num_layers"],
                "in_channels": info["in_chs"],
                "out_channels": info["num_chs"],
                "resolution": max(size // info["reduction"], 1),
            }
        )
    with torch.device("meta"):  # FLOPs depend on the architecture only: count on shapes, no arithmetic
        shadow = build_model(config)
    flops = count_flops(shadow, size)
    torchvision = None
    if isinstance(config, TorchvisionResNetConfig) and config.num_classes == 1000 and config.in_channels == 3:
        torchvision = torchvision_published(config.arch)
    return {
        "name": name,
        "params": count_parameters(model),
        "paper_params": paper_params(name, config.num_classes) if name else None,
        "paper_params_rounded": paper_params_rounded(name, config.num_classes) if name else None,
        "torchvision": torchvision,  # torchvision's published params / G mult-adds for its weights
        "input_size": size,
        "flops": flops,
        "macs": flops // 2,
        "depth": paper_depth(config),
        "growth_rate": getattr(config, "growth_rate", None),
        "num_features": model.num_features,
        "blocks": blocks,
        "config": config.to_dict(),
    }


def format_summary(summary: dict) -> str:
    """Human-readable text for ``densenets summary``."""
    paper = summary["paper_params"]
    rounded = summary.get("paper_params_rounded")
    published = summary.get("torchvision")
    if published is not None:
        same = "exact match" if published["params"] == summary["params"] else "MISMATCH"
        paper_note = f"(torchvision's published count: {published['params']:,}, {same})"
    elif paper is None and rounded is not None:
        diff = 100 * (summary["params"] / rounded[0] - 1)
        printed = baseline_params_m(summary["name"])
        table2 = f"; Table 2 prints {printed}M" if printed and round(printed * 1e6) != rounded[0] else ""
        paper_note = f"({rounded[1]}: {rounded[0] / 1e6:.1f}M, rounded; ours {diff:+.1f}%{table2})"
    elif paper is None:
        paper_note = "(the paper gives no count for this configuration)"
    elif paper == summary["params"]:
        paper_note = f"(paper: {paper:,}, exact match)"
    else:
        paper_note = f"(paper: {paper:,}, MISMATCH)"
    size = summary["input_size"]
    k = summary["growth_rate"]
    lines = [
        f"model        {summary['name'] or 'custom'}",
        f"depth        {summary['depth']} layers (convs + classifier)" + (f", growth rate k={k}" if k else ""),
        f"parameters   {summary['params']:,} {paper_note}",
        f"FLOPs        {summary['flops'] / 1e9:.3f} G at {size}x{size} "
        f"({summary['macs'] / 1e9:.3f} G multiply-adds), batch 1"
        + (f"; torchvision: {published['gmacs']} G multiply-adds" if published else ""),
        "",
        f"{'block' if k else 'stage':<12}{'layers' if k else 'units':>7}{'in':>8}{'out':>8}{'maps':>10}",
    ]
    for b in summary["blocks"]:
        r = b["resolution"]
        lines.append(f"{b['block']:<12}{b['layers']:>7}{b['in_channels']:>8}{b['out_channels']:>8}{f'{r}x{r}':>10}")
    lines.append(f"{'classifier':<12}{'':>7}{summary['num_features']:>8}{summary['config']['num_classes']:>8}")
    return "\n".join(lines)
