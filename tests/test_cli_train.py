"""`robustmm train` and `robustmm evaluate` end to end on a tiny dataset with tiny encoders: run directories,
resume after a kill, scenario counts, seed aggregation, config errors, DDP on two CPU processes, and options
that must fit together (kind flags on named columns, a warm-up longer than a short run)."""

import contextlib
import csv
import io
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time

from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml
from layouts import train_command, write_generic
from safetensors.torch import load_file

from robustmm.cli import main
from robustmm.config import ConfigError, load_config, shipped_configs
from robustmm.data import MissingProtocol, get_dataset_class
from robustmm.data.protocol import scenario
from robustmm.training import TrainConfig

SIZES = {"train": 24, "val": 12, "test": 12}
REALLY_WITHOUT_TEXT = 2
"""Test rows whose text cell is empty (every 6th row): real missingness, apart from the protocol's."""


pytestmark = pytest.mark.usefixtures("one_thread")


def subprocess_env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return write_generic(root, {"image": "image", "text": "text"}, ("cat", "dog", "bird"), SIZES, missing={"text": 6})


@pytest.fixture(scope="module")
def command(data, tiny_encoders):
    """`robustmm train` for the tiny dataset, four epochs; a run takes a few seconds."""
    return train_command(data, tiny_encoders, epochs=4)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, command):
    """Two seeds of one config, trained in this process."""
    root = tmp_path_factory.mktemp("runs")
    for seed in (0, 1):
        main(command(root / f"seed{seed}", "--seed", str(seed)))
    return [root / "seed0", root / "seed1"]


def run_cli(argv, capsys):
    main(argv)
    return capsys.readouterr().out


