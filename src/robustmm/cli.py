"""The `robustmm` command line: `demo`, `train`, `evaluate`, `calibrate`, `predict`, `serve`, `report`, `sweep`,
`bench`, `methods`, `check-method` and `data`."""

from __future__ import annotations

import argparse
import sys

from .console import quiet_libraries


def _demo(args) -> None:
    from .demo import main

    main(args)


def _bench(args) -> None:
    from .bench import main

    main(args)


def _methods(args) -> None:
    from .registry import FUSIONS, METHODS, PLUGINS

    def show(options: dict, helps: dict) -> None:
        """Each option as `name: type or choices = default`, then the first sentence of its help, wrapped."""
        import textwrap

        from .checks import describe_type
        from .options import first_sentence

        for option, (hint, default) in options.items():
            print(f"    {option}: {describe_type(hint)} = {default!r}")
            if helps.get(option):
                print(textwrap.fill(first_sentence(helps[option]), 116, initial_indent=" " * 8,
                                    subsequent_indent=" " * 8))

    def origin(registry, name: str) -> str:
        source = registry.source(name)
        return f" [outside: {source}]" if source else ""

    def departures(cls) -> None:
        if cls.departures is None:
            print("  no published source to depart from" if cls.__module__.startswith("robustmm.")
                  else "  departures from its source: none stated (the class's `departures`)")
            return
        print("  where its defaults depart from its source (and the option that restores it):")
        for departure in cls.departures:
            print(f"    - {departure}")

    for name in METHODS.names():
        print(f"{name:<11} {METHODS.summary(name)}{origin(METHODS, name)}")
        if args.options:
            from .options import option_help

            departures(METHODS.get(name))
            show(METHODS.get(name).own_option_fields(), option_help(METHODS.get(name)))
    print("fusions, on any method whose fusion is generic (e.g. --option fusion=concat; options fusion_<name>):")
    for name in FUSIONS.names():
        print(f"{name:<11} {FUSIONS.summary(name)}{origin(FUSIONS, name)}")
        if args.options:
            from .options import fusion_option_fields, fusion_option_help

            show(fusion_option_fields(name), fusion_option_help(name))
    print("plug-ins, on any method (e.g. --option mwam=true):")
    for name in PLUGINS.names():
        print(f"{name:<11} {PLUGINS.summary(name)}{origin(PLUGINS, name)}")
        if args.options:
            from .options import plugin_option_fields, plugin_option_help

            departures(PLUGINS.get(name))
            show({k: v for k, v in plugin_option_fields(name).items() if k != name}, plugin_option_help(name))


TRAIN_FLAGS = {
    "dataset": "dataset.name",
    "root": "dataset.root",
    "method": "model.method",
    "epochs": "train.epochs",
    "batch_size": "train.batch_size",
    "lr": "train.lr",
    "seed": "train.seed",
    "accelerator": "train.accelerator",
    "devices": "train.devices",
    "num_nodes": "train.num_nodes",
    "strategy": "train.strategy",
    "precision": "train.precision",
    "out": "out",
}
"""Flags of `robustmm train` and the config keys they set."""
ENCODER_FLAGS = ("image", "text", "audio", "video")
PRECISION_HELP = (
    "auto (default: bf16-mixed on GPUs and CPUs with native bf16, 32-true elsewhere), 32-true, bf16-mixed, "
    "16-mixed, ... (Lightning's names)"
)


def train_overrides(args) -> list[tuple[str, object, str]]:
    """(key, value, origin) overrides from the flags, then `--set`s in order: later ones win."""
    from .config import parse_assignment

    from .data.commands import protocol_overrides

    overrides = [(f"protocol.{key}", value, "protocol options") for key, value in protocol_overrides(args).items()]
    for flag, key in TRAIN_FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            overrides.append((key, value, f"--{flag.replace('_', '-')}"))
    for modality in ENCODER_FLAGS:
        value = getattr(args, f"{modality}_encoder")
        if value is not None:
            overrides.append((f"model.encoders.{modality}", value, f"--{modality}-encoder"))
    if args.no_progress:
        overrides.append(("train.progress_bar", False, "--no-progress"))
    for assignment in args.option:
        key, value = parse_assignment(assignment, "--option")
        overrides.append((f"model.options.{key}", value, f"--option {assignment}"))
    for assignment in args.set:
        key, value = parse_assignment(assignment)
        overrides.append((key, value, f"--set {assignment}"))
    return overrides


