#!/usr/bin/env bash
# Re-measure every figure of BENCHMARKS.md into results/ (about 15 minutes on 2 CPU cores). Run on an idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
run() { echo "+ $*" >&2; /usr/bin/time -f "%e s wall" "$@"; }
mkdir -p results
run .venv/bin/robustmm bench > results/bench.json
run .venv/bin/robustmm demo --no-progress --out results/demo | tee results/demo.txt
run .venv/bin/robustmm demo --no-progress --modalities image,text,audio --out results/demo-image-text-audio \
  | tee results/demo-image-text-audio.txt
for ablation in "align-weight 0" "align-detach-target" "align-denominator symmetric" "align-denominator none"; do
  name=cmpt-${ablation// /-}
  run .venv/bin/robustmm demo --no-progress --methods cmpt --${ablation} --out results/demo-$name | tee results/demo-$name.txt
done