def error_of(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


# ----- train ---------------------------------------------------------------------------------------------------


def test_run_directory_holds_config_protocol_logs_model_and_metrics(runs, data):
    run = runs[0]
    protocol = MissingProtocol.uniform(0.5)
    stored = json.loads((run / "protocol.json").read_text())
    assert stored["hash"] == protocol.hash() and stored["description"] == protocol.describe()
    assert sum(entry["samples"] for entry in stored["splits"]["train"]["patterns"].values()) == SIZES["train"]
    config = load_config(str(run / "config.yaml"))
    assert config.dataset.root == str(data) and config.train.seed == 0 and config.train.metrics == ["accuracy"]
    for path in ("checkpoints/last.ckpt", "checkpoints/best.ckpt", "logs/version_0/metrics.csv", "model"):
        assert (run / path).exists(), path
    assert list((run / "tensorboard").rglob("events.out.tfevents.*"))
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["selected"]["monitor"] == "val/accuracy" and 0 <= metrics["selected"]["epoch"] < 4
    for split in ("val", "test"):
        assert metrics[split]["protocol"] == protocol.hash() and metrics[split]["samples"] == SIZES[split]
        assert set(metrics[split]["metrics"]) == {"accuracy"}
        assert set(metrics[split]["per_class"]) == {"cat", "dog", "bird"}
    assert [p.name for p in run.iterdir() if p.name.startswith(".")] == [".lock"]  # no temporary file left behind


def test_a_finished_run_is_not_trained_again(runs, command, capsys):
    out = run_cli(command(runs[0], "--seed", "0"), capsys)
    assert "is complete" in out
    assert not (runs[0] / "logs" / "version_1").exists()


def test_a_run_directory_of_another_config_is_refused(runs, command, capsys):
    message = error_of(command(runs[0], "--seed", "0", "--lr", "0.5"), capsys)
    assert "holds a run of another config" in message and "train.lr: 0.01 -> 0.5" in message


def test_a_killed_run_resumes_to_the_metrics_of_an_uninterrupted_one(runs, command, tmp_path, capsys):
    """SIGKILL once the first epoch is checkpointed, then the same command again."""
    run, log = tmp_path / "killed", tmp_path / "killed.log"
    with open(log, "w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "robustmm.cli", *command(run, "--seed", "0")],
            stdout=subprocess.DEVNULL, stderr=stderr, env=subprocess_env(),
        )
    deadline = time.monotonic() + 120
    while not (run / "checkpoints" / "last.ckpt").exists():
        assert process.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint after 120 s"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (run / "metrics.json").exists() and not (run / "model").exists(), "the run ended before the kill"

    main(command(run, "--seed", "0"))
    out, err = capsys.readouterr()
    assert MissingProtocol.uniform(0.5).describe() in out
    last = re.escape(str(run / "checkpoints" / "last.ckpt"))
    resumed_at = re.search(rf"resuming from {last}: ([1-4]) of 4 epochs done \(step (\d+)\)", err)
    assert resumed_at and int(resumed_at[2]) == 6 * int(resumed_at[1]), err  # 6 batches of 4 per epoch
    assert (run / "logs" / "version_1").is_dir()  # the second attempt resumed rather than started over
    straight, resumed = (json.loads((r / "metrics.json").read_text()) for r in (runs[0], run))
    assert resumed["selected"] == straight["selected"]
    for split in ("val", "test"):
        assert resumed[split]["metrics"] == pytest.approx(straight[split]["metrics"])
        assert resumed[split]["per_class"] == pytest.approx(straight[split]["per_class"])
    straight_weights, resumed_weights = (load_file(r / "model" / "model.safetensors") for r in (runs[0], run))
    for name, tensor in straight_weights.items():
        torch.testing.assert_close(resumed_weights[name], tensor)


def test_ddp_on_two_cpu_processes_trains_and_writes_metrics(command, tmp_path):
    run = tmp_path / "ddp"
    argv = command(run, "--epochs", "2", "--devices", "2", "--strategy", "ddp", "--accelerator", "cpu")
    result = subprocess.run(
        [sys.executable, "-m", "robustmm.cli", *argv],
        capture_output=True, text=True, timeout=300, env=subprocess_env(),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (run / "model" / "model.safetensors").is_file()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"]["samples"] == SIZES["test"]
    # Each of the two processes took half of the 6 batches of an epoch.
    rows = csv.DictReader((run / "logs" / "version_0" / "metrics.csv").open())
    assert [int(row["step"]) for row in rows if row["val/accuracy"]] == [2, 5]
    assert result.stdout.count("missing protocol") == 1  # one process writes and prints


# ----- evaluate ------------------------------------------------------------------------------------------------


def test_scenarios_remove_what_they_say(runs, capsys):
    out = run_cli(
        ["evaluate", str(runs[0]), "--scenarios", "complete,missing,sweep:text,grid", "--rates", "0.5,1", "--json"],
        capsys,
    )
    report = json.loads(out)
    assert json.loads((runs[0] / "evaluation.json").read_text()) == report["runs"][0]
    scenarios = {entry["name"]: entry for entry in report["runs"][0]["scenarios"]}
    n = SIZES["test"]
    assert list(scenarios) == [
        "complete", "image missing", "text missing", "100% image + 50% text",
        "50% image + 100% text", "75% image + 75% text", "50% image + 50% text",
    ]  # fmt: skip
    assert scenarios["complete"]["patterns"] == {"image+text": n - REALLY_WITHOUT_TEXT, "image": REALLY_WITHOUT_TEXT}
    assert scenarios["text missing"]["patterns"] == {"image": n}
    # A sample that really has no text keeps its image: no sample is ever left without any modality.
    assert scenarios["image missing"]["patterns"] == {"text": n - REALLY_WITHOUT_TEXT, "image": REALLY_WITHOUT_TEXT}
    assert sum(scenarios["100% image + 50% text"]["patterns"].values()) == n
    assert scenarios["100% image + 50% text"]["patterns"]["image"] >= n // 2
    for entry in scenarios.values():
        expected = scenario(["image", "text"], entry["missing_type"], entry["rate"])
        assert entry["protocol"] == expected.protocol(MissingProtocol.uniform(0.5)).hash()
        assert set(entry["per_class"]) == {"cat", "dog", "bird"}
    # The training protocol's test setting is a grid cell: the same samples, the same score as metrics.json.
    trained = json.loads((runs[0] / "metrics.json").read_text())["test"]
    assert scenarios["75% image + 75% text"]["protocol"] == trained["protocol"]
    assert scenarios["75% image + 75% text"]["metrics"] == pytest.approx(trained["metrics"])


def test_another_split_is_scored_under_the_scenario_rates(runs, capsys):
    argv = ["evaluate", str(runs[0]), "--split", "val", "--scenarios", "missing", "--json"]
    report = json.loads(run_cli(argv, capsys))
    text_missing = report["runs"][0]["scenarios"][1]
    assert text_missing["name"] == "text missing" and text_missing["split"] == "val"
    assert text_missing["patterns"] == {"image": SIZES["val"]}


def test_seeds_aggregate_to_mean_and_sd(runs, tmp_path, capsys):
    out_file = tmp_path / "report.json"
    table = run_cli(["evaluate", *map(str, runs), "--scenarios", "complete,missing", "--out", str(out_file)], capsys)
    report = json.loads(out_file.read_text())
    assert [run["seed"] for run in report["runs"]] == [0, 1]
    for index, row in enumerate(report["aggregate"]):
        values = [run["scenarios"][index]["metrics"]["accuracy"] for run in report["runs"]]
        assert row["runs"] == 2 and row["metrics"]["accuracy"]["values"] == values
        assert row["metrics"]["accuracy"]["mean"] == pytest.approx(statistics.fmean(values))
        assert row["metrics"]["accuracy"]["std"] == pytest.approx(statistics.stdev(values))
        assert f"{100 * statistics.fmean(values):.2f} ± {100 * statistics.stdev(values):.2f}" in table
    assert "2 runs (seeds 0, 1), mean ± SD" in table and "| text missing" in table


def test_runs_of_different_configs_are_not_aggregated(runs, tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    text = (runs[1] / "config.yaml").read_text()
    (other / "config.yaml").write_text(text.replace("epochs: 4", "epochs: 2"))
    message = error_of(["evaluate", str(runs[0]), str(other), "--scenarios", "complete"], capsys)
    assert "is not a seed of" in message and "train.epochs: 4 -> 2" in message


@pytest.mark.parametrize(
    "arguments, expected",
    [
        (["--scenarios", "sweep:audio"], "cannot sweep audio: the dataset has image, text"),
        (["--scenarios", "everything"], "unknown scenario 'everything'"),
        (["--rates", "1.5"], "missing rates in [0, 1]"),
    ],
)
def test_bad_scenarios_are_clear_errors(runs, capsys, arguments, expected):
    assert expected in error_of(["evaluate", str(runs[0]), *arguments], capsys)


def test_evaluating_a_folder_that_is_no_finished_run_is_a_clear_error(runs, tmp_path, capsys):
    assert "holds no config.yaml" in error_of(["evaluate", str(tmp_path)], capsys)
    (tmp_path / "config.yaml").write_text((runs[0] / "config.yaml").read_text())
    assert "has no model yet" in error_of(["evaluate", str(tmp_path)], capsys)
    assert "several runs have seed 0" in error_of(["evaluate", str(runs[0]), str(runs[0])], capsys)


# ----- configs -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", shipped_configs())
def test_shipped_configs_load_and_name_registered_datasets(name):
    config = load_config(name, [("dataset.root", "somewhere", "test")])
    get_dataset_class(config.dataset.name)
    assert config.train.metrics and config.model.method == "cmpt"
    audio_video = "audio" in config.model.encoders
    paper = (5e-5, 100, 4) if audio_video else (1e-3, 10, 8)  # Table 6: lr, epochs, batch size
    assert (config.train.lr, config.train.epochs, config.train.batch_size) == paper
    assert (config.train.weight_decay, config.train.adam_eps, config.train.warmup_epochs) == (0.02, 1e-8, 5)
    if name.endswith("_map"):
        assert config.protocol == MissingProtocol.uniform(0.7, "both", 0.5)


def test_config_then_flags_then_set_overrides(tmp_path):
    from robustmm.cli import build_parser, train_overrides

    args = build_parser().parse_args([
        "train", "--config", "mmimdb", "--text-encoder", "/models/bert", "--missing-rate", "0.3",
        "--test-missing-rate", "1", "--devices", "2", "--set", "train.devices=auto",
        "--set", "model.options.align_weight=0",
    ])  # fmt: skip
    config = load_config(args.config, train_overrides(args))
    assert config.model.encoders["text"] == {"name_or_path": "/models/bert", "max_length": 256}
    assert (config.protocol.train_missing_rate, config.protocol.test_missing_rate) == (0.3, 1.0)
    assert config.train.devices == "auto" and config.model.options == {"align_denominator": "paper", "align_weight": 0}
    assert config.train.lr == 1e-3 and isinstance(config.train.lr, float)  # YAML reads 1.0e-3 and 1e-3 alike

    path = tmp_path / "mine.yaml"
    path.write_text("dataset: {name: generic, root: data}\ntrain: {lr: 1e-3, devices: '2'}\n")
    config = load_config(str(path))
    assert config.train.lr == 1e-3 and config.train.devices == 2 and config.model.method == "cmpt"


@pytest.mark.parametrize(
    "yaml_text, expected",
    [
        ("dataset: {name: generic, root: d}\ntrain: {epoch: 3}\n", "unknown key 'train.epoch'; train has epochs,"),
        ("dataset: {name: generic, root: d}\nmodels: {}\n", "unknown key 'models'; the config has dataset,"),
        ("dataset: {name: generic, root: d}\ntrain: {epochs: many}\n", "train.epochs: expected an integer, got 'many'"),
        ("dataset: {name: generic}\n", "dataset.root is required: set it in the config (or --root)"),
        ("dataset: [generic]\n", "dataset: expected a mapping"),
        ("dataset: {name: generic, root: d}\nprotocol: {test_missing_rate: 2}\n", "test_missing_rate must be in [0,"),
        ("dataset: {name: generic\n", "not valid YAML"),
    ],
)
def test_bad_config_files_name_the_problem(tmp_path, yaml_text, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError, match="^" + re.escape(f"{path}: ")) as error:
        load_config(str(path))
    assert expected in str(error.value)


@pytest.mark.parametrize(
    "arguments, expected",
    [
        (["--set", "train.epoch=3"], "--set train.epoch=3: unknown key 'train.epoch'; train has epochs"),
        (["--set", "epochs"], "--set expects key.path=value, got 'epochs'"),
        (["--set", "train.epochs=x"], "train.epochs: expected an integer, got 'x'"),
        (["--dataset", "nope"], "unknown dataset 'nope'; available:"),
        (["--root", "/no/such/folder"], "/no/such/folder is not a folder"),
        (["--config", "nosuchconfig"], "config 'nosuchconfig' is neither a file nor a shipped config (ave,"),
        (["--method", "nomethod"], "unknown method 'nomethod'"),
        (["--set", "model.options.seed=3"], "model.options.seed is set by train.seed (--seed)"),
        (["--set", "model.options.wings=3"], "model.options.wings: no method has this option; cmpt's are"),
        (["--option", "align_weight=heavy"], "model.options.align_weight: expected a number, got 'heavy'"),
        (["--option", "mwam=true", "--option", "mwam_mode=both"], "mwam_mode must be one of gradient, loss, hybrid"),
        (["--option", "mwam_mode=loss"], "mwam_mode set without the plug-in: add mwam=true"),
        (["--option", "align_denominator=half"], "align_denominator must be one of"),
        (["--option", "align_weight"], "--option expects key=value, got 'align_weight'"),
        (["--set", "model.encoders.audio=x"], "encoders for audio, which the dataset does not have"),
        (["--set", "model.encoders={}"], "no encoder for image, text (--set model.encoders.image=ID_OR_PATH)"),
        (["--missing-type", "audio"], "missing type 'audio' names audio, which the dataset does not have"),
        (["--set", "train.metrics=[accuracy, nope]"], "train.metrics: unknown metric(s) nope"),
        (["--set", "evaluation.scenarios=[sweep:audio]"], "cannot sweep audio"),
        (["--out", "runs/{dataset}-{day}"], "may use {dataset}, {method}, {seed}, {missing_type}, {missing_rate} only"),
    ],
)
def test_bad_train_input_exits_2_naming_the_problem(command, tmp_path, capsys, arguments, expected):
    message = error_of([*command(tmp_path / "run"), *arguments], capsys)
    assert message.startswith("robustmm train: error: ") and expected in message, message


def test_train_without_a_dataset_says_which_flag_is_missing(capsys):
    assert "dataset.name is required: set it in the config (or --dataset)" in error_of(["train", "--root", "."], capsys)


def test_a_shipped_config_is_found_by_name(tmp_path, capsys):
    message = error_of(["train", "--config", "food101", "--root", str(tmp_path / "none")], capsys)
    assert f"food101: dataset root {tmp_path / 'none'} is not a folder" in message


# ----- options that fit together ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def photo_run(tmp_path_factory, tiny_encoders):
    """A shipped config (encoders image and text, 5 warm-up epochs) on a generic dataset whose columns are photo
    and caption, for one epoch, with kind flags: (argv, run directory, stderr)."""
    root = tmp_path_factory.mktemp("photo")
    data = write_generic(root / "data", sizes={"train": 4, "val": 2, "test": 2})
    argv = [
        "train", "--config", "food101", "--dataset", "generic", "--root", str(data),
        "--image-encoder", tiny_encoders["image"], "--text-encoder", tiny_encoders["text"], "--epochs", "1",
        "--batch-size", "4", "--missing-type", "image", "--missing-rate", "0.5", "--out", str(root / "run"),
        "--no-progress",
    ]  # fmt: skip
    with contextlib.redirect_stderr(io.StringIO()) as stderr:
        main(argv)
    return argv, root / "run", stderr.getvalue()


def test_a_warm_up_longer_than_training_is_shortened_with_a_note_and_the_run_reruns(photo_run, capsys):
    argv, run, stderr = photo_run
    assert "warmup_epochs 5 does not fit in training (epochs 1); shortened to 0.5, half of training" in stderr
    assert load_config(str(run / "config.yaml")).train.warmup_epochs == 0.5
    assert capsys.readouterr().err == ""  # the stored value is kept as it is, without a note
    assert "is complete" in run_cli(argv, capsys)  # the same command finds the same config


def test_kind_flags_bind_to_the_datasets_one_modality_of_that_kind(photo_run, tiny_encoders, capsys):
    _, run, _ = photo_run
    stored = yaml.safe_load((run / "config.yaml").read_text())
    assert stored["model"]["encoders"] == {
        "photo": str(Path(tiny_encoders["image"]).resolve()),
        "caption": {"name_or_path": str(Path(tiny_encoders["text"]).resolve()), "max_length": 40},  # food101's
    }
    assert stored["protocol"]["missing_type"] == "photo"
    train = json.loads((run / "protocol.json").read_text())["splits"]["train"]
    assert train["simulated_missing"] == {"photo": 2, "caption": 0}
    argv = ["evaluate", str(run), "--scenarios", "sweep:image", "--rates", "0,1", "--json"]
    scenarios = json.loads(run_cli(argv, capsys))["runs"][0]["scenarios"]
    assert [entry["name"] for entry in scenarios] == ["complete", "photo missing"]


def test_a_kind_that_several_columns_share_asks_for_encoders_by_name(tmp_path, tiny_encoders, capsys):
    columns = {"front": "image", "back": "image", "caption": "text"}
    data = write_generic(tmp_path, columns, sizes=dict.fromkeys(SIZES, 2))
    argv = [
        "train", "--dataset", "generic", "--root", str(data), "--image-encoder", tiny_encoders["image"],
        "--text-encoder", tiny_encoders["text"], "--out", str(tmp_path / "run"),
    ]  # fmt: skip
    message = error_of(argv, capsys)
    assert "'image' could be any of the dataset's image modalities (front, back)" in message
    assert "--set model.encoders.<name>=ID_OR_PATH" in message


def test_a_warm_up_that_does_not_fit_is_shortened_to_half_of_training_once(capsys):
    config = TrainConfig(epochs=3)  # the default warm-up, 5 epochs
    assert config.warmup_epochs == 1.5 and "shortened to 1.5" in capsys.readouterr().err
    assert replace(config, lr=0.1).warmup_epochs == 1.5 and capsys.readouterr().err == ""
    assert TrainConfig(epochs=6).warmup_epochs == 5 and capsys.readouterr().err == ""
    with pytest.raises(ValueError, match="warmup_epochs must be >= 0"):
        TrainConfig(warmup_epochs=-1)


def test_another_methods_options_in_a_shipped_config_are_left_out_with_a_note():
    """The shipped configs set CMPT's `align_denominator: paper`; `--method dropout` on them still trains."""
    from robustmm.runs import without_other_methods_options

    notes = []
    config = load_config("food101", [("model.method", "dropout", "--method"), ("model.options.rank", 2, "--set")])
    kept = without_other_methods_options(config, notes.append)
    assert kept.model.options == {"rank": 2}
    assert notes == ["note: model.options.align_denominator is an option of cmpt, not of dropout: left out"]
    cmpt = load_config("food101")
    assert without_other_methods_options(cmpt, notes.append).model.options == {"align_denominator": "paper"}
    with pytest.raises(ConfigError, match="model.options.align_denominatr: no method has this option"):
        load_config("food101", [("model.options.align_denominatr", "none", "--set")])  # a typo: at once
