"""`robustmm serve` on a tiny calibrated run: the answers of `robustmm predict`, batched or not; the limits (body
size, pixels, paths, API key, shapes) and the faults (bad requests, many clients, disconnects, SIGTERM, SIGKILL);
the page driven in headless Chromium. Two servers on 127.0.0.1, started once for the module and always ended."""

import base64
import concurrent.futures
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import httpx
import pytest
from layouts import train_command, write_generic, write_image

from robustmm.cli import build_parser, main

pytestmark = pytest.mark.usefixtures("one_thread")
CLASSES = ("cat", "dog", "bird")
KEY = "s3cret-test-key-7"
LONG_TEXT = "a cat " * 2000  # far past the text encoder's positions: truncated as in predict


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def descendants(pid: int) -> set[int]:
    """Every live process below `pid`, from /proc."""
    parents = {}
    for entry in Path("/proc").iterdir():
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if entry.name.isdigit() and fields[0] != "Z":
            parents.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def alive(pids) -> set[int]:
    """Those of `pids` still running (an exited child not yet reaped is a zombie: ended)."""
    running = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z":
            running.add(pid)
    return running


def raw_reply(raw: socket.socket) -> bytes:
    """An HTTP response read off a socket: the headers and as many body bytes as they declare."""
    reply = b""
    while b"\r\n\r\n" not in reply or len(reply.split(b"\r\n\r\n", 1)[1]) < int(
            re.search(rb"content-length: (\d+)", reply, re.I).group(1)):
        chunk = raw.recv(65536)
        if not chunk:
            break
        reply += chunk
    return reply


def ended(pids, seconds: float = 20) -> bool:
    deadline = time.monotonic() + seconds
    while alive(pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    return not alive(pids)


class Server:
    """`robustmm serve` in a child process, its log in a file; `stop()` ends it and all its children."""

    def __init__(self, run_dir: Path, log: Path, *options: str, key: str | None = None):
        self.port, self.log = free_port(), log
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "SERVE_TEST_KEY": key or ""}
        command = [sys.executable, "-m", "robustmm", "serve", str(run_dir), "--port", str(self.port), *options]
        with open(log, "wb") as handle:
            self.process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env)
        self.url = f"http://127.0.0.1:{self.port}"
        self.client = httpx.Client(base_url=self.url, timeout=60,
                                   headers={"Authorization": f"Bearer {key}"} if key else {})

    def wait_ready(self, seconds: float = 180) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()[-3000:]
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"not ready in {seconds} s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        self.client.close()
        children = descendants(self.process.pid)
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)
        for pid in alive(children):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_encoders):
    """A CMPT run on a tiny image+text dataset, calibrated on its validation split."""
    root = tmp_path_factory.mktemp("serve")
    data = write_generic(root / "data", {"photo": "image", "caption": "text"}, CLASSES,
                         {"train": 8, "val": 9, "test": 3}, missing={"caption": 3})
    main(train_command(data, tiny_encoders, epochs=1)(root / "run", "--method", "cmpt"))
    main(["calibrate", str(root / "run")])
    return root / "run"


@pytest.fixture(scope="module")
def servers(run, tmp_path_factory):
    """`keyed`: fp32, an API key, a 1 MB body limit and batches of up to 4 requests filled for 100 ms;
    `plain`: the defaults, two workers, to be killed. Both start at once and are always ended."""
    logs = tmp_path_factory.mktemp("logs")
    keyed = Server(run, logs / "keyed.log", "--precision", "32-true", "--api-key-env", "SERVE_TEST_KEY",
                   "--max-request-mb", "1", "--max-batch-size", "4", "--batch-timeout-ms", "100", key=KEY)
    plain = Server(run, logs / "plain.log", "--workers", "2")
    try:
        keyed.wait_ready()
        plain.wait_ready()
        yield {"keyed": keyed, "plain": plain}
    finally:
        keyed.stop()
        plain.stop()


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """The request's images as files (for predict) beside new.csv, and what cannot be predicted, as bytes."""
    folder = tmp_path_factory.mktemp("media")
    for index, name in enumerate(("a", "b")):
        write_image(folder / f"{name}.png", index, size=32)
    return folder


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height and whose pixel data is garbage: decoding it would fail."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"garbage") + chunk(b"IEND", b"")