def _train(args) -> None:
    from .config import load_config
    from .runs import train_run

    config = load_config(args.config, train_overrides(args))
    config.imports = list(dict.fromkeys([*config.imports, *args.imports]))  # recorded in the run directory
    train_run(config)


def _rates(text: str) -> list[float]:
    try:
        rates = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated missing rates in [0, 1], got {text!r}") from None
    if not rates or any(not 0.0 <= rate <= 1.0 for rate in rates):
        raise argparse.ArgumentTypeError(f"expected comma-separated missing rates in [0, 1], got {text!r}")
    return rates


def _whole_number(text: str, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        value = least - 1
    if value < least:
        raise argparse.ArgumentTypeError(f"expected a whole number >= {least}, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    return _whole_number(text, 1)


def _count(text: str) -> int:
    return _whole_number(text, 0)


def comma_list(text: str | None, flag: str) -> list[str] | None:
    """The names of a comma-separated option, None when it is not given; given but empty is an error, not the
    default (`--methods ""` from an unset shell variable would otherwise run the default quietly)."""
    if text is None:
        return None
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise ValueError(f"{flag} {text!r} names nothing; leave {flag} out for the default")
    return names


def _evaluate(args) -> None:
    import json
    from pathlib import Path

    from .atomic import atomic_write_text, check_not_an_input, check_replaceable
    from .evaluation import RUN_INPUTS, evaluate_runs, format_table, is_evaluation_report, log_to_stderr

    scenarios = comma_list(args.scenarios, "--scenarios")
    if args.out:
        check_not_an_input(args.out, [Path(run, name) for run in args.run_dirs for name in RUN_INPUTS])
        check_replaceable(args.out, args.overwrite, is_evaluation_report, "an evaluation report")
    report = evaluate_runs(
        args.run_dirs, scenarios, args.rates, args.root, args.batch_size, args.split, log=log_to_stderr,
        precision=args.precision,
    )
    text = json.dumps(report, indent=2)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, text)
    print(text if args.json else format_table(report))


def _calibrate(args) -> None:
    from .calibration import CALIBRATION_FILE, calibrate_run, format_calibration

    for run_dir in args.run_dirs:
        result = calibrate_run(run_dir, args.split, args.batch_size, args.precision)
        print(f"{run_dir}: temperatures fitted on {args.split} -> {run_dir}/{CALIBRATION_FILE}")
        print(format_calibration(result))


def _predict(args) -> None:
    from .predict import predict_file
    from .processing import MAX_PIXELS

    summary = predict_file(
        args.model, args.input, args.out, calibration=args.calibration, calibrate=args.calibrate,
        allow_outside=args.allow_outside, batch_size=args.batch_size, precision=args.precision,
        max_pixels=args.max_pixels or MAX_PIXELS, overwrite=args.overwrite,
        log=lambda message: print(message, file=sys.stderr),
    )
    if summary["bad"]:
        raise SystemExit(1)


def _serve(args) -> None:
    try:
        from .serve import serve
    except ModuleNotFoundError as error:  # the serve extra is not installed
        raise SystemExit(f"robustmm serve: {error}; install the serve extra: pip install 'robustmm[serve]'") from None

    serve(args.model, host=args.host, port=args.port, api_key_env=args.api_key_env, max_batch_size=args.max_batch_size,
          batch_timeout_ms=args.batch_timeout_ms, workers=args.workers, max_request_mb=args.max_request_mb,
          precision=args.precision, calibrate=args.calibrate)


def _check_method(args) -> None:
    from .contract import main

    main(args)


def _report(args) -> None:
    from pathlib import Path

    from .atomic import check_not_an_input, check_output_folder
    from .evaluation import RUN_INPUTS
    from .report import main

    def earlier_report(folder: Path) -> bool:
        return (folder / "report.html").is_file() and (folder / "report.md").is_file()

    comma_list(args.attention_ids, "--attention-ids")
    check_not_an_input(args.out, [Path(run, name) for run in args.run_dirs for name in RUN_INPUTS])
    check_output_folder(args.out, args.overwrite, earlier_report, "an earlier report")
    main(args)


IMPORT_HELP = (
    "import this module first (repeatable), so that the methods, plug-ins and datasets it registers are known; "
    "an installed package's entry points need none"
)


def add_import_option(parser: argparse.ArgumentParser) -> None:
    """`--import MODULE` on every command, the leaves of nested ones (`data ...`) included."""
    commands = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for action in commands:
        for command in action.choices.values():
            add_import_option(command)
    if not commands:
        parser.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                            help=IMPORT_HELP)


