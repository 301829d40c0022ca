"""`robustmm serve`: one model answering HTTP requests, each row predicted from whatever modalities it carries.

Built on LitServe (Lightning's server on FastAPI and uvicorn): its inference workers load the model and batch
concurrent requests (up to `--max-batch-size` requests, waiting at most `--batch-timeout-ms` for a batch to
fill), and it serves `/health` (200 once every worker has loaded the model) and `/docs`. Rows are read,
predicted and calibrated by `robustmm predict`'s own code (`RowReader`, `predict_rows`, `load_predictor`), so a
served row gets the probabilities of the same row offline; only where a value comes from differs: media arrive
as base64 bytes, and a string is never opened as a path.

What LitServe 0.2 does not do as this server needs, and what is added here:
- It answers a body that is not JSON with 500, and a request that fails to decode fails every request batched
  with it (`run_batched_loop` answers the whole batch with the error). So `Gate`, an ASGI middleware in the API
  process, reads the body first, bounded by `--max-request-mb` (413), checks the API key (401), the JSON and its
  shape (400 or 422 naming the field), and turns a multipart form into the same JSON: a bad request never
  reaches a batch. It writes the one log line per request.
- Its API key is an `X-API-Key` header read from `LIT_SERVER_API_KEY`, and it guards `/health` too; here it is
  `Authorization: Bearer`, read from the variable `--api-key-env` names, and `/health` stays open for probes.
- It installs no SIGTERM handler in its main process, which SIGTERM therefore ends at once, leaving its API
  servers and workers behind. Here SIGTERM first lets the API servers (uvicorn) finish the requests in flight
  while the workers still answer, then shuts LitServe down as on Ctrl+C: the process exits 0.
- Nothing ends its child processes when the parent is killed with SIGKILL (which no handler sees); each here
  asks Linux to end it with its parent.
- Its `/` and `/info` say only "litserve running" and the server's settings; here `/` is a page to try the
  model and `/info` describes the model.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import io
import json
import logging
import multiprocessing
import os
import re
import signal
import sys
import time
import uuid
from collections import Counter
from importlib import resources
from pathlib import Path

import litserve as ls

from .predict import RowReader, load_predictor, modality_kinds, predict_rows

MAX_PIXELS = 40_000_000
"""Images (and video frames) with more pixels are refused from their header, before they are decoded."""
PAGE = "serve.html"
PUBLIC_PATHS = ("/", "/health", "/docs", "/openapi.json")
"""Paths open without the API key: the page and the documentation hold no model data, probes send no key."""
GRACEFUL_SECONDS = 30
log = logging.getLogger("robustmm.serve")


class Refusal(Exception):
    """A request refused before it is queued: the HTTP status and the message naming the field."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


def json_type(value) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number",
             float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def request_rows(payload, kinds: dict[str, str]) -> list[dict]:
    """The rows of a `{"rows": [...]}` body, checked for shape: every key an id or a modality, every value of the
    modality's type. Content (base64, pixels) is checked per row by the workers, so a bad row fails alone."""
    if not isinstance(payload, dict) or "rows" not in payload:
        raise Refusal(422, f'body: expected an object {{"rows": [...]}}, got {json_type(payload)}'
                      + (f" with {', '.join(map(repr, payload))}" if isinstance(payload, dict) else ""))
    if set(payload) != {"rows"}:
        raise Refusal(422, f"{sorted(set(payload) - {'rows'})[0]}: unknown field; the body holds only rows")
    rows = payload["rows"]
    if not isinstance(rows, list) or not rows:
        raise Refusal(422, f"rows: expected a non-empty array of rows, got {json_type(rows)}")
    for number, row in enumerate(rows):
        where = f"rows[{number}]"
        if not isinstance(row, dict):
            raise Refusal(422, f"{where}: expected an object of id and modalities, got {json_type(row)}")
        for key, value in row.items():
            if key == "id":
                if value is not None and (isinstance(value, bool) or not isinstance(value, (str, int))):
                    raise Refusal(422, f"{where}.id: expected a string or a number, got {json_type(value)}")
                continue
            if key not in kinds:
                raise Refusal(422, f"{where}.{key}: not a modality of this model ({', '.join(kinds)})")
            frames = kinds[key] == "video" and isinstance(value, list)
            if value is not None and not (isinstance(value, str) or frames and all(isinstance(v, str) for v in value)):
                wanted = "a text" if kinds[key] == "text" else "the file's bytes in base64, as a string" + (
                    " or an array of them (the frames)" if kinds[key] == "video" else "")
                raise Refusal(422, f"{where}.{key}: expected {wanted}, got {json_type(value)}")
    return rows


