"""What CREMA-D, Kinetics-Sounds and AVE share: a list of clips per split, one sound and one folder of 1-fps
frames per clip, laid out as the OGM-GE and MLA code bases expect them.

A clip's sound is looked for in these places, the first found wins (`{source}` is the split whose list the clip
comes from, train or test, or val for AVE):

- `audio/{source}_fbank/<clip>.npy`: a `[frames, 128]` log-mel fbank (MLA's `data/extract_fbank.py`, and what
  `robustmm data prepare` writes from the wav files),
- `audio/{source}/<clip>.wav` (MLA, before fbank extraction), `audio/<clip>.wav` (OGM-GE's
  `pre-processing/AVE&CREMAD`), `AudioWAV/<clip>.wav` (the CREMA-D release), `{source}/<clip>/<clip>.wav`
  (OGM-GE's `pre-processing/VGG&KS`);

and its frames in `visual/{source}_imgs/Image-01-FPS/<clip>/` (MLA), `visual/<clip>/` (OGM-GE's AVDataset),
`Image-01-FPS/<clip>/` (OGM-GE's CREMA-D loader) or `{source}/<clip>/` (OGM-GE's VGG&KS). Frames are taken in
natural file-name order, `num_frames` of them, random in training and uniformly spaced otherwise (OGM-GE's
CREMA-D loader draws random indices and then ignores them; this does not).

A clip with a sound but no frames (or the reverse) has a really missing modality. A listed clip with neither is
left out and counted in `notes`, as OGM-GE and MLA skip clips they cannot find: published lists name YouTube
videos that many copies lack.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Iterable, Literal, NamedTuple

from ..checks import checked_value

from .base import MultimodalDataset, Record, split_off_validation

AudioSource = Literal["auto", "fbank", "wav"]
FBANK_FILE = "audio/{source}_fbank/{id}.npy"
WAV_FILES = ("audio/{source}/{id}.wav", "audio/{id}.wav", "AudioWAV/{id}.wav", "{source}/{id}/{id}.wav")
FRAME_FOLDERS = ("visual/{source}_imgs/Image-01-FPS/{id}", "visual/{id}", "Image-01-FPS/{id}", "{source}/{id}")


class Clip(NamedTuple):
    """One line of a clip list: the sample id, the clip's file name stem, its label and where it was read.
    Samples sharing a `group` (AVE annotations of one video) lose the same modalities and stay in one split."""

    id: str
    name: str
    label: Any
    origin: str
    group: str | None = None


class AudioVisualDataset(MultimodalDataset):
    """Base of the audio-visual readers.

    Options: `audio` ("auto": a precomputed fbank when there is one, else the wav; "fbank" or "wav" to insist)
    and, for datasets that list no validation clips, `val_fraction` of the training list held out as 'val'
    (default 0.1; the checkpoint is chosen on it, never on test).
    """

    modalities = {"audio": "audio", "video": "video"}
    lists_validation: ClassVar[bool] = False
    """Whether the dataset lists its own validation clips."""

    def __init__(self, root, split="train", *, audio: AudioSource = "auto", val_fraction: float = 0.1, **options):
        self.audio = checked_value(audio, AudioSource, "audio")
        self.val_fraction = val_fraction
        super().__init__(root, split, **options)

    def clips(self, source: str) -> Iterable[Clip]:
        """The clips listed for `source`; call `self.reject(origin, reason)` on bad lines."""
        raise NotImplementedError

    @property
    def source_split(self) -> str:
        """The list the current split's clips come from."""
        return self.split if self.split == "test" or self.lists_validation else "train"

    def _candidates(self, templates: Iterable[str], source: str) -> list[str]:
        """The templates whose folder up to the clip name exists, so that each clip costs few lookups."""
        kept = []
        for template in templates:
            fixed = template.split("{id}")[0].format(source=source)
            if (self.root / fixed).is_dir():
                kept.append(template)
        return kept

    def read_records(self):
        source = self.source_split
        audio_templates = {"auto": (FBANK_FILE, *WAV_FILES), "fbank": (FBANK_FILE,), "wav": WAV_FILES}[self.audio]
        audio_templates = self._candidates(audio_templates, source)
        frame_templates = self._candidates(FRAME_FOLDERS, source)
        records, absent = [], 0
        for clip in self.clips(source):
            audio = self._first(audio_templates, source, clip.name, Path.is_file)
            video = self._first(frame_templates, source, clip.name, Path.is_dir)
            if audio is None and video is None:
                absent += 1
                continue
            records.append(Record(clip.id, clip.label, {"audio": audio, "video": video}, clip.origin, clip.group))
        if absent:
            self.notes.append(f"{absent} listed clips have neither sound nor frames here: left out")
        if source == "train" and not self.lists_validation:
            records = split_off_validation(records, self.split, self.val_fraction)
        return records

    def _first(self, templates, source, clip, exists) -> Path | None:
        for template in templates:
            path = self.root / template.format(source=source, id=clip)
            if exists(path):
                return path
        return None

    def list_file(self, names: Iterable[str]) -> Path:
        names = list(names)
        for name in names:
            if (self.root / name).is_file():
                return self.root / name
        raise FileNotFoundError(f"{self.where(str(self.root))}: no {' or '.join(names)} (layout: {self.layout})")

    def list_lines(self, path: Path) -> Iterable[tuple[str, str]]:
        """(origin, line) for each non-blank line."""
        with open(path, encoding="utf-8-sig") as handle:
            for number, line in enumerate(handle, 1):
                if line.strip():
                    yield f"{path.name} line {number}", line.strip()