def build_parser() -> argparse.ArgumentParser:
    from .data.commands import add_data_parser, add_protocol_arguments

    parser = argparse.ArgumentParser(prog="robustmm", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser(
        "demo", help="train baseline, dropout and cmpt on the generated benchmark; compare with the Bayes limit"
    )
    demo.add_argument("--quick", action="store_true", help="the one-minute version (one seed, small splits)")
    demo.add_argument("--modalities", help="comma-separated subset of image,text,audio (default image,text)")
    demo.add_argument(
        "--methods", help="comma-separated methods (default baseline,dropout,cmpt), or all (takes longer)"
    )
    demo.add_argument("--seeds", type=int, help="number of seeds (default 3)")
    demo.add_argument("--epochs", type=int)
    demo.add_argument("--train-size", type=int)
    demo.add_argument("--test-size", type=int)
    demo.add_argument("--batch-size", type=int)
    demo.add_argument("--lr", type=float)
    demo.add_argument("--workers", type=int, help="runs trained side by side, one process each (default 2)")
    demo.add_argument("--precision", help=PRECISION_HELP)
    demo.add_argument("--out", help="write results.json, accuracy.png, the runs (cells/: a rerun keeps the "
                      "finished ones) and the report here")
    demo.add_argument("--overwrite", action="store_true", help="write into --out even if it holds other files")
    demo.add_argument(
        "--option", action="append", metavar="KEY=VALUE",
        help="a method option (repeatable): KEY for every method that has it (fusion_norm=layernorm, rank=4, "
        "mwam=true), METHOD.KEY for one (cmpt.align_weight=0); see `robustmm methods --options`",
    )
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    demo.set_defaults(func=_demo, loads_models=False)  # its training processes quiet the libraries themselves

    bench = commands.add_parser(
        "bench",
        help="time CMPT training: its overhead on the CPU, or with --size its throughput on a device; prints JSON",
        description="Without --size: CMPT's cost on the CPU, the figures of BENCHMARKS.md (a CMPT training step "
        "over the same model without proxy tokens, and the inference speed-up of not running a missing "
        "modality's encoder), on narrow 12-layer encoders. With --size: samples/s, step time, peak memory, "
        "FLOPs and MFU of a CMPT training step (forward, backward, AdamW) on ViT + BERT encoders of that size "
        "with random weights, on --device.",
    )
    bench.add_argument(
        "--size", help="measure throughput: tiny (width 64, seconds on a CPU) or base (ViT-B/16 + BERT-base, "
        "197 image + 40 text tokens)"
    )
    bench.add_argument("--batch-size", type=_positive_int, help="default 8, with --size 32")
    bench.add_argument(
        "--precision", default="auto", choices=["auto", "32-true", "bf16-mixed"],
        help="default auto: bf16-mixed where the device computes bf16 natively, else 32-true",
    )
    overhead = bench.add_argument_group("CMPT overhead (without --size)")
    overhead.add_argument("--hidden-size", type=_positive_int, help="encoder width (default 128)")
    overhead.add_argument("--num-layers", type=_positive_int, help="encoder depth (default 12)")
    overhead.add_argument("--repeats", type=_positive_int, help="timed pairs of steps (default 30)")
    throughput = bench.add_argument_group("throughput (with --size)")
    throughput.add_argument("--device", choices=["auto", "cpu", "cuda"], help="default auto: cuda when available")
    throughput.add_argument("--steps", type=_positive_int, help="timed steps (default 20)")
    throughput.add_argument("--warmup", type=_count, help="untimed steps before them (default 3)")
    throughput.add_argument(
        "--compile", dest="torch_compile", action="store_true", default=None,
        help="torch.compile the encoders; the eager model is timed too, for the speed-up and the compile time",
    )
    bench.set_defaults(func=_bench)

    train = commands.add_parser(
        "train",
        help="train one run from a config and/or flags into a run directory (resumes an interrupted one)",
        description="Train a run: the config (a YAML file or a shipped name such as food101, mmimdb_map), then "
        "the flags, then --set overrides, later ones winning. The run directory holds the resolved config, the "
        "protocol, checkpoints, logs, the model selected on validation and metrics.json.",
    )
    train.add_argument("--config", help="YAML file or shipped config name")
    train.add_argument("--dataset", help="registered dataset name (dataset.name)")
    train.add_argument("--root", help="dataset folder (dataset.root)")
    train.add_argument("--method", help="method name (model.method); see `robustmm methods`")
    for modality in ENCODER_FLAGS:
        train.add_argument(
            f"--{modality}-encoder", metavar="ID_OR_PATH",
            help=f"hub id or local path of the encoder of the dataset's {modality} modality, whatever it is called",
        )
    train.add_argument("--epochs", type=int)
    train.add_argument("--batch-size", type=int)
    train.add_argument("--lr", type=float)
    train.add_argument("--seed", type=int, help="seed of training and model initialisation (train.seed)")
    add_protocol_arguments(train)
    train.add_argument("--accelerator", help="cpu, gpu, auto, ...")
    train.add_argument("--devices", help="number of devices, a list, or auto")
    train.add_argument("--num-nodes", type=int)
    train.add_argument("--strategy", help="auto, ddp, ...")
    train.add_argument("--precision", help=PRECISION_HELP)
    train.add_argument(
        "--out", help="run directory; may use {dataset}, {method}, {seed}, {missing_type}, {missing_rate}"
    )
    train.add_argument("--no-progress", action="store_true", help="no progress bars")
    train.add_argument(
        "--option", action="append", default=[], metavar="KEY=VALUE",
        help="a method option (model.options.KEY), e.g. align_weight=0.1 or mwam=true; see `robustmm methods --options`",
    )
    train.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="override any config key with a YAML value, e.g. train.warmup_epochs=1 or model.options.align_weight=0",
    )
    train.set_defaults(func=_train)

    evaluate = commands.add_parser(
        "evaluate",
        help="score trained runs on the test split under missing-modality scenarios; several seeds: mean ± SD",
        description="Evaluate the model of each run (selected on validation during training) on its test split "
        "under each scenario and print a table; each run's results go to RUN_DIR/evaluation.json.",
    )
    evaluate.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories (seeds of one config)")
    evaluate.add_argument(
        "--scenarios",
        help="comma-separated: complete, missing, patterns, sweep:<modality> (or sweep), grid; default: the config's "
        "evaluation",
    )
    evaluate.add_argument("--rates", type=_rates, help="missing rates for sweeps and the grid, e.g. 0,0.3,0.7,1")
    evaluate.add_argument("--root", help="read the data from here instead of the root the run was trained on")
    evaluate.add_argument("--split", default="test", help="the split to score (default test; e.g. test_unseen)")
    evaluate.add_argument("--batch-size", type=_positive_int)
    evaluate.add_argument("--precision", default="auto", help=PRECISION_HELP)
    evaluate.add_argument("--json", action="store_true", help="print the JSON report instead of the table")
    evaluate.add_argument("--out", help="also write the JSON report (with the aggregate over runs) to this file")
    evaluate.add_argument("--overwrite", action="store_true", help="replace --out even if it is not an evaluation")
    evaluate.set_defaults(func=_evaluate)

    calibrate = commands.add_parser(
        "calibrate", help="fit one temperature per availability pattern on validation, for `robustmm predict`",
        description="Temperature scaling per availability pattern (e.g. image+text, text): each validation sample "
        "is shown with each subset of its modalities, and one temperature per subset is fitted by minimising the "
        "NLL. Writes RUN_DIR/calibration.json, which `robustmm predict RUN_DIR` applies.",
    )
    calibrate.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    calibrate.add_argument("--split", default="val", help="the labelled split to fit on (default val)")
    calibrate.add_argument("--batch-size", type=_positive_int)
    calibrate.add_argument("--precision", default="auto", help=PRECISION_HELP)
    calibrate.set_defaults(func=_calibrate)

    predict = commands.add_parser(
        "predict", help="predict the rows of a CSV/JSONL file, any modalities per row; bad rows are reported",
        description="Columns named after the model's modalities (text inline; files as paths relative to the "
        "input's folder); an empty cell or a path to no file means missing. Writes each row's probabilities, "
        "prediction and the modalities used to --out (.jsonl or .csv). Rows that cannot be predicted are listed "
        "on stderr with their cause and the exit status is 1; the others are predicted.",
    )
    predict.add_argument("model", metavar="MODEL_OR_RUN_DIR", help="a run directory or a saved model folder")
    predict.add_argument("--input", required=True, metavar="FILE", help="a .csv (with a header) or .jsonl file")
    predict.add_argument("--out", required=True, metavar="FILE", help="predictions, .jsonl or .csv")
    predict.add_argument("--calibration", metavar="FILE", help="temperatures (default: RUN_DIR/calibration.json)")
    predict.add_argument("--no-calibration", dest="calibrate", action="store_false", help="apply no temperature")
    predict.add_argument("--allow-outside", action="store_true", help="read files outside the input's folder")
    predict.add_argument("--batch-size", type=_positive_int, default=32)
    predict.add_argument(
        "--max-pixels", type=_positive_int,
        help="refuse images with more pixels than this, before decoding them (default 64 million)",
    )
    predict.add_argument("--overwrite", action="store_true", help="replace --out even if it is not a predictions file")
    predict.add_argument("--precision", default="auto", help=PRECISION_HELP)
    predict.set_defaults(func=_predict)

    served = commands.add_parser(
        "serve", help="answer HTTP requests (POST /predict, a page at /) with the model, any modalities per row",
        description="Serve a run's model over HTTP with LitServe: POST /predict takes {\"rows\": [{\"id\": ..., "
        "MODALITY: a text or a file's bytes in base64}]} or a multipart form, and answers each row as `robustmm "
        "predict` does; GET / is a page to try it, /health, /info and /docs (OpenAPI). SIGTERM drains the requests "
        "in flight.",
    )
    served.add_argument("model", metavar="MODEL_OR_RUN_DIR", help="a run directory or a saved model folder")
    served.add_argument("--host", default="127.0.0.1", help="address to bind: 127.0.0.1 (default), 0.0.0.0 or ::")
    served.add_argument("--port", type=int, default=8000)
    served.add_argument("--max-batch-size", type=int, default=32, help="requests predicted together")
    served.add_argument("--batch-timeout-ms", type=float, default=10, help="longest wait for a batch to fill")
    served.add_argument("--workers", type=int, default=1, help="inference worker processes, each with the model")
    served.add_argument("--api-key-env", metavar="VAR", help="require 'Authorization: Bearer <the value of VAR>'")
    served.add_argument("--max-request-mb", type=float, default=16, help="larger bodies get 413")
    served.add_argument("--precision", default="auto", help=PRECISION_HELP)
    served.add_argument("--no-calibration", dest="calibrate", action="store_false", help="apply no temperature")
    served.set_defaults(func=_serve)

    report = commands.add_parser(
        "report", help="one self-contained HTML page (and markdown, PNGs, JSON/CSV tables) from finished runs",
        description="From finished runs, without training: the metric against each modality's missing rate, a "
        "radar and a table of the availability scenarios, per-class gains, t-SNE of the fused features, the image "
        "encoder's attention, calibration per availability pattern and compute. Runs of one method are its seeds.",
    )
    report.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories of one dataset")
    report.add_argument("--out", required=True, help="folder for report.html, report.md, figures/ and tables/")
    report.add_argument("--attention-ids", metavar="ID,ID", help="test samples whose attention maps to show "
                        "(default: the first three with an image)")
    report.add_argument("--overwrite", action="store_true", help="write into --out even if it holds other files")
    report.add_argument("--gain", metavar="METHOD,REFERENCE", help="the per-class gain of METHOD over REFERENCE "
                        "(default: cmpt,baseline where both ran, else the last method over the first)")
    report.add_argument("--focus", metavar="METHOD", help="the method whose t-SNE and attention are shown "
                        "(default: cmpt where it ran, else the first)")
    report.set_defaults(func=_report)

    check = commands.add_parser(
        "check-method", help="run the method contract's checks on a method, e.g. one of your own",
        description="Build the method over tiny random encoders and check it against the contract every built-in "
        "method meets: every availability pattern trains and predicts without NaN, per-scenario logits equal plain "
        "forward passes, save and load, copies, and resuming a killed run. Exit status 1 if a check fails.",
    )
    check.add_argument("method", metavar="NAME_OR_MODULE:CLASS",
                       help="a registered method (an installed entry point counts), or module:Class to import")
    check.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                       help="a method option to build it with (repeatable), e.g. rank=4")
    check.set_defaults(func=_check_method)

    methods = commands.add_parser("methods", help="list the registered methods")
    methods.add_argument("--options", action="store_true", help="also list each method's options and defaults")
    methods.set_defaults(func=_methods, loads_models=False)

    from .sweep.command import add_sweep_parser

    add_sweep_parser(commands)

    add_data_parser(commands)
    add_import_option(parser)
    return parser


def main(argv: list[str] | None = None) -> None:
    from .registry import import_modules

    args = build_parser().parse_args(argv)
    if getattr(args, "loads_models", True):
        quiet_libraries()
    try:
        import_modules(args.imports)
        args.func(args)
    except (ValueError, OSError) as error:  # bad input, a missing file, a full disk: the message says which
        print(f"robustmm {args.command}: error: {error}", file=sys.stderr)
        raise SystemExit(2) from error


if __name__ == "__main__":
    main()
