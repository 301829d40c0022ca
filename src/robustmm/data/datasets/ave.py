"""AVE, the Audio-Visual Event dataset (Tian et al. 2018): 10-second YouTube videos of 28 sound events."""

from __future__ import annotations

from typing import Literal

from ...checks import checked_value
from ..audio_visual import AudioVisualDataset, Clip
from ..registry import register_dataset

LISTS = {"train": "trainSet.txt", "val": "valSet.txt", "test": "testSet.txt"}
Duplicates = Literal["keep", "drop"]


@register_dataset("ave")
class AVE(AudioVisualDataset):
    """AVE from its release's lists (`trainSet.txt`, `valSet.txt`, `testSet.txt`, lines
    `Category&VideoID&Quality&StartTime&EndTime`), with sounds and frames as OGM-GE or MLA lay them out (see
    `robustmm.data.audio_visual`; `{source}` is train, val or test).

    The lists hold 4143 annotations of 4097 videos: some videos carry two events. `duplicates="keep"` (default)
    makes each annotation a sample, which gives the paper's 3339/402/402 (the later annotations of a video get
    ids `<video>#2`, ...; all of them lose the same modalities under a protocol). `duplicates="drop"` leaves out
    videos annotated more than once, as OGM-GE does. Classes: the sorted categories of `Annotations.txt`, or of
    the three lists when it is absent (28).
    """

    layout = (
        "trainSet.txt/valSet.txt/testSet.txt (Category&VideoID&Quality&Start&End); sounds and frame folders per video"
    )
    splits = ("train", "val", "test")
    lists_validation = True

    def __init__(self, root, split="train", *, duplicates: Duplicates = "keep", **options):
        self.duplicates = checked_value(duplicates, Duplicates, "duplicates")
        super().__init__(root, split, **options)

    def annotations(self, name: str):
        """(origin, category, video) per annotation line; the header line of Annotations.txt is skipped."""
        for origin, line in self.list_lines(self.list_file([name])):
            fields = line.split("&")
            if fields[0] == "Category":
                continue
            if len(fields) != 5:
                yield origin, None, line
                continue
            yield origin, fields[0].strip(), fields[1].strip()

    def read_records(self):
        sources = ["Annotations.txt"] if (self.root / "Annotations.txt").is_file() else list(LISTS.values())
        categories = {c for name in sources for _, c, _ in self.annotations(name) if c is not None}
        self.class_names = tuple(sorted(categories))
        return super().read_records()

    def clips(self, source):
        entries = []
        for origin, category, video in self.annotations(LISTS[source]):
            if category is None:
                self.reject(origin, f"expected 'Category&VideoID&Quality&StartTime&EndTime', got {video!r}")
                continue
            entries.append((origin, category, video))
        counts: dict[str, int] = {}
        for _, _, video in entries:
            counts[video] = counts.get(video, 0) + 1
        seen: dict[str, int] = {}
        for origin, category, video in entries:
            if counts[video] > 1 and self.duplicates == "drop":
                continue
            seen[video] = seen.get(video, 0) + 1
            sample_id = video if seen[video] == 1 else f"{video}#{seen[video]}"
            yield Clip(sample_id, video, category, origin, video if counts[video] > 1 else None)
        dropped = sum(1 for c in counts.values() if c > 1)
        if dropped:
            verb = "kept, one sample per annotation" if self.duplicates == "keep" else "left out"
            self.notes.append(f"videos annotated more than once: {dropped} ({verb})")
