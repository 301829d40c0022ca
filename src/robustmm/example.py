"""`robustmm data example DIR`: a small dataset of one's own, as a user would have it, for the README's
walk-through (train, evaluate, report, predict) to run anywhere without a download.

The rows are the demo benchmark's (a coloured shape on stripes, one sentence; eight made-up classes) written as
plain files: `photos/<id>.png`, `{train,val,test}.csv` with the columns `id, photo, caption, label` (the class
name), some photo and some caption cells empty, and `new.csv`, unlabelled requests of which some lack a
modality. `encoders/image` and `encoders/text` link to the small pretrained encoders that come with robustmm
(the demo's ViT, all-MiniLM-L6-v2), so that training needs no download; with your own data, pass hub ids.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

from .atomic import atomic_write_text, check_output_folder

SIZES = {"train": 120, "val": 60, "test": 60}
NEW_ROWS = 12
COLUMNS = {"photo": "image", "caption": "text"}


def availability(row: int) -> tuple[bool, bool]:
    """(photo, caption) of a row: one row in five lacks its photo, another its caption, none both."""
    return row % 5 != 3, row % 5 != 4


def write_table(path: Path, header: list[str], rows: list[list]) -> None:
    buffer = io.StringIO()
    csv.writer(buffer).writerows([header, *rows])
    atomic_write_text(path, buffer.getvalue())


def link_encoders(folder: Path) -> None:
    """`folder/encoders/{image,text}`: links to the shipped encoders (copies where links are not allowed)."""
    from .data.demo_encoders import demo_encoder_paths

    paths = demo_encoder_paths()
    (folder / "encoders").mkdir(exist_ok=True)
    for kind in ("image", "text"):
        target = folder / "encoders" / kind
        if target.is_symlink() or target.exists():
            continue
        try:
            target.symlink_to(paths[kind], target_is_directory=True)
        except OSError:
            shutil.copytree(paths[kind], target)


def write_example(
    folder, sizes: dict[str, int] | None = None, new_rows: int = NEW_ROWS, seed: int = 0, overwrite: bool = False
) -> Path:
    """Write the example dataset into `folder` and return it. A folder that already holds files (a dataset of
    one's own: its tables and `dataset.json` would be replaced) is refused unless `overwrite`."""
    from .data.synthetic import SyntheticBenchmark, SyntheticConfig

    folder = Path(folder)
    check_output_folder(folder, overwrite, lambda _: False, "empty (its tables and dataset.json would be replaced)")
    (folder / "photos").mkdir(parents=True, exist_ok=True)
    benchmark = SyntheticBenchmark(SyntheticConfig(seed=seed), modalities=("image", "text"))
    names = list(benchmark.class_names)
    sizes = sizes or SIZES

    def rows_of(samples: list[dict], labelled: bool) -> list[list]:
        rows = []
        for number, sample in enumerate(samples):
            has_photo, has_caption = availability(number)
            photo = f"photos/{sample['id']}.png"
            if has_photo:
                sample["image"].save(folder / photo)
            row = [sample["id"], photo if has_photo else "", sample["text"] if has_caption else ""]
            rows.append(row + [names[sample["label"]]] if labelled else row)
        return rows

    for split, size in sizes.items():
        rows = rows_of(benchmark.sample(size, split), True)
        write_table(folder / f"{split}.csv", ["id", "photo", "caption", "label"], rows)
    requests = benchmark.sample(new_rows, "test", start=sizes.get("test", 0))
    for sample in requests:
        sample["id"] = sample["id"].replace("test", "new")
    write_table(folder / "new.csv", ["id", "photo", "caption"], rows_of(requests, False))
    atomic_write_text(folder / "dataset.json", json.dumps({"modalities": COLUMNS, "classes": names}, indent=2))
    link_encoders(folder)
    return folder


def main(args) -> None:
    folder = write_example(args.folder, overwrite=args.overwrite)
    counts = ", ".join(f"{split} {size}" for split, size in SIZES.items())
    print(f"wrote {folder}: {{train,val,test}}.csv ({counts} rows; some photo and caption cells empty), photos/, "
          f"new.csv ({NEW_ROWS} unlabelled rows), dataset.json and encoders/")
