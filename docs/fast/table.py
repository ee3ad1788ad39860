"""The fast-recipe runs kept in this folder as one Markdown table, read from their records.

    python docs/fast/table.py [RUN_DIR ...]     # default: every docs/fast/*/summary.json

Each row is one run: its network and settings (config.json), its last validation error
(metrics.jsonl), its test error without and with test-time augmentation (with an EMA of the
weights, the trained weights' errors in brackets), its training FLOPs
and seconds, and the epoch / PFLOP / minutes at which test accuracy first reached 90%
(summary.json). Nothing is typed by hand.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def row(run: Path) -> str:
    config = json.loads((run / "config.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    r = config["recipe"]
    sizes = "-".join(str(s) for s in r.get("train_sizes") or [32])
    settings = f"{r['epochs']} ep, batch {r['batch_size']}, lr {r['lr']:g}, LS {r['label_smoothing']:g}, {sizes} px"
    settings += ", whitened stem" if r.get("whiten_stem") else ""
    settings += f", EMA {r['ema_decay']:g}" if r.get("ema_decay") else ""
    settings += ", no decay on BN and biases" if r.get("decay_norm_bias") is False else ""
    settings += f", BN shifts and biases at {r['bias_lr_scale']:g}x lr" if r.get("bias_lr_scale", 1) != 1 else ""
    settings += ", BN scales frozen at 1" if r.get("freeze_norm_scale") else ""
    settings += f", Muon on conv filters at lr {r['muon_lr']:g}" if r.get("optimizer") == "muon" else ""
    if (r.get("translate", 4), r.get("flip", "random")) != (4, "random"):
        settings += f", shifts {r['translate']} px, {r['flip']} flips"
    val, raw_val, raw_test = (records[-1].get(k) for k in ("val_error", "raw_val_error", "raw_test_error"))
    val_text = "-" if val is None else f"{val:.2f}%" + ("" if raw_val is None else f" ({raw_val:.2f}% without EMA)")
    test_text = f"{summary['final_test_error']:.2f}%" + ("" if raw_test is None else f" ({raw_test:.2f}% without EMA)")
    at90 = (summary.get("milestones") or {}).get("90%")
    reached = "-"
    if at90:
        reached = f"epoch {at90['epoch']}, {at90['train_flops'] / 1e15:.3f} PF, {at90['train_s'] / 60:.1f} min training"
    tta = summary.get("final_test_error_tta")
    return (
        f"| [{run.name}]({run.name}/summary.json) | `{r['model']}` | {settings} | seed {r['seed']} | "
        f"{config['data']['sizes']['train']:,} | {val_text} | "
        f"{test_text} | {'-' if tta is None else f'{tta:.2f}%'} | "
        f"{summary['train_flops'] / 1e15:.3f} | {summary['train_s'] / 60:.1f} | {summary['wall_s'] / 60:.1f} | "
        f"{reached} |"
    )


def main() -> None:
    here = Path(__file__).parent
    runs = [Path(a) for a in sys.argv[1:]] or sorted(p.parent for p in here.glob("*/summary.json"))
    print("| run | network | settings | seed | train images | val error | test error | test error, TTA "
          "| train PFLOP | train min | wall min | 90% test accuracy reached |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for run in runs:
        print(row(run))


if __name__ == "__main__":
    main()
