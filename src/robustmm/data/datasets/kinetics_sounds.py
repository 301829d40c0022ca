"""Kinetics-Sounds (Arandjelovic & Zisserman 2017): the Kinetics-400 actions one can hear."""

from __future__ import annotations

from ..audio_visual import AudioVisualDataset, Clip
from ..base import classes_from_labels
from ..registry import register_dataset

LISTS = {"train": ("my_train.txt", "my_train_ks.txt"), "test": ("my_test.txt", "my_test_ks.txt")}
CLASS_FILES = ("stat.txt", "stat_ks.txt", "classes.txt")
PAPER_CLASSES = 31


@register_dataset("kinetics_sounds")
class KineticsSounds(AudioVisualDataset):
    """Kinetics-Sounds as OGM-GE or MLA lay it out (see `robustmm.data.audio_visual` for where sounds and frames
    are found).

    Clip lists `my_train.txt`/`my_test.txt` or MLA's `my_{train,test}_ks.txt`, one clip per line in one of the
    forms the two code bases use: `clip,10,<class index>` (the lists OGM-GE ships), `<class>,clip` (OGM-GE's
    AVDataset) or `clip.mp4 <class>` (MLA). Classes: the names in `stat.txt` (or stat_ks.txt, classes.txt; one
    per line), sorted as both code bases sort them; without such a file, the sorted labels of the training list
    ('0'..'N-1' for index labels). Papers use 31 to 34 classes; the CMPT paper uses 31 (14,739/2,594 clips), and a
    different count is reported in `notes`. 'val' is held out of the training list (`val_fraction`).
    """

    layout = (
        "my_{train,test}.txt (clip,10,index | class,clip | clip.mp4 class), optional stat.txt; sounds and frame "
        "folders as OGM-GE or MLA (audio/{train,test}_fbank/<clip>.npy, visual/<clip>/, {train,test}/<clip>/...)"
    )
    splits = ("train", "val", "test")

    def read_records(self):
        class_file = next((self.root / n for n in CLASS_FILES if (self.root / n).is_file()), None)
        if class_file is not None:
            names = [line.split(",")[0].strip() for line in class_file.read_text(encoding="utf-8").splitlines()]
            self.class_names = tuple(sorted(name for name in names if name))
        else:
            self.class_names = classes_from_labels(clip.label for clip in self._parsed("train", quiet=True))
        if len(self.class_names) != PAPER_CLASSES:
            self.notes.append(f"{len(self.class_names)} classes; the CMPT paper uses {PAPER_CLASSES}")
        return super().read_records()

    def clips(self, source):
        return self._parsed(source, quiet=False)

    def _parsed(self, source: str, quiet: bool):
        """The clips of a list; `quiet` leaves malformed lines to the split that reads them."""
        for origin, line in self.list_lines(self.list_file(LISTS[source])):
            fields = [field.strip() for field in line.split(",")]
            if ".mp4 " in line:
                name, label = (part.strip() for part in line.split(".mp4 ", 1))
            elif len(fields) == 3 and fields[2].isdigit():
                name, label = fields[0], fields[2]
            elif len(fields) == 2:
                label, name = fields
            else:
                if not quiet:
                    self.reject(origin, f"expected 'clip,10,index', 'class,clip' or 'clip.mp4 class', got {line!r}")
                continue
            yield Clip(name, name, label, origin)
