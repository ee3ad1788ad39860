#!/usr/bin/env bash
# Issue 27, item 6: the fast recipe on DenseNet-BC-100 (k=12) on one lent GPU, at most 8 minutes,
# its records (config.json, metrics.jsonl, summary.json, the log) written to OUT_DIR. Run from the
# repository root with CIFAR-10 in DATA_DIR (cifar-10-batches-py/, or pass --download where the
# machine has internet):
#
#   bash docs/fast/gpu_fast.sh DATA_DIR OUT_DIR            # on the GPU machine
#   bash docs/fast/gpu_fast.sh --smoke DATA_DIR OUT_DIR    # on a CPU: the same command, a tiny model, 4 steps
#
# The GPU run trains 30 epochs at batch 512 (lr 0.8, not tuned: the first recipe had 0.4 at batch 256) under
# bf16 autocast; the time limit stops it at 8 minutes whatever the GPU, and what it finished is
# kept (--checkpoint-every writes last.pt as it goes; the log says where it stopped).
set -euo pipefail

smoke=0
if [[ "${1:-}" == "--smoke" ]]; then smoke=1; shift; fi
data="${1:?DATA_DIR}"
out="${2:-gpu-fast}"
mkdir -p "$out"
py="${PYTHON:-python}"

if (( smoke )); then
  args=(--model densenet_bc16_k4 --device cpu --batch-size 8 --max-steps 4)
  limit=120
else
  args=(--model densenet_bc100_k12 --device cuda --epochs 30 --batch-size 512 --lr 0.8 --checkpoint-every 200)
  limit=480
fi

"$py" - > "$out/environment.txt" <<'PY'
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda)
print("device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu only")
PY
if ! timeout "$limit" "$py" -m densenets train --recipe fast --data cifar10+ --data-dir "$data" "${args[@]}" \
    --run-dir "$out/fast-bc100" > "$out/fast-bc100.log" 2>&1; then
  echo "fast-bc100 stopped (time limit or error): see $out/fast-bc100.log; what it finished is kept"
fi
tail -n 6 "$out/fast-bc100.log"
