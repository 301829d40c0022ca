"""Every kind of bad input that README's "What happens with bad input" lists, one case each.

A case is an action on a `Context` (a 4-modality model, a model whose text encoder takes 64 tokens, a temporary
folder) with the exception type and message fragment it must raise, or `None` where the input is handled without
an error (the action then checks what was made of it). The README table lists the case ids; a test keeps the two
in step.
"""

import csv
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from layouts import write_food101_arrow, write_generic, write_image, write_mmimdb, write_wav
from PIL import Image

import robustmm
from robustmm.data import DatasetError, get_dataset
from robustmm.processing import Collator
from robustmm.tiny import save_tiny_encoder

README = Path(__file__).parents[1] / "README.md"
CASES = []
X = r"sample 0 \(id 'x'\): "
"""How errors about the one sample of `Context.sample` begin."""


def case(case_id: str, error: type[BaseException] | None, match: str = ""):
    """Register the decorated action as the case `case_id`: it must raise `error` with a message matching `match`
    (a regular expression), or, with `error=None`, run through and check the result itself."""

    def register(action):
        CASES.append(pytest.param(action, error, match, id=case_id))
        return action

    return register


def edit_row(path: Path, line: int, old: str, new: str) -> None:
    lines = path.read_text().splitlines(keepends=True)
    assert old in lines[line - 1]
    lines[line - 1] = lines[line - 1].replace(old, new)
    path.write_text("".join(lines))


class Context:
    def __init__(self, model, short_text, encoders, tmp: Path):
        self.model, self.short_text, self.encoders, self.tmp = model, short_text, encoders, tmp

    @staticmethod
    def sample(**values) -> dict:
        return {"id": "x", "text": "a red dog", "label": 0, **values}

    def collate(self, **values):
        return self.model.collate([self.sample(**values)])

    def predict(self, samples, model=None) -> torch.Tensor:
        """Probabilities that must be finite, one row of the model's classes per sample."""
        model = model or self.model
        probabilities = model.predict(samples)
        assert probabilities.shape == (len(samples), model.config.num_classes)
        assert torch.isfinite(probabilities).all()
        return probabilities

    def saved(self, name: str = "saved") -> Path:
        """A freshly saved copy of a small image+text model, to damage."""
        directory = self.tmp / name
        image_text = {"image": self.encoders["image"], "text": self.encoders["text"]}
        robustmm.build_model("cmpt", encoders=image_text, num_classes=3).save_pretrained(directory)
        return directory

    def edit_config(self, directory: Path, **changes) -> None:
        path = directory / "robustmm_config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))

    def generic(self, **options) -> Path:
        return write_generic(self.tmp / "generic", **options)


@pytest.fixture(scope="module")
def models(tiny_encoders, tmp_path_factory):
    short = save_tiny_encoder("text", tmp_path_factory.mktemp("short") / "text", max_position_embeddings=64)
    encoders = {
        "image": tiny_encoders["image"],
        "text": tiny_encoders["text"],
        "audio": tiny_encoders["audio"],
        "video": {"name_or_path": tiny_encoders["image"], "num_frames": 3},
    }
    model = robustmm.build_model("cmpt", encoders=encoders, num_classes=3)
    short_text = robustmm.build_model("cmpt", encoders={"text": short, "image": tiny_encoders["image"]}, num_classes=3)
    return model, short_text, short


@pytest.fixture
def context(models, tiny_encoders, tmp_path):
    model, short_text, short = models
    return Context(model, short_text, {**tiny_encoders, "short": short}, tmp_path)


# -- building and loading a model ------------------------------------------------------------------------------


@case("unknown-method", ValueError, "unknown method 'cmtp'; available: baseline, cmpt, dropout")
def _(c):
    robustmm.build_model("cmtp", encoders={"text": c.encoders["text"]}, num_classes=3)


@case("unknown-option", TypeError, "method 'cmpt' has no option align_wieght")
def _(c):
    robustmm.build_model("cmpt", encoders={"text": c.encoders["text"]}, num_classes=3, align_wieght=0.1)


@case("too-few-classes", ValueError, "num_classes=1: this task needs at least 2 classes")
def _(c):
    robustmm.build_model("cmpt", encoders={"text": c.encoders["text"]}, num_classes=1)


@case("encoder-path-missing", ValueError,
      r"modality 'image': no folder /\S+/nowhere, and '/\S+/nowhere' is not a hub id")
def _(c):
    robustmm.build_model("cmpt", encoders={"image": str(c.tmp / "nowhere"), "text": c.encoders["text"]}, num_classes=3)


@case("encoder-folder-not-a-model", ValueError, r"modality 'image': cannot load encoder '\S+/empty'.*config.json")
def _(c):
    (c.tmp / "empty").mkdir()
    robustmm.build_model("cmpt", encoders={"image": str(c.tmp / "empty"), "text": c.encoders["text"]}, num_classes=3)


@case("encoder-kind-unknown", ValueError, "modality 'caption': encoder kind must be one of text, image, audio, video, "
      "got 'smell'")
def _(c):
    encoders = {"caption": {"name_or_path": c.encoders["text"], "kind": "smell"}, "image": c.encoders["image"]}
    robustmm.build_model("cmpt", encoders=encoders, num_classes=3)


@case("encoder-widths-differ", ValueError, "additive fusion needs encoders of one hidden size")
def _(c):
    wide = save_tiny_encoder("text", c.tmp / "wide", hidden_size=64)
    robustmm.build_model("cmpt", encoders={"image": c.encoders["image"], "text": wide}, num_classes=3)


