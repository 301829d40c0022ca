"""One cell of a sweep: its run directory trained by `train_run`, then scored by `evaluate_runs` on its config's
evaluation scenarios (RUN_DIR/evaluation.json), with its output in OUT/logs/<name>.log; and what state it is in,
read from the files alone, so that `robustmm sweep status` works during a sweep, after one and after a kill."""

from __future__ import annotations

import contextlib
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from ..atomic import atomic_write_text
from ..config import RunConfig
from ..registry import import_modules

PENDING, RUNNING, DONE, FAILED = "pending", "running", "done", "failed"
EVALUATION = "evaluation.json"
LOG_LINES = 8
"""Lines of a failed cell's log that `robustmm sweep status` shows."""


@dataclass
class CellJob:
    """What a worker (a local process or a SLURM job) needs to run a cell: it pickles."""

    name: str
    config: RunConfig
    log: Path
    threads: int | None = None
    """torch threads of the worker; None leaves them as they are."""
    modules: list[str] = field(default_factory=list)
    """Modules of the sweep's outside code (`registry.outside_modules`), which a new process imports first."""

    @property
    def failed_marker(self) -> Path:
        return failed_marker(self.log)


def failed_marker(log: Path) -> Path:
    return log.with_suffix(".failed")


def train_and_evaluate(config: RunConfig, log=print) -> Path:
    """The cell's run: trained (or resumed, or found complete), then evaluated once under its run lock, so that
    two sweeps on one folder never both write a cell. The test split is encoded once: the run leaves its test
    score to the evaluation, which adds it to metrics.json from the same pass, in the precision that the run
    trained in, and writes each scenario's per-sample logits (predictions.npz)."""
    from ..config import RUN_CONFIG, read_run_config
    from ..evaluation import evaluate_runs
    from ..runs import is_global_zero, run_lock, train_run

    run_dir = train_run(config, log=log, score_test=False)
    if is_global_zero():
        with run_lock(run_dir):
            if not (run_dir / EVALUATION).is_file():
                precision = read_run_config(run_dir / RUN_CONFIG).train.precision
                evaluate_runs([run_dir], log=log, precision=precision, run_test=True, predictions=True)
    return run_dir


def run_cell(job: CellJob) -> tuple[str, str | None]:
    """(DONE, None) or (FAILED, the error): an exception fails this cell only. An interruption (Ctrl-C, which
    Lightning turns into SystemExit, or SIGTERM) goes on up: the cell resumes on the next run."""
    job.log.parent.mkdir(parents=True, exist_ok=True)
    job.failed_marker.unlink(missing_ok=True)
    with open(job.log, "a", encoding="utf-8") as log, output_to(log), torch_threads(job.threads):
        print(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} cell {job.name}, pid {os.getpid()}", flush=True)
        start = time.perf_counter()
        try:
            import_modules(job.modules)
            train_and_evaluate(job.config)
        except Exception as error:
            traceback.print_exc()
            message = f"{type(error).__name__}: {error}"
            with contextlib.suppress(OSError):  # a full disk: the log (or the caller) still has the message
                atomic_write_text(job.failed_marker, message)
            return FAILED, message
        print(f"{DONE_LINE} {job.name} done in {time.perf_counter() - start:.1f} s", flush=True)
    return DONE, None


DONE_LINE = "--- cell"


def cell_seconds(log: Path) -> float | None:
    """The wall time of the cell's last finished attempt, from its log; None if none finished."""
    for line in reversed(last_lines(log, 1 << 30)):
        if line.startswith(DONE_LINE) and line.endswith(" s") and " done in " in line:
            return float(line.rsplit(" done in ", 1)[1].removesuffix(" s"))
    return None


@contextlib.contextmanager
def output_to(handle):
    """Everything this process prints (Python's streams and the file descriptors 1 and 2 that libraries and
    child processes write to) goes to `handle` while in the block."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        os.dup2(handle.fileno(), 1)
        os.dup2(handle.fileno(), 2)
        with contextlib.redirect_stdout(handle), contextlib.redirect_stderr(handle):
            yield
    finally:
        handle.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)


@contextlib.contextmanager
def torch_threads(threads: int | None):
    if threads is None:
        yield
        return
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def is_locked(run_dir: Path) -> bool:
    """Whether a process holds the run directory's lock (it trains or evaluates the cell now)."""
    try:
        import fcntl
    except ImportError:
        return False
    lock = run_dir / ".lock"
    if not lock.is_file():
        return False
    with open(lock, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


def cell_state(run_dir: Path, log: Path) -> tuple[str, str]:
    """(state, detail) of a cell from its files."""
    if (run_dir / EVALUATION).is_file():
        return DONE, ""
    if is_locked(run_dir):
        return RUNNING, (run_dir / ".lock").read_text().strip()
    marker = failed_marker(log)
    if marker.is_file():
        return FAILED, marker.read_text().strip()
    if (run_dir / "checkpoints" / "last.ckpt").is_file():
        return PENDING, "interrupted: resumes from its last checkpoint"
    return PENDING, ""


def last_lines(log: Path, count: int = LOG_LINES) -> list[str]:
    if not log.is_file():
        return []
    return log.read_text(encoding="utf-8", errors="replace").rstrip().splitlines()[-count:]
