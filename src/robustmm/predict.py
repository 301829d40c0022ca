"""`robustmm predict`: class probabilities for the rows of a CSV or JSONL file, each with whatever it carries.

A row names its modalities by the model's modality names (the columns it was trained on); texts are inline,
images, sounds and frame folders are paths relative to the input file's folder. An empty cell, an absent column
or a path to no file means the modality is missing: the row is predicted from the others. A row that cannot be
predicted (an unreadable file, a path outside the input's folder, no modality at all) is reported with its line
and cause, and the other rows are still predicted. With a calibration file (`robustmm calibrate`) the logits of
each row are divided by the temperature of its availability pattern.
"""

from __future__ import annotations

import csv
import io
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .atomic import atomic_write_text, check_not_an_input, check_replaceable, first_line
from .availability import pattern_name
from .calibration import CALIBRATION_FILE, probabilities, temperatures_of
from .checks import load_json
from .precision import autocast
from .processing import MAX_PIXELS, lookalike

INPUT_SUFFIXES = (".csv", ".jsonl")


@dataclass
class Row:
    """One input row: where it is, its sample (modality -> value or None), what was noted, what went wrong."""

    origin: str
    id: str
    sample: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    error: str | None = None


def read_rows(path: Path) -> list[tuple[str, dict]]:
    """(origin, cells) per row of a CSV file with a header or a JSONL file of objects, in UTF-8."""
    from .data.base import allow_long_cells
    from .processing import not_a_regular_file

    if path.suffix not in INPUT_SUFFIXES:
        raise ValueError(f"{path}: expected a .csv or .jsonl file")
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    kind = not_a_regular_file(path.stat().st_mode)
    if kind:
        raise ValueError(f"{path} is {kind}, not a regular file")
    rows = []
    allow_long_cells()
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            if path.suffix == ".csv":
                reader = csv.DictReader(handle)
                try:
                    for cells in reader:
                        rows.append((f"{path.name} line {reader.line_num}", cells))
                except csv.Error as error:  # e.g. a cell over MAX_CELL_CHARS: the rest cannot be parsed
                    raise ValueError(f"{path} line {reader.line_num + 1}: {error}") from None
                return rows
            for number, line in enumerate(handle, 1):
                if line.strip():
                    try:
                        cells = load_json(line)
                    except ValueError as error:
                        cells = {None: f"not valid JSON: {error}"}
                    rows.append((f"{path.name} line {number}", cells if isinstance(cells, dict) else {
                        None: "expected a JSON object"}))
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 after row {len(rows)} ({error.reason}); re-save it as UTF-8") from None
    return rows


class RowReader:
    """Turns the cells of a row into a sample for a model whose modalities have the given kinds."""

    def __init__(self, kinds: dict[str, str], folder: Path, allow_outside: bool = False, max_pixels: int = MAX_PIXELS):
        self.kinds, self.folder, self.allow_outside = kinds, folder.resolve(), allow_outside
        self.max_pixels = max_pixels

    def __call__(self, origin: str, cells: dict, number: int) -> Row:
        identifier = cells.get("id")
        row = Row(origin, str(number) if identifier in (None, "") else str(identifier))
        if None in cells:  # a CSV row with more fields than the header, or a JSONL line that is not an object
            extra = cells[None]
            row.error = extra if isinstance(extra, str) else f"has {len(extra)} more field(s) than the header"
            return row
        try:
            row.sample = {m: self.read(m, kind, cells.get(m), row) for m, kind in self.kinds.items()}
        except (OSError, ValueError) as error:
            row.error = str(error)
            return row
        if all(value is None for value in row.sample.values()):
            row.error = f"has no modality: every one of {', '.join(self.kinds)} is empty or absent"
        return row

    def read(self, modality: str, kind: str, value, row: Row):
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        if kind == "text":
            if not isinstance(value, str):
                raise ValueError(f"{modality} must be a text, got {type(value).__name__}")
            return value
        if not isinstance(value, str):
            raise ValueError(f"{modality} must be a path, got {type(value).__name__}")
        path = (self.folder / value).resolve()
        if not self.allow_outside and not path.is_relative_to(self.folder):
            raise ValueError(f"{modality} path {value!r} is outside {self.folder}; pass --allow-outside to read it")
        if not path.exists():
            row.notes.append(f"{modality}: {value} does not exist; predicted without it")
            return None
        return self.load(kind, path, value)

    def load(self, kind: str, path: Path, shown: str):
        from .data.base import READ_ERRORS, frame_files, load_audio, load_image

        try:
            if kind == "image":
                return load_image(path, self.max_pixels)
            if kind == "audio":
                return load_audio(path)
            return [str(frame) for frame in frame_files(path)]  # the model reads only the frames it takes
        except (*READ_ERRORS, OSError, ValueError) as error:
            raise ValueError(f"cannot read {kind} {shown}: {error}") from error


