#!/usr/bin/env bash
# Create .venv (once) and install robustmm with its test, demo, slurm and serve extras into it. Idempotent: a venv
# already set up for this pyproject.toml and TORCH_SPEC is left as it is (the stamp in .venv/ records what it was set up for).
# TORCH_SPEC picks the PyTorch build; the default is the CPU build that the tests and the demo need.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
STAMP=.venv/.robustmm-setup
WANTED="$(sha256sum pyproject.toml | cut -d' ' -f1) $TORCH_SPEC"
if [ -x .venv/bin/python ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANTED" ]; then
  exit 0
fi
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "$TORCH_SPEC"
.venv/bin/python -m pip install --quiet -e ".[test,demo,slurm,serve]"
echo "$WANTED" > "$STAMP"
