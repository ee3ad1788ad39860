"""``densenets analyze``, ``densenets plot`` and ``densenets report``."""

from __future__ import annotations

from pathlib import Path

from ..engine.loading import resolve_checkpoint_path


def add_parser(sub) -> None:
    p = sub.add_parser("analyze", help="Figure 5: feature-reuse heat map of a trained model")
    p.add_argument("checkpoint", help="run folder, checkpoint, weights file or exported .json")
    p.add_argument("--model", help="model name, for a bare weights file")
    p.add_argument("--out", help="folder for feature_reuse.png/.svg/.json (default: beside the checkpoint)")
    p.set_defaults(run=run_analyze)

    p = sub.add_parser(
        "plot", help="the paper's Figures 3 and 4 with your runs; error curves, error vs cost, accuracy vs FLOPs, time"
    )
    p.add_argument("runs", nargs="*", help="run folders")
    p.add_argument(
        "--figure", type=int, choices=(3, 4),
        help="3: ImageNet error vs parameters and FLOPs, DenseNets vs ResNets; 4: C10+ error vs parameters "
        "(DenseNet variants; DenseNet-BC vs pre-activation ResNet) and training curves of the runs side by side. "
        "Without it: error curves, error vs parameters/FLOPs, and test accuracy vs training FLOPs and wall time "
        "of the runs",
    )  # fmt: skip
    p.add_argument("--out", default="plots", help="folder for the PNG files")
    p.set_defaults(run=run_plot)

    p = sub.add_parser(
        "report", help="the paper's Tables 2 and 3 and Figure 3's ResNets: our params/FLOPs, its errors, your runs'"
    )
    p.add_argument("runs", nargs="*", help="run folders whose final test error goes beside the paper's")
    p.add_argument("--out", help="also write the tables to this file")
    p.set_defaults(run=run_report)


def run_analyze(args) -> int:
    from ..analysis.feature_reuse import feature_reuse, save_feature_reuse
    from ..engine.loading import load_model, loaded_notes

    source = resolve_checkpoint_path(args.checkpoint)
    loaded = load_model(source, args.model)
    for line in loaded_notes(loaded):
        print(line)
    out = Path(args.out) if args.out else source.parent / f"analysis-{source.stem}"
    results = feature_reuse(loaded.model)
    paths = save_feature_reuse(results, out, title=f"Feature reuse: {loaded.name or source.name}")
    for block in results:
        final = block["targets"][-1]
        column = [row[-1] for row in block["matrix"]]
        top = max(range(len(column)), key=lambda s: column[s] if column[s] is not None else -1)
        print(f"{block['block']}: {len(block['sources']) - 1} layers; the {final} reads most from "
              f"{block['sources'][top]} (mean |w| {column[top]:.4f})")  # fmt: skip
    print("written: " + ", ".join(str(p) for p in paths))
    return 0


def run_plot(args) -> int:
    from ..analysis.plots import plot_figure, plot_runs
    from ..errors import UserError

    if args.figure is not None:
        path, notes = plot_figure(args.figure, args.runs, args.out)
        for note in notes:
            print(note)
        print(f"written {path}")
        return 0
    if not args.runs:
        raise UserError("give run folders to plot, or --figure 3 / --figure 4 for the paper's figures")
    for path in plot_runs(args.runs, args.out):
        print(f"written {path}")
    return 0


def run_report(args) -> int:
    from ..analysis.report import report_markdown, run_results

    text = report_markdown(runs=run_results(args.runs))
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0
