"""``densenets bench``: speed and memory against torchvision, as a table."""

from __future__ import annotations

from ..bench.harness import SECTIONS, BenchConfig, run_benchmarks, to_markdown
from ..errors import ConfigError


def add_parser(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="training/inference speed and memory against torchvision's DenseNet",
        description="Times our DenseNet and torchvision's (same architecture, same weights, same input) "
        "round-robin in one run; writes results.md, results.json and a memory plot to --out.",
    )
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu or cuda")
    p.add_argument("--reps", type=int, default=3, help="timed steps per contender process (after 2 warm-up steps)")
    p.add_argument("--rounds", type=int, default=2, help="processes per contender, alternated round-robin")
    p.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none", help="autocast for every contender")
    p.add_argument("--sections", default="train,infer,memory", help=f"comma-separated subset of {','.join(SECTIONS)}")
    p.add_argument("--quick", action="store_true", help="tiny models: checks the harness runs, in seconds")
    p.add_argument("--out", default="bench-results", help="folder for results.md/json and plots")
    p.set_defaults(run=run_bench)


def run_bench(args) -> int:
    sections = tuple(s.strip() for s in args.sections.split(",") if s.strip())
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"unknown bench section(s) {unknown}; choose from {', '.join(SECTIONS)}")
    if args.reps < 1 or args.rounds < 1:
        raise ConfigError(f"--reps and --rounds must be >= 1, got {args.reps} and {args.rounds}")
    config = BenchConfig(args.device, args.reps, args.rounds, args.amp, sections, args.quick, args.out)
    results = run_benchmarks(config)
    print(to_markdown(results))
    print(f"written to {args.out}/results.md, results.json")
    return 0
