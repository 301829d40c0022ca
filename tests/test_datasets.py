"""Every reader on a small copy of its layout, the MAP Arrow round trip, and bad input."""

import json
import re
import shutil

import numpy as np
import pytest
from layouts import (
    AVE_CATEGORIES,
    CREMA_CODES,
    KS_CLASSES,
    color,
    write_ave,
    write_crema_d,
    write_food101,
    write_food101_arrow,
    write_generic,
    write_hateful_memes,
    write_hateful_memes_arrow,
    write_image,
    write_kinetics_sounds,
    write_mmimdb,
    write_mmimdb_arrow,
)
from PIL import Image

from robustmm.data import DatasetError, MissingProtocol, get_dataset, list_datasets
from robustmm.data.datasets.food101 import FOOD101_CLASSES
from robustmm.data.datasets.mmimdb import GENRES


def samples(dataset) -> list[dict]:
    """Every sample with images as pixel arrays, so that two readers' outputs compare with ==."""
    out = []
    for index in range(len(dataset)):
        sample = dataset[index]
        out.append({k: np.asarray(v).tolist() if isinstance(v, Image.Image) else v for k, v in sample.items()})
    return out


def edit_row(path, line: int, old: str, new: str):
    """Replace `old` by `new` in line `line` (1-based) of a text file."""
    lines = path.read_text().splitlines(keepends=True)
    assert old in lines[line - 1]
    lines[line - 1] = lines[line - 1].replace(old, new)
    path.write_text("".join(lines))


def test_every_reader_is_registered_with_its_metrics():
    assert list_datasets() == [
        "ave", "crema_d", "food101", "generic", "hateful_memes", "kinetics_sounds", "mmimdb", "synthetic",
    ]
    from robustmm.data import get_dataset_class

    metrics = {name: get_dataset_class(name).metrics for name in list_datasets()}
    assert metrics["hateful_memes"] == ("auroc", "accuracy")
    assert metrics["mmimdb"] == ("f1_macro", "f1_micro")
    assert metrics["food101"] == metrics["crema_d"] == metrics["ave"] == ("accuracy",)


# -- generic ---------------------------------------------------------------------------------------------------

ALL_KINDS = {"photo": "image", "caption": "text", "voice": "audio", "clip": "video"}


def test_generic_reads_any_set_of_modalities(tmp_path):
    root = write_generic(tmp_path, modalities=ALL_KINDS, classes=("cat", "dog", "owl"))
    train = get_dataset("generic", root, "train")
    assert (len(train), train.class_names, train.multilabel) == (8, ("cat", "dog", "owl"), False)
    assert train.metrics == ("accuracy",)
    assert list(train.modalities) == list(ALL_KINDS)
    sample = train[4]
    assert sample["id"] == "train4" and sample["label"] == 1
    assert sample["caption"] == "a dog, sample 4 of train"
    assert sample["photo"].mode == "RGB" and sample["photo"].getpixel((0, 0))[1] > 120
    assert sample["voice"].dtype == np.float32 and sample["voice"].shape == (4000,)
    assert len(sample["clip"]) == 3 and all(isinstance(frame, Image.Image) for frame in sample["clip"])
    assert len(get_dataset("generic", root, "dev")) == 4


def test_generic_jsonl_multilabel_without_manifest(tmp_path):
    root = write_generic(tmp_path, fmt="jsonl", multilabel=True, manifest=False, classes=("a", "b", "c"))
    with pytest.raises(DatasetError, match="say which columns are modalities"):
        get_dataset("generic", root)
    dataset = get_dataset("generic", root, "test", modalities="photo:image,caption:text")
    assert dataset.multilabel and dataset.metrics == ("f1_macro", "f1_micro")
    assert dataset.class_names == ("a", "b", "c")
    assert [dataset[i]["label"] for i in range(3)] == [[0, 1], [1, 2], [0, 2]]


def test_generic_class_list_sources(tmp_path):
    root = write_generic(tmp_path / "names", manifest=False, classes=("zebra", "ant"))
    assert get_dataset("generic", root, "val", modalities="photo:image,caption:text").class_names == ("ant", "zebra")
    (root / "classes.txt").write_text("zebra\nant\n")
    dataset = get_dataset("generic", root, "val", modalities="photo:image,caption:text")
    assert dataset.class_names == ("zebra", "ant") and dataset[1]["label"] == 1
    indexed = write_generic(tmp_path / "indices", manifest=False, classes=("0", "2"))
    assert get_dataset("generic", indexed, modalities={"photo": "image"}).class_names == ("0", "1", "2")


