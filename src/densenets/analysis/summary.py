"""Static facts about a DenseNet: parameters, FLOPs, block channels, depth."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..models import DenseNet, DenseNetConfig
from ..models.densenet import Transition
from ..paper import paper_params


def default_input_size(config: DenseNetConfig) -> int:
    """32 for the CIFAR/SVHN stem, 224 for the ImageNet stem (the paper's input sizes)."""
    return 224 if config.stem == "imagenet" else 32


def paper_depth(config: DenseNetConfig) -> int:
    """Layer count as the paper counts it: every conv plus the classifier.

    stem conv + (1 or 2 convs per dense layer) + one conv per transition + FC.
    """
    per_layer = 2 if config.bottleneck else 1
    return 1 + per_layer * sum(config.block_sizes) + (len(config.block_sizes) - 1) + 1


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: DenseNet, input_size: int, batch_size: int = 1) -> int:
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


def model_summary(model: DenseNet, input_size: int | None = None, name: str | None = None) -> dict:
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
    flops = count_flops(model, size)
    return {
        "name": name,
        "params": count_parameters(model),
        "paper_params": paper_params(name, config.num_classes) if name else None,
        "input_size": size,
        "flops": flops,
        "macs": flops // 2,
        "depth": paper_depth(config),
        "growth_rate": config.growth_rate,
        "num_features": model.num_features,
        "blocks": blocks,
        "config": config.to_dict(),
    }


def format_summary(summary: dict) -> str:
    """Human-readable text for ``densenets summary``."""
    paper = summary["paper_params"]
    if paper is None:
        paper_note = "(the paper gives no count for this configuration)"
    elif paper == summary["params"]:
        paper_note = f"(paper: {paper:,}, exact match)"
    else:
        paper_note = f"(paper: {paper:,}, MISMATCH)"
    size = summary["input_size"]
    lines = [
        f"model        {summary['name'] or 'custom'}",
        f"depth        {summary['depth']} layers (convs + classifier), growth rate k={summary['growth_rate']}",
        f"parameters   {summary['params']:,} {paper_note}",
        f"FLOPs        {summary['flops'] / 1e9:.3f} G at {size}x{size} "
        f"({summary['macs'] / 1e9:.3f} G multiply-adds), batch 1",
        "",
        f"{'block':<12}{'layers':>7}{'in':>8}{'out':>8}{'maps':>10}",
    ]
    for b in summary["blocks"]:
        r = b["resolution"]
        lines.append(f"{b['block']:<12}{b['layers']:>7}{b['in_channels']:>8}{b['out_channels']:>8}{f'{r}x{r}':>10}")
    lines.append(f"{'classifier':<12}{'':>7}{summary['num_features']:>8}{summary['config']['num_classes']:>8}")
    return "\n".join(lines)
