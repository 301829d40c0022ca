#!/usr/bin/env bash
# Load on `robustmm serve` with the walk-through's model (`robustmm data example`, its `train` and `calibrate`),
# next to `robustmm predict` on the same rows: rows/s and p50/p95/p99 latency at 1, 8 and 32 concurrent clients
# (one row a request), natively and with the kernels capped at AVX2, precision auto; then, natively, the effect
# of --max-batch-size and --batch-timeout-ms. Then the same levels from wrk (a C load generator, Debian's
# package, installed here if missing), which leaves the 2 cores to the server where the Python load generator takes
# a share of them, with one row and with 8 rows a request; and the server without its model
# (scripts/serve_floor.py), the ceiling of HTTP, JSON and LitServe. Bounded: a fixed number of requests per
# level (serve_load.py) or 10 s (wrk), 127.0.0.1 only. Writes results/serve-load.txt (one JSON line per level).
# `serve_bench.sh wrk`: only predict's figures, the wrk levels (native kernels) and the server without its model,
# into results/serve-load-wrk.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
PARTS=${1:-all}
OUT=results/serve-load.txt; [ "$PARTS" = wrk ] && OUT=results/serve-load-wrk.txt
bash scripts/setup.sh
WORK=$(mktemp -d)
SERVER=
trap '[ -n "$SERVER" ] && kill -TERM "$SERVER" 2>/dev/null; wait; rm -rf "$WORK"' EXIT
if ! command -v wrk > /dev/null; then
  SUDO=$([ "$(id -u)" -eq 0 ] || echo sudo)
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wrk
fi
AVX2=(env ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2)
PORT=${PORT:-8123}
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
with open(folder / "load.csv", "w", newline="") as handle:
    writer = csv.writer(handle)
    writer.writerow(["id", "photo", "caption"])
    for n in range(1200):
        row = rows[n % len(rows)]
        writer.writerow([f"r{n}", row["photo"], row["caption"]])
sys.path.insert(0, "scripts")
from serve_load import request_bodies
for size in (1, 8):  # wrk's bodies: the first row, and the first 8 rows, photos in base64
    (folder / f"body{size}.json").write_bytes(request_bodies(folder / "load.csv", {"photo": "image", "caption": "text"}, size)[0])
PY

SERVE=(.venv/bin/robustmm serve)
serve() {  # serve PREFIX... -- OPTIONS...: start the server ("${SERVE[@]}"), wait for /health
  local prefix=()
  while [ "$1" != "--" ]; do prefix+=("$1"); shift; done; shift
  "${prefix[@]}" "${SERVE[@]}" "$WORK/run" --port "$PORT" "$@" > "$WORK/serve.log" 2>&1 &
  SERVER=$!
  for _ in $(seq 300); do
    curl -sf -m 2 "127.0.0.1:$PORT/health" > /dev/null && return 0
    sleep 1
  done
  echo "the server did not start"; tail -20 "$WORK/serve.log"; exit 1
}
stop() { kill -TERM "$SERVER"; wait "$SERVER"; SERVER=; }
load() {  # load LABEL CLIENTS REQUESTS
  .venv/bin/python scripts/serve_load.py "http://127.0.0.1:$PORT" --rows "$WORK/data/load.csv" --clients "$2" \
    --requests "$3" --server-pid "$SERVER" --label "$1"
}
server_cpu() { .venv/bin/python -c "import sys; sys.path.insert(0, 'scripts'); from serve_load import cpu_seconds; print(cpu_seconds($SERVER))"; }
wrk_load() {  # wrk_load LABEL CONNECTIONS ROWS_PER_REQUEST: 10 s of wrk after 3 s of warm-up
  BODY="$WORK/data/body$3.json" ROWS=$3 wrk -t1 -c"$2" -d3s -s scripts/serve_wrk.lua "http://127.0.0.1:$PORT/predict" > /dev/null
  local before after figures
  before=$(server_cpu)
  figures=$(BODY="$WORK/data/body$3.json" ROWS=$3 wrk -t1 -c"$2" -d10s --timeout 30s -s scripts/serve_wrk.lua \
    "http://127.0.0.1:$PORT/predict" | tail -1)
  after=$(server_cpu)
  .venv/bin/python -c "import json, sys; f = json.loads(sys.argv[1]); rows = f['requests'] * f['rows_per_request']
print(json.dumps({'label': sys.argv[2], 'load generator': 'wrk', 'clients': int(sys.argv[3]), **f,
                  'server_cpu_ms_per_row': round((float(sys.argv[5]) - float(sys.argv[4])) * 1000 / rows, 2)}))" \
    "$figures" "$1" "$2" "$before" "$after"
}

mkdir -p results
{
  echo "cpu flags: $(grep -o -w -E 'avx2|fma|avx512f|avx512_bf16|amx_bf16|amx_tile' /proc/cpuinfo | sort -u | tr '\n' ' ')"
  echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
  for variant in native avx2; do
    prefix=(env); [ "$variant" = avx2 ] && prefix=("${AVX2[@]}")
    echo -n "$variant predict: "
    "${prefix[@]}" .venv/bin/robustmm predict "$WORK/run" --input "$WORK/data/load.csv" --out "$WORK/p.csv" 2>&1 | tail -1
    "${prefix[@]}" .venv/bin/python scripts/serve_load.py --offline "$WORK/run" --rows "$WORK/data/load.csv" \
      --label "$variant one row offline" 2> /dev/null | tail -1
    [ "$PARTS" = wrk ] && break
    serve "${prefix[@]}" --
    load "$variant default (32, 10 ms)" 1 200
    load "$variant default (32, 10 ms)" 8 400
    load "$variant default (32, 10 ms)" 32 800
    stop
  done
  settings=("1 10" "8 10" "32 1" "32 2" "32 50"); [ "$PARTS" = wrk ] && settings=()
  for setting in "${settings[@]}"; do
    read -r size timeout <<< "$setting"
    serve env -- --max-batch-size "$size" --batch-timeout-ms "$timeout"
    load "native --max-batch-size $size --batch-timeout-ms $timeout" 1 100
    load "native --max-batch-size $size --batch-timeout-ms $timeout" 32 400
    stop
  done
  for variant in native avx2; do
    prefix=(env); [ "$variant" = avx2 ] && prefix=("${AVX2[@]}")
    [ "$PARTS" = wrk ] && [ "$variant" = avx2 ] && break
    serve "${prefix[@]}" --
    for rows in 1 8; do
      for clients in 1 8 32; do wrk_load "$variant default (32, 10 ms), $rows row(s) a request" "$clients" "$rows"; done
    done
    stop
  done
  SERVE=(.venv/bin/python scripts/serve_floor.py)
  serve env --
  for clients in 1 8 32; do wrk_load "no model (serve_floor.py), default (32, 10 ms)" "$clients" 1; done
  stop
  echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$OUT"
