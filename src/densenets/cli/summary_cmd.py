"""``densenets summary NAME`` and ``densenets list``."""

from __future__ import annotations

import json

from ..analysis.summary import format_summary, model_summary
from ..models import create_model, list_models, list_pretrained
from ..models.hub import hub_cache_dir
from .options import parse_overrides


def add_parser(sub) -> None:
    p = sub.add_parser("summary", help="parameters, FLOPs and block layout of a model")
    p.add_argument(
        "name",
        help="a name from `densenets list` (DenseNets, ResNet baselines) or densenet[_b|_c|_bc]<depth>_k<growth>",
    )
    p.add_argument("--input-size", type=int, default=None, help="square input side (default: 32 CIFAR, 224 ImageNet)")
    p.add_argument("--num-classes", type=int, default=None, help="override the number of classes")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override any config field, e.g. --set growth_rate=24 or --set stochastic_depth=0.5 (repeatable)",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(run=run_summary)

    p = sub.add_parser("list", help="list the named variants (DenseNets and ResNet baselines)")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style pattern, e.g. 'densenet_bc*'")
    p.add_argument(
        "--pretrained", action="store_true", help="list the named weights instead (create_model(..., pretrained=TAG))"
    )
    p.set_defaults(run=run_list)


def run_summary(args) -> int:
    overrides = parse_overrides(args.set)
    if args.num_classes is not None:
        overrides["num_classes"] = args.num_classes
    model = create_model(args.name, **overrides)
    summary = model_summary(model, args.input_size, name=args.name)
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 0


def run_list(args) -> int:
    if args.pretrained:
        print(format_pretrained(list_pretrained(args.pattern)))
        return 0
    for name in list_models(args.pattern):
        print(name)
    return 0


def format_pretrained(entries) -> str:
    """One line per named weights: name, classes, input, published top-1, where the file is."""
    cache = hub_cache_dir()
    lines = [f"{'weights':<26} {'classes':>7}  {'input':<11} {'top-1':>6}  file"]
    for e in entries:
        size = "x".join(str(s) for s in e.input_size)
        top1 = f"{e.top1:.2f}" if e.top1 is not None else "-"
        where = e.url or f"(in the package) {e.package_file}"
        cached = "  [cached]" if e.url and (cache / e.file_name).is_file() else ""
        lines.append(f"{e.name:<26} {e.num_classes:>7}  {size:<11} {top1:>6}  {where}{cached}")
    sets = "; ".join(sorted({f"{e.dataset}: {e.source}" for e in entries}))
    lines.append(f"top-1 on the test set of each file's data set, as its source reports ({sets}); cache: {cache}")
    return "\n".join(lines)
