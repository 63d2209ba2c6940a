"""API benchmark: submit latency (p50/p99) with 1 and 50 concurrent clients, and submits/s;
predict latency (p50/p99) for 1 row and for 1,000 rows with 10 clients, against submits with
10 clients in the same run.

    .venv/bin/python bench/api.py                 # SQLite and PostgreSQL, two tables
    .venv/bin/python bench/api.py --json
    .venv/bin/python bench/api.py --backends sqlite --requests 500 --open-rate 300
    .venv/bin/python bench/api.py --workers 2     # gradq api --workers 2
    .venv/bin/python bench/api.py --predict-only  # the predict table alone

Against ``gradq api`` (the API alone, no dispatcher: jobs only queue), started as a
subprocess per backend on a fresh database: SQLite in a temporary folder, PostgreSQL
(``postgresql+psycopg://postgres@127.0.0.1:5432/test``) in a fresh schema ``bench_<uuid>``,
dropped afterwards. No auth. Each POST /v1/jobs is a full submit: parse and limit-check the
spec, the tenant's queued count (the quota), the insert with its event, the queue position
and the reason it waits; the client checks every answer is 201.

The client is cheap on purpose (it shares the CPUs with the server): raw HTTP/1.1 over one
keep-alive asyncio connection per client, the request bytes built once; a latency is from the
moment a request is due to the end of its answer's body. Rows:

* ``closed``: N clients, each sends its next submit as soon as its answer arrives (no think
  time). This measures saturation: with 50 clients the latency is ≈ 50 / throughput.
* ``open R/s``: 50 connections, submits due at a fixed rate R (evenly spaced) whatever the
  answers; a submit due while all 50 are busy waits for one, and that wait counts in its
  latency (no coordinated omission). This is the latency under a stated load.

``server CPU/submit`` is the CPU time (user + system) of the server's processes over the row,
divided by the submits: a figure the other load on the machine hardly moves.

Predict rows: one job (``SPEC``: iris, 4 → 16 → 3) is trained first by a real attempt in this
process (``workers.task.run_attempt``, on the server's database and MLflow store), then
``POST /v1/jobs/{id}/predict`` is sent by 10 closed-loop clients with one row of raw features,
and with 1,000 rows (a tenth as many requests); the client checks every answer is 200. The
anchor is ``submit``, 10 clients closed loop, measured in the same run just before them: the
table prints each predict row's p50 and p99 as a ratio of the anchor's. The first predict of
the job loads its weights from MLflow, in the warm-up; the rows measure the cached model.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx  # only for the health check while the server starts

ROOT = Path(__file__).resolve().parents[1]
GRADQ = str(Path(sys.executable).with_name("gradq"))
POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
SPEC = {"name": "bench", "dataset": "iris", "model": {"hidden": [16]}, "optimizer": {"epochs": 5}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def postgres_schema() -> Iterator[str]:
    from sqlalchemy import create_engine, text

    schema = f"bench_{uuid.uuid4().hex[:12]}"
    engine = create_engine(POSTGRES)
    with engine.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    try:
        yield f"{POSTGRES}?options=-csearch_path%3D{schema}"
    finally:
        with engine.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        engine.dispose()


@contextlib.contextmanager
def api_server(database_url: str, folder: Path, workers: int) -> Iterator[tuple[str, int]]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRADQ_")}
    env.update(
        GRADQ_DATABASE_URL=database_url,
        GRADQ_MLFLOW_TRACKING_URI=f"sqlite:///{folder}/mlflow.db",
        GRADQ_MAX_QUEUED_PER_TENANT="1000000",
    )
    log = (folder / "api.log").open("wb")
    process = subprocess.Popen(
        [GRADQ, "api", "--port", str(port), *(["--workers", str(workers)] if workers > 1 else [])],
        env=env, cwd=folder, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/healthz", timeout=5).is_success:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((folder / "api.log").read_text()[-3000:])
            time.sleep(0.3)
        yield url, process.pid  # the server's process group (start_new_session)
    except Exception:
        print((folder / "api.log").read_text()[-3000:], file=sys.stderr)
        raise
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        log.close()


class Connection:
    """One keep-alive HTTP/1.1 connection that sends the same prepared POST again and again."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, url: str) -> Connection:
        host, port = url.removeprefix("http://").split(":")
        return cls(*await asyncio.open_connection(host, int(port)))

    async def post(self, request: bytes) -> tuple[int, bytes]:
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


def submit_request(url: str) -> bytes:
    return post_request(url, "/v1/jobs", SPEC)


