"""The sweep's own cost per cell: CELLS tiny cells run by `run_sweep` (one job, in this process, no report) against
the same cells trained and evaluated directly by `train_and_evaluate`, in the same process, direct runs before
and after the sweep (the faster one counts). Prints JSON.

    PYTHONPATH=src python scripts/sweep_overhead.py [CELLS]
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from robustmm.example import write_example
from robustmm.sweep.cell import train_and_evaluate
from robustmm.sweep.run import run_sweep
from robustmm.sweep.spec import load_sweep
from robustmm.tiny import save_tiny_encoder


def main(cells: int = 4) -> None:
    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="sweep-overhead-"))
    data = write_example(root / "data", sizes={"train": 16, "val": 8, "test": 8})
    spec = {
        "dataset": {"name": "generic", "root": str(data)},
        "model": {"encoders": {"photo": save_tiny_encoder("image", root / "image"),
                               "caption": save_tiny_encoder("text", root / "text")}},
        "train": {"epochs": 1, "batch_size": 8, "warmup_epochs": 0, "num_workers": 0},
        "evaluation": {"scenarios": ["complete", "missing"]},
        "grid": {"train.seed": list(range(cells))},
        "report": False,
    }
    direct_seconds = []

    def direct(name: str) -> None:
        path = root / f"{name}.yaml"
        path.write_text(yaml.safe_dump({**spec, "out": str(root / name)}))
        sweep = load_sweep(str(path))
        start = time.perf_counter()
        for cell in sweep.cells:
            train_and_evaluate(cell.config, log=lambda message: None)
        direct_seconds.append(time.perf_counter() - start)

    direct("direct_before")
    path = root / "sweep.yaml"
    path.write_text(yaml.safe_dump({**spec, "out": str(root / "sweep")}))
    start = time.perf_counter()
    run_sweep(load_sweep(str(path)), progress=False, log=lambda message: None)
    sweep_seconds = time.perf_counter() - start
    direct("direct_after")
    best = min(direct_seconds)
    print(json.dumps({
        "cells": cells, "sweep_s": round(sweep_seconds, 2), "direct_s": [round(s, 2) for s in direct_seconds],
        "overhead_per_cell_s": round((sweep_seconds - best) / cells, 3),
        "overhead_percent": round(100 * (sweep_seconds - best) / best, 1),
    }, indent=2))
    shutil.rmtree(root)


if __name__ == "__main__":
    main(*(int(arg) for arg in sys.argv[1:]))
