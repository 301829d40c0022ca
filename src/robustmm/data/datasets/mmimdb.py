"""MM-IMDb (Arevalo et al. 2017): movie posters and plots, 23 genres, multi-label."""

from __future__ import annotations

from collections import Counter
from typing import Literal

import pyarrow as pa

from ...checks import checked_value, load_json
from ..base import DatasetError, Record, existing
from ..image_text import ImageTextDataset, Item
from ..registry import register_dataset

GENRES = (
    "Drama", "Comedy", "Romance", "Thriller", "Crime", "Action", "Adventure", "Horror", "Documentary", "Mystery",
    "Sci-Fi", "Fantasy", "Family", "Biography", "War", "History", "Music", "Animation", "Musical", "Western",
    "Sport", "Short", "Film-Noir",
)  # fmt: skip
"""The 23 genres in the order of MAP's `write_mmimdb.py` (its multi-hot label columns)."""
PlotMode = Literal["first", "join", "each"]
SPLIT_KEYS = {"train": ("train",), "val": ("dev", "val"), "test": ("test",)}


def plot_texts(plots, mode: PlotMode) -> list:
    """The texts one movie contributes: its first plot, all plots joined, or each plot as its own sample."""
    checked_value(mode, PlotMode, "plots")
    plots = [plots] if isinstance(plots, str) else [p for p in plots or [] if isinstance(p, str) and p.strip()]
    texts = {"first": plots[:1], "join": [" ".join(plots)] if plots else [], "each": plots}[mode]
    return texts or [None]


@register_dataset("mmimdb")
class MMIMDb(ImageTextDataset):
    """MM-IMDb from the raw layout (MAP's DATA.md, or the original archive's single `dataset/` folder) or from
    MAP's `mmimdb_{train,dev,test}.arrow` (`format`, see `ImageTextDataset`).

    `plots`: "first" (default: one sample per movie, the paper's 15552/2608/7799), "join" (all plots in one
    text) or "each" (one sample per plot, as MAP and MoRA evaluate; a movie's plots share its missing
    modalities). Genres outside the 23 (News, Adult, Reality-TV, Talk-Show in 27-genre lists) are ignored as in
    MAP and counted in `notes`. A movie without poster file has a really missing image. Reported with F1 macro
    (MAP's checkpoint metric) and micro.
    """

    layout = (
        "split.json (train/dev/test id lists); images/<id>.jpeg + labels/<id>.json (plot list, genres), or both "
        "in dataset/; or mmimdb_{train,dev,test}.arrow"
    )
    class_names = GENRES
    multilabel = True
    metrics = ("f1_macro", "f1_micro")
    arrow_name = "mmimdb"
    arrow_splits = {"train": "train", "val": "dev", "test": "test"}
    text_column = "plots"
    raw_markers = ("split.json",)
    arrow_label_types = {"label": pa.list_(pa.int64()), "genres": pa.list_(pa.string())}
    arrow_reader_options = {"plots": "each"}

    def __init__(self, root, split="train", *, plots: str = "first", **options):
        plot_texts([], plots)
        self.plots = plots
        super().__init__(root, split, **options)

    def raw_items(self):
        split_file = self.root / "split.json"
        if not split_file.is_file():
            raise FileNotFoundError(f"{self.where(str(self.root))}: no split.json (layout: {self.layout})")
        lists = self.read_json(split_file)
        key = next((k for k in SPLIT_KEYS[self.split] if isinstance(lists.get(k), list)), None)
        if key is None:
            raise DatasetError(f"{self.where('split.json')}: no {' or '.join(SPLIT_KEYS[self.split])} list")
        image_dir = existing(self.root / "images") or self.root / "dataset"
        label_dir = existing(self.root / "labels") or self.root / "dataset"
        ignored = Counter()
        for position, movie in enumerate(lists[key]):
            movie, origin = str(movie), f"split.json {key}[{position}]"
            label_file = label_dir / f"{movie}.json"
            try:
                meta = load_json(label_file.read_text())
            except (OSError, ValueError) as error:
                self.reject(origin, f"cannot read {label_file}: {error}", movie)
                continue
            if not isinstance(meta, dict):
                self.reject(origin, f"{label_file} holds a {type(meta).__name__}, not an object", movie)
                continue
            genres = meta.get("genres") or []
            genres = [str(genre) for genre in (genres if isinstance(genres, list) else [genres])]
            ignored.update(g for g in genres if g not in GENRES)
            plots = meta.get("plot")
            plots = [plots] if isinstance(plots, str) else plots if isinstance(plots, list) else []
            plots = [p for p in plots if isinstance(p, str) and p.strip()]
            image = existing(image_dir / f"{movie}.jpeg") or existing(image_dir / f"{movie}.jpg")
            yield Item(movie, [g for g in genres if g in GENRES], image, tuple(plots), origin)
        if ignored:
            listed = ", ".join(f"{genre} ({count})" for genre, count in ignored.most_common())
            self.notes.append(f"genres outside the 23 classes ignored, as in MAP: {listed}")

    def item_records(self, item: Item):
        for number, text in enumerate(plot_texts(list(item.texts), self.plots)):
            yield Record(
                id=f"{item.id}/{number}" if self.plots == "each" else item.id,
                label=item.label,
                sources={"image": item.image, "text": text},
                origin=item.origin,
                group=item.id if self.plots == "each" else None,
            )

    def label_from_arrow(self, value):
        """MAP's multi-hot row (23 values in `GENRES` order) as class indices."""
        if not isinstance(value, list) or len(value) != len(GENRES):
            raise DatasetError(f"label {value!r} is not a {len(GENRES)}-value multi-hot list")
        return [index for index, hot in enumerate(value) if hot]

    def label_to_arrow(self, label):
        return {"label": [int(i in label) for i in range(len(GENRES))], "genres": [GENRES[i] for i in label]}
