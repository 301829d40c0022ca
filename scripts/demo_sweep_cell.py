"""One cell of the shipped `demo` sweep against the same run trained by `robustmm demo`'s own code, in this
process on one thread: the accuracies (which must be equal) and the seconds of each.

    PYTHONPATH=src python scripts/demo_sweep_cell.py [METHOD] [SEED]

The quick demo's sizes (400 training, 90 validation, 300 test samples, 2 epochs); the sweep cell also scores its
selected checkpoint on validation and test (metrics.json) and evaluates the saved model again (evaluation.json),
as every `robustmm train` run and sweep cell does.
"""

import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from robustmm.console import quiet_libraries
from robustmm.data.synthetic import demo_encoder_paths
from robustmm.demo import DemoConfig, make_data, train_and_score
from robustmm.precision import resolve_precision
from robustmm.sweep.cell import train_and_evaluate
from robustmm.sweep.spec import load_sweep


def main(method: str = "cmpt", seed: int = 0) -> None:
    quiet_libraries()
    torch.set_num_threads(1)
    config = DemoConfig.quick(seeds=[seed], methods=[method])
    config = replace(config, precision=resolve_precision(config.precision))
    sizes = {name: getattr(config, name) for name in ("train_size", "val_size", "test_size")}
    paths = demo_encoder_paths()
    with tempfile.TemporaryDirectory() as folder:
        overrides = [f"model.encoders.{m}={paths[m]}" for m in config.modalities] + [f"dataset.root={folder}"]
        overrides += [f"dataset.options.{key}={value}" for key, value in sizes.items()]
        start = time.perf_counter()
        sweep = load_sweep("demo", overrides, str(Path(folder) / "sweep"))
        checked = time.perf_counter() - start  # the cells' checks, which render the data once
        cell = next(c for c in sweep.cells if c.values == {"train.seed": seed, "model.method": method})
        start = time.perf_counter()
        run_dir = train_and_evaluate(cell.config, log=lambda *_: None)
        cell_seconds = time.perf_counter() - start
        scored = json.loads((run_dir / "evaluation.json").read_text())["scenarios"]
    start = time.perf_counter()
    demo = train_and_score(config, make_data(config), method, seed, lambda steps: None)
    demo_seconds = time.perf_counter() - start
    as_cell = {row["name"]: row["metrics"]["accuracy"] for row in scored}
    as_demo = {row["scenario"]: row["accuracy"] for row in demo}
    print(f"{method} seed {seed}: sweep cell {cell_seconds:.1f} s (+ {checked:.1f} s checks and rendering), "
          f"demo's run {demo_seconds:.1f} s (data rendered in it); accuracies equal: {as_cell == as_demo}")
    print(f"  cell {as_cell}\n  demo {as_demo}")


if __name__ == "__main__":
    main(*(sys.argv[1:2] or ["cmpt"]), *(int(a) for a in sys.argv[2:3]))
