"""`robustmm report`: the page, its figures and tables from finished runs, rendered in headless Chromium; the
attention maps and feature accessors on tiny encoders."""

import base64
import csv
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from layouts import train_command, write_generic

from robustmm.cli import main
from robustmm.report import attention_maps, training_seconds

pytestmark = pytest.mark.usefixtures("one_thread")
FIGURES = {"radar", "missing-rate", "class-gain", "tsne", "attention", "reliability"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_encoders):
    """baseline (seed 0) and cmpt (seeds 0 and 1) on one tiny image+text dataset; cmpt seed 0 calibrated."""
    root = tmp_path_factory.mktemp("report")
    data = write_generic(root / "data", {"image": "image", "text": "text"}, ("cat", "dog", "bird"),
                         {"train": 12, "val": 9, "test": 12}, missing={"text": 4})
    command = train_command(data, tiny_encoders, epochs=1)
    dirs = []
    for method, seed in (("baseline", 0), ("cmpt", 0), ("cmpt", 1)):
        dirs.append(root / f"{method}{seed}")
        main(command(dirs[-1], "--method", method, "--seed", str(seed)))
    main(["calibrate", str(dirs[1])])
    return dirs


@pytest.fixture(scope="module")
def report(runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "report"
    main(["report", *map(str, runs), "--out", str(out)])
    return out


def chromium(page: Path, profile: Path, *action: str) -> subprocess.CompletedProcess:
    """Headless Chromium on `page`, console messages logged to stderr."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser, "the report check renders the page in headless Chromium: apt-get install chromium (test.sh does)"
    flags = ["--headless", "--disable-gpu", "--hide-scrollbars", "--enable-logging=stderr", "--v=0",
             f"--user-data-dir={profile}", "--virtual-time-budget=10000"]
    if os.geteuid() == 0:
        flags.append("--no-sandbox")  # Chromium's sandbox refuses to run as root
    return subprocess.run([browser, *flags, *action, page.as_uri()], capture_output=True, text=True, timeout=120)


def render_status(page: Path, tmp_path: Path) -> tuple[str, list[str]]:
    """What the page's own check wrote into it, and the console messages."""
    done = chromium(page, tmp_path / "profile", "--dump-dom")
    assert done.returncode == 0, done.stderr[-2000:]
    status = re.search(r'id="render-status"[^>]*>([^<]*)<', done.stdout).group(1)
    return status, [line for line in done.stderr.splitlines() if ":CONSOLE" in line]


def test_the_page_draws_every_figure_without_a_console_message(report, tmp_path):
    page = report / "report.html"
    text = page.read_text()
    assert "http://" not in text and "https://" not in text  # self-contained: nothing fetched
    assert set(re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,', text)) == FIGURES
    status, console = render_status(page, tmp_path)
    assert status == f"all {len(FIGURES)} figures drawn" and console == []
    shot = tmp_path / "page.png"
    done = chromium(page, tmp_path / "profile", f"--screenshot={shot}", "--window-size=1200,3000")
    assert done.returncode == 0 and shot.stat().st_size > 50_000
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("L"))
    assert pixels.std() > 10  # text, tables and figures, not a blank page


def test_the_check_fails_on_a_truncated_figure_and_on_a_console_error(report, tmp_path):
    text = (report / "report.html").read_text()
    encoded = re.search(r'alt="tsne" src="data:image/png;base64,([^"]+)"', text).group(1)
    half = base64.b64encode(base64.b64decode(encoded)[: len(encoded) // 3]).decode()
    broken = tmp_path / "broken.html"
    broken.write_text(text.replace(encoded, half).replace("</body>", '<script>console.error("x")</script></body>'))
    status, console = render_status(broken, tmp_path)
    assert status == "broken figures: tsne" and len(console) == 1


def test_the_report_writes_markdown_pngs_and_tables_that_agree_with_evaluate(report, runs, tmp_path):
    assert {p.stem for p in (report / "figures").glob("*.png")} == FIGURES
    summary = (report / "report.md").read_text()
    assert "## Availability scenarios" in summary and "![tsne](figures/tsne.png)" in summary
    scenarios = json.loads((report / "tables" / "scenarios.json").read_text())
    assert [row["scenario"] for row in scenarios] == ["complete", "image missing", "text missing"]
    evaluated = {}
    for run in runs[1:]:
        main(["evaluate", str(run), "--scenarios", "complete,missing"])
        result = json.loads((run / "evaluation.json").read_text())
        for row in result["scenarios"]:
            evaluated.setdefault(row["name"], []).append(row["metrics"]["accuracy"])
    for row in scenarios:
        assert row["cmpt"]["runs"] == 2 and row["baseline"]["runs"] == 1
        assert row["cmpt"]["mean"] == pytest.approx(np.mean(evaluated[row["scenario"]]))
        assert row["cmpt"]["sd"] == pytest.approx(np.std(evaluated[row["scenario"]], ddof=1))
    with open(report / "tables" / "scenarios.csv") as handle:
        assert {"scenario", "cmpt.mean", "cmpt.sd", "baseline.mean"} <= set(next(csv.reader(handle)))
    best = re.findall(r'<td class="best">([^<]+)</td>', (report / "report.html").read_text())
    assert len(best) == 3  # one best cell per scenario
    gains = json.loads((report / "tables" / "class_gain.json").read_text())
    assert {(g["method"], g["over"]) for g in gains} == {("cmpt", "baseline")}
    for scenario in ("image missing", "text missing"):
        values = [g["gain"] for g in gains if g["scenario"] == scenario]
        assert len(values) == 3 and values == sorted(values, reverse=True)
    calibration = json.loads((report / "tables" / "calibration.json").read_text())
    assert {(r["method"], r["seed"], r["pattern"]) for r in calibration} == {
        (m, s, p) for m, s in (("baseline", 0), ("cmpt", 0), ("cmpt", 1)) for p in ("image+text", "image", "text")
    }
    assert all(0 <= r["ece"] <= 1 for r in calibration)
    assert {r["seed"] for r in calibration if "temperature" in r} == {0} and all(
        "ece_calibrated" in r for r in calibration if "temperature" in r and r["method"] == "cmpt"
    )
    compute = {entry["method"]: entry for entry in json.loads((report / "tables" / "compute.json").read_text())}
    assert compute["cmpt"]["parameters"]["proxies"] == 2 * 32 and "proxies" not in compute["baseline"]["parameters"]
    assert compute["cmpt"]["train_seconds"] > 0 and compute["baseline"]["train_seconds"] > 0
    assert set(compute["cmpt"]["seconds_per_1000"]) == {"complete", "image missing", "text missing"}


def test_a_run_given_twice_another_config_or_an_unknown_attention_sample_is_refused_first(runs, tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    config = (runs[2] / "config.yaml").read_text()
    (other / "config.yaml").write_text(config.replace("seed: 1", "seed: 7").replace("lr: 0.01", "lr: 0.02"))
    for extra, message in (([str(runs[1])], "both cmpt with seed 0"),
                           ([str(other)], "is not a seed of"),
                           (["--attention-ids", "test0,nope"], "--attention-ids: no test sample has id 'nope'"),
                           (["--gain", "cmpt,nope"], "gain: ('cmpt', 'nope') must name two different methods"),
                           (["--focus", "molt"], "focus: 'molt' is not a method of the report (cmpt)")):
        with pytest.raises(SystemExit) as exit_info:
            main(["report", str(runs[1]), *extra, "--out", str(tmp_path / "r")])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_attention_maps_are_last_layer_weights_over_the_patches(tiny_encoders):
    """The tiny ViT (32 px, 16 px patches: a 2x2 grid) with one CMPT proxy token: one map for the class token and
    one for the proxy, each a share of the token's attention (the rest goes to the class and proxy tokens)."""
    from PIL import Image

    import robustmm

    model = robustmm.build_model("cmpt", encoders={"image": tiny_encoders["image"], "text": tiny_encoders["text"]},
                                 num_classes=3)
    samples = [{"image": Image.new("RGB", (32, 32), (200, 30, 30)), "text": "a cat"},
               {"image": Image.new("RGB", (32, 32), (30, 30, 200))}]
    base = model.encoders["image"].backbone.get_base_model()
    before = base.config._attn_implementation
    found = attention_maps(model, samples, "image")
    assert found["tokens"] == ["class token", "proxies"]  # the encoder's token segment
    maps = found["maps"]
    assert maps.shape == (2, 2, 2, 2) and (maps > 0).all() and (maps.sum((2, 3)) < 1).all()
    assert base.config._attn_implementation == before  # the fused kernels are back
    probabilities = model.predict(samples)
    assert torch.allclose(probabilities.sum(-1), torch.ones(2), atol=1e-5)


@pytest.mark.parametrize("method, options, tokens", [
    ("cmpt", {}, ["class token", "proxies 1", "proxies 2"]),
    ("map", {"prompt_depth": 2, "prompt_length": 5, "prompt_type": "input"},
     ["class token", "prompts1 (mean of 5)", "prompts0 (mean of 5)"]),
], ids=["cmpt-3", "map"])
def test_attention_panels_are_named_after_the_encoders_token_segments(tiny_encoders, method, options, tokens):
    """Three modalities give CMPT two proxies in front of the image's class token; MAP's input prompts, kept from
    each layer they enter, are in front of it at the last layer too, each segment one panel for its mean."""
    from PIL import Image

    import robustmm

    encoders = {m: tiny_encoders[m] for m in ("image", "text", "audio")}
    model = robustmm.build_model(method, encoders=encoders, num_classes=3, **options)
    found = attention_maps(model, [{"image": Image.new("RGB", (32, 32), (200, 30, 30))}], "image")
    assert found["tokens"] == tokens and found["maps"].shape == (1, 3, 2, 2)
    assert (found["maps"] > 0).all() and (found["maps"].sum((2, 3)) < 1).all()


def test_training_time_sums_the_attempts(runs):
    assert training_seconds(runs[0]) > 0
    assert training_seconds(Path("/nonexistent")) is None


def test_report_data_of_models_in_memory_ends_its_curves_at_the_scenarios(tiny_encoders):
    """The missing-rate curve at 0% is the complete scenario and at 100% the modality-missing one; a sample whose
    only modality is the hidden one keeps it."""
    from PIL import Image

    import robustmm
    from robustmm.report import from_models

    model = robustmm.build_model("cmpt", encoders={"image": tiny_encoders["image"], "text": tiny_encoders["text"]},
                                 num_classes=3, class_names=["cat", "dog", "bird"])
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]
    samples = [{"id": str(i), "label": i % 3, "image": Image.new("RGB", (32, 32), colours[i % 3]),
                "text": None if i == 5 else f"a {['cat', 'dog', 'bird'][i % 3]}"} for i in range(12)]
    data = from_models({"cmpt": model}, samples)
    (run,) = data.runs
    assert list(run.scenarios) == ["complete", "image missing", "text missing"]
    for modality in ("image", "text"):
        assert run.sweeps[modality][0] == pytest.approx(run.scenarios["complete"])
        assert run.sweeps[modality][-1] == pytest.approx(run.scenarios[f"{modality} missing"])
    assert set(run.per_class["complete"]) == {"cat", "dog", "bird"} and data.modalities == {"image": "image",
                                                                                           "text": "text"}


def test_the_gain_pair_and_the_focus_method_are_options(tiny_encoders, tmp_path):
    """Models in memory, none called cmpt or baseline: the gain of the one chosen over the other, and the t-SNE
    and attention of the chosen focus, whose proxies are named after the image encoder's token segment."""
    import robustmm
    from robustmm.contract import make_samples
    from robustmm.report import write_report

    encoders = {"image": tiny_encoders["image"], "text": tiny_encoders["text"]}
    models = {name: robustmm.build_model(method, encoders=encoders, num_classes=3, class_names=["r", "g", "b"])
              for name, method in (("proxies", "cmpt"), ("plain", "baseline"), ("dropped", "dropout"))}
    samples = make_samples(12)
    for index in (2, 7):
        samples[index]["text"] = None
    page = write_report(models, tmp_path / "r", samples, gain=("plain", "dropped"), focus="proxies")
    gains = json.loads((tmp_path / "r" / "tables" / "class_gain.json").read_text())
    assert {(g["method"], g["over"]) for g in gains} == {("plain", "dropped")} and len(gains) == 2 * 3
    text = page.read_text()
    assert "Per-class gain of plain over dropped" in text and "proxies (seed 0): last layer" in text
    write_report(models, tmp_path / "d", samples)  # by default: the last method over the first, the first's focus
    gains = json.loads((tmp_path / "d" / "tables" / "class_gain.json").read_text())
    assert {(g["method"], g["over"]) for g in gains} == {("dropped", "proxies")}
    with pytest.raises(ValueError, match="focus: 'cmpt' is not a method of the report"):
        write_report(models, tmp_path / "e", samples, focus="cmpt")
