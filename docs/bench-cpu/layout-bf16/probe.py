"""Which layout trains our DenseNets faster under bf16 autocast on this CPU, by model and image size.

    python docs/bench-cpu/layout-bf16/probe.py docs/bench-cpu/layout-bf16/probe.json

Each point: our module's training step (the bench worker, tuned allocator) in NCHW and in
channels_last, 3 alternated rounds of 2 timed steps after 1 warm-up; cl_over_nchw is the
per-round speed-up of channels_last. About 8 minutes on 2 cores.
"""

import json
import statistics
import sys
from pathlib import Path

from densenets.bench.harness import BenchConfig, time_rounds

POINTS = [("densenet121", 16, 64), ("densenet121", 16, 112), ("densenet121", 16, 224),
          ("densenet_bc100_k12", 64, 32), ("densenet_bc100_k12", 16, 64), ("densenet_bc100_k12", 8, 128)]  # fmt: skip
config = BenchConfig(device="cpu", reps=2, rounds=3, warmup=1)
rows = []
for model, batch, size in POINTS:
    base = {"task": "train", "model": model, "batch": batch, "size": size, "device": "cpu", "precision": "bf16",
            "impl": "densenets", "allocator": "tuned", "form": "module"}  # fmt: skip
    per_round = time_rounds({"nchw": {**base, "layout": "nchw"}, "cl": {**base, "layout": "cl"}}, config, print)
    row = {"model": model, "batch": batch, "size": size,
           "img_s_nchw": batch / statistics.median(per_round["nchw"]),
           "img_s_cl": batch / statistics.median(per_round["cl"]),
           "cl_over_nchw": [n / c for n, c in zip(per_round["nchw"], per_round["cl"], strict=True)]}  # fmt: skip
    rows.append(row)
    print(json.dumps(row), flush=True)
Path(sys.argv[1]).write_text(json.dumps(rows, indent=1) + "\n")