async def form_rows(scope, body: bytes, kinds: dict[str, str]) -> list[dict]:
    """A multipart form (one field per modality, and `id`) as the one row of a JSON body: files in base64."""
    from starlette.datastructures import UploadFile
    from starlette.formparsers import MultiPartException
    from starlette.requests import Request

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(scope, receive).form()
    except MultiPartException as error:
        raise Refusal(400, f"body: not a valid multipart form ({error})") from None
    row = {}
    for key, value in form.multi_items():
        if isinstance(value, UploadFile):
            data = await value.read()
            if kinds.get(key) == "text":
                try:
                    value = data.decode("utf-8")
                except UnicodeDecodeError:
                    raise Refusal(422, f"{key}: the text file is not UTF-8; re-save it as UTF-8") from None
            else:
                value = base64.b64encode(data).decode() if data else None
        if kinds.get(key) == "video" and value is not None:
            row.setdefault(key, []).append(value)
        else:
            row[key] = value
    return request_rows({"rows": [row]}, kinds)


class Gate:
    """ASGI middleware of the API process: body limit, API key, JSON shape, and one log line per request."""

    def __init__(self, app, *, kinds: dict[str, str], max_bytes: int, api_key: str | None):
        self.app, self.kinds, self.max_bytes, self.api_key = app, kinds, max_bytes, api_key

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, method, path = time.perf_counter(), scope["method"], scope["path"]
        headers = dict(scope["headers"])
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = given if re.fullmatch(r"[\w.-]{1,64}", given) else uuid.uuid4().hex[:12]
        seen = {"status": "disconnected", "rows": "-", "modalities": "-", "batch": "-"}

        async def reply(message):
            if message["type"] == "http.response.start":
                answer = dict(message.get("headers", []))
                seen.update(status=message["status"], rows=answer.get(b"x-rows", b"-").decode(),
                            modalities=answer.get(b"x-modalities", b"-").decode(),
                            batch=answer.get(b"x-batch", b"-").decode())
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", request_id.encode())]}
            await send(message)

        try:
            if self.api_key and scope["path"] not in PUBLIC_PATHS and not self.authorized(headers):
                raise Refusal(401, "missing or wrong API key: send the header 'Authorization: Bearer <key>'")
            if scope["method"] == "POST" and scope["path"] == "/predict":
                scope, receive = await self.admit(scope, receive, headers)
                if scope is None:
                    return  # the client went away while sending
            await self.app(scope, receive, reply)
        except Refusal as refusal:
            from starlette.responses import JSONResponse

            extra = {"WWW-Authenticate": "Bearer"} if refusal.status == 401 else {}
            await JSONResponse({"detail": refusal.detail}, refusal.status, headers=extra)(scope, receive, reply)
        finally:
            milliseconds = (time.perf_counter() - started) * 1000
            log.info("request %s %s %s status %s rows %s modalities %s batch %s latency %.1f ms", request_id,
                     method, path, seen["status"], seen["rows"], seen["modalities"], seen["batch"], milliseconds)

    def authorized(self, headers: dict) -> bool:
        given = headers.get(b"authorization", b"").decode("latin-1")
        return hmac.compare_digest(given.encode(), f"Bearer {self.api_key}".encode())

    async def admit(self, scope, receive, headers: dict):
        """(scope, receive) of a checked JSON body, or (None, None) when the client disconnected."""
        declared = headers.get(b"content-length")
        limit = f"body over the limit of {self.max_bytes / 2**20:g} MB (--max-request-mb)"
        if declared and declared.isdigit() and int(declared) > self.max_bytes:
            raise Refusal(413, limit)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None, None
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                raise Refusal(413, limit)
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        if headers.get(b"content-type", b"").startswith(b"multipart/form-data"):
            body = json.dumps({"rows": await form_rows(scope, body, self.kinds)}).encode()
        else:  # JSON whatever the content type says (curl -d sends a form's)
            try:
                payload = json.loads(body)
            except (ValueError, UnicodeDecodeError) as error:
                raise Refusal(400, f"body: not valid JSON ({error})") from None
            request_rows(payload, self.kinds)
        kept = [(k, v) for k, v in scope["headers"] if k not in (b"content-type", b"content-length")]
        scope = {**scope, "headers": [*kept, (b"content-type", b"application/json"),
                                      (b"content-length", str(len(body)).encode())]}
        sent = False

        async def replay():
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        return scope, replay


