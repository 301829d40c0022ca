"""Faults that must end in a clear message and no lost work: a disk that fills up part-way through a write (of a
checkpoint, the model, prepared data or a results file), two trainings on one run directory, a kill during
evaluation, a resumed run that says so, and tables that are not UTF-8."""

import builtins
import contextlib
import errno
import io
import json
import multiprocessing
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest
import torch
from layouts import train_command, write_crema_d, write_food101, write_generic

from robustmm.cli import main
from robustmm.data import DatasetError, get_dataset
from robustmm.demo import write_outputs
from robustmm.evaluation import evaluate_runs
from robustmm.serialisation import load_model
from robustmm.runs import run_lock

SIZES = {"train": 8, "val": 4, "test": 4}
SCENARIOS = ["complete", "missing", "grid"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def command(tmp_path_factory, tiny_encoders):
    """`robustmm train` for a tiny dataset, two epochs; a run takes a few seconds."""
    data = write_generic(tmp_path_factory.mktemp("data"), {"image": "image", "text": "text"}, sizes=SIZES)
    return train_command(data, tiny_encoders, epochs=2)


@pytest.fixture(scope="module")
def run(tmp_path_factory, command):
    """A complete run, trained without interruption."""
    out = tmp_path_factory.mktemp("runs") / "run"
    main(command(out))
    return out


@pytest.fixture(scope="module")
def evaluation(run):
    """The run's evaluation, uninterrupted (also left in run/evaluation.json)."""
    return evaluate_runs([run], SCENARIOS)["runs"][0]


# ----- a full disk ---------------------------------------------------------------------------------------------


class FullDisk(io.RawIOBase):
    """A file on a disk with `room` bytes free: a write beyond them stores what fits, then fails with ENOSPC."""

    def __init__(self, file, room: int):
        self.file, self.room = file, room

    def writable(self):
        return True

    def write(self, data):
        data = bytes(data)
        if len(data) > self.room:
            self.file.write(data[: self.room])
            self.room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.file.write(data)

    def close(self):
        self.file.close()
        super().close()


@contextlib.contextmanager
def full_disk(target: Path, after: int = 0):
    """From the (after + 1)-th write of `target` on, its temporary file (`atomic_write`) takes 64 bytes, then the
    disk is full. `open` is the lowest write call that Python code reaches: text and bytes (pathlib), checkpoints
    (torch.save into a Python file) and, made to go through it, Arrow files."""
    real_open = io.open
    writes = 0

    def fake_open(file, mode="r", buffering=-1, encoding=None, errors=None, newline=None, *args):
        nonlocal writes
        path = Path(os.fspath(file)) if isinstance(file, (str, os.PathLike)) else None
        if "w" in mode and path and path.parent == target.parent and path.name.startswith(f".{target.name}."):
            writes += 1
            if writes > after:
                buffered = io.BufferedWriter(FullDisk(real_open(path, "wb", buffering=0), room=64))
                return buffered if "b" in mode else io.TextIOWrapper(buffered, encoding, errors, newline)
        return real_open(file, mode, buffering, encoding, errors, newline, *args)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(io, "open", fake_open)
        patch.setattr(builtins, "open", fake_open)
        patch.setattr(pa, "OSFile", lambda path, mode: pa.PythonFile(fake_open(path, mode), "w"))
        yield


def assert_failed_cleanly(error: pytest.ExceptionInfo, target: Path):
    """The error names the file and the full disk and keeps ENOSPC; no temporary file is left. From the command
    line, it is the cause of exit status 2 and its message is printed."""
    failure = error.value
    if isinstance(failure, SystemExit):
        assert failure.code == 2
        failure = failure.__cause__
    assert str(failure) == f"could not write {target}: No space left on device"
    assert failure.errno == errno.ENOSPC
    assert not list(target.parent.glob(f".{target.name}.*"))


def test_a_full_disk_at_each_write_of_a_run_loses_nothing(command, run, tmp_path, capsys):
    """A run that meets a full disk at the second epoch's last.ckpt, then at config.yaml, protocol.json and
    metrics.json, each time started again: it keeps what it had, resumes saying so, and ends with the metrics of
    an uninterrupted run."""
    out = tmp_path / "run"
    last = out / "checkpoints" / "last.ckpt"
    with full_disk(last, after=1), pytest.raises(SystemExit) as error:
        main(command(out))
    assert_failed_cleanly(error, last)
    assert torch.load(last, weights_only=True)["global_step"] == 2  # the first epoch's checkpoint, whole
    for target in (out / "config.yaml", out / "protocol.json", out / "metrics.json"):
        before = target.read_bytes() if target.is_file() else None
        with full_disk(target), pytest.raises(SystemExit) as error:
            main(command(out))
        assert_failed_cleanly(error, target)
        assert target.read_bytes() == before if before else not target.exists()  # metrics.json: there was none
    assert f"resuming from {last}: 1 of 2 epochs done (step 2)" in capsys.readouterr().err
    main(command(out))
    assert f"resuming from {last}: 2 of 2 epochs done (step 4)" in capsys.readouterr().err
    resumed, straight = (json.loads((r / "metrics.json").read_text()) for r in (out, run))
    assert resumed["selected"] == straight["selected"]
    for split in ("val", "test"):
        assert resumed[split]["metrics"] == pytest.approx(straight[split]["metrics"])


def test_a_full_disk_at_the_first_best_checkpoint(command, tmp_path):
    """best.ckpt is written through the same plugin as last.ckpt; a failed first one leaves none."""
    best = tmp_path / "run" / "checkpoints" / "best.ckpt"
    with full_disk(best), pytest.raises(SystemExit) as error:
        main(command(tmp_path / "run", "--epochs", "1"))
    assert_failed_cleanly(error, best)
    assert not best.exists()


def model_files(run, tmp_path, name):
    model, folder = load_model(run / "model"), tmp_path / "model"
    shutil.copytree(run / "model", folder)
    return lambda: model.save_pretrained(folder), folder / name


def evaluation_file(run, tmp_path, name):
    return lambda: evaluate_runs([run], SCENARIOS), run / name


def demo_results(run, tmp_path, name):
    (tmp_path / name).write_text('{"previous": "results"}')
    return lambda: write_outputs({"new": ["results"] * 100}, tmp_path), tmp_path / name


def arrow_file(run, tmp_path, name):
    argv = ["data", "prepare", "--dataset", "food101", "--root", str(write_food101(tmp_path, {"train": 3, "test": 1}))]
    main(argv)
    return lambda: main(argv), tmp_path / "arrow" / name


def fbank_array(run, tmp_path, name):
    argv = ["data", "prepare", "--dataset", "crema_d", "--root", str(write_crema_d(tmp_path, {"train": 1, "test": 1}))]
    main(argv)
    (target,) = (tmp_path / "audio" / "test_fbank").glob(name)
    return lambda: main([*argv, "--overwrite"]), target


@pytest.mark.parametrize(
    "setup, name",
    [
        (model_files, "model.safetensors"),
        (model_files, "robustmm_config.json"),
        (evaluation_file, "evaluation.json"),
        (demo_results, "results.json"),
        (arrow_file, "food101_test.arrow"),
        (fbank_array, "*.npy"),
    ],
)
def test_a_full_disk_keeps_the_previous_file(run, evaluation, tmp_path, setup, name):
    write, target = setup(run, tmp_path, name)
    before = target.read_bytes()
    with full_disk(target), pytest.raises((OSError, SystemExit)) as error:  # the command line exits with 2
        write()
    assert_failed_cleanly(error, target)
    assert target.read_bytes() == before


# ----- two trainings on one run directory ---------------------------------------------------------------------


def hold(run_dir: Path, ready) -> None:
    with run_lock(run_dir):
        ready.set()
        time.sleep(600)


def test_a_run_directory_in_use_is_refused_until_its_holder_dies(command, tmp_path, capsys):
    out = tmp_path / "run"
    context = multiprocessing.get_context("fork")
    ready = context.Event()
    holder = context.Process(target=hold, args=(out, ready), daemon=True)
    holder.start()
    try:
        assert ready.wait(30), "the holder did not take the lock"
        with pytest.raises(SystemExit) as exit_info:
            main(command(out))
        assert exit_info.value.code == 2
        message = capsys.readouterr().err.splitlines()[-1]
        assert re.fullmatch(
            rf"robustmm train: error: {re.escape(str(out))} is in use by another robustmm train "
            rf"\(pid {holder.pid}, started \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d\); wait for it or choose another --out",
            message,
        ), message
        assert not (out / "config.yaml").exists()
    finally:
        holder.kill()  # SIGKILL: nothing releases the lock but the OS
        holder.join()
    main(command(out, "--epochs", "1"))
    assert (out / "metrics.json").is_file()
    assert (out / ".lock").read_text().startswith(f"pid {os.getpid()}, started ")


# ----- a kill during evaluation -------------------------------------------------------------------------------


def test_a_killed_evaluation_leaves_no_half_file_and_reruns_to_the_same_results(run, evaluation, tmp_path):
    """SIGKILL at a random moment once the evaluation has loaded the model and is about to score: whether the kill
    lands before, during or after the write, evaluation.json is absent or complete, and a rerun gives the results
    of an uninterrupted evaluation."""
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("evaluation.json"))
    log = tmp_path / "evaluate.log"
    with open(log, "w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "robustmm.cli", "evaluate", str(copy), "--scenarios", ",".join(SCENARIOS)],
            stdout=subprocess.DEVNULL, stderr=stderr, env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
    deadline = time.monotonic() + 120
    while "one encoding pass" not in log.read_text():
        assert process.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, "the evaluation did not start scoring within 120 s"
        time.sleep(0.005)
    time.sleep(random.uniform(0, 0.05))  # scoring 4 samples and writing take some 20-40 ms: either side is hit
    process.send_signal(signal.SIGKILL)
    process.wait()

    def results(report: dict) -> dict:
        return {key: value for key, value in report.items() if key != "run"}

    written = copy / "evaluation.json"
    if written.exists():
        assert results(json.loads(written.read_text())) == results(evaluation)
    rerun = evaluate_runs([copy], SCENARIOS)["runs"][0]
    assert results(rerun) == results(evaluation)
    assert results(json.loads(written.read_text())) == results(evaluation)


# ----- tables that are not UTF-8 ------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_a_table_in_latin1_names_the_file_and_line(tmp_path, fmt):
    root = write_generic(tmp_path, fmt=fmt)
    table = root / f"train.{fmt}"
    lines = table.read_text().splitlines(keepends=True)
    lines[2] = lines[2].replace("sample", "samplé")
    table.write_bytes("".join(lines).encode("latin-1"))
    with pytest.raises(DatasetError) as error:
        get_dataset("generic", root, "train")
    before = lines[2][: lines[2].index("é")][-20:]
    assert str(error.value) == (
        f"generic train: {table} line 3: not UTF-8 (byte 0xe9 after {before!r}); re-save the file as UTF-8, e.g. "
        "`iconv -f latin1 -t utf-8 OLD > NEW` or a spreadsheet's 'CSV UTF-8' format"
    )


def test_a_csv_with_a_byte_order_mark_reads_as_utf8(tmp_path):
    root = write_generic(tmp_path)
    table = root / "train.csv"
    table.write_text(table.read_text().replace("a cat", "a café"), encoding="utf-8-sig")
    assert table.read_bytes().startswith(b"\xef\xbb\xbf")
    dataset = get_dataset("generic", root, "train")
    assert len(dataset) == SIZES["train"] and dataset[0]["id"] == "train0"
    assert dataset[0]["caption"] == "a café, sample 0 of train"


# ----- a refused start ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "refused, message",
    [
        (["--batch-size", "0"], "batch_size must be >= 1, got 0"),
        (["--devices", "abc"], "devices must be a count >= 1, -1 (all), auto or indices such as 0,1; got 'abc'"),
        (["--seed", "-1"], "seed must be in 0..2**32-1, got -1"),
        (["--accelerator", "banana"], "accelerator must be one of auto, gpu, cpu, cuda, mps, tpu, got 'banana'"),
        (["--accelerator", "mps"], "the training settings are refused: "),  # refused by Lightning, on this machine
    ],
)
def test_a_refused_start_leaves_nothing_that_blocks_the_corrected_command(command, tmp_path, capsys, refused, message):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        main(command(out, *refused))
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
    if refused[0] == "--accelerator" and refused[1] == "mps":  # one corrected command suffices
        out.mkdir()  # an empty folder given as --out, too, is left as it was
        with pytest.raises(SystemExit):
            main(command(out, *refused))
        assert out.is_dir() and not list(out.iterdir())
        main(command(out, "--epochs", "1"))
        assert (out / "metrics.json").is_file()