def test_generic_empty_cell_is_really_missing(tmp_path):
    root = write_generic(tmp_path, missing={"photo": 2, "caption": 4})
    dataset = get_dataset("generic", root, "train")
    real = dataset.present_table()
    assert real[:, 0].tolist() == [True, False, True, True, True, False, True, True]
    assert real[:, 1].tolist() == [True, True, True, False] * 2
    assert dataset[1]["photo"] is None and dataset[1]["caption"] is not None
    assert dataset[3]["caption"] is None
    view = dataset.with_protocol(MissingProtocol.uniform(1.0, "caption"))
    summary = view.summary()
    assert summary["real_missing"] == {"photo": 2, "caption": 2}
    assert (summary["kept_last"], summary["already_missing"]) == (2, 2)
    assert summary["patterns"] == {
        "photo": {"samples": 6, "real": 2, "simulated": 4},
        "caption": {"samples": 2, "real": 2, "simulated": 0},
    }
    assert [view[i]["caption"] is None for i in range(8)] == [True, False, True, True, True, False, True, True]


def test_generic_layout_problems_are_named(tmp_path):
    root = write_generic(tmp_path)
    (root / "train.jsonl").write_text("")
    with pytest.raises(DatasetError, match="train.csv and train.jsonl"):
        get_dataset("generic", root)
    (root / "train.jsonl").unlink()
    (root / "test.csv").unlink()
    with pytest.raises(FileNotFoundError, match="test.csv"):
        get_dataset("generic", root, "test")
    with pytest.raises(ValueError, match="unknown modality kind"):
        get_dataset("generic", root, modalities="photo:picture")
    (root / "train.csv").write_text((root / "train.csv").read_text().replace(",caption,", ",text,"))
    with pytest.raises(DatasetError, match="no column 'caption'"):
        get_dataset("generic", root)


def test_generic_manifest_metrics_and_absolute_paths(tmp_path):
    root = write_generic(tmp_path, sizes={"train": 4})
    manifest = json.loads((root / "dataset.json").read_text())
    (root / "dataset.json").write_text(json.dumps({**manifest, "metrics": ["auroc", "accuracy"]}))
    absolute = str(root / "media" / "photo" / "train0.png")
    edit_row(root / "train.csv", 2, "media/photo/train0.png", absolute)
    dataset = get_dataset("generic", root)
    assert dataset.metrics == ("auroc", "accuracy") and str(dataset.records[0].sources["photo"]) == absolute
    (root / "dataset.json").write_text(json.dumps({**manifest, "metrics": ["recall"]}))
    with pytest.raises(DatasetError, match=r"dataset.json: unknown metric\(s\) \['recall'\]"):
        get_dataset("generic", root)
    (root / "dataset.json").write_text(json.dumps({**manifest, "labels": []}))
    with pytest.raises(DatasetError, match=r"dataset.json: unknown key\(s\) labels"):
        get_dataset("generic", root)


# -- bad input ---------------------------------------------------------------------------------------------------


def test_missing_file_is_named_with_its_row(tmp_path):
    root = write_generic(tmp_path)
    (root / "media" / "photo" / "train2.png").unlink()
    with pytest.raises(DatasetError, match=r"train.csv line 4 \(id 'train2'\): image file .*train2.png does not exist"):
        get_dataset("generic", root)
    dataset = get_dataset("generic", root, on_error="skip")
    assert len(dataset) == 7 and len(dataset.skipped) == 1 and "train2.png" in dataset.skip_summary()


def test_corrupt_image_fails_at_load_or_at_construction_with_verify(tmp_path):
    root = write_generic(tmp_path)
    (root / "media" / "photo" / "train1.png").write_bytes(b"not an image")
    dataset = get_dataset("generic", root)
    with pytest.raises(DatasetError, match=r"train.csv line 3 \(id 'train1'\): cannot read image .*train1.png"):
        dataset[1]
    with pytest.raises(DatasetError, match="cannot read image"):
        get_dataset("generic", root, verify=True)
    assert len(get_dataset("generic", root, verify=True, on_error="skip")) == 7


def test_unparsable_rows_are_named(tmp_path):
    root = write_generic(tmp_path, fmt="jsonl")
    edit_row(root / "train.jsonl", 3, '{"id"', '{id')
    with pytest.raises(DatasetError, match="train.jsonl line 3: not valid JSON"):
        get_dataset("generic", root)
    csv_root = write_generic(tmp_path / "csv")
    edit_row(csv_root / "train.csv", 2, ",cat", ",cat,extra")
    with pytest.raises(DatasetError, match="train.csv line 2: has 5 fields, the header has 4"):
        get_dataset("generic", csv_root)


