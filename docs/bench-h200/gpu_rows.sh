#!/usr/bin/env bash
# The GPU rows of issue 21 (item 7) in one go, at most 10 minutes on one GPU:
#   1. inference, DenseNet-121 batch 16 at 224x224: ours (optimize_for_inference) against
#      torchvision eager channels_last and torchvision under torch.compile, fp32 and bf16;
#   2. training, DenseNet-BC-100 (k=12) batch 64 at 32x32 under bf16 autocast, channels_last as
#      the engine picks it, against torchvision in both layouts under the same autocast;
#   3. the memory-efficient mode at batch 64: peak memory and step time against the normal mode
#      and torchvision's own memory-efficient switch.
# Each step has its own time limit, so a slow step cannot eat the others' time; what a step
# measured before its limit is kept in its results.json. Run from the repository root:
#
#   bash docs/bench-h200/gpu_rows.sh OUT_DIR            # on the GPU machine
#   bash docs/bench-h200/gpu_rows.sh --smoke OUT_DIR    # on a CPU: the same steps, tiny models, seconds each
set -euo pipefail

smoke=0
if [[ "${1:-}" == "--smoke" ]]; then smoke=1; shift; fi
out="${1:-gpu-rows}"
mkdir -p "$out"
py="${PYTHON:-python}"

if (( smoke )); then
  common=(--device cpu --quick --rounds 1 --reps 1 --warmup 0)
  limits=(120 120 120)
  target="densenet_bc28_k4:8"
  train_model="densenet_bc16_k4"
  infer_only="infer densenet_bc16_k4"
else
  common=(--device cuda --rounds 3 --reps 10 --warmup 3)
  limits=(240 150 180)  # 9.5 minutes in all
  target="${MEMORY_TARGET:-densenet_bc250_k24:64}"
  train_model="densenet_bc100_k12"
  infer_only="infer densenet121, batch 16"  # batch 1 too would not fit with torch.compile's compiles
fi

step() {  # step LIMIT NAME ARGS...: one bench run under its own time limit, its log beside its results
  local limit="$1" name="$2"; shift 2
  echo "== $name (limit ${limit}s)"
  if ! timeout "$limit" "$py" -m densenets bench "${common[@]}" --out "$out/$name" "$@" > "$out/$name.log" 2>&1; then
    echo "   $name stopped (time limit or error): see $out/$name.log; partial results kept"
  fi
  tail -n 3 "$out/$name.log"
}

"$py" - > "$out/environment.txt" <<'PY'
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda)
print("device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu only")
PY
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv >> "$out/environment.txt" 2>/dev/null || true

step "${limits[0]}" infer --sections infer --precisions fp32,bf16 --only "$infer_only"
step "${limits[1]}" train-bc100-bf16 --sections train --precisions bf16 --only "train $train_model"
step "${limits[2]}" memory-efficient --sections memory-target --memory-target "$target"
echo "results in $out/*/results.md"
