"""Start-up time of the command line: median wall seconds of each command over several runs, as JSON.

    .venv/bin/python scripts/startup_times.py > results/startup.json

Each command runs in a fresh interpreter, as a user types it; the median of `--repeats` runs is reported with
the CPU's kernel level (`torch.backends.cpu.get_cpu_capability()` is not asked: that would import torch).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
COMMANDS = {
    "robustmm --help": [str(BIN / "robustmm"), "--help"],
    "robustmm train --help": [str(BIN / "robustmm"), "train", "--help"],
    "robustmm methods": [str(BIN / "robustmm"), "methods"],
    "python -m robustmm --help": [sys.executable, "-m", "robustmm", "--help"],
    'python -c "import robustmm"': [sys.executable, "-c", "import robustmm"],
    'python -c "import robustmm.methods" (building a model)': [sys.executable, "-c", "import robustmm.methods"],
}


def cpu_flags() -> str:
    """The CPU's vector extensions that decide bf16 and kernel speed, from /proc/cpuinfo (Linux)."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return "unknown"
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    present = set(flags.split(":", 1)[1].split())
    return " ".join(flag for flag in wanted if flag in present)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    figures = {}
    for name, argv in COMMANDS.items():
        subprocess.run(argv, capture_output=True, check=True)  # warm the file cache
        seconds = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            subprocess.run(argv, capture_output=True, check=True)
            seconds.append(time.perf_counter() - start)
        figures[name] = round(statistics.median(seconds), 3)
    print(json.dumps({"median_seconds": figures, "repeats": args.repeats, "cpu_flags": cpu_flags(),
                      "machine": platform.processor() or platform.machine(), "python": platform.python_version()},
                     indent=2))


if __name__ == "__main__":
    main()