class ServedRowReader(RowReader):
    """Rows of a request: texts inline, media as base64 bytes. A string is never opened as a path here."""

    def __init__(self, kinds: dict[str, str], max_pixels: int = MAX_PIXELS):
        super().__init__(kinds, Path("/nonexistent"))
        self.max_pixels = max_pixels

    def read(self, modality: str, kind: str, value, row):
        if kind == "text" or not value or (isinstance(value, str) and not value.strip()):
            return super().read(modality, kind, value or None, row)
        if kind == "video":
            frames = value if isinstance(value, list) else [value]
            return [self.image(f"{modality} frame {n}", self.bytes_of(modality, v)) for n, v in enumerate(frames)]
        data = self.bytes_of(modality, value)
        if kind == "image":
            return self.image(modality, data)
        from .data.base import READ_ERRORS, load_audio

        try:
            return load_audio(data)
        except (*READ_ERRORS, ValueError) as error:
            raise ValueError(f"cannot read audio {modality} (send a .wav file's bytes in base64): {error}") from error

    @staticmethod
    def bytes_of(modality: str, value: str) -> bytes:
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            shown = value if len(value) <= 40 else value[:37] + "..."
            raise ValueError(f"{modality}: {shown!r} is not base64; send the file's bytes in base64 (the server "
                             "never opens a path or URL)") from None

    def image(self, name: str, data: bytes):
        from PIL import Image

        from .processing import IMAGE_FILE_ERRORS, TooManyPixels, read_image

        try:
            return read_image(data, self.max_pixels)  # the size is read from the header, before decoding
        except (Image.DecompressionBombError, TooManyPixels) as error:
            raise ValueError(f"{name}: refused before decoding: {error}") from None
        except IMAGE_FILE_ERRORS as error:
            raise ValueError(f"cannot read image {name} (send the file's bytes in base64): {error}") from None


