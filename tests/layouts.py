"""Small copies of each dataset layout, written exactly as users download them (a few samples each).

Every writer takes a root folder, writes the layout there and returns the root. Images, sounds and frames
depend on the class, so that a model can learn from them: the colour of an image and of the frames follows the
class, the pitch of a sound too, and a text names its class.
"""

from __future__ import annotations

import csv
import io
import json
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image
from scipy.io import wavfile

SAMPLE_RATE = 16_000
PALETTE = [(220, 40, 40), (40, 160, 60), (40, 80, 220), (230, 200, 40), (160, 60, 200), (40, 200, 200)]


def color(index: int) -> tuple[int, int, int]:
    return PALETTE[index % len(PALETTE)]


def write_image(path: Path, index: int, size: int = 8, fmt: str | None = None) -> Path:
    """A small image of the class colour with a little noise, so that no two files are identical."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(zlib.crc32(path.name.encode()))
    pixels = np.clip(np.array(color(index)) + rng.integers(-10, 10, (size, size, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, format=fmt)
    return path


def image_bytes(index: int, fmt: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    pixels = np.full((8, 8, 3), color(index), np.uint8)
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def write_wav(path: Path, index: int, seconds: float = 0.25, rate: int = SAMPLE_RATE) -> Path:
    """A 16-bit sine whose pitch follows the class."""
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    wavfile.write(path, rate, (0.3 * np.sin(2 * np.pi * (220 + 110 * index) * t) * 32767).astype(np.int16))
    return path


def write_fbank(path: Path, index: int, frames: int = 1024, bins: int = 128) -> Path:
    """A precomputed `[frames, bins]` log-mel array as MLA's `extract_fbank.py` stores it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fbank = np.full((frames, bins), -10.0, np.float32)
    fbank[:, (8 * index) % bins] = 2.0
    np.save(path, fbank)
    return path


