"""CREMA-D (Cao et al. 2014): actors' faces and voices, six emotions."""

from __future__ import annotations

from ..audio_visual import AudioVisualDataset, Clip
from ..registry import register_dataset

EMOTIONS = ("NEU", "HAP", "SAD", "FEA", "DIS", "ANG")
"""OGM-GE's class indices (`CramedDataset.class_dict`)."""
EMOTION_NAMES = {"Neutral": "NEU", "Happy": "HAP", "Sad": "SAD", "Fear": "FEA", "Disgust": "DIS", "Anger": "ANG"}
"""MLA's list files spell the emotions out."""
LISTS = {"train": ("train.csv", "my_train_cre.txt"), "test": ("test.csv", "my_test_cre.txt")}


@register_dataset("crema_d")
class CremaD(AudioVisualDataset):
    """CREMA-D as OGM-GE or MLA lay it out (see `robustmm.data.audio_visual` for where sounds and frames are
    found): the clip lists are OGM-GE's `train.csv`/`test.csv` (rows `clip,EMO`, 6698/744 clips, shipped in
    OGM-GE's `data/CREMAD/`) or MLA's `my_train_cre.txt`/`my_test_cre.txt` (lines `clip.flv Emotion`), copied
    into `root`. Classes are OGM-GE's codes in its order. 'val' is held out of the training list (`val_fraction`);
    note that OGM-GE's train and test lists share speakers.
    """

    layout = (
        "train.csv/test.csv (clip,EMO) or my_{train,test}_cre.txt; AudioWAV/<clip>.wav or audio/{train,test}_fbank/"
        "<clip>.npy; Image-01-FPS/<clip>/ or visual/{train,test}_imgs/Image-01-FPS/<clip>/"
    )
    splits = ("train", "val", "test")
    class_names = EMOTIONS

    def clips(self, source):
        for origin, line in self.list_lines(self.list_file(LISTS[source])):
            if ".flv " in line:
                name, label = line.split(".flv ", 1)
            elif line.count(",") == 1:
                name, label = line.split(",")
            else:
                self.reject(origin, f"expected 'clip,EMO' (OGM-GE) or 'clip.flv Emotion' (MLA), got {line!r}")
                continue
            name, label = name.strip(), label.strip()
            yield Clip(name, name, EMOTION_NAMES.get(label, label), origin)