@case("max-length-over-model", ValueError, r"max_length 1000 is more than the 64 tokens it takes")
def _(c):
    text = {"name_or_path": c.encoders["short"], "max_length": 1000}
    robustmm.build_model("cmpt", encoders={"text": text, "image": c.encoders["image"]}, num_classes=3)


@case("saved-model-folder-empty", FileNotFoundError, "holds no robustmm_config.json; is it a directory written by")
def _(c):
    robustmm.load_model(c.tmp)


@case("saved-weights-missing", FileNotFoundError, "holds robustmm_config.json but no model.safetensors")
def _(c):
    directory = c.saved()
    (directory / "model.safetensors").unlink()
    robustmm.load_model(directory)


@case("saved-weights-truncated", ValueError, r"model.safetensors: damaged or incomplete safetensors file")
def _(c):
    weights = c.saved() / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    robustmm.load_model(weights.parent)


@case("saved-weights-wrong-shape", ValueError,
      r"model.safetensors: weights do not fit this model: head.weight has shape \[3, 32\], the model expects \[4, 32\]")
def _(c):
    directory = c.saved()
    c.edit_config(directory, num_classes=4)
    robustmm.load_model(directory)


@case("saved-weights-of-another-model", ValueError,
      r"model.safetensors: weights do not fit this model: missing \['encoders.image.\S+lora_magnitude_vector")
def _(c):
    directory = c.saved()
    config = json.loads((directory / "robustmm_config.json").read_text())
    c.edit_config(directory, adapter={**config["adapter"], "type": "dora"})
    robustmm.load_model(directory)


@case("saved-encoder-moved", ValueError,
      r"robustmm_config.json: cannot rebuild the model it records: modality 'text': no folder /\S+/moved, and")
def _(c):
    directory = c.saved()
    config = json.loads((directory / "robustmm_config.json").read_text())
    moved = {**config["encoders"]["text"], "name_or_path": str(c.tmp / "moved")}
    c.edit_config(directory, encoders={**config["encoders"], "text": moved})
    robustmm.load_model(directory)


@case("saved-config-damaged", ValueError, r"robustmm_config.json: damaged or not written by this version")
def _(c):
    directory = c.saved()
    (directory / "robustmm_config.json").write_text('{"method": "cmpt", "encod')
    robustmm.load_model(directory)


# -- samples -------------------------------------------------------------------------------------------------------


@case("predict-no-samples", None)
def _(c):
    assert c.predict([]).shape == (0, 3)


@case("predict-not-a-list", ValueError, "predict takes a list of samples \\(dicts\\), got a dict")
def _(c):
    c.model.predict(c.sample())


@case("sample-not-a-dict", ValueError, "sample 1: a sample is a dict of modality values, got a str")
def _(c):
    c.model.predict([c.sample(), "a red dog"])


@case("sample-without-modality", ValueError, r"sample 1 \(id 'e'\) has no modality at all: expected at least one of")
def _(c):
    c.model.predict([c.sample(), {"id": "e", "text": None, "image": None}])


@case("sample-named-across-batches", ValueError, r"sample 40 \(id 40\): text must be a str, got int")
def _(c):
    samples = [{"id": i, "text": "a dog"} for i in range(45)]
    samples[40]["text"] = 7
    c.model.predict(samples, batch_size=16)


@case("batch-size-zero", ValueError, "batch_size must be at least 1, got 0")
def _(c):
    c.model.predict([c.sample()], batch_size=0)


@case("label-missing-on-some", ValueError, r"sample 1 \(id 'y'\) has no label while others have one")
def _(c):
    c.model.collate([c.sample(), {"id": "y", "text": "a dog"}])


# -- text ----------------------------------------------------------------------------------------------------------


@case("text-not-a-string", ValueError, X + r"text must be a str, got int")
def _(c):
    c.collate(text=42)


@case("text-invalid-unicode", ValueError, X + r"text is not valid Unicode \(surrogates not allowed")
def _(c):
    c.collate(text="a \ud800 dog")


@case("text-longer-than-the-model", None)
def _(c):
    text = "dog " * 25_000
    assert c.short_text.collate([{"text": text}]).inputs["text"]["input_ids"].shape == (1, 64)
    c.predict([{"text": text}], model=c.short_text)


@case("text-empty", None)
def _(c):
    assert c.collate(text="").inputs["text"]["input_ids"].shape == (1, 2)  # [CLS] [SEP]
    c.predict([c.sample(text="")])


# -- images --------------------------------------------------------------------------------------------------------


@case("image-file-missing", ValueError, X + r"cannot read image file '\S+nowhere.png'")
def _(c):
    c.collate(image=str(c.tmp / "nowhere.png"))


@case("image-file-not-an-image", ValueError, X + r"cannot read image file .*cannot identify image file")
def _(c):
    (c.tmp / "photo.png").write_bytes(b"not an image")
    c.collate(image=c.tmp / "photo.png")


@case("image-file-empty", ValueError, X + r"cannot read image file .*cannot identify image file")
def _(c):
    (c.tmp / "photo.png").write_bytes(b"")
    c.collate(image=c.tmp / "photo.png")


@case("image-file-truncated", ValueError, X + r"cannot read image file .*photo.jpg")
def _(c):
    path = write_image(c.tmp / "photo.jpg", 0, size=64, fmt="JPEG")
    path.write_bytes(path.read_bytes()[:300])
    c.collate(image=path)


@case("image-of-wrong-type", ValueError, X + r"expected a PIL image, an image path or an HxW\(xC\) array, got int")
def _(c):
    c.collate(image=42)