def write_frames(folder: Path, index: int, count: int = 4, name: str = "frame_{:05d}.jpg") -> Path:
    for number in range(1, count + 1):
        write_image(folder / name.format(number), index)
    return folder


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def write_csv(path: Path, rows: list[list], header: list | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        if header:
            writer.writerow(header)
        writer.writerows(rows)
    return path


def write_arrow(path: Path, columns: dict[str, list]) -> Path:
    """An Arrow IPC file as MAP's `make_arrow.py` writes it (`pa.RecordBatchFileWriter`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table(columns)
    with pa.OSFile(str(path), "wb") as sink, pa.RecordBatchFileWriter(sink, table.schema) as writer:
        writer.write_table(table)
    return path


# -- generic ---------------------------------------------------------------------------------------------------


def write_generic(
    root,
    modalities: dict[str, str] | None = None,
    classes=("cat", "dog"),
    sizes: dict[str, int] | None = None,
    fmt: str = "csv",
    multilabel: bool = False,
    manifest: bool = True,
    missing: dict[str, int] | None = None,
) -> Path:
    """`root/{split}.csv` (or `.jsonl`) with one column per modality, `label` and `id`, plus `dataset.json`.

    `modalities` defaults to {"photo": "image", "caption": "text"}; any number of text, image, audio (wav) and
    video (frame folder) columns works. `missing` blanks a modality's cell in every n-th row (row % n == n - 1);
    where that would blank every modality of a row, the first modality keeps its cell. Multi-label rows carry
    their class and the next one ('|'-joined in CSV, a list in JSONL). Without `manifest`, pass the modalities
    to the reader.
    """
    root = Path(root)
    modalities = modalities or {"photo": "image", "caption": "text"}
    sizes = sizes or {"train": 8, "val": 4, "test": 4}
    missing = missing or {}
    for split, size in sizes.items():
        rows = []
        for row in range(size):
            index = row % len(classes)
            sample_id = f"{split}{row}"
            names = [classes[index], classes[(index + 1) % len(classes)]] if multilabel else classes[index]
            label = names if fmt == "jsonl" or not multilabel else "|".join(names)
            entry = {"id": sample_id, "label": label}
            blanked = {m for m, every in missing.items() if row % every == every - 1}
            if blanked >= set(modalities):
                blanked.discard(next(iter(modalities)))
            for name, kind in modalities.items():
                if name in blanked:
                    entry[name] = "" if fmt == "csv" else None
                elif kind == "text":
                    entry[name] = f"a {classes[index]}, sample {row} of {split}"
                elif kind == "image":
                    write_image(root / "media" / name / f"{sample_id}.png", index)
                    entry[name] = f"media/{name}/{sample_id}.png"
                elif kind == "audio":
                    write_wav(root / "media" / name / f"{sample_id}.wav", index)
                    entry[name] = f"media/{name}/{sample_id}.wav"
                else:
                    write_frames(root / "media" / name / sample_id, index, count=3)
                    entry[name] = f"media/{name}/{sample_id}"
            rows.append(entry)
        if fmt == "csv":
            header = ["id", *modalities, "label"]
            write_csv(root / f"{split}.csv", [[entry[c] for c in header] for entry in rows], header)
        else:
            write_jsonl(root / f"{split}.jsonl", rows)
    if manifest:
        (root / "dataset.json").write_text(
            json.dumps({"modalities": modalities, "classes": list(classes), "multilabel": multilabel})
        )
    return root


# -- MM-IMDb ---------------------------------------------------------------------------------------------------

MMIMDB_GENRES = ("Drama", "Comedy", "Horror", "Sci-Fi")


def mmimdb_movies(sizes: dict[str, int]) -> dict[str, list[dict]]:
    """Movies per split key of split.json: id, genres (one outside the 23 on the first movie), plots."""
    movies, number = {}, 0
    for key, size in sizes.items():
        movies[key] = []
        for _ in range(size):
            genres = [MMIMDB_GENRES[number % 4], MMIMDB_GENRES[(number + 1) % 4]]
            if number == 0:
                genres.append("News")
            plots = [f"a {g.lower()} story number {number}" for g in genres[:2]][: 1 + number % 2]
            movies[key].append({"id": f"{number:08d}", "genres": genres, "plot": plots, "index": number % 4})
            number += 1
    return movies


def write_mmimdb(root, sizes: dict[str, int] | None = None, archive: bool = False, no_poster=()) -> Path:
    """MAP's layout (images/<id>.jpeg, labels/<id>.json, split.json with train/dev/test), or with `archive`
    the original archive's single `dataset/` folder. Movies in `no_poster` (ids) have no image file."""
    root = Path(root)
    sizes = sizes or {"train": 4, "dev": 2, "test": 2}
    movies = mmimdb_movies(sizes)
    for key, entries in movies.items():
        for movie in entries:
            image_dir, label_dir = ("dataset", "dataset") if archive else ("images", "labels")
            if movie["id"] not in no_poster:
                write_image(root / image_dir / f"{movie['id']}.jpeg", movie["index"], fmt="JPEG")
            (root / label_dir).mkdir(parents=True, exist_ok=True)
            (root / label_dir / f"{movie['id']}.json").write_text(
                json.dumps({"genres": movie["genres"], "plot": movie["plot"], "title": f"Movie {movie['id']}"})
            )
    (root / "split.json").write_text(json.dumps({key: [m["id"] for m in v] for key, v in movies.items()}))
    return root


def write_mmimdb_arrow(root, sizes: dict[str, int] | None = None) -> Path:
    """MAP's `mmimdb_{train,dev,test}.arrow`: image bytes, plots, 23-way multi-hot label, genres, image_id,
    split (the columns of `vilt/utils/write_mmimdb.py`)."""
    from robustmm.data.datasets.mmimdb import GENRES

    root = Path(root)
    for key, entries in mmimdb_movies(sizes or {"train": 4, "dev": 2, "test": 2}).items():
        write_arrow(
            root / f"mmimdb_{key}.arrow",
            {
                "image": [image_bytes(m["index"]) for m in entries],
                "plots": [m["plot"] for m in entries],
                "label": [[int(g in m["genres"]) for g in GENRES] for m in entries],
                "genres": [m["genres"] for m in entries],
                "image_id": [m["id"] for m in entries],
                "split": [key] * len(entries),
            },
        )
    return root


# -- UPMC Food-101 ---------------------------------------------------------------------------------------------

FOOD_CLASSES = ("apple_pie", "sushi", "tacos")


def write_food101(root, per_class: dict[str, int] | None = None, map_files: bool = False, header: bool = False) -> Path:
    """images/{train,test}/<class>/<class>_<n>.jpg and texts/{train,test}_titles.csv (rows file,title,class,
    no header, as on Kaggle; `header` adds one). `map_files` adds MAP's class_idx.json, text.json and a
    split.json whose val list takes every third training image."""
    from robustmm.data.datasets.food101 import FOOD101_CLASSES

    root = Path(root)
    per_class = per_class or {"train": 4, "test": 2}
    lists, texts = {"train": [], "val": [], "test": []}, {}
    for source, count in per_class.items():
        rows = []
        for index, name in enumerate(FOOD_CLASSES):
            for number in range(count):
                file = f"{name}_{number}.jpg"
                write_image(root / "images" / source / name / file, index, fmt="JPEG")
                title = f"Best {name.replace('_', ' ')} recipe, number {number}"
                rows.append([file, title, name])
                texts[file] = title
                target = source if source == "test" else ("val" if number % 3 == 2 else "train")
                lists[target].append(file)
        write_csv(root / "texts" / f"{source}_titles.csv", rows, ["image_path", "text", "food"] if header else None)
    if map_files:
        (root / "class_idx.json").write_text(json.dumps({name: i for i, name in enumerate(FOOD101_CLASSES)}))
        (root / "text.json").write_text(json.dumps(texts))
        (root / "split.json").write_text(json.dumps(lists))
    return root


def write_food101_arrow(root) -> Path:
    """MAP's `food101_{train,val,test}.arrow` (columns of `vilt/utils/write_food101.py`)."""
    from robustmm.data.datasets.food101 import FOOD101_CLASSES

    root = Path(root)
    for split, count in (("train", 3), ("val", 1), ("test", 2)):
        files = [(i, name, f"{name}_{split}{n}.jpg") for i, name in enumerate(FOOD_CLASSES) for n in range(count)]
        write_arrow(
            root / f"food101_{split}.arrow",
            {
                "image": [image_bytes(i) for i, _, _ in files],
                "text": [[f"Best {name} recipe"] for _, name, _ in files],
                "label": [FOOD101_CLASSES.index(name) for _, name, _ in files],
                "image_id": [file for _, _, file in files],
                "split": [split] * len(files),
            },
        )
    return root


# -- Hateful Memes ---------------------------------------------------------------------------------------------


def meme_rows(split: str, size: int, start: int) -> list[dict]:
    return [
        {"id": start + n, "img": f"img/{start + n:05d}.png", "label": n % 2, "text": f"meme {start + n} text"}
        for n in range(size)
    ]


def write_hateful_memes(root, sizes: dict[str, int] | None = None, test: str = "seen", archive: bool = False) -> Path:
    """img/<id>.png + train.jsonl, dev.jsonl and the test file: `test` "seen" writes the labelled
    test_seen.jsonl (Phase 2 release), "renamed" the same rows as test.jsonl (MAP's layout), "unlabelled" the
    original competition test.jsonl without labels. `archive` puts everything under data/ as the archive does."""
    root = Path(root)
    folder = root / "data" if archive else root
    sizes = sizes or {"train": 6, "dev": 4, "test": 4}
    start = 10_000
    for split, size in sizes.items():
        rows = meme_rows(split, size, start)
        start += 1000
        for row in rows:
            write_image(folder / row["img"], row["label"])
        if split == "test":
            name = {"seen": "test_seen.jsonl", "renamed": "test.jsonl", "unlabelled": "test.jsonl"}[test]
            if test == "unlabelled":
                rows = [{k: v for k, v in row.items() if k != "label"} for row in rows]
            write_jsonl(folder / name, rows)
        else:
            write_jsonl(folder / f"{split}.jsonl", rows)
    return root


def write_hateful_memes_arrow(root) -> Path:
    """MAP's `hatememes_{train,dev,test}.arrow`: image, text, label, split, and no id column."""
    root = Path(root)
    for split, size in (("train", 4), ("dev", 2), ("test", 2)):
        write_arrow(
            root / f"hatememes_{split}.arrow",
            {
                "image": [image_bytes(n % 2, "PNG") for n in range(size)],
                "text": [[f"{split} meme {n}"] for n in range(size)],
                "label": [n % 2 for n in range(size)],
                "split": [split] * size,
            },
        )
    return root


# -- audio-visual ----------------------------------------------------------------------------------------------

CREMA_CODES = ("NEU", "HAP", "SAD", "FEA", "DIS", "ANG")
CREMA_NAMES = {"NEU": "Neutral", "HAP": "Happy", "SAD": "Sad", "FEA": "Fear", "DIS": "Disgust", "ANG": "Anger"}


def crema_clips(split: str, count: int) -> list[tuple[str, str]]:
    start = 1001 if split == "train" else 1080
    return [(f"{start + n}_IEO_{CREMA_CODES[n % 6]}_XX", CREMA_CODES[n % 6]) for n in range(count)]


def write_crema_d(root, sizes: dict[str, int] | None = None, style: str = "ogm") -> Path:
    """`style` "ogm": OGM-GE's train.csv/test.csv (clip,EMO), the release's AudioWAV/<clip>.wav and frames
    extracted to Image-01-FPS/<clip>/ (OGM-GE's data/CREMAD/video_preprocessing.py names them 00000.jpg...).
    "mla": MLA's my_{train,test}_cre.txt (clip.flv Emotion), audio/{split}_fbank/<clip>.npy and
    visual/{split}_imgs/Image-01-FPS/<clip>/."""
    root = Path(root)
    for split, count in (sizes or {"train": 12, "test": 6}).items():
        clips = crema_clips(split, count)
        for clip, code in clips:
            index = CREMA_CODES.index(code)
            if style == "ogm":
                write_wav(root / "AudioWAV" / f"{clip}.wav", index)
                write_frames(root / "Image-01-FPS" / clip, index, count=3, name="{:05d}.jpg")
            else:
                write_fbank(root / "audio" / f"{split}_fbank" / f"{clip}.npy", index)
                write_frames(root / "visual" / f"{split}_imgs" / "Image-01-FPS" / clip, index, count=3)
        if style == "ogm":
            write_csv(root / f"{split}.csv", [[clip, code] for clip, code in clips])
        else:
            (root / f"my_{split}_cre.txt").write_text("".join(f"{c}.flv {CREMA_NAMES[e]}\n" for c, e in clips))
    return root


KS_CLASSES = ("playing drums", "playing guitar", "singing")


def write_kinetics_sounds(root, sizes: dict[str, int] | None = None, style: str = "ogm") -> Path:
    """`style` "ogm": the lists OGM-GE ships (my_{train,test}.txt, lines `clip,10,<index>`) with stat.txt, and
    OGM-GE's VGG&KS tree ({split}/<clip>/ holding the frames and <clip>.wav). "mla": my_{split}_ks.txt
    (`clip.mp4 <class>`), no class file, audio/{split}_fbank/<clip>.npy and visual/{split}_imgs/Image-01-FPS/."""
    root = Path(root)
    for split, count in (sizes or {"train": 9, "test": 3}).items():
        clips = [(f"yt{split}{n:03d}_000010_000020", n % 3) for n in range(count)]
        for clip, index in clips:
            if style == "ogm":
                write_frames(root / split / clip, index, count=5)
                write_wav(root / split / clip / f"{clip}.wav", index)
            else:
                write_fbank(root / "audio" / f"{split}_fbank" / f"{clip}.npy", index)
                write_frames(root / "visual" / f"{split}_imgs" / "Image-01-FPS" / clip, index, count=5)
        if style == "ogm":
            (root / f"my_{split}.txt").write_text("".join(f"{clip},10,{index}\n" for clip, index in clips))
        else:
            (root / f"my_{split}_ks.txt").write_text("".join(f"{c}.mp4 {KS_CLASSES[i]}\n" for c, i in clips))
    if style == "ogm":
        (root / "stat.txt").write_text("".join(f"{name}\n" for name in KS_CLASSES))
    return root


AVE_CATEGORIES = ("Church bell", "Dog", "Frying (food)")


def write_ave(root, sizes: dict[str, int] | None = None) -> Path:
    """The AVE release's Annotations.txt (with header) and {train,val,test}Set.txt, with OGM-GE's pre-processed
    sounds (audio/<video>.wav) and frames (visual/<video>/frame_00001.jpg...). The first training video is
    annotated twice, with two categories, as some AVE videos are."""
    root = Path(root)
    lines_all = []
    for split, count in (sizes or {"train": 6, "val": 3, "test": 3}).items():
        videos = [(f"{split[:2]}Vid{n:04d}x", AVE_CATEGORIES[n % 3]) for n in range(count)]
        lines = [f"{category}&{video}&good&0&10" for video, category in videos]
        if split == "train":
            lines.append(f"{AVE_CATEGORIES[1]}&{videos[0][0]}&good&2&6")
        for video, category in videos:
            write_wav(root / "audio" / f"{video}.wav", AVE_CATEGORIES.index(category))
            write_frames(root / "visual" / video, AVE_CATEGORIES.index(category), count=10)
        (root / f"{split}Set.txt").write_text("".join(f"{line}\n" for line in lines))
        lines_all += lines
    header = "Category&VideoID&Quality&StartTime&EndTime\n"
    (root / "Annotations.txt").write_text(header + "".join(f"{line}\n" for line in lines_all))
    return root


def train_command(data, encoders: dict, epochs: int):
    """`robustmm train` on an image+text generic layout (`write_generic`) with tiny encoders: the argv of a run
    into `out`."""

    def arguments(out, *extra):
        return [
            "train", "--dataset", "generic", "--root", str(data),
            "--image-encoder", encoders["image"], "--text-encoder", encoders["text"],
            "--epochs", str(epochs), "--set", "train.warmup_epochs=1", "--batch-size", "4", "--lr", "1e-2",
            "--missing-rate", "0.5", "--out", str(out), "--no-progress", *extra,
        ]  # fmt: skip

    return arguments
