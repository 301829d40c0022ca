"""`robustmm calibrate` and `robustmm predict`: temperatures per availability pattern fitted on validation, and
predictions of a file whose rows carry any modalities, with bad rows reported and the others predicted."""

import csv
import json
import math

import pytest
import torch
from layouts import train_command, write_generic, write_image
from PIL import Image
from torchmetrics.functional.classification import binary_calibration_error, multiclass_calibration_error

from robustmm.availability import pattern_name
from robustmm.calibration import fit_temperature, reliability
from robustmm.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")
CLASSES = ("cat", "dog", "bird")


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_encoders):
    """A CMPT run on a tiny image+text dataset, calibrated on its validation split."""
    root = tmp_path_factory.mktemp("predict")
    data = write_generic(root / "data", {"photo": "image", "caption": "text"}, CLASSES,
                         {"train": 24, "val": 18, "test": 6}, missing={"caption": 6})
    run_dir = root / "run"
    main(train_command(data, tiny_encoders, epochs=2)(run_dir, "--method", "cmpt"))
    main(["calibrate", str(run_dir)])
    return run_dir


@pytest.fixture()
def requests(tmp_path):
    """new.csv beside its media: complete rows, rows without a modality, and three rows that cannot be read."""
    folder = tmp_path / "in"
    write_image(folder / "media" / "a.png", 0)
    write_image(folder / "media" / "b.png", 1)
    (folder / "media" / "broken.png").write_bytes(b"not an image")
    write_image(tmp_path / "outside.png", 2)
    rows = [
        ["r0", "media/a.png", "a cat, sample 1 of test"],
        ["r1", "media/b.png", ""],                       # no text
        ["r2", "", "a bird on a tree"],                   # no image
        ["r3", "media/gone.png", "a dog in a house"],     # the file does not exist: predicted from the text
        ["r4", "media/broken.png", "a cat"],              # unreadable
        ["r5", "../outside.png", "a bird"],               # outside the input's folder
        ["r6", "", ""],                                   # nothing at all
    ]  # fmt: skip
    path = folder / "new.csv"
    with open(path, "w", newline="") as handle:
        csv.writer(handle).writerows([["id", "photo", "caption"], *rows])
    return path


def predict(run, requests, out, *extra):
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", str(run), "--input", str(requests), "--out", str(out), *extra])
    return exit_info.value.code


def read_jsonl(path):
    return {record["id"]: record for record in map(json.loads, path.read_text().splitlines())}


def test_calibrate_fits_one_temperature_per_availability_pattern(run):
    stored = json.loads((run / "calibration.json").read_text())
    assert stored["split"] == "val" and not stored["multilabel"]
    patterns = stored["patterns"]
    assert list(patterns) == ["photo+caption", "photo", "caption"]
    assert patterns["photo"]["samples"] == 18 and patterns["caption"]["samples"] == 15  # 3 val rows lack a caption
    for entry in patterns.values():
        assert 0.05 <= entry["temperature"] <= 20
        assert entry["nll_after"] <= entry["nll_before"] + 1e-9  # T = 1 is among the candidates


def test_predict_reports_bad_rows_with_their_cause_and_predicts_the_others(run, requests, tmp_path, capsys):
    out = tmp_path / "predictions.jsonl"
    assert predict(run, requests, out) == 1
    records = read_jsonl(out)
    assert list(records) == ["r0", "r1", "r2", "r3", "r4", "r5", "r6"]
    assert [records[r]["modalities"] for r in ("r0", "r1", "r2", "r3")] == [
        "photo+caption", "photo", "caption", "caption"
    ]
    assert records["r3"]["notes"] == ["photo: media/gone.png does not exist; predicted without it"]
    for name in ("r0", "r1", "r2", "r3"):
        assert math.isclose(sum(records[name]["probabilities"].values()), 1.0, rel_tol=1e-6)
        assert records[name]["prediction"] in CLASSES
    assert "cannot read image media/broken.png" in records["r4"]["error"]
    assert "outside" in records["r5"]["error"] and "--allow-outside" in records["r5"]["error"]
    assert "has no modality" in records["r6"]["error"]
    err = capsys.readouterr().err
    assert "new.csv line 6 (id 'r4'): cannot read image media/broken.png" in err
    assert "predicted 4 of 7 rows" in err and "rows/s" in err


def test_predict_applies_each_patterns_temperature_and_matches_the_model(run, requests, tmp_path):
    """Without calibration the probabilities are `model.predict`'s; with it, softmax(log p / T) of the row's
    pattern, so the predicted class does not change."""
    import robustmm

    plain, calibrated = tmp_path / "plain.jsonl", tmp_path / "calibrated.jsonl"
    predict(run, requests, plain, "--no-calibration", "--precision", "32-true")
    predict(run, requests, calibrated, "--precision", "32-true")
    plain, calibrated = read_jsonl(plain), read_jsonl(calibrated)
    folder = requests.parent
    model = robustmm.load_model(run / "model")
    samples = [
        {"photo": Image.open(folder / "media/a.png"), "caption": "a cat, sample 1 of test"},
        {"photo": Image.open(folder / "media/b.png")},
        {"caption": "a bird on a tree"},
    ]
    expected = model.predict(samples)
    stored = json.loads((run / "calibration.json").read_text())["patterns"]
    temperatures = {pattern: entry["temperature"] for pattern, entry in stored.items()}
    for row, probs in zip(("r0", "r1", "r2"), expected):
        got = torch.tensor(list(plain[row]["probabilities"].values()))
        assert torch.allclose(got, probs, atol=1e-5)
        assert plain[row]["temperature"] == 1.0
        temperature = temperatures[calibrated[row]["modalities"]]
        assert calibrated[row]["temperature"] == temperature
        scaled = (probs.double().log() / temperature).softmax(-1)
        assert torch.allclose(torch.tensor(list(calibrated[row]["probabilities"].values())), scaled.float(), atol=1e-5)
        assert calibrated[row]["prediction"] == plain[row]["prediction"]


