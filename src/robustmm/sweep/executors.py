"""Where a sweep's cells run. Each executor takes the cells still to do and calls `finished(cell, state, error)`
as each one ends; a failed cell does not stop the others.

- `local`: N worker processes side by side on this machine, the cores split between them as the demo splits
  them (`cores.job_threads`, by each cell's place in the sweep); with one job the cells run in this process,
  one after the other, on the threads it has (OMP_NUM_THREADS, else PyTorch's default). The workers end
  with the sweep however it ends (`children`: SIGTERM or a kill of the sweep ends them too).
- `slurm`: one SLURM job array through submitit, one array task per cell, resources from the sweep's `slurm:`
  section. A cell is a `submitit.helpers.Checkpointable`: on preemption or at the time limit submitit requeues
  it, and the requeued task resumes the run from its last checkpoint as `robustmm train` does.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from ..config import ConfigError
from ..registry import outside_modules
from .cell import DONE, FAILED, CellJob, cell_state, failed_marker, run_cell
from .spec import Cell, Sweep

POLL_SECONDS = 2.0
"""How often the slurm executor looks for finished cells."""


def cell_log(sweep: Sweep, cell: Cell) -> Path:
    return sweep.out / "logs" / f"{cell.name}.log"


def cell_job(sweep: Sweep, cell: Cell, threads: int | None = None) -> CellJob:
    return CellJob(cell.name, cell.config, cell_log(sweep, cell), threads, outside_modules())


def run_local(sweep: Sweep, cells: list[Cell], jobs: int, finished, scratch: Path | None = None) -> None:
    """`scratch`: a folder that the workers remove when this process dies (SIGKILL included), e.g. the
    temporary sweep folder of a demo without --out."""
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool
    from multiprocessing import get_context

    from ..children import children_end_with_us
    from ..cores import available_cores, job_threads

    if jobs == 1:
        with children_end_with_us():  # SIGTERM stops the cell as Ctrl-C does; it resumes on the next run
            for cell in cells:
                finished(cell, *run_cell(cell_job(sweep, cell)))
        return
    # A cell's threads follow from its place in the whole sweep, not among the cells left: a rerun after a kill
    # computes each cell as the uninterrupted sweep would have (bf16 sums depend on the thread count).
    every = job_threads(len(sweep.cells), min(jobs, len(sweep.cells)), available_cores())
    threads = dict(zip((c.name for c in sweep.cells), every))
    context = get_context("spawn")
    workers = min(jobs, len(cells))
    with ProcessPoolExecutor(workers, context, _start_worker, (os.getpid(), scratch)) as pool, \
            children_end_with_us():
        started = {pool.submit(run_cell, cell_job(sweep, cell, threads[cell.name])): cell for cell in cells}
        for future in as_completed(started):
            cell = started[future]
            try:
                finished(cell, *future.result())
            except BrokenProcessPool:
                message = "its worker process ended without a result (killed, or out of memory?)"
                failed_marker(cell_log(sweep, cell)).write_text(message)
                finished(cell, FAILED, message)


def _start_worker(parent_pid: int, scratch: Path | None = None) -> None:
    from ..children import end_with_parent, remove_folder
    from ..console import quiet_libraries

    if scratch is None:
        end_with_parent(parent_pid)
    else:
        end_with_parent(parent_pid, cleanup=lambda: remove_folder(scratch))
    quiet_libraries()


def slurm_available() -> str | None:
    """None if cells can go to SLURM from here, else why not."""
    try:
        import submitit  # noqa: F401
    except ImportError:
        return "--executor slurm needs submitit: pip install 'robustmm[slurm]'"
    missing = [tool for tool in ("sbatch", "srun", "sacct") if shutil.which(tool) is None]
    if missing:
        return (f"--executor slurm: no SLURM on this machine ({', '.join(missing)} not on PATH); run the sweep on "
                "the cluster's login node, or use --executor local")
    return None


class SlurmCell:
    """A cell as a checkpointable SLURM task: requeued, it runs again and its run resumes from last.ckpt."""

    def __call__(self, job: CellJob) -> tuple[str, str | None]:
        from ..console import quiet_libraries

        quiet_libraries()
        return run_cell(job)

    def checkpoint(self, job: CellJob):
        """Called by submitit on preemption or timeout: the same call again, since the run directory holds
        the state (submitit's `Checkpointable.checkpoint`)."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, job)


def slurm_executor(sweep: Sweep):
    """A submitit executor for the sweep's `slurm:` section, writing its scripts and logs into OUT/slurm."""
    import submitit

    section = sweep.slurm
    executor = submitit.AutoExecutor(folder=sweep.out / "slurm", cluster="slurm",
                                     slurm_max_num_timeout=section.max_requeues)
    parameters = {
        "name": f"robustmm-{sweep.out.name}",
        "timeout_min": section.time_min,
        "nodes": section.nodes,
        "tasks_per_node": max(1, section.gpus_per_node),
        "slurm_array_parallelism": section.array_parallelism,
        "slurm_setup": section.setup,
        "slurm_additional_parameters": section.additional_parameters,
    }
    optional = {"slurm_partition": section.partition, "gpus_per_node": section.gpus_per_node or None,
                "cpus_per_task": section.cpus_per_task, "mem_gb": section.mem_gb}
    executor.update_parameters(**parameters, **{k: v for k, v in optional.items() if v is not None})
    return executor


def run_slurm(sweep: Sweep, cells: list[Cell], jobs: int, finished) -> None:
    """Submit the cells as one job array and wait for them; Ctrl-C cancels the jobs (the cells resume on the
    next run). `jobs` is unused: the array's parallelism is `slurm.array_parallelism`."""
    problem = slurm_available()
    if problem:
        raise ConfigError(problem)
    array = slurm_executor(sweep).map_array(SlurmCell(), [cell_job(sweep, cell) for cell in cells])
    waiting = dict(enumerate(zip(cells, array)))
    try:
        while waiting:
            for index, (cell, job) in list(waiting.items()):
                if not job.done():
                    continue
                del waiting[index]
                log = cell_log(sweep, cell)
                state, detail = cell_state(cell.run_dir, log)
                if state != DONE and not failed_marker(log).is_file():
                    detail = f"SLURM job {job.job_id} ended {job.state}: see {job.paths.stderr}"
                    failed_marker(log).write_text(detail)
                finished(cell, DONE if state == DONE else FAILED, detail or None)
            if waiting:
                time.sleep(POLL_SECONDS)
    except BaseException:
        for _, job in waiting.values():
            job.cancel(check=False)
        raise


RUNNERS = {"local": run_local, "slurm": run_slurm}
