"""``densenets bench``: speed and memory against torchvision, as a table."""

from __future__ import annotations

from ..bench.harness import PRECISION_DTYPES, SECTIONS, BenchConfig, parse_memory_target, run_benchmarks
from ..bench.report import to_markdown
from ..errors import ConfigError
from ..models import DenseNetConfig, get_config


def add_parser(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="training/inference speed and memory against torchvision's DenseNet, like for like",
        description="Times our DenseNet against torchvision's (same architecture, weights and input; NCHW and "
        "channels_last, same allocator setting, same precision; ONNX Runtime against torchvision through ONNX "
        "Runtime) in fresh processes, alternated round by round; every ratio is paired per round against a named "
        "row. Writes results.md, results.json (and a memory plot) to --out.",
    )
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu or cuda")
    p.add_argument("--reps", type=int, default=2, help="timed calls per contender process (after the warm-up)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls per contender process")
    p.add_argument("--rounds", type=int, default=5, help="processes per contender, alternated round by round")
    p.add_argument(
        "--precisions",
        default="fp32,bf16",
        help=f"comma-separated subset of {','.join(PRECISION_DTYPES)} (bf16: autocast, or "
        "optimize_for_inference(precision='bf16') for the optimised rows)",
    )
    p.add_argument("--sections", default="train,infer", help=f"comma-separated subset of {','.join(SECTIONS)}")
    p.add_argument(
        "--only",
        action="append",
        default=[],
        help="run only workloads whose title contains this text, e.g. 'train densenet_bc100_k12' or 'bf16' "
        "(repeatable)",
    )
    p.add_argument(
        "--memory-target",
        default="",
        metavar="MODEL:BATCH",
        help="the memory-efficient target of the memory sections (default densenet_bc250_k24:64; its normal "
        "mode needs about 21 GiB, so a 24 GiB machine times it at batch 32)",
    )
    p.add_argument("--quick", action="store_true", help="tiny models: checks the harness runs, in seconds")
    p.add_argument("--out", default="bench-results", help="folder for results.md/json and plots")
    p.set_defaults(run=run_bench)


def run_bench(args) -> int:
    sections = tuple(s.strip() for s in args.sections.split(",") if s.strip())
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"unknown bench section(s) {unknown}; choose from {', '.join(SECTIONS)}")
    precisions = tuple(s.strip() for s in args.precisions.split(",") if s.strip())
    bad = sorted(set(precisions) - set(PRECISION_DTYPES)) or ([] if precisions else ["(none)"])
    if bad:
        raise ConfigError(f"unknown bench precision(s) {bad}; choose from {', '.join(PRECISION_DTYPES)}")
    if args.reps < 1 or args.rounds < 1 or args.warmup < 0:
        raise ConfigError(
            f"--reps and --rounds must be >= 1 and --warmup >= 0; got {args.reps}, {args.rounds}, {args.warmup}"
        )
    try:
        target, _ = parse_memory_target(args.memory_target, args.quick)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if not isinstance(get_config(target), DenseNetConfig):  # an unknown name fails here, in the registry's words
        raise ConfigError(f"memory target {target!r}: the memory-efficient mode is DenseNet's; name a DenseNet")
    config = BenchConfig(
        device=args.device,
        reps=args.reps,
        rounds=args.rounds,
        warmup=args.warmup,
        precisions=precisions,
        sections=sections,
        only=tuple(args.only),
        quick=args.quick,
        out_dir=args.out,
        memory_target=args.memory_target,
    )
    results = run_benchmarks(config)
    print(to_markdown(results))
    print(f"written to {args.out}/results.md, results.json")
    return 0