ROWS = [  # id, photo file, caption
    ("both", "a.png", "a cat sitting"), ("photo only", "b.png", ""), ("caption only", "", "a bird on a tree"),
    ("long text", "a.png", LONG_TEXT), ("other", "b.png", "a dog in a house"),
]


def served_row(media: Path, identifier: str, photo: str, caption: str) -> dict:
    row = {"id": identifier, "caption": caption or None}
    if photo:
        row["photo"] = b64((media / photo).read_bytes())
    return row


@pytest.fixture(scope="module")
def offline(run, media):
    """`robustmm predict`'s records of ROWS in fp32, by id."""
    import csv

    with open(media / "new.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([("id", "photo", "caption"), *ROWS])
    out = media / "offline.jsonl"
    main(["predict", str(run), "--input", str(media / "new.csv"), "--out", str(out), "--precision", "32-true"])
    return {record["id"]: record for record in map(json.loads, out.read_text().splitlines())}


def assert_same(served: dict, offline: dict) -> None:
    assert served["modalities"] == offline["modalities"] and served["prediction"] == offline["prediction"]
    assert served["temperature"] == pytest.approx(offline["temperature"])
    for name in CLASSES:
        assert abs(served["probabilities"][name] - offline["probabilities"][name]) <= 1e-5


def test_the_endpoints_and_the_answers_of_predict_one_request_or_many_batched(servers, media, offline, run):
    server = servers["keyed"]
    assert httpx.get(f"{server.url}/health").status_code == 200  # open to probes without the key
    info = server.client.get("/info").json()
    assert info["method"] == "cmpt" and info["modalities"] == {"photo": "image", "caption": "text"}
    assert info["classes"] == list(CLASSES) and info["precision"] == "32-true" and info["version"]
    calibration = json.loads((run / "calibration.json").read_text())
    assert info["calibration"]["applied"] and set(info["calibration"]["temperatures"]) == set(calibration["patterns"])
    openapi = httpx.get(f"{server.url}/openapi.json").json()
    assert "/predict" in openapi["paths"] and httpx.get(f"{server.url}/docs").status_code == 200

    rows = [served_row(media, *row) for row in ROWS]
    answer = server.client.post("/predict", json={"rows": rows})
    assert answer.status_code == 200
    served = answer.json()["rows"]
    assert [r["id"] for r in served] == [r[0] for r in ROWS]  # the request's order
    assert {"id", "modalities", "prediction", "probabilities", "temperature"} <= set(served[0])
    for record in served:
        assert_same(record, offline[record["id"]])

    with concurrent.futures.ThreadPoolExecutor(8) as pool:  # single-row requests batched together by the server
        answers = list(pool.map(lambda row: server.client.post("/predict", json={"rows": [row]}), rows * 2))
    assert max(int(a.headers["x-batch"]) for a in answers) > 1
    for answer in answers:
        (record,) = answer.json()["rows"]
        assert_same(record, offline[record["id"]])

    form = server.client.post("/predict", data={"id": "both", "caption": ROWS[0][2]},
                              files={"photo": ("a.png", (media / "a.png").read_bytes(), "image/png")})
    assert_same(form.json()["rows"][0], offline["both"])


def test_rows_that_cannot_be_predicted_get_an_error_and_the_others_an_answer(servers, media):
    """No modality, bytes that are no image, strings where bytes belong (a path on the server too: never
    opened), too many pixels and a decompression bomb (both refused from the header, before decoding)."""
    server = servers["keyed"]
    rows = [
        {"id": "good", "caption": "a cat"},
        {"id": "empty", "photo": "", "caption": None},
        {"id": "absent"},
        {"id": "not an image", "photo": b64(b"hello"), "caption": "a cat"},
        {"id": "a path", "photo": "/etc/hostname"},
        {"id": "a server file", "photo": str(media / "a.png")},
        {"id": "too many pixels", "photo": b64(png_header(7000, 7000))},
        {"id": "bomb", "photo": b64(png_header(40000, 40000))},
        {"id": "good too", "photo": b64((media / "b.png").read_bytes())},
    ]
    answer = server.client.post("/predict", json={"rows": rows})
    assert answer.status_code == 200
    records = {r["id"]: r for r in answer.json()["rows"]}
    assert list(records) == [row["id"] for row in rows]
    assert "probabilities" in records["good"] and "probabilities" in records["good too"]
    for name in ("empty", "absent"):
        assert "has no modality" in records[name]["error"]
    assert "cannot read image photo" in records["not an image"]["error"]
    for name in ("a path", "a server file"):
        assert "send the file's bytes in base64" in records[name]["error"] and "probabilities" not in records[name]
    assert "7000x7000 pixels, more than max_pixels" in records["too many pixels"]["error"]
    for name in ("too many pixels", "bomb"):
        assert "refused before decoding" in records[name]["error"]


BAD_BODIES = [
    (b"{not json", 400, "body: not valid JSON"),
    (b"\xff\xfe\x00", 400, "body: not valid JSON"),
    (b"[]", 422, "body: expected an object"),
    (b'{"rows": {}}', 422, "rows: expected a non-empty array"),
    (b'{"rows": []}', 422, "rows: expected a non-empty array"),
    (b'{"rows": [{"caption": "a"}], "extra": 1}', 422, "extra: unknown field"),
    (b'{"rows": [1]}', 422, "rows[0]: expected an object"),
    (b'{"rows": [{"caption": "a"}, {"foto": "x"}]}', 422, "rows[1].foto: not a modality of this model"),
    (b'{"rows": [{"caption": 5}]}', 422, "rows[0].caption: expected a text, got a number"),
    (b'{"rows": [{"photo": ["x"]}]}', 422, "rows[0].photo: expected the file's bytes in base64"),
    (b'{"rows": [{"id": {}, "caption": "a"}]}', 422, "rows[0].id: expected a string or a number"),
]


def test_malformed_bodies_get_a_4xx_naming_the_field_and_the_server_stays_up(servers):
    server = servers["keyed"]
    for body, status, message in BAD_BODIES:
        answer = server.client.post("/predict", content=body, headers={"content-type": "application/json"})
        assert answer.status_code == status, body
        assert message in answer.json()["detail"] and "Traceback" not in answer.text
    form = server.client.post("/predict", data={"foto": "x"}, files={"photo": ("a", b"")})
    assert form.status_code == 422 and "foto: not a modality" in form.json()["detail"]
    assert server.client.post("/predict", json={"rows": [{"caption": "a cat"}]}).status_code == 200


def test_bodies_over_the_limit_get_413_from_the_declared_or_the_streamed_size(servers):
    server = servers["keyed"]
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as raw:
        raw.sendall(f"POST /predict HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {2 * 2**20}\r\n\r\n".encode())
        reply = raw_reply(raw).decode()
    assert reply.startswith("HTTP/1.1 413") and "over the limit of 1 MB" in reply

    def chunks():  # no Content-Length: the server counts what arrives
        yield b'{"rows": [{"caption": "'
        for _ in range(40):
            yield b"x" * 2**15
    try:
        answer = server.client.post("/predict", content=chunks())
        assert answer.status_code == 413
    except httpx.WriteError:  # the server answered and closed before the client finished sending
        pass
    assert server.client.post("/predict", json={"rows": [{"caption": "a" * 500_000}]}).status_code == 200


def test_the_api_key_is_required_and_never_logged(servers):
    server = servers["keyed"]
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        for method, path in (("POST", "/predict"), ("GET", "/info")):
            answer = httpx.request(method, f"{server.url}{path}", headers=headers, json={"rows": [{"caption": "a"}]})
            assert answer.status_code == 401 and "Authorization: Bearer" in answer.json()["detail"]
    assert server.client.get("/info").status_code == 200
    assert KEY not in server.log.read_text()


def test_one_log_line_per_request_without_the_payload(servers):
    server = servers["keyed"]
    marker = "zebra-payload-marker"
    headers = {"X-Request-ID": "log-check-1"}
    server.client.post("/predict", json={"rows": [{"caption": marker}, {"caption": "a dog", "id": 2}]},
                       headers=headers)
    server.client.post("/predict", content=b"{oops", headers={"X-Request-ID": "log-check-2"})
    time.sleep(0.5)
    text = server.log.read_text()
    (line,) = [line for line in text.splitlines() if "request log-check-1 " in line]
    assert re.search(r"POST /predict status 200 rows 2 modalities caption:2 batch \d+ latency [\d.]+ ms", line)
    (line,) = [line for line in text.splitlines() if "request log-check-2 " in line]
    assert "status 400 rows -" in line
    assert marker not in text


def test_many_concurrent_clients_and_disconnects_cost_only_their_requests(servers, media):
    """32 clients at once, good and bad requests mixed; a client that sends half a body and goes, one that
    goes before its answer: the others are answered and the server stays up."""
    server = servers["keyed"]
    good = {"rows": [served_row(media, "x", "a.png", "a cat")]}

    def call(number):
        if number % 3 == 2:
            return server.client.post("/predict", content=b"[", headers={"content-type": "application/json"})
        return server.client.post("/predict", json=good)

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(call, range(64)))
    assert [a.status_code for a in answers] == [400 if n % 3 == 2 else 200 for n in range(64)]
    first = answers[0].json()["rows"][0]
    for answer in answers:
        if answer.status_code == 200:
            assert_same(answer.json()["rows"][0], first)  # the same row, whatever it was batched with

    body = json.dumps(good).encode()
    for sent in (body[:10], body):  # half a body, then a whole one whose answer nobody reads
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as raw:
            raw.sendall(f"POST /predict HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nX-Request-ID: gone\r\n"
                        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + sent)
    time.sleep(0.5)
    assert_same(server.client.post("/predict", json=good).json()["rows"][0], first)
    assert httpx.get(f"{server.url}/health").status_code == 200
    assert "request gone POST /predict status disconnected" in server.log.read_text()