def end_with_parent(parent: int) -> None:
    """SIGKILL this process when its parent ends (`children.ask_for_death_signal`), so that no server child
    outlives a killed parent; ends at once if the parent is already gone."""
    from .children import ask_for_death_signal

    ask_for_death_signal(signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(0)


def model_info(model, temperatures: dict, precision: str, settings: dict) -> dict:
    """What `/info` says: the model, its calibration and precision, the robustmm version and the settings."""
    from . import __version__

    return {
        "method": model.method, "modalities": modality_kinds(model),
        "classes": model.config.class_names or [str(i) for i in range(model.config.num_classes)],
        "multilabel": model.config.multilabel,
        "calibration": {"applied": bool(temperatures), "temperatures": temperatures},
        "precision": precision, "version": __version__, **settings,
    }


def modality_counts(records: list[dict]) -> str:
    counts = Counter(record["modalities"] or "none" for record in records)
    return ",".join(f"{pattern}:{count}" for pattern, count in counts.items())


class ModelAPI(ls.LitAPI):
    """Rows of concurrent requests predicted together; each request gets its rows back in its order. Spawned
    workers receive it pickled, so it carries only where to load the model from (`source`)."""

    source: tuple
    workers: int = 1
    max_pixels: int = MAX_PIXELS
    parent: int = 0

    def setup(self, device):
        import torch

        end_with_parent(self.parent)
        if self.workers > 1:
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // self.workers))
        model_or_run, calibrate, precision = self.source
        self.model, self.temperatures, self.precision = load_predictor(model_or_run, None, calibrate, precision)
        self.reader = ServedRowReader(modality_kinds(self.model), self.max_pixels)

    def decode_request(self, request):
        return [self.reader(f"rows[{n}]", cells, n) for n, cells in enumerate(request["rows"])]

    def batch(self, inputs):
        return inputs

    def unbatch(self, output):
        return output

    def predict(self, requests):
        requests = [requests] if self.max_batch_size == 1 else requests  # LitServe does not batch at size 1
        records = predict_rows(self.model, [row for rows in requests for row in rows], self.temperatures,
                               precision=self.precision)  # in forward passes of predict's batch size
        answers = []
        for rows in requests:  # each request's records, and how many requests were predicted together
            answers.append(([{k: v for k, v in r.items() if k != "line"} for r in records[: len(rows)]], len(requests)))
            records = records[len(rows) :]
        return answers[0] if self.max_batch_size == 1 else answers

    def encode_response(self, answer):
        from fastapi.responses import JSONResponse

        records, batch = answer
        return JSONResponse({"rows": records}, headers={"x-rows": str(len(records)), "x-batch": str(batch),
                                                        "x-modalities": modality_counts(records)})


def build_server(model_or_run, *, max_batch_size: int = 32, batch_timeout_ms: float = 10, workers: int = 1,
                 api_key: str | None = None, max_request_mb: float = 16, precision: str = "auto",
                 calibrate: bool = True, max_pixels: int = MAX_PIXELS):
    """The LitServer of a run directory or saved model folder, with the page and `/info` of the model."""
    from fastapi.responses import HTMLResponse, JSONResponse

    if max_batch_size > 1 and batch_timeout_ms <= 0:
        raise ValueError("--batch-timeout-ms must be above 0: at 0 LitServe's worker polls its queue without pause, "
                         "a busy loop through its queue manager (BENCHMARKS.md); 1 ms hardly waits")
    model, temperatures, precision = load_predictor(model_or_run, None, calibrate, precision)
    settings = {"max_batch_size": max_batch_size, "batch_timeout_ms": batch_timeout_ms, "workers": workers,
                "max_request_mb": max_request_mb, "max_pixels": max_pixels, "api_key_required": bool(api_key)}
    info = model_info(model, temperatures, precision, settings)
    del model  # each worker loads its own

    api = ModelAPI(max_batch_size=max_batch_size, batch_timeout=batch_timeout_ms / 1000, api_path="/predict")
    api.source, api.workers, api.max_pixels = (model_or_run, calibrate, precision), workers, max_pixels
    api.parent = os.getpid()
    server = ls.LitServer(api, accelerator="auto", workers_per_device=workers, restart_workers=True, timeout=60, fast_queue=True,
                          middlewares=[(Gate, {"kinds": info["modalities"], "max_bytes": int(max_request_mb * 2**20),
                                               "api_key": api_key})])
    server.uvicorn_graceful_timeout = GRACEFUL_SECONDS
    replaced = ("/", "/info")
    server.app.router.routes[:] = [r for r in server.app.router.routes if getattr(r, "path", None) not in replaced]
    page = resources.files("robustmm").joinpath("assets", PAGE).read_text(encoding="utf-8")
    server.app.add_api_route("/", lambda: HTMLResponse(page), methods=["GET"], include_in_schema=False)
    server.app.add_api_route("/info", lambda: JSONResponse(info), methods=["GET"], summary="the model served")
    return server


def drain_then_stop(signum, frame) -> None:
    """SIGTERM: the API servers finish the requests in flight (uvicorn's graceful shutdown) while the workers
    still answer; then LitServe shuts down as on Ctrl+C, which ends the workers."""
    api_servers = [child for child in multiprocessing.active_children() if child.name.startswith("LitServer-")]
    for child in api_servers:
        child.terminate()
    for child in api_servers:
        child.join(GRACEFUL_SECONDS + 5)
    raise KeyboardInterrupt


def forked_child(parent: int) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the parent's drain is the parent's; uvicorn installs its own
    end_with_parent(parent)


def serve(model_or_run, host: str = "127.0.0.1", port: int = 8000, api_key_env: str | None = None, **options):
    """Serve until SIGTERM or Ctrl+C. `options`: those of `build_server`."""
    api_key = None
    if api_key_env:
        api_key = os.environ.get(api_key_env)
        if not api_key:
            raise ValueError(f"--api-key-env {api_key_env}: the environment variable is not set or empty")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    server = build_server(model_or_run, api_key=api_key, **options)
    parent = os.getpid()
    os.register_at_fork(after_in_child=lambda: forked_child(parent))  # the API servers and LitServe's manager
    signal.signal(signal.SIGTERM, drain_then_stop)
    try:
        server.run(host=host, port=port, generate_client_file=False, access_log=False)
    except KeyboardInterrupt:  # a signal before the API servers were up: the workers end with this process
        pass
