"""The `robustmm data` commands.

- `stats`: per split, the samples and how many have each availability pattern under a missing protocol, real
  missingness (in the data) apart from simulated (dropped by the protocol), and the rows skipped as unreadable.
- `prepare`: conversions a layout needs or benefits from: MAP's Arrow files from the raw MM-IMDb, Food-101 and
  Hateful Memes layouts, and AST fbank arrays from the wav files of CREMA-D, Kinetics-Sounds and AVE.

`add_protocol_arguments` and `protocol_from_args` give every command the same missing-protocol options.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..checks import load_json
from .protocol import MissingProtocol

ARROW_FOLDER = "arrow"


def add_protocol_arguments(parser: argparse.ArgumentParser) -> None:
    """The missing-protocol options; each defaults to None, which leaves the field as it is (see
    `protocol_from_args`, and the config for `robustmm train`)."""
    group = parser.add_argument_group("missing protocol (a rate is the fraction of samples MISSING a modality)")
    group.add_argument("--missing-rate", type=float, help="the rate of every split (default 0)")
    for split in ("train", "val", "test"):
        group.add_argument(f"--{split}-missing-rate", type=float, help=f"the {split} rate (overrides --missing-rate)")
    group.add_argument("--missing-type", help="a modality, several joined by '+', 'both' or 'all' (default all)")
    group.add_argument("--both-ratio", type=float, help="share of the missing samples losing the first modality (0.5)")
    group.add_argument("--protocol-seed", type=int, help="seed of the missing tables (default 0)")


PROTOCOL_FLAGS = {
    "train_missing_rate": "train_missing_rate",
    "val_missing_rate": "val_missing_rate",
    "test_missing_rate": "test_missing_rate",
    "missing_type": "missing_type",
    "both_ratio": "both_ratio",
    "protocol_seed": "seed",
}
"""Option -> `MissingProtocol` field."""


def protocol_overrides(args: argparse.Namespace) -> dict:
    """The `MissingProtocol` fields that the options set: `--missing-rate` for every split, then the others."""
    fields = {}
    if args.missing_rate is not None:
        fields.update({f"{split}_missing_rate": args.missing_rate for split in ("train", "val", "test")})
    fields.update({field: getattr(args, flag) for flag, field in PROTOCOL_FLAGS.items() if getattr(args, flag) is not None})
    return fields


def protocol_from_args(args: argparse.Namespace) -> MissingProtocol:
    return MissingProtocol(**protocol_overrides(args))


def parse_options(pairs) -> dict:
    """Reader options from `key=value` strings; a value is read as JSON when it parses (numbers, true, lists)."""
    options = {}
    for pair in pairs or []:
        key, separator, value = pair.partition("=")
        if not separator or not key.strip():
            raise ValueError(f"--option {pair!r}: write key=value, e.g. plots=each")
        try:
            options[key.strip()] = load_json(value)
        except ValueError:
            options[key.strip()] = value
    return options


def add_dataset_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, help="a registered reader (mmimdb, food101, generic, ...)")
    parser.add_argument("--root", required=True, help="the dataset folder")
    parser.add_argument("--split", nargs="+", help="splits to read (default: every split of the dataset)")
    parser.add_argument(
        "--option", action="append", metavar="KEY=VALUE", help="a reader option, e.g. plots=each (repeatable)"
    )
    parser.add_argument("--on-error", choices=["raise", "skip"], default="raise", help="stop at, or skip, bad rows")


def add_data_parser(commands) -> argparse.ArgumentParser:
    """The `data` command with its `stats` and `prepare` subcommands, on an argparse subparsers object."""
    data = commands.add_parser("data", help="inspect a dataset under a missing protocol; convert layouts")
    actions = data.add_subparsers(dest="data_command", required=True)

    stats_parser = actions.add_parser("stats", help="samples per availability pattern, real vs simulated, per split")
    add_dataset_arguments(stats_parser)
    add_protocol_arguments(stats_parser)
    stats_parser.add_argument("--verify", action="store_true", help="also decode every file (slow)")
    stats_parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    stats_parser.set_defaults(func=stats)

    prepare_parser = actions.add_parser(
        "prepare", help="write MAP Arrow files (image-text sets) or AST fbank arrays (audio-visual sets)"
    )
    add_dataset_arguments(prepare_parser)
    prepare_parser.add_argument("--out", help=f"folder for the Arrow files (default: ROOT/{ARROW_FOLDER})")
    prepare_parser.add_argument(
        "--feature-extractor",
        help="folder of the audio encoder whose fbank settings to use (default: AST's, 128 bins x 1024 frames)",
    )
    prepare_parser.add_argument("--overwrite", action="store_true", help="recompute fbank arrays that exist")
    prepare_parser.set_defaults(func=prepare)

    example_parser = actions.add_parser(
        "example", help="write a small image+text dataset with empty cells, for the README's walk-through"
    )
    example_parser.add_argument("folder", help="where to write it (created; refused if it holds files)")
    example_parser.add_argument("--overwrite", action="store_true", help="write into a folder that holds files")
    example_parser.set_defaults(func=example)
    return data


def example(args) -> None:
    from ..example import main

    main(args)


def _readers(args, **extra):
    """(split, reader or the reason it is unavailable) for each requested split; a split asked for by name must
    be readable, the others may be absent (e.g. Hateful Memes' test_unseen)."""
    from .registry import get_dataset_class

    cls = get_dataset_class(args.dataset)
    options = {**parse_options(args.option), **extra}
    splits = args.split or list(cls.splits)
    for split in splits:
        try:
            yield split, cls(args.root, split, on_error=args.on_error, **options)
        except FileNotFoundError as error:
            if args.split:
                raise
            yield split, error


def split_stats(reader, protocol: MissingProtocol) -> dict:
    summary = reader.with_protocol(protocol).summary()
    summary.pop("protocol")
    summary["skipped_rows"] = [list(item) for item in reader.skipped]
    summary["notes"] = list(reader.notes)
    return summary


def format_split(split: str, summary: dict) -> str:
    lines = [f"{split}: {summary['samples']} samples"]
    lines.append(f"  {'availability':<28}{'samples':>9}{'real':>8}{'simulated':>11}")
    for pattern, counts in summary["patterns"].items():
        lines.append(f"  {pattern:<28}{counts['samples']:>9}{counts['real']:>8}{counts['simulated']:>11}")
    real = ", ".join(f"{m} {n}" for m, n in summary["real_missing"].items())
    dropped = ", ".join(f"{m} {n}" for m, n in summary["simulated_missing"].items())
    lines.append(f"  missing in the data: {real}; dropped by the protocol: {dropped}")
    lines.append(
        f"  chosen to lose a modality they lack: {summary['already_missing']}; "
        f"drop cancelled to keep a last modality: {summary['kept_last']}"
    )
    skipped = summary["skipped_rows"]
    if skipped:
        lines.append(f"  skipped {len(skipped)} rows; first: {skipped[0][0]}: {skipped[0][1]}")
    else:
        lines.append("  skipped rows: none")
    lines += [f"  note: {note}" for note in summary["notes"]]
    return "\n".join(lines)


def stats(args) -> None:
    report, protocol, header = {}, None, None
    for split, reader in _readers(args, verify=args.verify):
        if isinstance(reader, Exception):
            report[split] = {"unavailable": str(reader)}
            continue
        if protocol is None:
            protocol = protocol_from_args(args)
            header = {
                "dataset": reader.name,
                "root": str(reader.root),
                "modalities": dict(reader.modalities),
                "classes": len(reader.class_names),
                "multilabel": reader.multilabel,
                "metrics": list(reader.metrics),
            }
        report[split] = split_stats(reader, protocol)
    if protocol is None:
        raise FileNotFoundError("; ".join(f"{split}: {entry['unavailable']}" for split, entry in report.items()))
    if args.json:
        described = {**protocol.to_dict(), "hash": protocol.hash(), "description": protocol.describe()}
        print(json.dumps({**header, "protocol": described, "splits": report}, indent=2))
        return
    print(protocol.describe())
    kinds = ", ".join(f"{name} ({kind})" for name, kind in header["modalities"].items())
    multilabel = " (multi-label)" if header["multilabel"] else ""
    print(
        f"{header['dataset']} at {header['root']}: {header['classes']} classes{multilabel}, "
        f"modalities {kinds}, metrics {', '.join(header['metrics'])}"
    )
    for split, summary in report.items():
        print()
        if "unavailable" in summary:
            print(f"{split}: not available: {summary['unavailable']}")
        else:
            print(format_split(split, summary))


def prepare(args) -> None:
    from .audio_visual import AudioVisualDataset
    from .image_text import ImageTextDataset
    from .registry import get_dataset_class

    cls = get_dataset_class(args.dataset)
    if issubclass(cls, ImageTextDataset):
        out = Path(args.out) if args.out else Path(args.root) / ARROW_FOLDER
        for split, reader in _readers(args, format="raw", **cls.arrow_reader_options):
            if isinstance(reader, Exception):
                print(f"{split}: not available: {reader}")
                continue
            path = reader.write_arrow(out)
            print(f"{split}: wrote {path} ({len(reader)} samples; {reader.skip_summary()})")
        print(f"read them with --dataset {cls.name} --root {out}")
    elif issubclass(cls, AudioVisualDataset):
        if args.out:
            raise ValueError("fbank arrays are written next to the data, where the reader looks for them; drop --out")
        write_fbanks(args)
    else:
        raise ValueError(f"{cls.name} reads its files as they are; there is nothing to prepare")


def fbank_extractor(path: str | None):
    """AST's feature extractor without normalization: the stored fbank is normalized when a batch is made, with
    the encoder's own mean and std, exactly as a waveform's fbank is."""
    from transformers import ASTFeatureExtractor

    if path:
        return ASTFeatureExtractor.from_pretrained(path, do_normalize=False)
    return ASTFeatureExtractor(do_normalize=False)


def write_fbanks(args) -> None:
    """`audio/<list>_fbank/<clip>.npy` for each clip with a wav file (MLA's layout, which the readers prefer).
    A validation split held out of the training list is covered by reading the whole training list."""
    import io

    import numpy as np

    from ..atomic import atomic_write
    from .base import SAMPLE_RATE, load_audio
    from .registry import get_dataset_class

    def save(array):
        # Serialized in memory, then written by Python: np.save into a file fails with "N requested and M written"
        # without the reason, where Python's write names it (e.g. no space left on device, see `atomic_write`).
        buffer = io.BytesIO()
        np.save(buffer, array)
        return lambda temporary: Path(temporary).write_bytes(buffer.getbuffer())

    extractor = fbank_extractor(args.feature_extractor)
    cls = get_dataset_class(args.dataset)
    if not cls.lists_validation:
        requested = args.split or cls.splits
        args.split = [split for split in cls.splits if split in {"train" if s == "val" else s for s in requested}]
    for split, reader in _readers(args, audio="wav", val_fraction=0.0):
        if isinstance(reader, Exception):
            print(f"{split}: not available: {reader}")
            continue
        written = kept = 0
        for record in reader.records:
            wav = record.sources.get("audio")
            if wav is None:
                continue
            target = reader.root / "audio" / f"{reader.source_split}_fbank" / f"{Path(wav).stem}.npy"
            if target.is_file() and not args.overwrite:
                kept += 1
                continue
            waveform = load_audio(wav)
            fbank = extractor(waveform, sampling_rate=SAMPLE_RATE, return_tensors="np")["input_values"][0]
            target.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(target, save(fbank.astype(np.float32)))  # a killed run leaves no half array behind
            written += 1
        print(f"{split}: wrote {written} fbank arrays, {kept} already there ({reader.skip_summary()})")
