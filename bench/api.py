"""API benchmark: submit latency (p50/p99) with 1 and 50 concurrent clients, and submits/s.

    .venv/bin/python bench/api.py                 # SQLite and PostgreSQL, one table
    .venv/bin/python bench/api.py --json
    .venv/bin/python bench/api.py --backends sqlite --requests 500

Against ``gradq api`` (the API alone, no dispatcher: jobs only queue), started as a
subprocess per backend on a fresh database: SQLite in a temporary folder, PostgreSQL
(``postgresql+psycopg://postgres@127.0.0.1:5432/test``) in a fresh schema ``bench_<uuid>``,
dropped afterwards. Clients are httpx.AsyncClient over keep-alive connections, no auth.
Each POST /v1/jobs is a full submit: parse and limit-check the spec, the tenant's queued
count, the insert with its event, the queue position and the reason it waits.
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/ holds queue.py, which would shadow the standard library's queue: run from the root.
sys.path[:] = [str(Path(__file__).resolve().parents[1])] + [
    p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent
]

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx

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
def api_server(database_url: str, folder: Path) -> Iterator[str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRADQ_")}
    env.update(
        GRADQ_DATABASE_URL=database_url,
        GRADQ_MLFLOW_TRACKING_URI=f"sqlite:///{folder}/mlflow.db",
        GRADQ_MAX_QUEUED_PER_TENANT="1000000",
    )
    log = (folder / "api.log").open("wb")
    process = subprocess.Popen(
        [GRADQ, "api", "--port", str(port)], env=env, cwd=folder, stdout=log,
        stderr=subprocess.STDOUT, start_new_session=True,
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
        yield url
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


async def run_clients(url: str, clients: int, total: int) -> dict[str, float]:
    """``total`` submits spread over ``clients`` concurrent clients; latencies per request."""
    latencies: list[float] = []
    left = total
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as http:

        async def client() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                t0 = time.perf_counter()
                r = await http.post("/v1/jobs", json=SPEC)
                latencies.append(time.perf_counter() - t0)
                if r.status_code != 201:
                    raise RuntimeError(f"submit answered {r.status_code}: {r.text[:300]}")

        for _ in range(20):  # warm up: connections, statement caches
            await http.post("/v1/jobs", json=SPEC)
        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        wall = time.perf_counter() - started
    ms = sorted(x * 1000 for x in latencies)
    return {
        "clients": clients,
        "requests": len(ms),
        "p50_ms": statistics.median(ms),
        "p99_ms": ms[min(len(ms) - 1, round(0.99 * len(ms)) - 1)],
        "submits_per_s": len(ms) / wall,
    }


def bench(backend: str, requests: int) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory(prefix=f"gradq-bench-{backend}-") as tmp:
        folder = Path(tmp)
        urls = postgres_schema() if backend == "postgres" else nullcontext_sqlite(folder)
        with urls as database_url, api_server(database_url, folder) as url:
            for clients in (1, 50):
                row = asyncio.run(run_clients(url, clients, requests))
                rows.append({"backend": backend, **row})
    return rows


@contextlib.contextmanager
def nullcontext_sqlite(folder: Path) -> Iterator[str]:
    yield f"sqlite:///{folder}/gradq.db"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backends", nargs="+", default=["sqlite", "postgres"])
    parser.add_argument("--requests", type=int, default=1000, help="submits per row")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = [row for backend in args.backends for row in bench(backend, args.requests)]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print("| backend  | clients | requests | p50 (ms) | p99 (ms) | submits/s | p99 target |")
    print("|----------|---------|----------|----------|----------|-----------|------------|")
    for r in rows:
        target = "< 50 ms" if r["clients"] == 50 else ""
        print(
            f"| {r['backend']:<8} | {r['clients']:>7} | {r['requests']:>8} | {r['p50_ms']:>8.1f} "
            f"| {r['p99_ms']:>8.1f} | {r['submits_per_s']:>9.0f} | {target:<10} |"
        )


if __name__ == "__main__":
    main()
