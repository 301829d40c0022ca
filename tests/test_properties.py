"""Property-based tests: whatever the samples or the data files hold, the answer is a result or a clear error.

For `collate` and `predict` the property is: finite probabilities of shape `[n, classes]` (a batch of n samples),
or a `ValueError` that names a sample of the call, never another exception and never a hang. For the generic
reader: a dataset whose samples load, or a `ValueError` that names the file or the row. Inputs mix valid and
invalid values of every modality; large images and long texts and recordings are drawn rarely, so that the file
runs in seconds.
"""

import csv
import json
import re
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

import robustmm
from robustmm.data import get_dataset

SETTINGS = settings(
    max_examples=30,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SECONDS_PER_CALL = 60
"""Generous: a call takes well under a second here; a minute means something hangs."""
SAMPLE_NAME = re.compile(r"^sample (\d+)[ :]")
MODES = ("L", "LA", "P", "RGB", "RGBA", "I;16", "CMYK")


def weighted(*choices):
    """One of the (weight, strategy) choices, drawn in proportion to the weights: `one_of` and `integers` draw their
    first choice and their bounds far more often than the others, which would make rare inputs common."""
    slots = [strategy for weight, strategy in choices for _ in range(weight)]
    return st.sampled_from(range(len(slots))).flatmap(lambda slot: slots[slot])


def rarely(common, rare, one_in: int = 12):
    """`rare` once in about `one_in` draws, else `common`."""
    return weighted((one_in - 1, common), (1, rare))


sizes = rarely(
    st.tuples(st.integers(1, 48), st.integers(1, 48)),
    st.sampled_from([(4000, 3000), (3000, 4000), (1, 4000), (4000, 1)]),
)


@st.composite
def images(draw):
    """Random pixels in any of `MODES`; a huge image is of one colour, as random pixels would cost seconds."""
    mode, (width, height) = draw(st.sampled_from(MODES)), draw(sizes)
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    top, dtype, shape = (65536, np.uint16, (height, width)) if mode == "I;16" else (256, np.uint8, (height, width, 3))
    if width * height <= 48 * 48:
        pixels = rng.integers(0, top, shape, dtype)
    else:
        pixels = np.full(shape, rng.integers(0, top, shape[2:]), dtype)
    image = Image.fromarray(pixels)
    return image if mode == "I;16" else image.convert(mode)


bad_images = st.sampled_from(
    [42, "no/such/file.png", np.zeros((3, 3)), np.zeros((3, 3, 5), np.uint8), Image.new("RGB", (0, 0))]
)

texts = st.tuples(st.text(max_size=40), rarely(st.integers(1, 3), st.sampled_from([1000, 2500, 100_000]))).map(
    lambda parts: (parts[0] * parts[1])[:100_000]
)
any_texts = texts | st.text(st.characters(categories=["Cs", "Lu", "Zs"]), max_size=5)  # lone surrogates included
bad_texts = st.sampled_from([7, 1.5, b"bytes", ["a list"]])


@st.composite
def waveforms(draw):
    length = draw(rarely(st.integers(0, 2000), st.sampled_from([16_000 * 60, 16_000 * 10, 399, 400, 401])))
    scale = draw(st.sampled_from([0.0, 1e-6, 0.5, 1.0, 1e3, 1e15]))
    waveform = np.random.default_rng(draw(st.integers(0, 2**16))).standard_normal(length).astype(np.float32) * scale
    if length and draw(rarely(st.just(False), st.just(True), 8)):
        waveform[draw(st.integers(0, length - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    return waveform


fbanks = st.integers(0, 80).map(lambda frames: np.full((frames, 32), -5.0, np.float32))
bad_audio = st.sampled_from(
    ["loud", np.zeros((2, 2, 2), np.float32), np.zeros((10, 7), np.float32), [[1.0], [1.0, 2.0]]]
)
labels = rarely(st.integers(0, 2) | st.just(np.int64(1)), st.sampled_from([-1, 3, 1.0, True, "cat", None, [0, 1]]), 8)


def values(good, bad):
    """A modality's value: missing (None) about a third of the time, invalid one time in twenty, else valid."""
    return weighted((13, good), (6, st.none()), (1, bad))


@st.composite
def samples(draw, labelled: bool):
    sample = {
        "id": draw(st.integers(0, 99) | st.text(max_size=4)),
        "image": draw(values(images(), bad_images)),
        "text": draw(values(any_texts, bad_texts)),
        "audio": draw(values(waveforms(), fbanks | bad_audio)),
    }
    if labelled:
        sample["label"] = draw(labels)
    return sample


@st.composite
def batches(draw, min_size: int = 1, max_size: int = 4):
    """Samples that all have labels or none do, but rarely a mix of the two."""
    labelled = draw(st.booleans())
    mixed = draw(rarely(st.just(False), st.just(True), 10))
    size = draw(st.integers(min_size, max_size))
    return [draw(samples(draw(st.booleans()) if mixed else labelled)) for _ in range(size)]


@pytest.fixture(scope="module")
def model(tiny_encoders):
    encoders = {m: tiny_encoders[m] for m in ("image", "text", "audio")}
    return robustmm.build_model("cmpt", encoders=encoders, num_classes=3)


def timed(call):
    """Run `call`, returning (result or the exception, seconds); the outcome is counted in the statistics
    (`pytest --hypothesis-show-statistics`), to see that both results and errors are drawn often."""
    start = time.perf_counter()
    try:
        result = call()
    except Exception as error:  # noqa: BLE001  (the property says which exceptions are acceptable)
        result = error
    event("error" if isinstance(result, Exception) else "result")
    return result, time.perf_counter() - start


def assert_names_a_sample(error: Exception, count: int) -> None:
    assert type(error) is ValueError, f"{type(error).__name__}: {error}"
    named = SAMPLE_NAME.match(str(error))
    assert named and int(named[1]) < count, f"the error names no sample of the {count}: {error}"


@SETTINGS
@given(batch=batches())
def test_collate_gives_a_batch_or_names_the_sample(model, batch):
    result, seconds = timed(lambda: model.collate(batch))
    assert seconds < SECONDS_PER_CALL
    if isinstance(result, Exception):
        assert_names_a_sample(result, len(batch))
        return
    assert len(result) == len(batch)
    for modality, present in result.present.items():
        assert present.tolist() == [s.get(modality) is not None for s in batch]
        for tensor in result.inputs.get(modality, {}).values():
            assert len(tensor) == int(present.sum())
            assert not tensor.is_floating_point() or torch.isfinite(tensor).all()
    if result.labels is not None:
        assert result.labels.shape == (len(batch),)


@SETTINGS
@given(batch=batches(min_size=0, max_size=5), batch_size=st.integers(1, 3))
def test_predict_gives_finite_probabilities_or_names_the_sample(model, batch, batch_size):
    result, seconds = timed(lambda: model.predict(batch, batch_size=batch_size))
    assert seconds < SECONDS_PER_CALL
    if isinstance(result, Exception):
        assert_names_a_sample(result, len(batch))
        return
    assert result.shape == (len(batch), 3) and torch.isfinite(result).all()
    torch.testing.assert_close(result.sum(-1), torch.ones(len(batch)))


# -- the generic reader ----------------------------------------------------------------------------------------

DATA_FILE = re.compile(r"(train\.(csv|jsonl) line \d+|dataset\.json|generic train: /)")


@st.composite
def photo_cells(draw):
    """What a photo cell refers to: a good image file, a broken one, an absent one, or nothing."""
    broken = st.sampled_from(["corrupt", "empty", "absent"])
    kind = draw(rarely(st.sampled_from(["image", "image", "blank"]), broken, 12))
    return kind, draw(st.sampled_from(MODES)), draw(st.tuples(st.integers(1, 16), st.integers(1, 16)))


label_cells = rarely(
    st.sampled_from(["cat", "dog", "owl"]),
    st.one_of(
        st.sampled_from(["0", "1", "7", "-1", "", " ", "[0, 1]", "[0,", "cat|dog"]),
        st.integers(-2, 5), st.floats(allow_nan=False), st.booleans(), st.none(),
        st.lists(st.integers(0, 3), max_size=2),
    ),
    12,
)
text_cells = rarely(texts, st.none() | st.integers(), 10)


@st.composite
def tables(draw):
    rows = draw(st.lists(st.tuples(photo_cells(), text_cells, label_cells), min_size=1, max_size=6))
    fmt = draw(st.sampled_from(["csv", "jsonl"]))
    ids = draw(st.sampled_from(["unique", "repeated", "none"]))
    classes = draw(st.sampled_from([None, ["cat", "dog", "owl"], ["0", "1"]]))
    return rows, fmt, ids, classes


def write_table(root: Path, rows, fmt: str, ids: str) -> None:
    entries = []
    for number, ((kind, mode, size), text, label) in enumerate(rows):
        photo = f"media/{number}.tiff"  # TIFF holds every mode drawn, PNG no CMYK
        if kind == "image":
            Image.new(mode, size, 1).save(root / photo)
        elif kind in ("corrupt", "empty"):
            (root / photo).write_bytes(b"\x89PNG garbage" if kind == "corrupt" else b"")
        entry = {"photo": "" if kind == "blank" else photo, "caption": text, "label": label}
        if ids != "none":
            entry["id"] = f"row{number if ids == 'unique' else number % 2}"
        entries.append(entry)
    if fmt == "jsonl":
        (root / "train.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries), encoding="utf-8")
        return
    with open(root / "train.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, ["id", "photo", "caption", "label"], extrasaction="ignore")
        writer.writeheader()
        for entry in entries:
            cells = {k: json.dumps(v) if isinstance(v, list) else "" if v is None else v for k, v in entry.items()}
            writer.writerow(cells)


@SETTINGS
@given(table=tables(), skip=st.booleans())
def test_the_generic_reader_reads_or_names_the_file_and_row(table, skip):
    rows, fmt, ids, classes = table
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "media").mkdir()
        write_table(root, rows, fmt, ids)
        options = {"modalities": "photo:image,caption:text", "on_error": "skip" if skip else "raise"}
        if classes:
            options["classes"] = classes
        dataset, seconds = timed(lambda: get_dataset("generic", root, **options))
        assert seconds < SECONDS_PER_CALL
        if isinstance(dataset, Exception):
            assert isinstance(dataset, ValueError), f"{type(dataset).__name__}: {dataset}"
            assert DATA_FILE.search(str(dataset)), f"the error names no file or row: {dataset}"
            return
        assert 0 < len(dataset) <= len(rows) and len(dataset) + len(dataset.skipped) == len(rows)
        for index in range(len(dataset)):
            sample, _ = timed(lambda: dataset[index])
            if isinstance(sample, Exception):
                assert isinstance(sample, ValueError), f"{type(sample).__name__}: {sample}"
                assert re.search(r"train\.(csv|jsonl) line \d+ \(id '[^']*'\): cannot read image", str(sample))
                continue
            assert sample["photo"] is None or sample["photo"].mode == "RGB"
            assert sample["caption"] is None or isinstance(sample["caption"], str)
            indices = sample["label"] if dataset.multilabel else [sample["label"]]
            assert all(0 <= index < dataset.num_classes for index in indices)
