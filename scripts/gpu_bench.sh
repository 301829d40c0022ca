#!/usr/bin/env bash
# The GPU figures of BENCHMARKS.md: CMPT training throughput on ViT-B/16 + BERT-base-sized encoders (random
# weights built from their configs) under bf16 autocast (eager and torch.compile), fp32/TF32, and a larger batch.
# Usage: bash scripts/gpu_bench.sh OUT_DIR   (needs a CUDA GPU; PYTHON defaults to python3)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: gpu_bench.sh OUT_DIR}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT/gpu.txt" 2>&1
"$PYTHON" -c "import torch, transformers, peft, lightning; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__, 'peft', peft.__version__, 'lightning', lightning.__version__)" >> "$OUT/gpu.txt"
run() {  # NAME ARGS...
  local name=$1; shift
  echo "== $name: robustmm bench --size base --device cuda $*"
  "$PYTHON" -m robustmm bench --size base --device cuda "$@" > "$OUT/$name.json" 2> "$OUT/$name.err"
  echo "exit $?"; cat "$OUT/$name.json"; tail -3 "$OUT/$name.err"
}
run base_auto
run base_compile --compile
run base_fp32 --precision 32-true
run base_b128 --batch-size 128