@case("image-float-array", ValueError, X + r"a float pixel array is ambiguous \(0..1 or 0..255\?\)")
def _(c):
    c.collate(image=np.zeros((4, 4, 3)))


@case("image-array-of-wrong-shape", ValueError, X + r"cannot make an image of a uint8 array of shape \(4, 4, 5\)")
def _(c):
    c.collate(image=np.zeros((4, 4, 5), np.uint8))


@case("image-empty", ValueError, X + r"the image is empty \(0x0 pixels\)")
def _(c):
    c.collate(image=Image.new("RGB", (0, 0)))


@case("image-tiny-or-huge", None)
def _(c):
    c.predict([c.sample(image=Image.new("RGB", (1, 1), "red")), c.sample(image=Image.new("RGB", (4000, 3000), "red"))])


@case("image-any-mode", None)
def _(c):
    images = [Image.new(mode, (5, 3)) for mode in ("1", "L", "LA", "P", "RGB", "RGBA", "I;16", "I", "F", "CMYK")]
    c.predict([c.sample(image=image) for image in images])


@case("image-16-bit", None)
def _(c):
    pixels = np.full((8, 8), 40_000, np.uint16)  # 156 of 255 in 8 bits, not white as Pillow's own conversion
    processed = c.collate(image=Image.fromarray(pixels)).inputs["image"]["pixel_values"]
    expected = c.collate(image=Image.new("L", (8, 8), 40_000 >> 8)).inputs["image"]["pixel_values"]
    torch.testing.assert_close(processed, expected)


# -- audio ---------------------------------------------------------------------------------------------------------


@case("audio-nan", ValueError, X + r"audio waveform contains NaN or inf")
def _(c):
    c.collate(audio=np.array([0.1, np.nan, 0.2], np.float32))


@case("audio-empty", ValueError, X + r"audio is empty \(0 samples\); None marks a missing audio")
def _(c):
    c.collate(audio=np.zeros(0, np.float32))


@case("audio-not-numbers", ValueError, X + r"audio must be an array of numbers, got str")
def _(c):
    c.collate(audio="loud")


@case("audio-wrong-shape", ValueError,
      X + r"audio must be a 1-D waveform or a \[frames, 32\] fbank, got shape \(2, 3, 4\)")
def _(c):
    c.collate(audio=np.zeros((2, 3, 4), np.float32))


@case("audio-fbank-nan", ValueError, X + r"audio fbank contains NaN or inf")
def _(c):
    c.collate(audio=np.full((10, 32), np.inf, np.float32))


@case("audio-shorter-than-a-window", None)
def _(c):
    c.predict([c.sample(audio=np.full(10, 0.1, np.float32))])


@case("audio-longer-than-the-window", None)
def _(c):
    audio = c.model.collator.processors["audio"]
    waveform = np.random.default_rng(0).standard_normal(16_000 * 30).astype(np.float32)
    whole = audio.extractor(waveform, sampling_rate=16_000, return_tensors="pt")["input_values"]
    torch.testing.assert_close(audio([waveform], ["s"])["input_values"], whole)  # cut first: the same features
    c.predict([c.sample(audio=np.tile(waveform, 20))])  # ten minutes


# -- video ---------------------------------------------------------------------------------------------------------


@case("video-no-frames", ValueError, X + r"video must be a non-empty list of frames")
def _(c):
    c.collate(video=[])


@case("video-bad-frame", ValueError, X + r"expected a PIL image, an image path or an HxW\(xC\) array, got NoneType")
def _(c):
    c.collate(video=[Image.new("RGB", (8, 8)), None])


@case("video-fewer-frames-than-taken", None)
def _(c):
    assert c.collate(video=[Image.new("RGB", (8, 8))]).inputs["video"]["pixel_values"].shape[:2] == (1, 3)


@case("video-frames-of-different-sizes", None)
def _(c):
    c.predict([c.sample(video=[Image.new("RGB", (8, 8)), Image.new("L", (640, 480)), Image.new("RGBA", (1, 1))])])


# -- labels --------------------------------------------------------------------------------------------------------


@case("label-out-of-range", ValueError, X + r"label 7 is outside 0..2")
def _(c):
    c.collate(label=7)


@case("label-negative", ValueError, X + r"label -1 is outside 0..2")
def _(c):
    c.collate(label=-1)


@case("label-float", ValueError, X + r"label 1.0 is a float, not a class index in 0..2")
def _(c):
    c.collate(label=1.0)


@case("label-bool", ValueError, X + r"label True is a bool, not a class index in 0..2")
def _(c):
    c.collate(label=True)


@case("label-string", ValueError, X + r"label 'cat' is a str, not a class index in 0..2")
def _(c):
    c.collate(label="cat")


@case("label-numpy-or-tensor-int", None)
def _(c):
    assert c.model.collate([c.sample(label=np.int64(2)), c.sample(label=torch.tensor(1))]).labels.tolist() == [2, 1]


@case("multilabel-out-of-range", ValueError, X + r"label 5 is outside 0..3")
def _(c):
    Collator(c.model.collator.processors, num_classes=4, multilabel=True)([c.sample(label=[0, 5])])


@case("multilabel-not-indices", ValueError, X + r"label 1.5 is a float, not a class index in 0..3")
def _(c):
    Collator(c.model.collator.processors, num_classes=4, multilabel=True)([c.sample(label=[0, 1.5])])


# -- datasets ------------------------------------------------------------------------------------------------------