def post_request(url: str, path: str, payload: Any) -> bytes:
    body = json.dumps(payload).encode()
    host = url.removeprefix("http://")
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def predict_request(url: str, job_id: str, n_rows: int) -> bytes:
    """A predict of ``n_rows`` raw iris-like feature rows (fixed, varied values)."""
    low, high = [4.3, 2.0, 1.0, 0.1], [7.9, 4.4, 6.9, 2.5]
    rows = [
        [round(lo + (hi - lo) * ((7 * i + 3 * j) % 97) / 96, 2)
         for j, (lo, hi) in enumerate(zip(low, high, strict=True))]
        for i in range(n_rows)
    ]  # fmt: skip
    return post_request(url, f"/v1/jobs/{job_id}/predict", {"rows": rows})


def trained_job(url: str, database_url: str, folder: Path) -> str:
    """A job of ``SPEC`` submitted over HTTP and trained here by a real attempt on the
    server's database and MLflow store; its id once it has succeeded."""
    from db.session import make_engine
    from db.store import JobStore
    from workers.task import WorkerConfig, run_attempt

    job_id = httpx.post(f"{url}/v1/jobs", json=SPEC, timeout=30).json()["id"]
    engine = make_engine(database_url)
    try:
        [claimed] = JobStore(engine).claim(owner="bench", limit=1, ids=[job_id], lease_seconds=120)
        config = WorkerConfig(
            database_url=database_url, tracking_uri=f"sqlite:///{folder}/mlflow.db",
            artifact_root=str(folder / "artifacts"),
        )  # fmt: skip
        status = run_attempt(config, claimed)
    finally:
        engine.dispose()
    if status != "succeeded":
        raise RuntimeError(f"the benchmark's job {job_id} ended {status}")
    return job_id


