"""Hateful Memes (Kiela et al. 2020): meme images and their overlaid text, hateful or not."""

from __future__ import annotations

from pathlib import Path

from ..base import DatasetError
from ..image_text import ImageTextDataset, Item
from ..registry import register_dataset

SPLIT_FILES = {
    "train": ("train.jsonl",),
    "val": ("dev.jsonl", "dev_seen.jsonl"),
    "test": ("test_seen.jsonl", "test.jsonl"),
    "test_unseen": ("test_unseen.jsonl",),
}
"""The first file found is read. 'test' is the labelled test_seen set: MAP's layout has it renamed test.jsonl."""


@register_dataset("hateful_memes")
class HatefulMemes(ImageTextDataset):
    """Hateful Memes from the raw layout (`img/` + JSONL files, also inside the archive's `data/` folder) or
    from MAP's `hatememes_{train,dev,test}.arrow` (`format`, see `ImageTextDataset`).

    Splits: train, val (dev.jsonl, or dev_seen.jsonl of the Phase 2 release), test (test_seen.jsonl, or
    test.jsonl as MAP renames it) and test_unseen. The original test.jsonl carries no labels and is refused
    with a message naming test_seen.jsonl. Reported with AUROC (the protocol's metric) and accuracy. MAP's Arrow
    files store no meme id, so their samples are numbered by row (files written by `robustmm data prepare` add
    an `image_id` column).
    """

    layout = (
        "img/<id>.png + train.jsonl, dev.jsonl, test_seen.jsonl (id, img, label, text), or in data/; "
        "or hatememes_<split>.arrow"
    )
    splits = ("train", "val", "test", "test_unseen")
    class_names = ("not hateful", "hateful")
    metrics = ("auroc", "accuracy")
    arrow_name = "hatememes"
    arrow_splits = {"train": "train", "val": "dev", "test": "test", "test_unseen": "test_unseen"}
    raw_markers = tuple(name for names in SPLIT_FILES.values() for name in names) + ("data",)

    def base_folder(self) -> Path:
        """`root`, or `root/data` where the archive keeps the JSONL files and `img/`."""
        if not any((self.root / name).is_file() for names in SPLIT_FILES.values() for name in names):
            if (self.root / "data").is_dir():
                return self.root / "data"
        return self.root

    def raw_items(self):
        folder = self.base_folder()
        path = next((folder / name for name in SPLIT_FILES[self.split] if (folder / name).is_file()), None)
        if path is None:
            raise FileNotFoundError(
                f"{self.where(str(folder))}: no {' or '.join(SPLIT_FILES[self.split])} (layout: {self.layout})"
            )
        rows = list(self.table_rows(path))
        if rows and self.split.startswith("test") and all("label" not in row for _, row in rows):
            raise DatasetError(
                f"{self.where(path.name)}: no labels. The original test.jsonl is the unlabelled competition set; "
                "put the labelled test_seen.jsonl (Phase 2 release, or Kaggle) in its place, as MAP and the papers do"
            )
        for origin, row in rows:
            image, text = row.get("img"), row.get("text")
            sample_id = str(row.get("id") or Path(str(image or "")).stem)
            if "label" not in row:
                self.reject(origin, "has no label", sample_id)
                continue
            yield Item(
                sample_id,
                row["label"],
                folder / image if isinstance(image, str) and image.strip() else None,
                (text,) if isinstance(text, str) else (),
                origin,
            )