@case("dataset-root-missing", FileNotFoundError, r"generic: dataset root \S+nowhere is not a folder")
def _(c):
    get_dataset("generic", c.tmp / "nowhere")


@case("dataset-split-file-missing", FileNotFoundError, r"generic test: \S+: no split file \(looked for test.csv")
def _(c):
    root = c.generic()
    (root / "test.csv").unlink()
    get_dataset("generic", root, "test")


@case("dataset-unknown-kind", ValueError, "unknown modality kind\\(s\\) picture; use text, image, audio, video")
def _(c):
    get_dataset("generic", c.generic(), modalities="photo:picture")


@case("dataset-manifest-not-json", DatasetError, r"generic train: dataset.json: not valid JSON")
def _(c):
    root = c.generic()
    (root / "dataset.json").write_text("{modalities: photo}")
    get_dataset("generic", root)


@case("dataset-manifest-wrong-type", DatasetError,
      r"generic train: dataset.json: multilabel must be true or false, got 'yes'")
def _(c):
    root = c.generic()
    manifest = json.loads((root / "dataset.json").read_text())
    (root / "dataset.json").write_text(json.dumps({**manifest, "multilabel": "yes"}))
    get_dataset("generic", root)


@case("dataset-classes-not-a-list", DatasetError, r"generic train: \S+: classes must be a list of names, got 'cat,dog'")
def _(c):
    get_dataset("generic", c.generic(), classes="cat,dog")


@case("dataset-index-labels-too-many", DatasetError, r"the labels are indices up to 123456789012, too many for classes")
def _(c):
    root = c.generic(manifest=False, classes=("0", "1"))
    edit_row(root / "train.csv", 2, ",0", ",123456789012")
    get_dataset("generic", root, modalities="photo:image,caption:text")


@case("dataset-row-fields", DatasetError, r"train.csv line 2: has 5 fields, the header has 4")
def _(c):
    root = c.generic()
    edit_row(root / "train.csv", 2, ",cat", ",cat,extra")
    get_dataset("generic", root)


@case("dataset-row-not-json", DatasetError, r"train.jsonl line 3: not valid JSON")
def _(c):
    root = c.generic(fmt="jsonl")
    edit_row(root / "train.jsonl", 3, '{"id"', "{id")
    get_dataset("generic", root)


@case("dataset-file-missing", DatasetError,
      r"train.csv line 4 \(id 'train2'\): image file \S+train2.png does not exist")
def _(c):
    root = c.generic()
    (root / "media" / "photo" / "train2.png").unlink()
    get_dataset("generic", root)


@case("dataset-image-corrupt", DatasetError, r"train.csv line 3 \(id 'train1'\): cannot read image \S+train1.png")
def _(c):
    root = c.generic()
    (root / "media" / "photo" / "train1.png").write_bytes(b"not an image")
    get_dataset("generic", root)[1]


@case("dataset-wav-truncated", DatasetError, r"train.csv line 2 \(id 'train0'\): cannot read audio \S+train0.wav")
def _(c):
    root = c.generic(modalities={"voice": "audio"})
    path = write_wav(root / "media" / "voice" / "train0.wav", 0)
    path.write_bytes(path.read_bytes()[:30])
    get_dataset("generic", root)[0]


@case("dataset-label-unknown", DatasetError,
      r"train.csv line 3 \(id 'train1'\): label 'wolf' is not one of the 2 classes")
def _(c):
    root = c.generic()
    edit_row(root / "train.csv", 3, ",dog", ",wolf")
    get_dataset("generic", root)


@case("dataset-label-index-out-of-range", DatasetError,
      r"train.csv line 3 \(id 'train1'\): label index 7 is outside 0..1")
def _(c):
    root = c.generic()
    edit_row(root / "train.csv", 3, ",dog", ",7")
    get_dataset("generic", root)


@case("dataset-row-without-modality", DatasetError, r"train.csv line 5 \(id 'train3'\): has no modality")
def _(c):
    root = c.generic()
    edit_row(root / "train.csv", 5, 'media/photo/train3.png,"a dog, sample 3 of train"', ",")
    get_dataset("generic", root)


@case("dataset-split-empty", DatasetError, r"generic val: \S+: the split is empty")
def _(c):
    root = c.generic()
    (root / "val.csv").write_text("id,photo,caption,label\n")
    get_dataset("generic", root, "val")


@case("dataset-arrow-damaged", DatasetError, r"food101 test: food101_test.arrow: not a readable Arrow IPC file")
def _(c):
    root = write_food101_arrow(c.tmp / "food")
    (root / "food101_test.arrow").write_bytes(b"ARROW1 but not really")
    get_dataset("food101", root, "test")


@case("dataset-list-file-not-json", DatasetError, r"mmimdb train: split.json: not valid JSON")
def _(c):
    root = write_mmimdb(c.tmp / "mmimdb")
    (root / "split.json").write_text('{"train": [')
    get_dataset("mmimdb", root)


@case("dataset-label-file-not-an-object", DatasetError,
      r"mmimdb train: split.json train\[1\] \(id '00000001'\): \S+ holds a list, not an object")
def _(c):
    root = write_mmimdb(c.tmp / "mmimdb")
    (root / "labels" / "00000001.json").write_text("[]")
    get_dataset("mmimdb", root)


# -- option values: types and ranges, checked where every config is built -------------------------------------


def build(c, **options):
    settings = {"encoders": {"image": c.encoders["image"], "text": c.encoders["text"]}, "num_classes": 3, **options}
    return robustmm.build_model("cmpt", **settings)


