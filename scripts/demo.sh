#!/usr/bin/env bash
# Set up (if needed) and run the demo on the embedded benchmark; extra arguments go to `robustmm demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/robustmm demo "$@"