def server_cpu(pgid: int) -> float:
    """CPU seconds (user + system) of every process in the server's process group."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid:  # field 5 of stat: the process group
                total += (int(fields[11]) + int(fields[12])) / tick
    return total


async def run_clients(
    url: str,
    pgid: int,
    clients: int,
    total: int,
    rate: float | None = None,
    request: bytes | None = None,
    expect: int = 201,
) -> dict[str, Any]:
    """``total`` submits (or ``request``s, answered ``expect``) over ``clients`` connections:
    closed loop (``rate`` None), or due at ``rate`` per second (open loop); the latency of
    each, from when it was due."""
    request = request or submit_request(url)
    connections = [await Connection.open(url) for _ in range(clients)]
    for c in connections[:20]:  # warm up: connections, statement caches
        for _ in range(2):
            await c.post(request)
    latencies: list[float] = []
    problems: list[str] = []
    idle: asyncio.Queue[Connection] = asyncio.Queue()
    for c in connections:
        idle.put_nowait(c)

    async def one(connection: Connection, due: float) -> None:
        status, body = await connection.post(request)
        latencies.append(time.perf_counter() - due)
        if status != expect:
            problems.append(f"request answered {status}: {body[:300]!r}")

    async def closed_client(connection: Connection, count: int) -> None:
        for _ in range(count):
            await one(connection, time.perf_counter())

    async def open_loop(rate: float) -> None:
        tasks = []
        for i in range(total):
            due = started + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            connection = await idle.get()

            async def run(connection: Connection = connection, due: float = due) -> None:
                try:
                    await one(connection, due)
                finally:
                    idle.put_nowait(connection)

            tasks.append(asyncio.create_task(run()))
        await asyncio.gather(*tasks)

    cpu0, client0 = server_cpu(pgid), time.process_time()
    started = time.perf_counter()
    if rate is None:
        shares = [total // clients + (i < total % clients) for i in range(clients)]
        await asyncio.gather(
            *(closed_client(c, n) for c, n in zip(connections, shares, strict=True))
        )
    else:
        await open_loop(rate)
    wall = time.perf_counter() - started
    server, client = server_cpu(pgid) - cpu0, time.process_time() - client0
    for c in connections:
        c.close()
    if problems:
        raise RuntimeError(f"{len(problems)} requests failed, first: {problems[0]}")
    ms = sorted(x * 1000 for x in latencies)
    return {
        "clients": clients,
        "mode": "closed" if rate is None else f"open {rate:g}/s",
        "requests": len(ms),
        "p50_ms": statistics.median(ms),
        "p99_ms": ms[min(len(ms) - 1, round(0.99 * len(ms)) - 1)],
        "max_ms": ms[-1],
        "submits_per_s": len(ms) / wall,
        "server_cpu_ms_per_submit": 1000 * server / len(ms),
        "client_cpu_ms_per_submit": 1000 * client / len(ms),
        "load_avg_1min": os.getloadavg()[0],
    }


PREDICT_CLIENTS = 10


def bench(
    backend: str, requests: int, open_rates: list[float], workers: int, predict_only: bool = False
) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory(prefix=f"gradq-bench-{backend}-") as tmp:
        folder = Path(tmp)
        urls = postgres_schema() if backend == "postgres" else nullcontext_sqlite(folder)
        with urls as database_url, api_server(database_url, folder, workers) as (url, pgid):
            plan: list[tuple[int, float | None]] = [(1, None), (50, None)]
            plan += [(50, rate) for rate in open_rates]
            for clients, rate in [] if predict_only else plan:
                row = asyncio.run(run_clients(url, pgid, clients, requests, rate))
                rows.append({"backend": backend, "workers": workers, "request": "submit", **row})
            job_id = trained_job(url, database_url, folder)
            cases = [("submit", None, requests), ("predict 1 row", 1, requests),
                     ("predict 1,000 rows", 1000, max(requests // 10, 20))]  # fmt: skip
            for what, n_rows, total in cases:
                request = None if n_rows is None else predict_request(url, job_id, n_rows)
                row = asyncio.run(
                    run_clients(url, pgid, PREDICT_CLIENTS, total, None, request,
                                201 if n_rows is None else 200)
                )  # fmt: skip
                rows.append({"backend": backend, "workers": workers, "request": what,
                             "anchor": what == "submit", **row})  # fmt: skip
    return rows


@contextlib.contextmanager
def nullcontext_sqlite(folder: Path) -> Iterator[str]:
    yield f"sqlite:///{folder}/gradq.db"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backends", nargs="+", default=["sqlite", "postgres"])
    parser.add_argument("--requests", type=int, default=2000, help="submits per row")
    parser.add_argument(
        "--open-rate", type=float, nargs="*", default=[200.0], help="open-loop rows (submits/s)"
    )
    parser.add_argument("--workers", type=int, default=1, help="gradq api --workers")
    parser.add_argument("--predict-only", action="store_true", help="only the predict table")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = [
        row
        for backend in args.backends
        for row in bench(backend, args.requests, args.open_rate, args.workers, args.predict_only)
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    submits = [r for r in rows if r["request"] == "submit" and "anchor" not in r]
    if submits:
        print_submits(submits)
        print()
    print_predicts([r for r in rows if "anchor" in r])


def print_predicts(rows: list[dict[str, Any]]) -> None:
    """Each predict row against its backend's anchor (submit, the same clients)."""
    print(
        "| backend  | load | clients | request            | requests | p50 (ms) | p99 (ms) "
        "| requests/s | server CPU/request (ms) | p50 / submit p50 | p99 / submit p99 |"
    )
    print("|" + "|".join("-" * n for n in (10, 6, 9, 20, 10, 10, 10, 12, 25, 18, 18)) + "|")
    anchors = {r["backend"]: r for r in rows if r["anchor"]}
    for r in rows:
        a = anchors[r["backend"]]
        print(
            f"| {r['backend']:<8} | {r['load_avg_1min']:>4.1f} | {r['clients']:>7} "
            f"| {r['request']:<18} | {r['requests']:>8} | {r['p50_ms']:>8.1f} "
            f"| {r['p99_ms']:>8.1f} | {r['submits_per_s']:>10.0f} "
            f"| {r['server_cpu_ms_per_submit']:>23.2f} | {r['p50_ms'] / a['p50_ms']:>16.2f} "
            f"| {r['p99_ms'] / a['p99_ms']:>16.2f} |"
        )


def print_submits(rows: list[dict[str, Any]]) -> None:
    print(
        "| backend  | workers | load | clients | mode        | p50 (ms) | p99 (ms) | max (ms) "
        "| submits/s | server CPU/submit (ms) | client CPU/submit (ms) | p99 target |"
    )
    print("|" + "|".join("-" * n for n in (10, 9, 6, 9, 13, 10, 10, 10, 11, 24, 24, 12)) + "|")
    for r in rows:
        target = "< 50 ms" if r["clients"] == 50 else ""
        print(
            f"| {r['backend']:<8} | {r['workers']:>7} | {r['load_avg_1min']:>4.1f} "
            f"| {r['clients']:>7} | {r['mode']:<11} | {r['p50_ms']:>8.1f} | {r['p99_ms']:>8.1f} "
            f"| {r['max_ms']:>8.1f} | {r['submits_per_s']:>9.0f} "
            f"| {r['server_cpu_ms_per_submit']:>22.2f} | {r['client_cpu_ms_per_submit']:>22.2f} "
            f"| {target:<10} |"
        )


if __name__ == "__main__":
    main()