def test_label_outside_the_class_list_is_named(tmp_path):
    root = write_generic(tmp_path)
    edit_row(root / "train.csv", 3, ",dog", ",wolf")
    with pytest.raises(DatasetError, match=r"train.csv line 3 \(id 'train1'\): label 'wolf' is not one of the 2"):
        get_dataset("generic", root)
    edit_row(root / "train.csv", 3, ",wolf", ",7")
    with pytest.raises(DatasetError, match="label index 7 is outside 0..1"):
        get_dataset("generic", root)


def test_empty_split_and_sample_without_modality(tmp_path):
    root = write_generic(tmp_path)
    (root / "val.csv").write_text("id,photo,caption,label\n")
    with pytest.raises(DatasetError, match="the split is empty"):
        get_dataset("generic", root, "val")
    edit_row(root / "train.csv", 5, 'media/photo/train3.png,"a dog, sample 3 of train"', ",")
    with pytest.raises(DatasetError, match=r"line 5 \(id 'train3'\): has no modality"):
        get_dataset("generic", root)


def test_skipped_rows_are_counted_and_reported_by_stats(tmp_path, capsys):
    from robustmm.cli import main

    root = write_generic(tmp_path)
    edit_row(root / "train.csv", 3, ",dog", ",wolf")
    (root / "media" / "photo" / "train5.png").unlink()
    main(["data", "stats", "--dataset", "generic", "--root", str(root), "--split", "train", "--on-error", "skip"]
         + ["--json"])
    report = json.loads(capsys.readouterr().out)
    train = report["splits"]["train"]
    assert (train["samples"], train["skipped"]) == (6, 2)
    assert [origin for origin, _ in train["skipped_rows"]] == ["train.csv line 3", "train.csv line 7"]


# -- MM-IMDb -----------------------------------------------------------------------------------------------------


def test_mmimdb_raw_layouts_and_plot_modes(tmp_path):
    root = write_mmimdb(tmp_path / "map", no_poster=("00000002",))
    archive = write_mmimdb(tmp_path / "archive", archive=True, no_poster=("00000002",))
    first = get_dataset("mmimdb", root)
    assert samples(first) == samples(get_dataset("mmimdb", archive))
    assert (len(first), first.format, first.multilabel) == (4, "raw", True)
    assert first[0]["label"] == [GENRES.index("Drama"), GENRES.index("Comedy")]
    assert "News (1)" in first.notes[0]
    assert first.present_table()[:, 0].tolist() == [True, True, False, True]
    each = get_dataset("mmimdb", root, plots="each")
    assert each.ids == ["00000000/0", "00000001/0", "00000001/1", "00000002/0", "00000003/0", "00000003/1"]
    joined = get_dataset("mmimdb", root, plots="join")
    assert joined[1]["text"] == "a comedy story number 1 a horror story number 1"
    assert [len(get_dataset("mmimdb", root, s)) for s in ("val", "test")] == [2, 2]


def test_mmimdb_plots_of_a_movie_share_their_missing_modalities(tmp_path):
    root = write_mmimdb(tmp_path, sizes={"train": 30, "dev": 1, "test": 1})
    view = get_dataset("mmimdb", root, plots="each").with_protocol(MissingProtocol.uniform(0.5, "both"))
    by_movie = {}
    for row, sample_id in enumerate(view.table.ids):
        by_movie.setdefault(sample_id.split("/")[0], set()).add(tuple(view.table.dropped[row]))
    assert all(len(patterns) == 1 for patterns in by_movie.values())
    assert sum(any(next(iter(p))) for p in by_movie.values()) == 15


def test_mmimdb_reads_map_arrow_files(tmp_path):
    root = write_mmimdb_arrow(tmp_path)
    dataset = get_dataset("mmimdb", root, "val", plots="each")
    assert dataset.format == "arrow"
    assert dataset.ids == ["00000004/0", "00000005/0", "00000005/1"]
    assert dataset[0]["label"] == [GENRES.index("Drama"), GENRES.index("Comedy")]
    assert dataset[0]["image"].size == (8, 8)
    with pytest.raises(FileNotFoundError, match="no split.json"):
        get_dataset("mmimdb", root, format="raw")


