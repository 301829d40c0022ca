"""The `robustmm sweep` subcommand: run a sweep, `status DIR`, `--list`."""

from __future__ import annotations

import sys

EXECUTORS = ("local", "slurm")
USAGE = "robustmm sweep SWEEP.yaml [--jobs N] [--executor local|slurm] [--dry-run] | sweep status DIR | sweep --list"


def add_sweep_parser(commands) -> None:
    sweep = commands.add_parser(
        "sweep", help="train and evaluate every cell of a grid (methods x seeds x settings) into a table; resumable",
        usage=USAGE,
        description="A sweep file is a run config (or `base: <config>`) plus `grid:` (dotted keys -> lists), "
        "optionally `select:` {over: [keys], metric: val/<metric>} and `out:`. Each cell is a run directory, "
        "trained and evaluated on the config's scenarios; the sweep folder gets table.md/.csv/.tex, results.json "
        "and report/. A rerun skips finished cells and resumes interrupted ones. `robustmm sweep status DIR` "
        "shows each cell's state; `robustmm sweep --list` the shipped sweeps.",
    )
    sweep.add_argument("items", nargs="*", metavar="SWEEP | status DIR",
                       help="a sweep file or shipped sweep name; or `status` and a sweep folder")
    sweep.add_argument("--list", action="store_true", help="list the shipped sweeps")
    sweep.add_argument("--jobs", type=int, default=1, help="local executor: cells trained side by side (default 1)")
    sweep.add_argument("--executor", choices=EXECUTORS, default="local")
    sweep.add_argument("--dry-run", action="store_true", help="check every cell and list them; train nothing")
    sweep.add_argument("--out", help="the sweep folder (instead of the file's out:)")
    sweep.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a key of every cell's config, e.g. train.epochs=1")
    sweep.add_argument("--no-progress", action="store_true", help="no progress bar")
    sweep.set_defaults(func=main)


def main(args) -> None:
    from .run import describe, format_status, list_shipped, run_sweep, sweep_status
    from .spec import load_sweep

    if args.list:
        print(list_shipped())
        return
    if len(args.items) == 2 and args.items[0] == "status":
        print(format_status(sweep_status(args.items[1])))
        return
    if len(args.items) != 1:
        raise ValueError(f"expected one sweep file (or status DIR), got {' '.join(args.items) or 'none'}; "
                         f"usage: {USAGE}")
    if args.jobs < 1:
        raise ValueError(f"--jobs must be at least 1, got {args.jobs}")
    sweep = load_sweep(args.items[0], args.set, args.out)
    if args.dry_run:
        print(describe(sweep, args.executor, args.jobs))
        return
    try:
        results = run_sweep(sweep, args.executor, args.jobs, progress=not args.no_progress)
    except (KeyboardInterrupt, SystemExit) as interruption:
        if isinstance(interruption, SystemExit) and interruption.code in (0, None):
            raise
        print(f"robustmm sweep: interrupted; the running cells stopped. Run the same command again to resume "
              f"(robustmm sweep status {sweep.out})", file=sys.stderr)
        # Ctrl-C: KeyboardInterrupt, or Lightning's SystemExit(1) when it came during training; SIGTERM: 143
        code = 143 if isinstance(interruption, SystemExit) and interruption.code == 143 else 130
        raise SystemExit(code) from None
    print((sweep.out / "table.md").read_text())
    print(f"wrote {sweep.out / 'table.md'}, table.csv, table.tex, results.json"
          + (" and report/" if sweep.report and len(results["failed"]) < len(sweep.cells) else ""))
    if results["failed"]:
        print(f"robustmm sweep: {len(results['failed'])} of {len(sweep.cells)} cells failed: "
              f"{', '.join(results['failed'])}; `robustmm sweep status {sweep.out}` shows their logs",
              file=sys.stderr)
        raise SystemExit(1)
