"""Benchmark of the durable job queue (db/): submit and claim rates on SQLite and PostgreSQL.

    .venv/bin/python bench/queue_bench.py [--backend sqlite|postgres|both] [--jobs N]

Each backend gets a fresh database (SQLite: a temp file; PostgreSQL: a fresh schema in the
database at $GRADQ_TEST_POSTGRES_URL, dropped afterwards) migrated with ``db.migrate.upgrade``.
Prints one table with the targets beside the figures.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from sqlalchemy import make_url

from core.spec import JobSpec, parse_spec
from db.migrate import upgrade
from db.session import make_engine
from db.store import JobStore

PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
CLIENTS, CLAIMERS = 8, 4
TARGETS = {  # metric: (sqlite target, postgres target)
    "submits/s, 1 client": ("≥ 300", "≥ 1,000"),
    f"submits/s, {CLIENTS} client processes": ("", ""),
    f"claims/s, {CLAIMERS} processes, 1 job per claim": ("", "≥ 500"),
    f"claims/s, {CLAIMERS} processes, 10 jobs per claim": ("", ""),
    "submit latency p50 (ms), 1 client": ("", ""),
    "submit latency p99 (ms), 1 client": ("", ""),
}


def _spec() -> JobSpec:
    return parse_spec({"dataset": "iris", "model": {"hidden": [32, 16]}})


def _submitter(url: str, n: int, start: Any, out: Any) -> None:
    engine = make_engine(url, pool_size=1)
    store, spec = JobStore(engine), _spec()
    store.counts_by_status()  # connected before the clock starts
    start.wait()
    t0 = time.monotonic()
    for _ in range(n):
        store.submit(spec=spec, tenant="bench")
    out.put((t0, time.monotonic(), n))
    engine.dispose()


def _claimer(url: str, quota: int | None, batch: int, start: Any, out: Any) -> None:
    engine = make_engine(url, pool_size=1)
    store = JobStore(engine)
    store.counts_by_status()
    start.wait()
    t0, got = time.monotonic(), 0
    while quota is None or got < quota:
        claimed = store.claim(owner=f"bench-{os.getpid()}", limit=batch, lease_seconds=600)
        if not claimed:
            break
        got += len(claimed)
    out.put((t0, time.monotonic(), got))
    engine.dispose()


def _parallel(target: Any, args_per_proc: list[tuple[Any, ...]]) -> float:
    """Run one process per args tuple, released together; return items per second overall."""
    ctx = mp.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=target, args=(*a, start, out)) for a in args_per_proc]
    for p in procs:
        p.start()
    time.sleep(0.5)
    start.set()
    results = [out.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    t0, t1 = min(r[0] for r in results), max(r[1] for r in results)
    return sum(r[2] for r in results) / (t1 - t0)


def run_backend(url: str, jobs: int) -> dict[str, float]:
    """All measurements on one migrated, empty database."""
    upgrade(url)
    engine = make_engine(url)
    store, spec = JobStore(engine), _spec()
    for _ in range(20):  # warm up connection and statement caches
        store.submit(spec=spec, tenant="warmup")
    store.claim(owner="warmup", limit=20, lease_seconds=1)
    latencies = []
    t_all = time.perf_counter()
    for _ in range(jobs):
        t = time.perf_counter()
        store.submit(spec=spec, tenant="bench")
        latencies.append(time.perf_counter() - t)
    single = jobs / (time.perf_counter() - t_all)
    engine.dispose()
    per = max(1, jobs // CLIENTS)
    multi = _parallel(_submitter, [(url, per)] * CLIENTS)
    one_by_one = _parallel(_claimer, [(url, jobs // CLAIMERS, 1)] * CLAIMERS)
    batched = _parallel(_claimer, [(url, None, 10)] * CLAIMERS)
    qs = statistics.quantiles(latencies, n=100)
    return dict(
        zip(TARGETS, [single, multi, one_by_one, batched, qs[49] * 1e3, qs[98] * 1e3], strict=True)
    )


@contextmanager
def sqlite_url() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="gradq-bench-") as tmp:
        yield f"sqlite:///{tmp}/bench.db"


@contextmanager
def postgres_url() -> Iterator[str]:
    base = os.environ.get("GRADQ_TEST_POSTGRES_URL", PG_URL)
    libpq = make_url(base).set(drivername="postgresql").render_as_string(hide_password=False)
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(libpq, autocommit=True, connect_timeout=2) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
    try:
        url = make_url(base).update_query_dict({"options": f"-csearch_path={schema}"})
        yield url.render_as_string(hide_password=False)
    finally:
        with psycopg.connect(libpq, autocommit=True) as admin:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--jobs", type=int, default=2000, help="jobs per phase (default 2000)")
    args = parser.parse_args()
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    figures: dict[str, dict[str, float]] = {}
    for name in backends:
        print(f"running {name} ({args.jobs} jobs per phase)...", file=sys.stderr, flush=True)
        with sqlite_url() if name == "sqlite" else postgres_url() as url:
            figures[name] = run_backend(url, args.jobs)
    print_table(figures)


def print_table(figures: dict[str, dict[str, float]]) -> None:
    head = ["metric"]
    for name in figures:
        head += [name, f"{name} target"]
    rows = [head]
    for metric, (t_sqlite, t_pg) in TARGETS.items():
        row = [metric]
        for name, values in figures.items():
            v = values[metric]
            row += [
                f"{v:,.1f}" if "(ms)" in metric else f"{v:,.0f}",
                t_sqlite if name == "sqlite" else t_pg,
            ]
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    for i, row in enumerate(rows):
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
        if i == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")


if __name__ == "__main__":
    main()