# -- the Arrow round trip -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, write, options",
    [
        ("mmimdb", write_mmimdb, {"plots": "each"}),
        ("mmimdb", write_mmimdb, {}),
        ("food101", write_food101, {}),
        ("hateful_memes", write_hateful_memes, {}),
    ],
)
def test_prepare_writes_arrow_that_reads_back_as_the_raw_samples(tmp_path, capsys, name, write, options):
    from robustmm.cli import main

    root = write(tmp_path / "raw")
    main(["data", "prepare", "--dataset", name, "--root", str(root)])
    assert "read them with" in capsys.readouterr().out
    arrow = root / "arrow"
    for split in ("train", "val", "test"):
        raw = get_dataset(name, root, split, **options)
        converted = get_dataset(name, arrow, split, **options)
        assert (raw.format, converted.format) == ("raw", "arrow")
        assert len(raw) > 0 and samples(converted) == samples(raw)


def test_arrow_images_load_lazily_and_survive_pickling(tmp_path):
    import pickle

    dataset = get_dataset("food101", write_food101_arrow(tmp_path), "test")
    assert dataset._table is not None
    restored = pickle.loads(pickle.dumps(dataset))
    assert restored._table is None and samples(restored) == samples(dataset)
    assert len(pickle.dumps(dataset)) < 5000


# -- Food-101 ----------------------------------------------------------------------------------------------------


def test_food101_raw_with_a_deterministic_validation_split(tmp_path):
    root = write_food101(tmp_path, per_class={"train": 10, "test": 2})
    train, val = get_dataset("food101", root, "train"), get_dataset("food101", root, "val")
    assert (len(train), len(val)) == (27, 3)
    assert not set(train.ids) & set(val.ids)
    assert get_dataset("food101", root, "val").ids == val.ids
    assert len(get_dataset("food101", root, "val", val_fraction=0.5)) == 15
    test = get_dataset("food101", root, "test")
    assert test[0]["label"] == FOOD101_CLASSES.index("apple_pie") == 71
    assert test[0]["text"] == "Best apple pie recipe, number 0" and test.num_classes == 101


def test_food101_map_files_give_classes_and_splits(tmp_path):
    root = write_food101(tmp_path, map_files=True, header=True)
    val = get_dataset("food101", root, "val")
    assert val.ids == ["apple_pie_2.jpg", "sushi_2.jpg", "tacos_2.jpg"]
    assert val[1]["text"] == "Best sushi recipe, number 2"
    (root / "class_idx.json").write_text(json.dumps({"sushi": 0, "apple_pie": 1, "tacos": 2}))
    assert get_dataset("food101", root, "val").class_names == ("sushi", "apple_pie", "tacos")


def test_food101_bad_rows_and_absent_images(tmp_path):
    root = write_food101(tmp_path)
    (root / "images" / "test" / "sushi" / "sushi_1.jpg").unlink()
    test = get_dataset("food101", root, "test")
    assert test.present_table()[:, 0].sum() == 5 and "1 of 6 rows have no image file" in test.notes[0]
    with open(root / "texts" / "test_titles.csv", "a") as handle:
        handle.write("tacos_9.jpg,no class column\n")
    with pytest.raises(DatasetError, match="texts/test_titles.csv line 7: expected 3 fields"):
        get_dataset("food101", root, "test")


def test_food101_reads_map_arrow(tmp_path):
    dataset = get_dataset("food101", write_food101_arrow(tmp_path), "val")
    assert dataset.format == "arrow" and len(dataset) == 3
    expected = {"id": "sushi_val0.jpg", "label": 4, "text": "Best sushi recipe", "image": None}
    assert dataset[1] | {"image": None} == expected


# -- Hateful Memes -----------------------------------------------------------------------------------------------


def test_hateful_memes_layouts(tmp_path):
    seen = write_hateful_memes(tmp_path / "seen", archive=True)
    renamed = write_hateful_memes(tmp_path / "renamed", test="renamed")
    test = get_dataset("hateful_memes", seen, "test")
    assert samples(test) == samples(get_dataset("hateful_memes", renamed, "test"))
    assert test.ids[:2] == ["12000", "12001"] and test[1]["label"] == 1 and test[1]["text"] == "meme 12001 text"
    assert len(get_dataset("hateful_memes", seen, "val")) == 4


