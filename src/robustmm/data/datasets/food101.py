"""UPMC Food-101 (Wang et al. 2015): food photos and the titles of the web pages they come from, 101 classes."""

from __future__ import annotations

import csv
from collections import Counter

from ..base import FRAME_SUFFIXES, DatasetError, allow_long_cells, existing, split_off_validation
from ..image_text import ImageTextDataset, Item
from ..registry import register_dataset

FOOD101_CLASSES = (
    "frozen_yogurt", "tacos", "gnocchi", "ramen", "sushi", "spaghetti_carbonara", "foie_gras", "club_sandwich",
    "chicken_curry", "caprese_salad", "guacamole", "fish_and_chips", "seaweed_salad", "samosa", "shrimp_and_grits",
    "prime_rib", "cheese_plate", "grilled_cheese_sandwich", "omelette", "macarons", "pancakes", "paella",
    "crab_cakes", "onion_rings", "poutine", "panna_cotta", "hamburger", "eggs_benedict", "pizza", "cup_cakes",
    "red_velvet_cake", "huevos_rancheros", "french_toast", "pad_thai", "beef_tartare", "beet_salad",
    "garlic_bread", "escargots", "cheesecake", "tuna_tartare", "french_fries", "pulled_pork_sandwich", "ravioli",
    "clam_chowder", "baby_back_ribs", "pork_chop", "chicken_quesadilla", "grilled_salmon", "dumplings",
    "fried_rice", "macaroni_and_cheese", "hot_and_sour_soup", "tiramisu", "lobster_roll_sandwich", "filet_mignon",
    "lobster_bisque", "risotto", "takoyaki", "waffles", "miso_soup", "scallops", "hummus", "french_onion_soup",
    "spaghetti_bolognese", "gyoza", "sashimi", "caesar_salad", "donuts", "pho", "creme_brulee", "edamame",
    "apple_pie", "carrot_cake", "croque_madame", "chocolate_cake", "mussels", "chocolate_mousse", "deviled_eggs",
    "ice_cream", "chicken_wings", "steak", "churros", "beignets", "breakfast_burrito", "spring_rolls", "lasagna",
    "cannoli", "nachos", "bruschetta", "hot_dog", "greek_salad", "beef_carpaccio", "falafel",
    "strawberry_shortcake", "bread_pudding", "ceviche", "peking_duck", "bibimbap", "oysters", "fried_calamari",
    "baklava",
)  # fmt: skip
"""The 101 classes in the order of MAP's `class_idx.json`, so that labels mean the same in MAP's Arrow files."""
SPLIT_KEYS = {"train": "train", "val": "val", "test": "test"}


@register_dataset("food101")
class Food101(ImageTextDataset):
    """UPMC Food-101 from the raw layout (MAP's DATA.md; the Kaggle copy) or from MAP's
    `food101_{train,val,test}.arrow` (`format`, see `ImageTextDataset`).

    The text is the page title of `texts/{train,test}_titles.csv` (rows `file,title,class`, no header; a header
    line is skipped). Classes follow `class_idx.json` when present, else MAP's order. The dataset has no
    validation split: MAP's `split.json` gives one when present (train/val/test = 61142/6846/22716, val taken
    from the training images), else `val_fraction` (default 0.1, MAP's share) of the training rows is held out
    deterministically. A row whose image file is absent has a really missing image (counted in `notes`).
    """

    layout = (
        "images/{train,test}/<class>/<file>.jpg + texts/{train,test}_titles.csv (file,title,class); optional "
        "class_idx.json, text.json, split.json (MAP); or food101_{train,val,test}.arrow"
    )
    class_names = FOOD101_CLASSES
    arrow_name = "food101"
    raw_markers = ("texts", "split.json")

    def __init__(self, root, split="train", *, val_fraction: float = 0.1, **options):
        self.val_fraction = val_fraction
        super().__init__(root, split, **options)

    def read_records(self):
        class_file = self.root / "class_idx.json"
        if class_file.is_file():
            order = self.read_json(class_file)
            if not all(isinstance(index, int) for index in order.values()):
                raise DatasetError(f"{self.where(class_file.name)}: expected class names mapped to int indices")
            self.class_names = tuple(sorted(order, key=order.get))
        yield from super().read_records()

    def titles(self, source: str) -> list[tuple[str, str, str, str]]:
        """(origin, file, title, class) for each row of `texts/<source>_titles.csv`."""
        path = self.root / "texts" / f"{source}_titles.csv"
        if not path.is_file():
            raise FileNotFoundError(f"{self.where(str(self.root))}: no texts/{path.name} (layout: {self.layout})")
        rows = []
        allow_long_cells()
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            try:
                for row in reader:
                    origin = f"texts/{path.name} line {reader.line_num}"
                    if reader.line_num == 1 and row and not row[0].lower().endswith(FRAME_SUFFIXES):
                        continue
                    if len(row) != 3:
                        self.reject(origin, f"expected 3 fields (file, title, class), got {len(row)}")
                        continue
                    rows.append((origin, *(cell.strip() if i != 1 else cell for i, cell in enumerate(row))))
            except csv.Error as error:  # a field over the csv module's size limit; the rest cannot be parsed
                raise DatasetError(f"{self.where(f'texts/{path.name} line {reader.line_num}')}: {error}") from error
        return rows

    def raw_items(self):
        split_file = self.root / "split.json"
        items = self._listed_items(split_file) if split_file.is_file() else self._title_items()
        absent = Counter()
        for item in items:
            absent[item.image is None] += 1
            yield item
        if absent[True]:
            self.notes.append(f"{absent[True]} of {sum(absent.values())} rows have no image file: image really missing")

    def _title_items(self):
        source = "test" if self.split == "test" else "train"
        items = [
            Item(file, label, existing(self.root / "images" / source / label / file), (title,), origin)
            for origin, file, title, label in self.titles(source)
        ]
        return items if source == "test" else split_off_validation(items, self.split, self.val_fraction)

    def _listed_items(self, split_file):
        """MAP's split.json (file names per split) with texts from text.json or the title files."""
        lists = self.read_json(split_file)
        key = SPLIT_KEYS[self.split]
        if not isinstance(lists.get(key), list):
            raise DatasetError(f"{self.where('split.json')}: no {key!r} list")
        text_file = self.root / "text.json"
        if text_file.is_file():
            texts = self.read_json(text_file)
        else:
            texts = {file: title for source in ("train", "test") for _, file, title, _ in self.titles(source)}
        source = "test" if self.split == "test" else "train"
        for position, file in enumerate(lists[key]):
            if not isinstance(file, str):
                self.reject(f"split.json {key}[{position}]", f"expected an image file name, got {file!r}")
                continue
            label = file[: file.rindex("_")] if "_" in file else ""
            image = existing(self.root / "images" / source / label / file)
            title = texts.get(file)
            yield Item(file, label, image, (title,) if title else (), f"split.json {key}[{position}]")