@case("option-not-an-integer", ValueError, r"adapter rank must be an integer, got 'abc' \(str\)")
def _(c):
    build(c, rank="abc")


@case("option-fractional-integer", ValueError, r"adapter rank must be an integer, got 2.5 \(float\)")
def _(c):
    build(c, rank=2.5)


@case("num-classes-not-an-integer", ValueError, r"num_classes must be an integer, got 2.5 \(float\)")
def _(c):
    build(c, num_classes=2.5)


@case("option-not-finite", ValueError, "align_weight must be a finite number, got nan")
def _(c):
    build(c, align_weight=float("nan"))


@case("option-infinite", ValueError, "module_lr_scale must be a finite number, got inf")
def _(c):
    build(c, module_lr_scale=float("inf"))


@case("option-not-a-number", ValueError, r"align_weight must be a number, got '0.1' \(str\)")
def _(c):
    build(c, align_weight="0.1")


@case("option-flag-not-a-bool", ValueError, r"multilabel must be true or false, got 'yes' \(str\)")
def _(c):
    build(c, multilabel="yes")


@case("option-numpy-scalars", None)
def _(c):
    model = build(c, rank=np.int64(2), align_weight=np.float32(0.5))
    assert type(model.config.adapter.rank) is int and type(model.config.align_weight) is float


@case("plugin-option-wrong-type", ValueError, r"mwam_alpha must be a number, got 'x' \(str\)")
def _(c):
    build(c, mwam=True, mwam_alpha="x")


@case("encoder-option-wrong-type", ValueError, r"encoder max_length must be an integer, got 'long' \(str\)")
def _(c):
    text = {"name_or_path": c.encoders["text"], "max_length": "long"}
    build(c, encoders={"image": c.encoders["image"], "text": text})


@case("class-names-repeated", ValueError, "class_names must be distinct; repeated: 'cat'")
def _(c):
    build(c, class_names=["cat", "cat", "dog"])


@case("class-names-not-strings", ValueError, r"class_names\[0\] must be a string, got 0 \(int\)")
def _(c):
    build(c, class_names=[0, 1, 2])


@case("train-option-out-of-range", ValueError, "batch_size must be >= 1, got 0")
def _(c):
    robustmm.TrainConfig(batch_size=0)


@case("train-lr-not-finite", ValueError, "lr must be a finite number, got nan")
def _(c):
    robustmm.TrainConfig(lr=float("nan"))


@case("train-seed-negative", ValueError, r"seed must be in 0..2\*\*32-1, got -1")
def _(c):
    robustmm.TrainConfig(seed=-1)


@case("train-devices-not-a-count", ValueError, "devices must be a count >= 1, -1 \\(all\\), auto or indices")
def _(c):
    robustmm.TrainConfig(devices="abc")


@case("train-accelerator-unknown", ValueError, "accelerator must be one of auto, gpu, cpu, cuda, mps, tpu, got 'ban")
def _(c):
    robustmm.TrainConfig(accelerator="banana")


@case("config-yaml-aliases", ValueError, r"line 2: YAML aliases \(\*a\) are not supported in configs")
def _(c):
    from robustmm.config import load_config

    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]" for a, b in zip("abcdefgh", "bcdefghi")]
    (c.tmp / "bomb.yaml").write_text("\n".join(lines) + "\ndataset: {name: generic, root: x, options: {classes: *i}}\n")
    load_config(str(c.tmp / "bomb.yaml"))


@case("config-file-too-large", ValueError, r"bytes; a config holds at most 1048576")
def _(c):
    from robustmm.config import load_config

    (c.tmp / "big.yaml").write_text("# " + "x" * (1 << 20) + "\ndataset: {name: generic, root: x}\n")
    load_config(str(c.tmp / "big.yaml"))


@case("config-value-out-of-range", ValueError, "command line: train: batch_size must be >= 1, got 0")
def _(c):
    from robustmm.config import load_config

    load_config(None, [("dataset.name", "generic", "--dataset"), ("dataset.root", "x", "--root"),
                       ("train.batch_size", 0, "--batch-size")])


@case("protocol-option-wrong-type", ValueError, r"seed must be an integer, got 2.5 \(float\)")
def _(c):
    from robustmm.data import MissingProtocol

    MissingProtocol(train_missing_rate=0.5, seed=2.5)


@case("missing-table-cache-edited", None)
def _(c):
    from robustmm.data import MissingProtocol

    dataset, protocol, cache = get_dataset("generic", c.generic()), MissingProtocol(train_missing_rate=0.5), c.tmp / "t"
    expected = dataset.with_protocol(protocol).table.dropped
    dataset.with_protocol(protocol, cache_dir=cache)
    (table,) = cache.glob("missing-*.json")
    stored = json.loads(table.read_text())
    for damage in ({**stored, "selection": {"train0": "photo", "nobody": "caption"}},  # another sample, edited
                   {**stored, "selection": dict.fromkeys(stored["selection"], "smell")}):
        table.write_text(json.dumps(damage))
        np.testing.assert_array_equal(dataset.with_protocol(protocol, cache_dir=cache).table.dropped, expected)
    table.write_text("{damaged")
    np.testing.assert_array_equal(dataset.with_protocol(protocol, cache_dir=cache).table.dropped, expected)


@case("config-nested-too-deeply", ValueError, r"\S+deep.yaml: nested too deeply")
def _(c):
    from robustmm.config import load_config

    (c.tmp / "deep.yaml").write_text("dataset: " + "[" * 100_000)
    load_config(str(c.tmp / "deep.yaml"))


