#!/usr/bin/env bash
# Re-measure every figure of BENCHMARKS.md into results/ (about 45 minutes on 2 CPU cores). Run on an idle machine.
# Speed figures are measured on this CPU as it is and with the kernels capped at AVX2 in fp32, which is what a
# CPU without AVX-512 (most laptops, many cloud VMs and CI runners) runs. Accuracies do not depend on the speed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
AVX2=(env ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2)
run() { echo "+ $*" >&2; /usr/bin/time -f "%e s wall" "$@"; }
demo() { local name=$1; shift; run .venv/bin/robustmm demo --no-progress --out "results/$name" "$@" 2>&1 | tee "results/$name.txt"; }
mkdir -p results
grep -o -w -E 'avx2|fma|avx512f|avx512_bf16|amx_bf16|amx_tile' /proc/cpuinfo | sort -u | tr '\n' ' ' > results/cpu_flags.txt

# Speed (issue: fast on every machine)
.venv/bin/python scripts/startup_times.py > results/startup.json
"${AVX2[@]}" .venv/bin/python scripts/startup_times.py > results/startup-avx2.json
run .venv/bin/robustmm bench --precision 32-true > results/bench.json
run bash scripts/demo.sh --no-progress --out results/demo 2>&1 | tee results/demo.txt
demo demo-all --methods all
# The methods' source settings against robustmm's earlier ones: frozen encoders, MAP's head
demo demo-map-adapter-lora --methods map --option adapter=lora
demo demo-map-head-linear --methods map --option head=linear
demo demo-rep-adapter-lora --methods rep --option adapter=lora --option "train_backbone=[]"
demo demo-molt-adapter-lora --methods molt --option adapter=lora
run "${AVX2[@]}" bash scripts/demo.sh --no-progress --out results/demo-avx2 2>&1 | tee results/demo-avx2.txt
run "${AVX2[@]}" bash scripts/demo.sh --quick --no-progress 2>&1 | tee results/demo-quick-avx2.txt
run "${AVX2[@]}" bash scripts/test.sh -q -p no:cacheprovider --durations=15 2>&1 | tee results/tests-avx2.txt
run bash scripts/predict_throughput.sh
run bash scripts/serve_bench.sh

# Eq. 4's denominator, the paper's ablations in miniature, fusion normalisation
run .venv/bin/python scripts/eq4_denominator_curve.py --out results/eq4-denominator | tee results/eq4-denominator.txt
demo demo-cmpt-align-denominator-paper --methods cmpt --option align_denominator=paper
demo demo-cmpt-align-denominator-symmetric --methods cmpt --option align_denominator=symmetric
demo demo-cmpt-align-detach-target --methods cmpt --option align_detach_target=true
for weight in 0 0.1 0.5; do demo demo-cmpt-align-weight-$weight --methods cmpt --option align_weight=$weight; done
demo demo-cmpt-rank-4 --methods cmpt --option rank=4
demo demo-fusion-norm-layernorm --option fusion_norm=layernorm

# Three modalities: leave-one-out against every-subset modality dropout; eq. 4 as written
demo demo-image-text-audio --modalities image,text,audio
demo demo-image-text-audio-subsets --modalities image,text,audio --methods dropout,cmpt --option modality_dropout=subsets
demo demo-image-text-audio-cmpt-paper --modalities image,text,audio --methods cmpt --option align_denominator=paper