def test_predict_reads_outside_files_only_when_allowed_and_writes_csv(run, requests, tmp_path):
    out = tmp_path / "predictions.csv"
    assert predict(run, requests, out, "--allow-outside") == 1  # r4 and r6 remain bad
    rows = {row["id"]: row for row in csv.DictReader(out.open())}
    assert rows["r5"]["modalities"] == "photo+caption" and rows["r5"]["error"] == ""
    assert rows["r5"]["prediction"] in CLASSES
    assert math.isclose(sum(float(rows["r5"][f"p_{c}"]) for c in CLASSES), 1.0, rel_tol=1e-5)
    assert rows["r6"]["prediction"] == "" and "has no modality" in rows["r6"]["error"]


def test_predict_without_bad_rows_exits_zero_and_names_a_file_without_modality_columns(run, tmp_path, capsys):
    good = tmp_path / "good.jsonl"
    rows = [{"caption": "a cat"}, {"id": "x", "photo": None, "caption": "a dog", "label": "cat"}]
    good.write_text("".join(json.dumps(row) + "\n" for row in rows))
    main(["predict", str(run), "--input", str(good), "--out", str(tmp_path / "out.jsonl")])
    assert [r["modalities"] for r in read_jsonl(tmp_path / "out.jsonl").values()] == ["caption", "caption"]
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("picture,words\nx.png,a cat\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", str(run), "--input", str(wrong), "--out", str(tmp_path / "o.jsonl")])
    assert exit_info.value.code == 2
    assert "no column named after the model's modalities (photo, caption)" in capsys.readouterr().err


@pytest.mark.parametrize("multilabel", [False, True])
def test_fit_temperature_recovers_the_temperature_that_made_the_labels(multilabel):
    generator = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(4000, 5, generator=generator)
    true = 2.5
    if multilabel:
        labels = (torch.rand(4000, 5, generator=generator) < torch.sigmoid(logits / true)).long()
    else:
        labels = torch.multinomial((logits / true).softmax(-1), 1, generator=generator).squeeze(1)
    assert abs(fit_temperature(logits, labels, multilabel) - true) < 0.15 * true


def test_reliability_ece_is_torchmetrics_ece():
    generator = torch.Generator().manual_seed(1)
    probs = torch.randn(500, 4, generator=generator).softmax(-1)
    labels = torch.randint(0, 4, (500,), generator=generator)
    ours = reliability(probs, labels, multilabel=False)
    assert math.isclose(ours["ece"], float(multiclass_calibration_error(probs, labels, 4, n_bins=15)), abs_tol=1e-5)
    assert sum(b["count"] for b in ours["bins"]) == 500
    multi = torch.rand(300, 4, generator=generator)
    targets = (torch.rand(300, 4, generator=generator) < 0.4).long()
    expected = float(binary_calibration_error(multi.flatten(), targets.flatten(), n_bins=15))
    assert math.isclose(reliability(multi, targets, multilabel=True)["ece"], expected, abs_tol=1e-5)


def test_pattern_names_follow_the_models_order():
    assert pattern_name({"caption", "photo"}, ["photo", "caption"]) == "photo+caption"
    assert pattern_name(["caption"], ["photo", "caption"]) == "caption"


def test_predict_names_lines_that_are_not_json_objects_and_a_file_not_in_utf8(run, tmp_path, capsys):
    lines = tmp_path / "lines.jsonl"
    lines.write_text('{"caption": "a cat"}\n{"caption": \n[1, 2]\n')
    assert predict(run, lines, tmp_path / "out.jsonl") == 1
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r.get("error", "")[:20] for r in records] == ["", "not valid JSON: Expe", "expected a JSON obje"]
    latin = tmp_path / "latin.csv"
    latin.write_bytes("id,caption\nx,café\n".encode("latin-1"))
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", str(run), "--input", str(latin), "--out", str(tmp_path / "o.csv")])
    assert exit_info.value.code == 2 and "not UTF-8" in capsys.readouterr().err


def test_a_multilabel_run_is_calibrated_on_sigmoids_and_predicts_label_sets(tmp_path, tiny_encoders, capsys):
    data = write_generic(tmp_path / "data", {"photo": "image", "caption": "text"}, CLASSES,
                         {"train": 12, "val": 9, "test": 3}, multilabel=True)
    main(train_command(data, tiny_encoders, epochs=1)(tmp_path / "run"))
    main(["calibrate", str(tmp_path / "run")])
    stored = json.loads((tmp_path / "run" / "calibration.json").read_text())
    assert stored["multilabel"] and stored["patterns"]["photo"]["samples"] == 9
    requests = tmp_path / "data" / "requests.jsonl"
    requests.write_text(json.dumps({"photo": "media/photo/test0.png", "caption": None}) + "\n")
    main(["predict", str(tmp_path / "run"), "--input", str(requests), "--out", str(tmp_path / "out.jsonl")])
    (record,) = read_jsonl(tmp_path / "out.jsonl").values()
    probabilities = record["probabilities"]
    assert record["modalities"] == "photo" and record["temperature"] == stored["patterns"]["photo"]["temperature"]
    assert record["prediction"] == [c for c in CLASSES if probabilities[c] >= 0.5]
    assert all(0 < p < 1 for p in probabilities.values()) and abs(sum(probabilities.values()) - 1) > 1e-3
