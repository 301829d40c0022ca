#!/usr/bin/env bash
# Throughput of `robustmm predict` on 2 CPU cores: the walk-through's model (the demo's ViT and all-MiniLM-L6-v2,
# CMPT, calibrated) on 1200 rows of its test split repeated (60% complete, 20% without the photo, 20% without the
# caption), read from disk. Precision auto (bf16-mixed on this CPU) and 32-true, natively and with the kernels
# capped at AVX2, three times each. Writes results/predict-throughput.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
AVX2=(env ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2)
.venv/bin/robustmm data example "$WORK/data" > /dev/null
.venv/bin/robustmm train --dataset generic --root "$WORK/data" --image-encoder "$WORK/data/encoders/image" \
  --text-encoder "$WORK/data/encoders/text" --epochs 3 --batch-size 16 --lr 1e-2 --out "$WORK/run" --no-progress \
  > /dev/null 2>&1
.venv/bin/robustmm calibrate "$WORK/run" > /dev/null
.venv/bin/python - "$WORK/data" <<'PY'
import csv, sys
from pathlib import Path
folder = Path(sys.argv[1])
rows = list(csv.DictReader(open(folder / "test.csv")))
with open(folder / "throughput.csv", "w", newline="") as handle:
    writer = csv.writer(handle)
    writer.writerow(["id", "photo", "caption"])
    for n in range(1200):
        row = rows[n % len(rows)]
        writer.writerow([f"r{n}", row["photo"], row["caption"]])
PY
mkdir -p results
{
  echo "cpu flags: $(grep -o -w -E 'avx2|fma|avx512f|avx512_bf16|amx_bf16|amx_tile' /proc/cpuinfo | sort -u | tr '\n' ' ')"
  for variant in native avx2; do
    for precision in auto 32-true; do
      for attempt in 1 2 3; do
        prefix=(); [ "$variant" = avx2 ] && prefix=("${AVX2[@]}")
        echo -n "$variant $precision #$attempt: "
        "${prefix[@]}" .venv/bin/robustmm predict "$WORK/run" --input "$WORK/data/throughput.csv" \
          --out "$WORK/predictions.csv" --precision "$precision" 2>&1 | tail -1
      done
    done
  done
} | tee results/predict-throughput.txt