def chromium_page(url: str, profile: Path):
    """Headless Chromium driven over the DevTools protocol: (process, send(method, **params))."""
    from websockets.sync.client import connect

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser, "the page check drives headless Chromium: apt-get install chromium (test.sh does)"
    flags = ["--headless", "--disable-gpu", f"--user-data-dir={profile}", "--remote-debugging-port=0"]
    if os.geteuid() == 0:
        flags.append("--no-sandbox")  # Chromium's sandbox refuses to run as root
    process = subprocess.Popen([browser, *flags, "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not (profile / "DevToolsActivePort").is_file() or not (profile / "DevToolsActivePort").read_text().strip():
        assert time.monotonic() < deadline and process.poll() is None, "Chromium did not start"
        time.sleep(0.1)
    port = (profile / "DevToolsActivePort").read_text().split()[0]
    targets = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
    socket_ = connect(next(t for t in targets if t["type"] == "page")["webSocketDebuggerUrl"], max_size=None)
    counter = iter(range(1, 10**6))

    def send(method, **params):
        number = next(counter)
        socket_.send(json.dumps({"id": number, "method": method, "params": params}))
        while True:
            message = json.loads(socket_.recv(timeout=30))
            if message.get("id") == number:
                assert "error" not in message, message
                return message["result"]

    send("Page.navigate", url=url)
    return process, socket_, send


def evaluate(send, expression: str):
    done = send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
    assert "exceptionDetails" not in done, done["exceptionDetails"]
    return done["result"].get("value")


def wait_for(send, expression: str, seconds: float = 30):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if evaluate(send, f"(() => {{ try {{ return !!({expression}); }} catch (e) {{ return false; }} }})()"):
            return
        time.sleep(0.1)
    raise AssertionError(f"never true on the page: {expression}")  # a page still loading counts as false


def test_the_page_in_chromium_fills_submits_and_draws_the_probabilities(servers, media, offline, tmp_path):
    server = servers["keyed"]
    process, socket_, send = chromium_page(server.url + "/", tmp_path / "profile")
    try:
        wait_for(send, "!document.getElementById('key-field').hidden")  # the server needs a key: the page asks
        evaluate(send, f"const k = document.getElementById('key'); k.value = {json.dumps(KEY)};"
                       "k.dispatchEvent(new Event('change'))")
        wait_for(send, "document.getElementById('caption') && document.getElementById('photo')")
        assert "cmpt" in evaluate(send, "document.getElementById('about').textContent")
        evaluate(send, f"document.getElementById('caption').value = {json.dumps(ROWS[0][2])}")
        root = send("DOM.getDocument")["root"]["nodeId"]
        photo = send("DOM.querySelector", nodeId=root, selector="#photo")["nodeId"]
        send("DOM.setFileInputFiles", nodeId=photo, files=[str(media / "a.png")])
        evaluate(send, "document.querySelector('button[type=submit]').click()")
        wait_for(send, "document.getElementById('result').dataset.state === 'done'")
        shown = evaluate(send, "[...document.querySelectorAll('#result .bar')].map(b => "
                               "[b.dataset.class, Number(b.dataset.probability), b.children[1].style.width])")
        used = evaluate(send, "document.getElementById('used').textContent")
        headline = evaluate(send, "document.querySelector('#result h2').textContent")
    finally:
        socket_.close()
        process.kill()
        process.wait(30)
    assert used == "modalities used: photo+caption" and headline == offline["both"]["prediction"]
    assert {name for name, _, _ in shown} == set(CLASSES)
    for name, probability, width in shown:
        assert abs(probability - offline["both"]["probabilities"][name]) <= 1e-5
        assert width == f"{probability * 20:.2f}rem"  # the bar's length is its probability


def test_it_binds_loopback_by_default_and_its_children_end_with_a_killed_parent(servers):
    assert build_parser().parse_args(["serve", "run"]).host == "127.0.0.1"
    server = servers["plain"]
    listening = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        if state == "0A" and int(local.split(":")[1], 16) == server.port:
            listening.add(local.split(":")[0])
    assert listening == {"0100007F"}  # 127.0.0.1 only
    assert server.client.post("/predict", json={"rows": [{"caption": "a cat"}]}).status_code == 200
    children = descendants(server.process.pid)
    assert len(children) >= 4  # LitServe's manager, the API server, two workers
    server.process.kill()
    server.process.wait(30)
    assert ended(children)
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{server.url}/health", timeout=2)


def test_sigterm_drains_the_request_in_flight_and_exits_0(servers):
    """Last: it ends the keyed server. A request whose body is still arriving when SIGTERM comes is answered."""
    server = servers["keyed"]
    children = descendants(server.process.pid)
    body = json.dumps({"rows": [{"caption": "a cat", "id": "in flight"}]}).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as raw:
        raw.sendall(f"POST /predict HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nConnection: close\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body[:5])
        time.sleep(0.5)
        server.process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        raw.sendall(body[5:])
        reply = raw_reply(raw)
    assert reply.startswith(b"HTTP/1.1 200") and b'"id":"in flight"' in reply
    assert server.process.wait(60) == 0
    assert ended(children)


def test_sounds_and_video_frames_arrive_as_bytes_too(tmp_path):
    """A .wav's bytes become the waveform `load_audio` reads from the file; a video is an array of frames, each
    an image's bytes (checked for pixels like an image)."""
    import numpy as np
    from layouts import write_wav

    from robustmm.data.base import load_audio
    from robustmm.serve import Refusal, ServedRowReader, request_rows

    kinds = {"sound": "audio", "clip": "video"}
    wav = write_wav(tmp_path / "a.wav", 1)
    frames = [b64(write_image(tmp_path / f"f{n}.png", n).read_bytes()) for n in range(3)]
    cells = {"id": "v", "sound": b64(wav.read_bytes()), "clip": frames}
    assert request_rows({"rows": [cells]}, kinds) == [cells]
    row = ServedRowReader(kinds)("rows[0]", cells, 0)
    assert row.error is None and np.array_equal(row.sample["sound"], load_audio(wav))
    assert [frame.size for frame in row.sample["clip"]] == [(8, 8)] * 3
    bad = ServedRowReader(kinds, max_pixels=10)("rows[0]", {"clip": frames[:1], "sound": b64(b"RIFF")}, 0)
    assert "cannot read audio sound" in bad.error
    bad = ServedRowReader(kinds, max_pixels=10)("rows[0]", {"clip": frames[:1]}, 0)
    assert "clip frame 0: refused before decoding: 8x8 pixels, more than max_pixels (10)" in bad.error
    with pytest.raises(Refusal, match=r"rows\[0\].clip: expected the file's bytes in base64, as a string or an array"):
        request_rows({"rows": [{"clip": [1]}]}, kinds)


def test_a_batch_timeout_of_0_is_refused_before_loading():
    from robustmm.serve import build_server

    with pytest.raises(ValueError, match="--batch-timeout-ms must be above 0"):
        build_server("/nonexistent", batch_timeout_ms=0)