@case("dataset-row-nested-too-deeply", DatasetError, r"generic train: train.jsonl line 3: not valid JSON: nested too")
def _(c):
    root = c.generic(fmt="jsonl")
    edit_row(root / "train.jsonl", 3, '{"id"', '{"deep": ' + "[" * 100_000 + ', "id"')
    get_dataset("generic", root)


@case("config-evaluation-out-of-range", ValueError, r"evaluation: rates must be missing rates in \[0, 1\]")
def _(c):
    from robustmm.config import load_config

    load_config(None, [("dataset.name", "generic", "--dataset"), ("dataset.root", "x", "--root"),
                       ("evaluation.rates", [0.5, float("nan")], "--set")])


@case("predict-batch-size-not-an-integer", ValueError, r"batch_size must be at least 1, got 2.5")
def _(c):
    c.model.predict([c.sample()], batch_size=2.5)


# -- saved models whose config has fields of the wrong type ------------------------------------------------------


@case("saved-config-method-not-a-name", ValueError,
      r"robustmm_config.json: damaged or not written by this version of robustmm: expected a JSON object with a "
      r"'method' name")
def _(c):
    directory = c.saved()
    c.edit_config(directory, method=None)
    robustmm.load_model(directory)


@case("saved-config-field-of-wrong-type", ValueError,
      r"robustmm_config.json: damaged .*: encoders must be a mapping, got 'tiny-vit' \(str\)")
def _(c):
    directory = c.saved()
    c.edit_config(directory, encoders="tiny-vit")
    robustmm.load_model(directory)


# -- samples: keys that look like a misspelt modality -------------------------------------------------------------


@case("sample-key-misspelt", ValueError,
      X + r"'imgae' is not a modality of this model \(image, text, audio, video\); did you mean 'image'\?")
def _(c):
    c.collate(imgae=Image.new("RGB", (8, 8)))


@case("sample-key-a-kind", ValueError, r"sample 0: 'image' is not a modality of this model \(photo, caption\); "
      r"did you mean 'photo'\?")
def _(c):
    model = robustmm.build_model("cmpt", encoders={"photo": c.encoders["image"], "caption": c.encoders["text"]},
                                 num_classes=3)
    model.collate([{"image": Image.new("RGB", (8, 8)), "caption": "a dog"}])


# -- media files: only regular files, of bounded size and pixels ---------------------------------------------------


