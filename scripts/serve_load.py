"""Bounded load on a running `robustmm serve` from 127.0.0.1: a fixed number of requests at each number of
concurrent clients; prints rows/s and the p50/p95/p99 latency per level, one JSON line each, with the CPU time
this load generator spent per request (on a small machine it shares the cores with the server).

The rows come from a `robustmm predict` input file (a CSV or JSONL whose media are paths beside it); they are
sent as `{"rows": [...]}` with the media in base64, bodies prepared before the clock starts. Every answer must be
200 with no row error, or the level is reported as failed.

    python scripts/serve_load.py http://127.0.0.1:8000 --rows my_data/new.csv --clients 1,8,32 --requests 400
    python scripts/serve_load.py --offline runs/my_data --rows my_data/new.csv   # predict's single-row time
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import sys
import time
from pathlib import Path


def request_bodies(rows_file: Path, kinds: dict[str, str], rows_per_request: int) -> list[bytes]:
    """The rows of a predict input file as request bodies, media read from disk and sent in base64."""
    from robustmm.predict import read_rows

    rows = []
    for number, (_, cells) in enumerate(read_rows(rows_file)):
        row = {"id": cells.get("id") or str(number)}
        for modality, kind in kinds.items():
            value = cells.get(modality)
            if value and kind in ("image", "audio"):
                value = base64.b64encode((rows_file.parent / value).read_bytes()).decode()
            row[modality] = value or None
        rows.append(row)
    return [json.dumps({"rows": rows[start : start + rows_per_request]}).encode()
            for start in range(0, len(rows), rows_per_request)]


def cpu_seconds(pid: int | None) -> float:
    """CPU time used so far by a process and all its descendants (Linux /proc), to tell the server's own cost
    from the machine's load."""
    if pid is None:
        return 0.0
    children, total = {}, 0.0
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append((int(entry.name), fields))
    todo, ticks = [pid], os.sysconf("SC_CLK_TCK")
    own = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    total += (int(own[11]) + int(own[12])) / ticks
    while todo:
        for child, fields in children.get(todo.pop(), []):
            total += (int(fields[11]) + int(fields[12])) / ticks
            todo.append(child)
    return total


async def level(url: str, bodies: list[bytes], clients: int, requests: int, headers: dict,
                server_pid: int | None = None) -> dict:
    import httpx

    latencies, failures, rows = [], 0, 0

    async def client(http, pending):
        nonlocal failures, rows
        for number in pending:
            body = bodies[number % len(bodies)]
            start = time.perf_counter()
            answer = await http.post("/predict", content=body, headers=headers)
            latencies.append(time.perf_counter() - start)
            records = answer.json().get("rows", []) if answer.status_code == 200 else []
            failures += answer.status_code != 200 or any("error" in record for record in records)
            rows += len(records)

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:
        warm_up = iter(range(2 * clients))  # connections opened and the worker warm: not counted
        await asyncio.gather(*(client(http, warm_up) for _ in range(clients)))
        latencies.clear()
        rows = failures = 0
        pending = iter(range(requests))
        start, cpu, own = time.perf_counter(), cpu_seconds(server_pid), time.process_time()
        await asyncio.gather(*(client(http, pending) for _ in range(clients)))
        seconds, cpu = time.perf_counter() - start, cpu_seconds(server_pid) - cpu
        own = time.process_time() - own
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return {"clients": clients, "requests": requests, "rows": rows, "failed": failures, "seconds": round(seconds, 3),
            "rows_per_second": round(rows / seconds, 1), "p50_ms": round(cuts[49] * 1000, 1),
            "p95_ms": round(cuts[94] * 1000, 1), "p99_ms": round(cuts[98] * 1000, 1),
            "client_cpu_ms_per_request": round(own * 1000 / requests, 2),
            **({"server_cpu_ms_per_row": round(cpu * 1000 / rows, 2)} if server_pid and rows else {})}


def offline_single_row(run: str, rows_file: Path, repeats: int, precision: str) -> dict:
    """`robustmm predict`'s code on one row at a time (read from disk and predicted), in this process: the median
    time of a row, the 1-client latency target's reference."""
    from robustmm.predict import RowReader, load_predictor, modality_kinds, predict_rows, read_rows

    model, temperatures, precision = load_predictor(run, precision=precision)
    reader = RowReader(modality_kinds(model), rows_file.parent)
    cells = read_rows(rows_file)
    times, cpu = [], []
    for number in range(repeats + 5):
        origin, row = cells[number % len(cells)]
        start, start_cpu = time.perf_counter(), time.process_time()
        predict_rows(model, [reader(origin, row, number)], temperatures, 1, precision)
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return {"offline_single_row_ms": round(statistics.median(times[5:]) * 1000, 2),
            "offline_single_row_cpu_ms": round(statistics.median(cpu[5:]) * 1000, 2), "precision": precision}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url", nargs="?", default="http://127.0.0.1:8000")
    parser.add_argument("--rows", required=True, type=Path, help="a robustmm predict input file (.csv or .jsonl)")
    parser.add_argument("--clients", default="1,8,32", help="concurrent clients, one level each")
    parser.add_argument("--requests", type=int, default=400, help="requests per level (bounded load)")
    parser.add_argument("--rows-per-request", type=int, default=1)
    parser.add_argument("--api-key-env", metavar="VAR", help="send 'Authorization: Bearer <the value of VAR>'")
    parser.add_argument("--server-pid", type=int, help="also report the CPU time the server's processes spent")
    parser.add_argument("--label", default="", help="added to each JSON line (the server's settings)")
    parser.add_argument("--offline", metavar="RUN_DIR", help="instead: predict's time of one row, in-process")
    parser.add_argument("--precision", default="auto", help="with --offline")
    args = parser.parse_args()
    if args.offline:
        print(json.dumps({"label": args.label, **offline_single_row(args.offline, args.rows, 200, args.precision)}))
        return
    import httpx

    if not args.url.startswith(("http://127.0.0.1", "http://localhost", "http://[::1]")):
        sys.exit("serve_load.py loads a server on this machine only (127.0.0.1)")
    headers = {"Authorization": f"Bearer {os.environ[args.api_key_env]}"} if args.api_key_env else {}
    info = httpx.get(f"{args.url}/info", headers=headers, timeout=30).json()
    bodies = request_bodies(args.rows, info["modalities"], args.rows_per_request)
    for clients in map(int, args.clients.split(",")):
        figures = asyncio.run(level(args.url, bodies, clients, args.requests, headers, args.server_pid))
        print(json.dumps({"label": args.label, "precision": info["precision"], **figures}), flush=True)


if __name__ == "__main__":
    main()
