"""Stop benchmark: how long a stop asked of a running job takes to reach its attempt.

    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 .venv/bin/python bench/stop.py [--stops 20] [--parallel 1]

Everything is the real thing, embedded, as in ``bench/service.py``: a JobStore on SQLite and
MLflow's SQLite store in a temporary folder, a local Ray of 2 CPUs and one dispatcher thread
with its default settings (the stop checked every 0.1 s) and the workers' default heartbeat
(``core.defaults.HEARTBEAT_SECONDS``, 3 s): the interval at which a stop reached an attempt
before the stop signal (``workers.stops``), printed as the anchor.

``--stops`` times: ``--parallel`` long jobs (the reference job for 20,000 epochs: it ends
only by its cancel) are submitted and, once each trains, cancelled one after another
(``JobStore.request_cancel``, as ``POST /v1/jobs/{id}/cancel`` does). Per stop, from the
instant before the request, on the one clock of this machine:

* signalled: until the attempt learnt of it (``progress.stop.signalled_at``);
* stopped: until its training loop stopped between two steps (``progress.stop.stopped_at``);
* ended: until the job was cancelled in the database (its ``finished_at``: the run closed in
  MLflow, the final write made).

p50 and p99 are nearest-rank (of 20 stops the p99 is the slowest). Each stop must have come
through the stop signal (``progress.stop.via``), or the bench says so.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import logging
import math
import os
import platform
import tempfile
import time
from typing import Any

from bench.reference import reference_job
from core import defaults
from core.spec import parse_spec
from db.migrate import upgrade
from db.session import make_engine
from db.store import JobStore
from db.views import JobView
from workers.dispatcher import Dispatcher, DispatcherConfig, run_in_thread
from workers.task import WorkerConfig

TERMINAL = ("succeeded", "failed", "cancelled")
TARGET_S = 1.0  # the issue's: a stop reaches a running attempt within a second, idle


def wait(store: JobStore, job_id: str, until: Any, timeout: float = 300) -> JobView:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = store.get(job_id=job_id)
        if until(job):
            return job
        time.sleep(0.05)
    raise TimeoutError(f"job {job_id}: {store.get(job_id=job_id)}")


def training(job: JobView) -> bool:
    """Its attempt has started the MLflow run and, by the second heartbeat, trains."""
    return job.mlflow_run_id is not None


def pct(values: list[float], p: float) -> float:
    """Nearest rank; NaN when a value is missing (code whose attempts record no stop)."""
    if any(math.isnan(v) for v in values):
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def one_round(store: JobStore, parallel: int, settle_s: float) -> list[dict[str, Any]]:
    """``parallel`` long jobs, each cancelled once it trains; a row per stop."""
    spec = parse_spec(reference_job(20_000, name="stop-bench", experiment="bench-stop"))
    ids = [store.submit(spec=spec).id for _ in range(parallel)]
    for job_id in ids:
        wait(store, job_id, training)
    time.sleep(settle_s)  # past the data load: inside the training loop
    rows = []
    for job_id in ids:
        asked = time.time()
        store.request_cancel(job_id=job_id)
        job = wait(store, job_id, lambda j: j.status.value in TERMINAL)
        stop = (job.progress or {}).get("stop") or {}
        assert job.finished_at is not None
        rows.append(
            {
                "status": job.status.value,
                "via": stop.get("via"),
                "signalled": stop.get("signalled_at", math.nan) - asked,
                "stopped": stop.get("stopped_at", math.nan) - asked,
                "ended": job.finished_at.timestamp() - asked,
                "step": stop.get("step"),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stops", type=int, default=20)
    parser.add_argument("--parallel", type=int, default=1, help="long jobs running at once")
    parser.add_argument("--ray-cpus", type=int, default=2)
    parser.add_argument(
        "--settle", type=float, default=1.0, help="seconds between its MLflow run and the cancel"
    )
    args = parser.parse_args()
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    logging.basicConfig(level=logging.WARNING)
    tmp = Path(tempfile.mkdtemp(prefix="gradq-bench-stop-"))
    db_url = f"sqlite:///{tmp}/gradq.db"
    upgrade(db_url)
    store = JobStore(make_engine(db_url))
    worker = WorkerConfig(
        database_url=db_url,
        tracking_uri=f"sqlite:///{tmp}/mlflow.db",
        artifact_root=str(tmp / "artifacts"),
    )
    config = DispatcherConfig(worker=worker, ray_num_cpus=args.ray_cpus)
    thread, stop = run_in_thread(Dispatcher(config, store))
    rows: list[dict[str, Any]] = []
    try:
        while len(rows) < args.stops:
            rows += one_round(store, min(args.parallel, args.stops - len(rows)), args.settle)
    finally:
        stop.set()
        thread.join(timeout=10)
    report(rows, args, config)


def report(rows: list[dict[str, Any]], args: argparse.Namespace, config: DispatcherConfig) -> None:
    n = len(rows)
    print(
        f"\n{n} stops (cancels) of running jobs, {args.parallel} running at once; "
        f"{platform.node()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}; "
        f"stop check every {getattr(config, 'stop_check_seconds', math.nan):g} s\n"
    )
    print("| from the cancel request to | p50 | p99 | max | anchor: the heartbeat | target |")
    print("|---|---:|---:|---:|---:|---|")
    for key, what in (
        ("signalled", "the attempt learnt of it"),
        ("stopped", "its training loop stopped, between two steps"),
        ("ended", "the job cancelled in the database"),
    ):
        values = [r[key] for r in rows]
        target = f"< {TARGET_S:g} s" if key == "stopped" else ""
        print(
            f"| {what} | {pct(values, 50):.3f} s | {pct(values, 99):.3f} s | "
            f"{pct(values, 100):.3f} s | {config.worker.heartbeat_seconds:g} s | {target} |"
        )
    vias = {v: sum(r["via"] == v for r in rows) for v in {r["via"] for r in rows}}
    statuses = {s: sum(r["status"] == s for r in rows) for s in {r["status"] for r in rows}}
    print(f"\nthrough: {vias}; statuses: {statuses}")
    if vias.get("signal") != n or statuses.get("cancelled") != n:
        print("NOT every stop came through the stop signal and ended the job cancelled")
    print(f"(heartbeat interval {defaults.HEARTBEAT_SECONDS:g} s by default)")


if __name__ == "__main__":
    main()
