"""Running a sweep, its status, what --dry-run and --list print."""

from __future__ import annotations

import json
from pathlib import Path

from ..atomic import atomic_write_text
from .cell import DONE, FAILED, PENDING, RUNNING, cell_state, last_lines
from .executors import RUNNERS, cell_log
from .results import write_reports, write_results
from .spec import Sweep, shipped_summary, shipped_sweeps

MANIFEST = "sweep.json"


def states_of(sweep: Sweep) -> dict[str, tuple[str, str]]:
    return {cell.name: cell_state(cell.run_dir, cell_log(sweep, cell)) for cell in sweep.cells}


def run_cells(sweep: Sweep, executor: str = "local", jobs: int = 1, progress: bool = True, log=print,
              scratch: Path | None = None, describe=None) -> dict[str, tuple[str, str]]:
    """Write the manifest and run the cells not done yet, one progress bar over the cells; returns each cell's
    state after. `scratch` (local executor): a folder that its workers remove if this process dies;
    `describe(cell)`: the line to show for a finished cell instead of its name (e.g. its scores)."""
    from tqdm.auto import tqdm

    if executor not in RUNNERS:
        raise ValueError(f"unknown executor {executor!r}; use {', '.join(RUNNERS)}")
    if scratch is not None and executor != "local":
        raise ValueError(f"a scratch folder is the local executor's, not the {executor} executor's")
    sweep.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(sweep.out / MANIFEST, json.dumps(sweep.to_dict(), indent=2))
    before = states_of(sweep)
    todo = [cell for cell in sweep.cells if before[cell.name][0] != DONE]
    resumed = sum(before[cell.name][1].startswith("interrupted") for cell in todo)
    bar = tqdm(total=len(sweep.cells), initial=len(sweep.cells) - len(todo), desc="cells", unit="cell",
               disable=not progress)
    write = bar.write if progress else log
    for note in sweep.notes:
        write(f"note: {note}")
    write(f"{len(sweep.cells)} cells in {sweep.out}: {len(sweep.cells) - len(todo)} done, {len(todo)} to run"
          f"{f' ({resumed} resumed)' if resumed else ''} ({executor}, {jobs} job{'s' if jobs > 1 else ''})")

    def finished(cell, state: str, error: str | None) -> None:
        bar.update(1)
        if state == DONE and describe is not None:
            write(describe(cell))
            return
        write(f"{cell.name}: {state}" + (f": {error} (log: {cell_log(sweep, cell)})" if error else ""))

    try:
        if todo:
            extra = {} if scratch is None else {"scratch": scratch}
            RUNNERS[executor](sweep, todo, jobs, finished, **extra)
    finally:
        bar.close()
    return states_of(sweep) if todo else before


def run_sweep(sweep: Sweep, executor: str = "local", jobs: int = 1, progress: bool = True, log=print) -> dict:
    """Run the cells not done yet, then write the tables, results.json and the report; returns results.json's
    content with `failed` (the names of the cells that failed) added."""
    nothing_to_run = all(state == DONE for state, _ in states_of(sweep).values())
    states = run_cells(sweep, executor, jobs, progress, log)
    results = write_results(sweep, states)
    failed = [name for name, (state, _) in states.items() if state != DONE]
    report_kept = nothing_to_run and (sweep.out / "report").is_dir()  # the report of these cells stands
    if sweep.report and len(failed) < len(sweep.cells) and not report_kept:
        for page in write_reports(sweep, log=log):
            log(f"wrote {page}")
    return {**results, "failed": failed}


def sweep_status(folder: str | Path) -> list[tuple[str, str, str, list[str]]]:
    """(name, state, detail, last log lines of a failed cell) of each cell of the sweep in `folder`."""
    folder = Path(folder)
    manifest = folder / MANIFEST
    if not manifest.is_file():
        raise FileNotFoundError(f"{folder} holds no {MANIFEST}: is it the out folder of a `robustmm sweep`?")
    rows = []
    for cell in json.loads(manifest.read_text())["cells"]:
        log = folder / "logs" / f"{cell['name']}.log"
        state, detail = cell_state(Path(cell["run_dir"]), log)
        rows.append((cell["name"], state, detail, last_lines(log) if state == FAILED else []))
    return rows


def format_status(rows) -> str:
    width = max(len(name) for name, *_ in rows)
    lines = []
    for name, state, detail, tail in rows:
        lines.append(f"{name:<{width}}  {state:<8} {detail}".rstrip())
        lines += [f"    | {line}" for line in tail]
    counts = {state: sum(row[1] == state for row in rows) for state in (PENDING, RUNNING, DONE, FAILED)}
    lines.append(", ".join(f"{count} {state}" for state, count in counts.items()))
    return "\n".join(lines)


def describe(sweep: Sweep, executor: str, jobs: int) -> str:
    """What `--dry-run` prints: each cell, what it will run and its state now."""
    states = states_of(sweep)
    lines = [f"{sweep.source}: {len(sweep.cells)} cells -> {sweep.out} ({executor} executor"
             f"{f', {jobs} jobs' if executor == 'local' else ''})"]
    if sweep.select:
        lines.append(f"select: per combination of the other keys, the {', '.join(sweep.select.over)} best on "
                     f"{sweep.select.metric} (mean over seeds)")
    lines += [f"note: {note}" for note in sweep.notes]
    for cell in sweep.cells:
        config = cell.config
        state, detail = states[cell.name]
        lines.append(f"{cell.name}  [{state}{': ' + detail if detail else ''}]")
        lines.append(f"    {config.model.method} on {config.dataset.name} ({config.dataset.root}), seed "
                     f"{config.train.seed}, {config.train.epochs} epochs, lr {config.train.lr}; "
                     f"{config.protocol.describe()}")
        lines.append(f"    evaluated on {', '.join(config.evaluation.scenarios)}; -> {cell.run_dir}")
    return "\n".join(lines)


def list_shipped() -> str:
    names = shipped_sweeps()
    width = max(map(len, names))
    return "\n".join(f"{name:<{width}}  {shipped_summary(name)}" for name in names)