def png_header(path: Path, width: int, height: int) -> Path:
    """A valid PNG of a few hundred bytes that declares `width` x `height` one-bit pixels (all zero)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = zlib.compress(b"\x00" * (1 + (width + 7) // 8) * height, 9)
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", rows) + chunk(b"IEND", b""))
    return path


@case("image-file-a-fifo", ValueError, X + r"cannot read image file '\S+photo.png': \S+photo.png is a named pipe "
      r"\(FIFO\), not a regular file")
def _(c):
    os.mkfifo(c.tmp / "photo.png")
    c.collate(image=c.tmp / "photo.png")


@case("image-path-a-folder", ValueError, X + r"cannot read image file '\S+photo.png': \S+ is a folder, not a regular")
def _(c):
    (c.tmp / "photo.png").mkdir()
    c.collate(image=c.tmp / "photo.png")


@case("image-link-loop", ValueError, X + r"cannot read image file '\S+a.png': \[Errno 40\] Too many levels of symbolic")
def _(c):
    (c.tmp / "a.png").symlink_to(c.tmp / "b.png")
    (c.tmp / "b.png").symlink_to(c.tmp / "a.png")
    c.collate(image=c.tmp / "a.png")


@case("image-file-too-large", ValueError, X + r"cannot read image file .*holds 1,073,741,825 bytes, more than the "
      r"1,073,741,824 a media file may")
def _(c):
    with open(c.tmp / "photo.png", "wb") as handle:
        handle.truncate((1 << 30) + 1)  # sparse: no disk used
    c.collate(image=c.tmp / "photo.png")


@case("image-too-many-pixels", ValueError,
      X + r"cannot read image file .*12000x12000 pixels, more than max_pixels \(64,000,000\)")
def _(c):
    path = png_header(c.tmp / "photo.png", 12000, 12000)
    assert path.stat().st_size < 20_000
    c.collate(image=path)


@case("image-max-pixels-option", None)
def _(c):
    path = write_image(c.tmp / "photo.png", 0, size=32)
    small = {"name_or_path": c.encoders["image"], "max_pixels": 1000}
    model = build(c, encoders={"image": small, "text": c.encoders["text"]})
    with pytest.raises(ValueError, match=r"32x32 pixels, more than max_pixels \(1,000\)"):
        model.collate([{"image": path}])
    assert robustmm.load_model(c.saved()).collate([{"image": path}]).present["image"].all()  # the default


@case("dataset-media-not-a-regular-file", DatasetError,
      r"train.csv line 3 \(id 'train1'\): image file \S+train1.png is a named pipe \(FIFO\), not a regular file")
def _(c):
    root = c.generic()
    (root / "media" / "photo" / "train1.png").unlink()
    os.mkfifo(root / "media" / "photo" / "train1.png")
    get_dataset("generic", root)


@case("dataset-media-link-loop", DatasetError,
      r"train.csv line 3 \(id 'train1'\): image file \S+train1.png does not exist \(a link that leads nowhere, or in")
def _(c):
    root = c.generic()
    photo = root / "media" / "photo" / "train1.png"
    photo.unlink()
    photo.symlink_to(photo)
    get_dataset("generic", root)


@case("dataset-image-over-max-pixels", DatasetError,
      r"train.csv line 2 \(id 'train0'\): cannot read image \S+train0.png: 8x8 pixels, more than max_pixels \(10\)")
def _(c):
    get_dataset("generic", c.generic(), max_pixels=10)[0]


@case("dataset-audio-a-fifo", DatasetError, r"cannot read audio \S+train0.wav: \S+ is a named pipe \(FIFO\)")
def _(c):
    root = c.generic(modalities={"sound": "audio", "caption": "text"})
    dataset = get_dataset("generic", root)
    (root / "media" / "sound" / "train0.wav").unlink()
    os.mkfifo(root / "media" / "sound" / "train0.wav")  # swapped after the check at construction
    dataset[0]


# -- tables: long cells, repeated classes --------------------------------------------------------------------------


@case("dataset-text-cell-over-128k", None)
def _(c):
    root = c.generic()
    edit_row(root / "train.csv", 2, "a cat, sample 0", "a cat " + "x" * 200_000)
    assert len(get_dataset("generic", root)[0]["caption"]) > 200_000


@case("dataset-cell-over-the-limit", DatasetError, r"generic train: train.csv line 2: field larger than field limit")
def _(c):
    root = c.generic()
    edit_row(root / "train.csv", 2, "a cat, sample 0", "x" * ((1 << 24) + 1))
    get_dataset("generic", root)


@case("dataset-classes-repeated", DatasetError, r"generic train: \S+: the class list repeats a name")
def _(c):
    get_dataset("generic", c.generic(), classes=["cat", "dog", "cat"])


# -- calibration files: temperatures checked when read ------------------------------------------------------------


def calibration_file(c, patterns: dict) -> Path:
    path = c.tmp / "calibration.json"
    path.write_text(json.dumps({"patterns": {name: {"temperature": t} for name, t in patterns.items()}}))
    return path


@case("calibration-temperature-negative", ValueError,
      r"calibration.json: not a calibration file .*pattern 'image\+text': temperature -1 is not a number in "
      r"\[0.05, 20.0\]")
def _(c):
    from robustmm.predict import predict_file

    (c.tmp / "in.csv").write_text("id,text\nr0,a dog\n")
    calibration = calibration_file(c, {"image+text": -1, "text": 1.0})
    predict_file(c.saved(), c.tmp / "in.csv", c.tmp / "out.csv", calibration=calibration, log=lambda m: None)


@case("calibration-temperature-zero", ValueError, r"pattern 'text': temperature 0 is not a number in \[0.05, 20.0\]")
def _(c):
    from robustmm.calibration import read_temperatures

    read_temperatures(calibration_file(c, {"text": 0}))


@case("calibration-temperature-not-finite", ValueError, r"pattern 'text': temperature nan is not a number in")
def _(c):
    from robustmm.calibration import read_temperatures

    read_temperatures(calibration_file(c, {"text": float("nan")}))


@case("calibration-pattern-unknown", ValueError,
      r"pattern 'image\+txt' is not an availability pattern of image, text \(those are image, image\+text, text\)")
def _(c):
    from robustmm.calibration import read_temperatures

    read_temperatures(calibration_file(c, {"image+txt": 1.5}), ["image", "text"])


# -- predict: outputs that are inputs, files that are not a user's, hostile rows -------------------------------


def predict(c, rows: str, out: str = "out.csv", **options):
    from robustmm.predict import predict_file

    (c.tmp / "in.csv").write_text(rows)
    return predict_file(c.saved(), c.tmp / "in.csv", c.tmp / out, log=lambda m: None, **options)


@case("predict-out-is-the-input", ValueError, r"--out \S+in.csv is also an input of this command \(\S+in.csv\)")
def _(c):
    predict(c, "id,text\nr0,a dog\n", out="in.csv")


@case("predict-out-a-link-to-the-input", ValueError, r"--out \S+link.csv is also an input of this command")
def _(c):
    (c.tmp / "link.csv").symlink_to(c.tmp / "in.csv")
    predict(c, "id,text\nr0,a dog\n", out="link.csv")


@case("predict-out-inside-the-model", ValueError, r"--out \S+saved/p.csv is also an input of this command \(\S+saved\)")
def _(c):
    predict(c, "id,text\nr0,a dog\n", out="saved/p.csv")


@case("predict-out-a-users-file", FileExistsError,
      r"\S+notes.csv exists and is not a predictions file; pass --overwrite \(overwrite=True\) to replace it")
def _(c):
    (c.tmp / "notes.csv").write_text("my,own\nnotes,here\n")
    try:
        predict(c, "id,text\nr0,a dog\n", out="notes.csv")
    finally:
        assert (c.tmp / "notes.csv").read_text() == "my,own\nnotes,here\n"


@case("predict-out-earlier-predictions", None)
def _(c):
    predict(c, "id,text\nr0,a dog\n")
    predict(c, "id,text\nr0,a cat\nr1,a dog\n")  # a predictions file is replaced without --overwrite
    assert len((c.tmp / "out.csv").read_text().splitlines()) == 3
    (c.tmp / "out.csv").write_text("mine\n")
    predict(c, "id,text\nr0,a cat\n", overwrite=True)
    assert (c.tmp / "out.csv").read_text().startswith("line,id,modalities,prediction,")


@case("predict-column-misspelt", ValueError,
      r"in.csv: column\(s\) 'imgae' \(did you mean 'image'\?\) are not modalities of the model \(image, text\)")
def _(c):
    predict(c, "id,imgae,text\nr0,photo.png,a dog\n")


@case("predict-id-a-formula", None)
def _(c):
    predict(c, 'id,text\n"=HYPERLINK(""http://x"",""y"")",a dog\n-5,a cat\n@SUM(1),a cat\n')
    ids = [row[1] for row in csv.reader(open(c.tmp / "out.csv"))][1:]
    assert ids == ["'=HYPERLINK(\"http://x\",\"y\")", "-5", "'@SUM(1)"]
    predict(c, "id,text\n=1+1,a dog\n", out="out.jsonl")
    assert json.loads((c.tmp / "out.jsonl").read_text())["id"] == "=1+1"  # JSONL keeps values as they are


@case("predict-input-a-fifo", ValueError, r"\S+rows.csv is a named pipe \(FIFO\), not a regular file")
def _(c):
    from robustmm.predict import predict_file

    os.mkfifo(c.tmp / "rows.csv")
    predict_file(c.saved(), c.tmp / "rows.csv", c.tmp / "out.csv", log=lambda m: None)


@case("predict-media-a-fifo", None)
def _(c):
    os.mkfifo(c.tmp / "photo.png")
    summary = predict(c, "id,image,text\nr0,photo.png,a dog\nr1,,a cat\n")
    assert summary["bad"] == 1 and summary["predicted"] == 1
    row = next(csv.DictReader(open(c.tmp / "out.csv")))
    assert "is a named pipe (FIFO), not a regular file" in row["error"]


@case("predict-text-cell-over-128k", None)
def _(c):
    summary = predict(c, f"id,text\nr0,{'dog ' * 50_000}\n")
    assert summary["predicted"] == 1


# -- commands: example over a dataset, empty lists -----------------------------------------------------------------


@case("example-over-existing-files", FileExistsError, r"\S+mine already holds files and is not empty \(its tables "
      r"and dataset.json would be replaced\); choose a new folder, or pass --overwrite")
def _(c):
    root = c.generic()
    root.rename(c.tmp / "mine")
    before = (c.tmp / "mine" / "train.csv").read_text()
    try:
        robustmm.write_example(c.tmp / "mine")
    finally:
        assert (c.tmp / "mine" / "train.csv").read_text() == before


def run_command(*argv):
    from robustmm.cli import build_parser

    args = build_parser().parse_args(list(argv))
    args.func(args)


@case("demo-out-a-users-folder", FileExistsError,
      r"\S+mine already holds files and is not an earlier demo's output; choose a new folder, or pass --overwrite")
def _(c):
    (c.tmp / "mine").mkdir()
    (c.tmp / "mine" / "accuracy.png").write_bytes(b"my own figure")
    run_command("demo", "--quick", "--out", str(c.tmp / "mine"))


@case("report-out-a-users-folder", FileExistsError, r"\S+mine already holds files and is not an earlier report")
def _(c):
    (c.tmp / "mine").mkdir()
    (c.tmp / "mine" / "report.md").write_text("my own notes")
    run_command("report", str(c.tmp / "run"), "--out", str(c.tmp / "mine"))


@case("report-out-inside-a-run", ValueError, r"--out \S+run/model/report is also an input of this command")
def _(c):
    (c.tmp / "run" / "model").mkdir(parents=True)
    run_command("report", str(c.tmp / "run"), "--out", str(c.tmp / "run" / "model" / "report"))


@case("report-attention-ids-empty", ValueError, r"--attention-ids ',' names nothing")
def _(c):
    run_command("report", str(c.tmp / "run"), "--out", str(c.tmp / "report"), "--attention-ids", ",")


@case("evaluate-out-a-file-of-the-run", ValueError, r"--out \S+run/config.yaml is also an input of this command")
def _(c):
    (c.tmp / "run").mkdir()
    (c.tmp / "run" / "config.yaml").write_text("dataset: {name: generic, root: x}\n")
    run_command("evaluate", str(c.tmp / "run"), "--out", str(c.tmp / "run" / "config.yaml"))


@case("evaluate-out-a-users-file", FileExistsError, r"\S+notes.json exists and is not an evaluation report; pass "
      r"--overwrite")
def _(c):
    (c.tmp / "notes.json").write_text('{"mine": true}')
    run_command("evaluate", str(c.tmp / "run"), "--out", str(c.tmp / "notes.json"))


@case("demo-methods-empty", ValueError, r"--methods '' names nothing; leave --methods out for the default")
def _(c):
    run_command("demo", "--methods", "")


@case("evaluate-scenarios-empty", ValueError, r"--scenarios ' ' names nothing")
def _(c):
    run_command("evaluate", str(c.tmp), "--scenarios", " ")


@pytest.mark.parametrize("action, error, match", CASES)
def test_bad_input(context, action, error, match):
    if error is None:
        action(context)
        return
    with pytest.raises(error, match=match):
        action(context)


def test_roberta_like_models_take_their_positions_minus_those_before_the_first_token(tmp_path):
    from transformers import BertConfig, RobertaConfig

    from robustmm.processing import model_positions

    RobertaConfig(max_position_embeddings=66, pad_token_id=1).save_pretrained(tmp_path / "roberta")
    BertConfig(max_position_embeddings=66, pad_token_id=0).save_pretrained(tmp_path / "bert")
    assert model_positions(str(tmp_path / "roberta")) == 64 and model_positions(str(tmp_path / "bert")) == 66


def test_the_readme_table_lists_exactly_these_cases():
    section = README.read_text().split("## What happens with bad input\n", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"^\| `([a-z0-9-]+)` \|", section, re.MULTILINE)
    assert listed == [case.id for case in CASES]