def modality_kinds(model) -> dict[str, str]:
    return {m: model.encoders[m].kind for m in model.modalities}


def predict_rows(model, rows: list[Row], temperatures: dict[str, float] | None = None, batch_size: int = 32,
                 precision: str = "32-true") -> list[dict]:
    """Probabilities of every readable row, in batches; a batch that the model refuses is retried row by row,
    so that one bad row is reported and its neighbours are still predicted."""
    good = [row for row in rows if row.error is None]
    results = {}
    for start in range(0, len(good), batch_size):
        chunk = good[start : start + batch_size]
        try:
            logits = batch_logits(model, [row.sample for row in chunk], precision)
        except ValueError:
            logits = []
            for row in chunk:
                try:
                    logits.append(batch_logits(model, [row.sample], precision)[0])
                except ValueError as error:
                    row.error = re.sub(r"^sample 0( \(id .*?\))?: ", "", str(error))
                    logits.append(None)
        for row, values in zip(chunk, logits):
            if values is not None:
                results[id(row)] = values
    return [describe(model, row, results.get(id(row)), temperatures or {}) for row in rows]


@torch.inference_mode()
def batch_logits(model, samples: list[dict], precision: str) -> list[torch.Tensor]:
    model.eval()
    device = model.device
    batch = model.collate(samples).to(device)
    with autocast(precision, device.type):
        logits = model(batch).logits
    return list(logits.float().cpu())


def describe(model, row: Row, logits, temperatures: dict[str, float]) -> dict:
    """The output record of a row: its probabilities, prediction, the modalities used and the temperature."""
    used = pattern_name([m for m, v in row.sample.items() if v is not None], model.modalities)
    record = {"line": row.origin, "id": row.id, "modalities": used}
    if logits is None:
        return {**record, "error": row.error}
    temperature = temperatures.get(used, 1.0)
    probs = probabilities(logits, model.config.multilabel, temperature).tolist()
    names = model.config.class_names or [str(i) for i in range(len(probs))]
    if model.config.multilabel:
        prediction = [name for name, p in zip(names, probs) if p >= 0.5]
    else:
        prediction = names[max(range(len(probs)), key=probs.__getitem__)]
    record.update(prediction=prediction, probabilities=dict(zip(names, probs)), temperature=temperature)
    if row.notes:
        record["notes"] = row.notes
    return record


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
"""What makes a spreadsheet read a CSV cell as a formula (`=HYPERLINK(...)` runs when the file is opened)."""


def spreadsheet_safe(text: str) -> str:
    """`text` for a CSV cell: one that a spreadsheet would run as a formula gets a leading `'`, which
    spreadsheets show as text (OWASP's advice for CSV injection); numbers such as -1.5 stay as they are."""
    if not text.startswith(FORMULA_STARTS):
        return text
    try:
        float(text)
        return text
    except ValueError:
        return "'" + text


def write_predictions(records: list[dict], path: Path, class_names: list[str]) -> None:
    """JSONL (one object a row, values as they are) or CSV (one column per class probability; text cells made
    `spreadsheet_safe`), written atomically."""
    if path.suffix == ".jsonl":
        atomic_write_text(path, "".join(json.dumps(record) + "\n" for record in records))
        return
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(map(spreadsheet_safe, ["line", "id", "modalities", "prediction",
                                           *[f"p_{name}" for name in class_names], "temperature", "notes", "error"]))
    for record in records:
        prediction = record.get("prediction", "")
        probs = record.get("probabilities", {})
        writer.writerow(map(spreadsheet_safe, [
            record["line"], record["id"], record["modalities"],
            "|".join(prediction) if isinstance(prediction, list) else prediction,
            *[f"{probs[name]:.6f}" if name in probs else "" for name in class_names],
            str(record.get("temperature", "")), "; ".join(record.get("notes", [])), record.get("error", ""),
        ]))  # fmt: skip
    atomic_write_text(path, buffer.getvalue())


def resolve_model_dir(path: Path) -> tuple[Path, Path | None]:
    """(model folder, calibration file if any) of a run directory or of a folder written by `save_pretrained`."""
    from .config import RUN_CONFIG

    if (path / RUN_CONFIG).is_file():
        calibration = path / CALIBRATION_FILE
        return path / "model", calibration if calibration.is_file() else None
    return path, None


