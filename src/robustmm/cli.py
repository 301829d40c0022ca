"""The `robustmm` command line: `demo`, `train`, `bench`, `methods` and `data`."""

from __future__ import annotations

import argparse
import os
import sys


def _quiet_libraries() -> None:
    """Keep the terminal for our own progress bars and tables: no weight-loading bars, no library chatter."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import logging
    import warnings

    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    warnings.filterwarnings("ignore", module="transformers")
    warnings.filterwarnings("ignore", module="lightning")
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    logging.getLogger("lightning.fabric").setLevel(logging.WARNING)


def _demo(args) -> None:
    from .demo import main

    main(args)


def _bench(args) -> None:
    from .bench import main

    main(args)


def _methods(args) -> None:
    from .registry import get_method, list_methods

    for name in list_methods():
        doc = (get_method(name).__doc__ or "").strip().splitlines()
        print(f"{name:<10} {doc[0] if doc else ''}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="robustmm", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser(
        "demo", help="train baseline, dropout and cmpt on the generated benchmark; compare with the Bayes limit"
    )
    demo.add_argument("--quick", action="store_true", help="the one-minute version (one seed, small splits)")
    demo.add_argument("--modalities", help="comma-separated subset of image,text,audio (default image,text)")
    demo.add_argument("--methods", help="comma-separated methods (default baseline,dropout,cmpt)")
    demo.add_argument("--seeds", type=int, help="number of seeds (default 3)")
    demo.add_argument("--epochs", type=int)
    demo.add_argument("--train-size", type=int)
    demo.add_argument("--test-size", type=int)
    demo.add_argument("--align-weight", type=float, help="CMPT lambda (paper: 0.2; 0 ablates the alignment)")
    demo.add_argument("--align-denominator", choices=["paper", "symmetric", "none"])
    demo.add_argument("--align-detach-target", action=argparse.BooleanOptionalAction, default=None)
    demo.add_argument("--out", help="write results.json and accuracy.png here")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    demo.set_defaults(func=_demo)

    bench = commands.add_parser("bench", help="time CMPT against the same model without proxies; prints JSON")
    bench.add_argument("--hidden-size", type=int, default=128)
    bench.add_argument("--num-layers", type=int, default=12)
    bench.add_argument("--batch-size", type=int, default=8)
    bench.add_argument("--repeats", type=int, default=15)
    bench.set_defaults(func=_bench)

    methods = commands.add_parser("methods", help="list the registered methods")
    methods.set_defaults(func=_methods)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    _quiet_libraries()
    try:
        args.func(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"robustmm {args.command}: error: {error}", file=sys.stderr)
        raise SystemExit(2) from error


if __name__ == "__main__":
    main()
