"""`robustmm sweep`: a paper's table from one command, every cell an ordinary run directory.

    OUT/
      sweep.json          the cells (name, grid values, run directory), for `robustmm sweep status`
      cells/<name>/       each cell's run directory (`robustmm train`'s layout) with its evaluation.json and
                          predictions.npz (per-sample test logits of each scenario); its test set encoded once
      logs/<name>.log     each cell's output, every attempt appended; <name>.failed: why its last attempt failed
      slurm/              submitit's scripts, pickles and job logs (--executor slurm)
      results.json        every cell's figures, the selection and the table's rows
      table.md, table.csv, table.tex
      report/report.html  `robustmm report` over the (selected) cells

A rerun of the same command skips finished cells and resumes interrupted ones from their last checkpoint: the
state of a cell is read from its files (`cell.cell_state`), never from a record that a kill could leave stale.
"""

from __future__ import annotations

from ..lazy import lazy_exports

_EXPORTS = {"load_sweep": "spec", "run_sweep": "run", "sweep_status": "run", "shipped_sweeps": "spec", "Sweep": "spec"}
__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
