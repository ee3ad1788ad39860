"""The ``densenets`` command: parses arguments and hands them to one library call each."""

from __future__ import annotations

import argparse
import sys

from .._version import __version__
from ..errors import UserError
from . import (
    analysis_cmd,
    bench_cmd,
    data_bench_cmd,
    evaluate_cmd,
    explain_cmd,
    export_cmd,
    serve_cmd,
    summary_cmd,
    train_cmd,
)

# Each module exposes add_parser(subparsers) and registers its own run(args) as the handler.
COMMANDS = [train_cmd, evaluate_cmd, explain_cmd, analysis_cmd, export_cmd, summary_cmd, bench_cmd, data_bench_cmd,
            serve_cmd]  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="densenets",
        description="DenseNet (Huang et al., CVPR 2017): build, train, evaluate, analyse and benchmark.",
    )
    parser.add_argument("--version", action="version", version=f"densenets {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in COMMANDS:
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except UserError as exc:
        label = "error: " if exc.exit_code == 2 else ""
        print(f"densenets: {label}{exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("densenets: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
