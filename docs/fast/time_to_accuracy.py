"""Time and FLOPs to accuracy of training runs side by side, read from their records.

    python docs/fast/time_to_accuracy.py RUN_DIR RUN_DIR [...] [--peak-bf16 432 --peak-fp32 217]

For each run: its precision, final test accuracy, training PFLOP and minutes, and the training
steps' rate against the measured matrix-multiply peak of the precision it used. Then, against
the first run: the ratio of FLOPs and of training time to the highest test accuracy that every
run reached (each run's first epoch at or above it, read from metrics.jsonl), and the accuracy
of each run at its last epoch within the first run's FLOPs (the same budget). The test set is
evaluated each epoch only to draw these curves; nothing is selected on it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def load(run: Path) -> dict:
    config = json.loads((run / "config.json").read_text())
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {"name": run.name, "recipe": config["recipe"], "records": records}


def first_at(records: list[dict], accuracy: float) -> dict | None:
    return next((r for r in records if 100 - r["test_error"] >= accuracy), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--peak-bf16", type=float, default=432.0, help="GFLOP/s, measured (default: Zen 4, 2 cores)")
    parser.add_argument("--peak-fp32", type=float, default=217.0, help="GFLOP/s, measured (default: Zen 4, 2 cores)")
    args = parser.parse_args()
    runs = [load(r) for r in args.runs]

    print("| run | precision | schedule | epochs | final test accuracy | train PFLOP | train min | GFLOP/s "
          "| of the peak |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for run in runs:
        r, last = run["recipe"], run["records"][-1]
        amp = r.get("amp") or "none"
        peak = args.peak_bf16 if amp == "bf16" else args.peak_fp32
        rate = last["train_flops"] / last["train_s"] / 1e9
        print(
            f"| {run['name']} | {'bf16' if amp == 'bf16' else 'fp32'} | {r['schedule']} | {r['epochs']} | "
            f"{100 - last['test_error']:.2f}% | {last['train_flops'] / 1e15:.3f} | {last['train_s'] / 60:.1f} | "
            f"{rate:.0f} | {rate / peak:.0%} |"
        )

    base = runs[0]
    common = min(max(100 - r["test_error"] for r in run["records"]) for run in runs)
    level = int(common)  # a whole percent every run reached
    budget = base["records"][-1]["train_flops"]
    print(f"\nTo {level}% test accuracy (the highest whole percent every run reached), and at the budget of "
          f"{base['name']} ({budget / 1e15:.3f} PFLOP):\n")  # fmt: skip
    print(f"| run | epoch at {level}% | PFLOP to {level}% | train min to {level}% | PFLOP ratio | time ratio "
          f"| test accuracy within {budget / 1e15:.3f} PFLOP |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    b = first_at(base["records"], level)
    for run in runs:
        at = first_at(run["records"], level)
        within = [r for r in run["records"] if r["train_flops"] <= budget * 1.001]
        acc = f"{100 - within[-1]['test_error']:.2f}% (epoch {within[-1]['epoch']})" if within else "-"
        print(
            f"| {run['name']} | {at['epoch']} | {at['train_flops'] / 1e15:.3f} | {at['train_s'] / 60:.1f} | "
            f"{at['train_flops'] / b['train_flops']:.2f}x | {at['train_s'] / b['train_s']:.2f}x | {acc} |"
        )


if __name__ == "__main__":
    main()