# ----- the demo's workers when the demo is stopped --------------------------------------------------------------


def child_pids(pid: int) -> set[int]:
    """The processes whose parent is `pid` (Linux /proc)."""
    children = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                children.add(int(entry.name))
    return children


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_the_demos_workers_end_with_the_demo(tmp_path, stop):
    """`kill` (SIGTERM) or SIGKILL of `robustmm demo` (no --out) while its two workers (the sweep's) train:
    within seconds no worker is left, nor the demo's temporary sweep folder."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    argv = [sys.executable, "-m", "robustmm.cli", "demo", "--quick", "--methods", "baseline,dropout", "--workers",
            "2", "--epochs", "500", "--train-size", "16", "--test-size", "8", "--batch-size", "8", "--no-progress"]
    env = {**os.environ, "TMPDIR": str(scratch), "OMP_NUM_THREADS": "1"}
    demo = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        workers: set[int] = set()
        while len(list(scratch.glob("robustmm-demo-*/cells/*/checkpoints"))) < 2:  # both are training
            assert demo.poll() is None, "the demo ended before its workers trained"
            assert time.monotonic() < deadline, "the workers did not start training within 120 s"
            workers |= child_pids(demo.pid)
            time.sleep(0.2)
        workers |= child_pids(demo.pid)
        os.kill(demo.pid, stop)
        demo.wait(60)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (any(alive(pid) for pid in workers) or list(scratch.iterdir())):
            time.sleep(0.2)
        assert not [pid for pid in workers if alive(pid)], "workers outlived the demo"
        left = [str(p.relative_to(scratch)) for p in scratch.glob("**/*")]
        assert not left, f"the demo's temporary folder was left: {left}"
        if stop == signal.SIGTERM:
            assert demo.returncode == 128 + signal.SIGTERM
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(demo.pid, signal.SIGKILL)  # whatever is left of the demo's session
        demo.wait()