def is_predictions_file(path: Path) -> bool:
    """Whether `path` looks like what `write_predictions` writes (its CSV header, or a JSONL record of its keys)."""
    line = first_line(path)
    if path.suffix == ".csv":
        return line.startswith("line,id,modalities,prediction,")
    try:
        record = load_json(line) if line else {}
    except ValueError:
        return False
    return isinstance(record, dict) and {"line", "id", "modalities"} <= set(record)


def load_predictor(model_or_run, calibration=None, calibrate: bool = True, precision: str = "auto"):
    """(model, temperatures per availability pattern, concrete precision), as `predict_file` and `robustmm serve`
    predict: `model_or_run` and `calibration` as in `predict_file`."""
    from .precision import resolve_precision
    from .serialisation import load_model

    if isinstance(model_or_run, (str, Path)):
        model_dir, found = resolve_model_dir(Path(model_or_run))
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        model = load_model(model_dir).to(device)
    else:
        model, found = model_or_run, None
    calibration = calibration if calibration is not None else found
    temperatures = temperatures_of(calibration, model.modalities) if calibrate and calibration is not None else {}
    return model, temperatures, resolve_precision(precision, announce=False)


def predict_file(
    model_or_run, input_path: str | Path, out: str | Path, *, calibration=None, calibrate: bool = True,
    allow_outside: bool = False, batch_size: int = 32, precision: str = "auto", max_pixels: int = MAX_PIXELS,
    overwrite: bool = False, log=print,
) -> dict:
    """Predict every row of `input_path` into `out` (.jsonl or .csv); returns counts and timing.

    `model_or_run`: a run directory, a saved model folder or a model. `calibration`: a file written by
    `robustmm calibrate` or the `fit_temperatures` result; by default a run directory's own file is used, and
    `calibrate=False` applies none. `out` may not be one of the files read, and an existing file there is
    replaced only if it holds earlier predictions, or with `overwrite`."""
    input_path, out = Path(input_path), Path(out)
    for name, value in (("batch_size", batch_size), ("max_pixels", max_pixels)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
    if out.suffix not in INPUT_SUFFIXES:
        raise ValueError(f"--out {out}: expected a .csv or .jsonl file name")
    model_dir, found = resolve_model_dir(Path(model_or_run)) if isinstance(model_or_run, (str, Path)) else (None, None)
    given = calibration if calibration is not None else found
    check_not_an_input(out, [input_path, model_dir, given if isinstance(given, (str, Path)) else None])
    check_replaceable(out, overwrite, is_predictions_file, "a predictions file")
    model, temperatures, precision = load_predictor(model_or_run, calibration, calibrate, precision)
    kinds = modality_kinds(model)
    cells = read_rows(input_path)
    named = {key for _, row in cells for key in row if key is not None}
    misspelt = {key: lookalike(key, kinds) for key in named if key not in kinds and lookalike(key, kinds)}
    if misspelt:
        listed = ", ".join(f"{key!r} (did you mean {meant!r}?)" for key, meant in sorted(misspelt.items()))
        raise ValueError(f"{input_path}: column(s) {listed} are not modalities of the model ({', '.join(kinds)}); "
                         "rename them, or their cells would be taken as missing")
    if cells and not named & set(kinds):
        raise ValueError(f"{input_path}: no column named after the model's modalities ({', '.join(kinds)}); "
                         f"the file has {', '.join(sorted(map(str, named)))}")
    start = time.perf_counter()
    reader = RowReader(kinds, input_path.parent, allow_outside, max_pixels)
    rows = [reader(origin, row, number) for number, (origin, row) in enumerate(cells)]
    records = predict_rows(model, rows, temperatures, batch_size, precision)
    seconds = time.perf_counter() - start
    out.parent.mkdir(parents=True, exist_ok=True)
    write_predictions(records, out, model.config.class_names or [str(i) for i in range(model.config.num_classes)])
    bad = [record for record in records if "error" in record]
    for record in bad:
        log(f"{record['line']} (id {record['id']!r}): {record['error']}")
    predicted = len(records) - len(bad)
    summary = {"rows": len(records), "predicted": predicted, "bad": len(bad), "seconds": round(seconds, 3),
               "rows_per_second": round(predicted / seconds, 1) if seconds > 0 else None, "precision": precision,
               "calibrated": bool(temperatures)}
    calibrated = f", calibrated ({len(temperatures)} patterns)" if temperatures else ""
    log(f"predicted {predicted} of {len(records)} rows in {seconds:.2f} s ({summary['rows_per_second']} rows/s, "
        f"{precision}{calibrated}) -> {out}")
    return summary