def test_hateful_memes_refuses_the_unlabelled_test_set(tmp_path):
    root = write_hateful_memes(tmp_path, test="unlabelled")
    with pytest.raises(DatasetError, match="test.jsonl: no labels.*test_seen.jsonl"):
        get_dataset("hateful_memes", root, "test")
    with pytest.raises(FileNotFoundError, match="test_unseen.jsonl"):
        get_dataset("hateful_memes", root, "test_unseen")


def test_hateful_memes_missing_image_file_and_arrow(tmp_path):
    root = write_hateful_memes(tmp_path / "raw")
    (root / "img" / "10003.png").unlink()
    with pytest.raises(DatasetError, match=r"train.jsonl line 4 \(id '10003'\): image file .*10003.png does not exist"):
        get_dataset("hateful_memes", root)
    arrow = get_dataset("hateful_memes", write_hateful_memes_arrow(tmp_path / "arrow"), "val")
    assert arrow.ids == ["0", "1"] and arrow[1]["text"] == "dev meme 1" and arrow[1]["label"] == 1


# -- audio-visual --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("style", ["ogm", "mla"])
def test_crema_d_in_both_layouts(tmp_path, style):
    root = write_crema_d(tmp_path, style=style)
    train, val, test = (get_dataset("crema_d", root, split) for split in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (11, 1, 6)
    assert test.class_names == CREMA_CODES and [test[i]["label"] for i in range(6)] == [0, 1, 2, 3, 4, 5]
    sample = test[2]
    assert len(sample["video"]) == 3
    assert sample["audio"].shape == ((1024, 128) if style == "mla" else (4000,))


def test_crema_d_frames_random_in_training_uniform_at_test(tmp_path):
    root = write_crema_d(tmp_path, sizes={"train": 2, "test": 1})
    for name in ("Image-01-FPS/1080_IEO_NEU_XX", "Image-01-FPS/1001_IEO_NEU_XX"):
        for number in range(3, 12):  # 00001.jpg ... 00011.jpg; uniform picks of 11 frames: 2nd, 6th, 10th
            write_image(root / name / f"{number:05d}.jpg", number)
    test = get_dataset("crema_d", root, "test", num_frames=3)
    colours = np.array([np.asarray(frame).mean((0, 1)) for frame in test[0]["video"]])
    assert np.abs(colours - np.array([color(0), color(6), color(10)])).max() < 25
    train = get_dataset("crema_d", root, "train", num_frames=3, val_fraction=0.0)
    draws = {tuple(f.getpixel((0, 0)) for f in train[0]["video"]) for _ in range(12)}
    assert len(draws) > 1


def test_kinetics_sounds_list_formats(tmp_path):
    ogm = get_dataset("kinetics_sounds", write_kinetics_sounds(tmp_path / "ogm"), "test")
    mla = get_dataset("kinetics_sounds", write_kinetics_sounds(tmp_path / "mla", style="mla"), "test")
    assert ogm.class_names == mla.class_names == KS_CLASSES
    assert [ogm[i]["label"] for i in range(3)] == [mla[i]["label"] for i in range(3)] == [0, 1, 2]
    assert "3 classes; the CMPT paper uses 31" in ogm.notes
    (tmp_path / "ogm" / "stat.txt").unlink()
    assert get_dataset("kinetics_sounds", tmp_path / "ogm", "test").class_names == ("0", "1", "2")


def test_ave_annotations_and_duplicates(tmp_path):
    root = write_ave(tmp_path)
    train = get_dataset("ave", root)
    assert train.class_names == tuple(sorted(AVE_CATEGORIES))
    assert len(train) == 7 and train.ids[-1] == "trVid0000x#2"
    assert train.groups()[0] == train.groups()[-1] == "trVid0000x"
    assert [train[0]["label"], train[6]["label"]] == [0, 1]
    assert "videos annotated more than once: 1" in train.notes[0]
    assert len(get_dataset("ave", root, duplicates="drop")) == 5
    assert get_dataset("ave", root, "val").ids == ["vaVid0000x", "vaVid0001x", "vaVid0002x"]


def test_audio_visual_absent_files(tmp_path):
    root = write_ave(tmp_path)
    shutil.rmtree(root / "visual" / "teVid0001x")
    (root / "audio" / "teVid0002x.wav").unlink()
    shutil.rmtree(root / "visual" / "teVid0002x")
    test = get_dataset("ave", root, "test")
    assert test.ids == ["teVid0000x", "teVid0001x"]
    assert test.present_table().tolist() == [[True, True], [True, False]]
    assert "1 listed clips have neither sound nor frames" in test.notes[0]
    with open(root / "testSet.txt", "a") as handle:
        handle.write("Dog|broken|line\n")
    with pytest.raises(DatasetError, match="testSet.txt line 4: expected 'Category&VideoID"):
        get_dataset("ave", root, "test")


def test_prepared_fbank_matches_the_waveform_path(tmp_path, capsys):
    from transformers import ASTFeatureExtractor

    from robustmm.cli import main
    from robustmm.processing import AudioProcessor

    root = write_crema_d(tmp_path / "data", sizes={"train": 2, "test": 2})
    waveforms = get_dataset("crema_d", root, "test")
    main(["data", "prepare", "--dataset", "crema_d", "--root", str(root)])
    assert "test: wrote 2 fbank arrays" in capsys.readouterr().out
    fbanks = get_dataset("crema_d", root, "test")
    assert fbanks.records[0].sources["audio"].suffix == ".npy"
    assert get_dataset("crema_d", root, "test", audio="wav").records[0].sources["audio"].suffix == ".wav"
    ASTFeatureExtractor().save_pretrained(tmp_path / "extractor")
    processor = AudioProcessor(str(tmp_path / "extractor"))
    from_wav = processor([waveforms[0]["audio"]], ["wav"])["input_values"]
    from_fbank = processor([fbanks[0]["audio"]], ["fbank"])["input_values"]
    assert from_wav.shape == (1, 1024, 128)
    np.testing.assert_allclose(from_fbank.numpy(), from_wav.numpy(), atol=1e-5)


# -- data commands ------------------------------------------------------------------------------------------------


def test_stats_prints_the_protocol_then_each_split(tmp_path, capsys):
    from robustmm.cli import main

    root = write_generic(tmp_path, sizes={"train": 10, "val": 4, "test": 4}, missing={"photo": 5})
    main(["data", "stats", "--dataset", "generic", "--root", str(root)]
         + ["--train-missing-rate", "0.6", "--missing-type", "caption"])
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("missing protocol ") and "train 60%" in lines[0] and "test 0%" in lines[0]
    assert "generic at" in lines[1] and "photo (image), caption (text)" in lines[1]
    train = out.split("\ntrain: 10 samples\n")[1].split("\n\n")[0]
    assert "photo+caption" in train
    counts = re.search(
        r"missing in the data: photo 2, caption 0; dropped by the protocol: photo 0, caption (\d+)\n.*"
        r"drop cancelled to keep a last modality: (\d+)",
        train,
    )
    assert int(counts[1]) + int(counts[2]) == 6 and int(counts[2]) <= 2
    protocol = MissingProtocol(train_missing_rate=0.6, missing_type="caption")
    summary = get_dataset("generic", root).with_protocol(protocol).summary()
    assert int(counts[1]) == summary["simulated_missing"]["caption"]
    assert "\ntest: 4 samples\n" in out


def test_stats_reports_unavailable_splits_and_json(tmp_path, capsys):
    from robustmm.cli import main

    root = write_hateful_memes(tmp_path)
    main(["data", "stats", "--dataset", "hateful_memes", "--root", str(root), "--missing-rate", "0.5", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert report["metrics"] == ["auroc", "accuracy"]
    assert report["protocol"]["missing_type"] == "all" and report["protocol"]["test_missing_rate"] == 0.5
    assert report["splits"]["val"]["simulated_missing"] == {"image": 1, "text": 1}
    assert "test_unseen.jsonl" in report["splits"]["test_unseen"]["unavailable"]
    with pytest.raises(SystemExit):
        main(["data", "stats", "--dataset", "hateful_memes", "--root", str(root), "--split", "test_unseen"])
    assert "test_unseen.jsonl" in capsys.readouterr().err


def test_options_and_prepare_refusals(tmp_path, capsys):
    from robustmm.cli import main
    from robustmm.data.commands import parse_options

    assert parse_options(["plots=each", "val_fraction=0.2", "modalities=a:image,b:text"]) == {
        "plots": "each",
        "val_fraction": 0.2,
        "modalities": "a:image,b:text",
    }
    with pytest.raises(ValueError, match="key=value"):
        parse_options(["plots"])
    root = write_generic(tmp_path / "generic")
    with pytest.raises(SystemExit):
        main(["data", "prepare", "--dataset", "generic", "--root", str(root)])
    assert "nothing to prepare" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["data", "prepare", "--dataset", "ave", "--root", str(root), "--out", str(tmp_path / "x")])
    assert "drop --out" in capsys.readouterr().err
