"""Service benchmark: what the queue, Ray and MLflow add to a training job, one run.

    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 .venv/bin/python bench/service.py [--jobs 200]

Everything is the real thing, embedded: a JobStore on SQLite and MLflow's SQLite store in a
temporary folder, a local Ray of 2 CPUs and one dispatcher thread (``workers.dispatcher``).

1. Overhead: the reference job (digits, hidden [64, 64], relu, batch 32, lr 0.05, momentum
   0.9, weight decay 1e-4, 50 epochs, early stopping off) run directly through ``core.train``
   and through the service (submit → succeeded, from the database's own timestamps). The
   first service job runs on a cold Ray worker and is reported apart; then warm jobs, each
   right after a direct run (alternated, so that both see the same load on a shared
   machine); the overhead is the median service time less the median direct time.
2. Throughput: ``--jobs`` one-epoch reference jobs submitted at once; jobs/s from the first
   submit to the last terminal status, and where a job's time went (median per phase).
   Before them, one reference job of ``--long-epochs`` epochs (500: some seconds), for
   MLflow's share of a job longer than the 0.5–1 s reference.
3. MLflow's share: seconds inside MLflow work (``JobTracker.clock``: start, flushes,
   checkpoint uploads, finish with the learning curve and the model) over the attempt's wall
   time, on the attempt's own thread (the critical path) and in all (with background sends).
   The target (≤ 3 %) is judged on a job of realistic size (``realistic()``: ~10 s, epochs
   of ~1 s), run directly before and after it runs through the service. MLflow costs a job
   a fixed ~0.1 s (its run, the logged model, the last metrics) plus ~0.1 ms per metric
   point (17 an epoch for [64, 64]): on the reference's 6 ms epochs and sub-second jobs that
   is 30–80 %, printed for what it shows, not as the target (the service's fixed cost per
   job has its own target, the overhead's ≤ 1 s).

Timings are medians (best-of where said) on whatever else the machine is running.
"""

from __future__ import annotations

import sys
from pathlib import Path

# The checkout's gradq (and bench.reference), whether or not it is installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import logging
import os
import statistics
import tempfile
import time
from typing import Any

from sqlalchemy import Engine, func, select

from bench.reference import reference_job
from core.spec import parse_spec
from core.train import train
from db.migrate import upgrade
from db.models import Job
from db.session import make_engine
from db.store import JobStore
from db.views import JobView
from workers.dispatcher import Dispatcher, DispatcherConfig, run_in_thread
from workers.task import WorkerConfig

TERMINAL = ("succeeded", "failed", "cancelled")
ENGINES: list[Engine] = []  # the bench's own engine of the job database
TARGETS = {
    "overhead": "≤ 1 s + 5 % of training",
    "throughput": "≥ 10 jobs/s",
    "mlflow": "≤ 3 %",
}


def reference(epochs: int) -> dict[str, Any]:
    return reference_job(
        epochs, name=f"reference-{epochs}", experiment="bench-service", resources={"cpus": 1}
    )


def realistic() -> dict[str, Any]:
    """A job of a realistic size for MLflow's share: 200,000 samples of 64 features, hidden
    [256, 256], 8 epochs of ~1 s (the reference's epochs take ~6 ms), ~10 s in all."""
    return {
        "name": "realistic",
        "experiment": "bench-service",
        "dataset": {"name": "blobs", "n_samples": 200_000, "n_features": 64, "n_classes": 10,
                    "noise": 8.0},
        "model": {"hidden": [256, 256], "activation": "relu"},
        "optimizer": {"lr": 0.02, "momentum": 0.9, "batch_size": 128, "epochs": 8},
        "regularization": {"weight_decay": 1e-4, "early_stopping": {"enabled": False}},
        "resources": {"cpus": 1},
    }  # fmt: skip


def direct_seconds(repeats: int, raw: dict[str, Any] | None = None) -> list[float]:
    spec = parse_spec(raw or reference(50))
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        train(spec)
        out.append(time.perf_counter() - t0)
    return out


def wait_all(store: JobStore, ids: list[str], timeout: float = 600) -> list[JobView]:
    """Wait until every job of ``ids`` is terminal, then read each once. The bench shares
    the 2 cores with the service it measures, so it polls cheaply: one count of the jobs not
    yet terminal (``ids`` are all the jobs the bench has not waited for before), every 0.2 s
    (the figures come from the database's timestamps, not from when the poll saw them; a
    count over the ids themselves, 700 bound values each time, was ~4 % of the CPU)."""
    deadline = time.monotonic() + timeout
    jobs = Job.__table__
    query = select(func.count()).where(jobs.c.status.in_(("queued", "running")))
    while True:
        with ENGINES[0].connect() as conn:
            if conn.execute(query).scalar_one() == 0:
                break
        if time.monotonic() > deadline:
            raise TimeoutError(f"jobs not terminal after {timeout} s")
        time.sleep(0.2)
    done = [store.get(job_id=i) for i in ids]
    bad = [j for j in done if j.status.value != "succeeded"]
    if bad:
        raise RuntimeError(f"{len(bad)} jobs did not succeed, e.g. {bad[0].error}")
    return done


def tree_cpu_seconds() -> float | None:
    """CPU seconds (user + system) used so far by this process and its descendants (the local
    Ray's GCS, raylet and workers), from /proc; None where there is no /proc."""
    proc = Path("/proc")
    if not (proc / "self" / "stat").exists():
        return None
    tick = os.sysconf("SC_CLK_TCK")
    parent: dict[int, int] = {}
    used: dict[int, float] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended meanwhile
            continue
        pid = int(entry.name)
        parent[pid] = int(fields[1])
        used[pid] = (int(fields[11]) + int(fields[12])) / tick
    total, todo = 0.0, [os.getpid()]
    while todo:
        pid = todo.pop()
        total += used.get(pid, 0.0)
        todo.extend(child for child, p in parent.items() if p == pid)
    return total


def span(job: JobView) -> float:
    assert job.finished_at is not None
    return (job.finished_at - job.created_at).total_seconds()


def phases(job: JobView) -> dict[str, float]:
    """Seconds of each phase of one job, from the database's times and the attempt's marks."""
    t = (job.result or {})["timings"]
    assert job.started_at is not None and job.finished_at is not None
    created, claimed = job.created_at.timestamp(), job.started_at.timestamp()
    return {
        "queued → claimed": claimed - created,
        "claimed → task runs": t["task_start"] - claimed,
        "lease + tracker start": t["tracker_started"] - t["task_start"],
        "train": t["trained"] - t["tracker_started"],
        "tracker finish": t["tracker_finished"] - t["trained"],
        "final write": job.finished_at.timestamp() - t["tracker_finished"],
        "mlflow critical": t["mlflow_critical_s"],
        "mlflow total": t["mlflow_total_s"],
        "attempt": t["attempt_s"],
        "attempt CPU (worker)": t["attempt_cpu_s"],
        "train (worker)": (job.result or {})["seconds"],
    }


def share(jobs: list[JobView], key: str) -> float:
    """MLflow seconds over attempt seconds, summed over the jobs."""
    t = [(j.result or {})["timings"] for j in jobs]
    return sum(x[key] for x in t) / sum(x["attempt_s"] for x in t)


def median_phases(jobs: list[JobView]) -> dict[str, float]:
    rows = [phases(j) for j in jobs]
    return {k: statistics.median(r[k] for r in rows) for k in rows[0]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--warm", type=int, default=3, help="warm reference jobs")
    parser.add_argument(
        "--direct", type=int, default=3, help="direct reference runs (one more before)"
    )
    parser.add_argument(
        "--ray-cpus", type=int, default=2, help="CPUs the local Ray offers (the machine has 2)"
    )
    parser.add_argument(
        "--long-epochs",
        type=int,
        default=500,
        help="one more reference job this long through the service (0: none): MLflow's "
        "share for a job of some seconds",
    )
    parser.add_argument(
        "--no-realistic",
        action="store_true",
        help="skip the realistic job (~10 s, run directly twice and once through the service)",
    )
    args = parser.parse_args()
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    logging.basicConfig(level=logging.WARNING)

    direct = direct_seconds(1)
    tmp = Path(tempfile.mkdtemp(prefix="gradq-bench-service-"))
    db_url = f"sqlite:///{tmp}/gradq.db"
    upgrade(db_url)
    ENGINES.append(make_engine(db_url))
    store = JobStore(ENGINES[0])
    worker = WorkerConfig(
        database_url=db_url,
        tracking_uri=f"sqlite:///{tmp}/mlflow.db",
        artifact_root=str(tmp / "artifacts"),
    )
    dispatcher = Dispatcher(DispatcherConfig(worker=worker, ray_num_cpus=args.ray_cpus), store)
    thread, stop = run_in_thread(dispatcher)
    try:
        spec50 = parse_spec(reference(50))
        cold = wait_all(store, [store.submit(spec=spec50).id])
        warm = []
        for i in range(max(args.warm, args.direct)):  # alternated: direct, then via service
            if i < args.direct:
                direct += direct_seconds(1)
            if i < args.warm:
                warm.append(wait_all(store, [store.submit(spec=spec50).id])[0])
        long = []
        if args.long_epochs:
            long = wait_all(store, [store.submit(spec=parse_spec(reference(args.long_epochs))).id])
        real: tuple[list[float], JobView] | None = None
        if not args.no_realistic:  # direct, service, direct: both see the same load
            direct_real = direct_seconds(1, realistic())
            job = wait_all(store, [store.submit(spec=parse_spec(realistic())).id])[0]
            real = (direct_real + direct_seconds(1, realistic()), job)
        spec1 = parse_spec(reference(1))
        wait_all(store, [store.submit(spec=spec1).id for _ in range(2)])  # both workers warm
        cpu0 = tree_cpu_seconds()
        t0 = time.perf_counter()
        ids = [store.submit(spec=spec1).id for _ in range(args.jobs)]
        submit_s = time.perf_counter() - t0
        tiny = wait_all(store, ids)
        cpu1 = tree_cpu_seconds()
        cpu_per_job = None if cpu0 is None or cpu1 is None else (cpu1 - cpu0) / len(ids)
    finally:
        stop.set()
        thread.join(timeout=10)
    report(direct, cold[0], warm, tiny, submit_s, cpu_per_job, long, real)


def report(
    direct: list[float],
    cold: JobView,
    warm: list[JobView],
    tiny: list[JobView],
    submit_s: float,
    cpu_per_job: float | None,
    long: list[JobView],
    real: tuple[list[float], JobView] | None,
) -> None:
    d = statistics.median(direct)
    w = statistics.median(span(j) for j in warm)
    first = min(j.created_at for j in tiny)
    last = max(j.finished_at for j in tiny if j.finished_at is not None)
    rate = len(tiny) / (last - first).total_seconds()
    budget = 1.0 + 0.05 * d
    rows = [
        (f"reference job, direct core.train (median of {len(direct)})", f"{d:.2f} s", ""),
        ("  (best of them)", f"{min(direct):.2f} s", ""),
        ("reference job via service, cold worker", f"{span(cold):.2f} s", ""),
        (f"reference job via service, warm (median of {len(warm)})", f"{w:.2f} s", ""),
        ("service overhead, warm", f"{w - d:.2f} s", f"≤ {budget:.2f} s"),
        ("service overhead, cold", f"{span(cold) - d:.2f} s", ""),
        (f"throughput, {len(tiny)} one-epoch jobs", f"{rate:.1f} jobs/s", TARGETS["throughput"]),
        ("  (submitting them took)", f"{submit_s:.2f} s", ""),
        (
            "  CPU per job, all service processes",
            "n/a" if cpu_per_job is None else f"{cpu_per_job:.3f} s",
            "",
        ),
        (
            "  ceiling on 2 idle cores (2 / CPU per job)",
            "n/a" if not cpu_per_job else f"{2 / cpu_per_job:.1f} jobs/s",
            "",
        ),
        (
            "MLflow share, reference (critical path)",
            pct(share(warm, "mlflow_critical_s")),
            "",
        ),
        ("MLflow share, reference (all, incl. background)", pct(share(warm, "mlflow_total_s")), ""),
        (
            "MLflow share, reference cold (critical path)",
            pct(share([cold], "mlflow_critical_s")),
            "",
        ),
        (
            "MLflow share, one-epoch jobs (critical path)",
            pct(share(tiny, "mlflow_critical_s")),
            "",
        ),
        ("MLflow share, one-epoch jobs (all)", pct(share(tiny, "mlflow_total_s")), ""),
    ]
    for job in long:
        epochs = (job.result or {})["epochs"]
        rows += [(f"reference job of {epochs} epochs via service", f"{span(job):.2f} s", "")]
        rows += mlflow_rows(job, f", {epochs} epochs", "")
    if real is not None:
        direct_real, job = real
        d_real, s_real = statistics.median(direct_real), span(job)
        rows += [
            ("realistic job, direct core.train (median of 2)", f"{d_real:.2f} s", ""),
            ("  (before, after)", " / ".join(f"{x:.2f}" for x in direct_real) + " s", ""),
            ("realistic job via service", f"{s_real:.2f} s", ""),
            (
                "  service overhead (queue, Ray, MLflow: all)",
                f"{s_real - d_real:.2f} s",
                f"≤ {1.0 + 0.05 * d_real:.2f} s",
            ),
            ("  (of the job via service)", pct((s_real - d_real) / s_real), ""),
            *mlflow_rows(job, "", TARGETS["mlflow"]),
        ]
    width = max(len(r[0]) for r in rows)
    print(f"{'metric':<{width}} | {'measured':>12} | target")
    print(f"{'-' * width}-|-{'-' * 12}-|-------")
    for name, value, target in rows:
        print(f"{name:<{width}} | {value:>12} | {target}")
    for title, jobs in (
        ("reference, warm", warm),
        ("reference, cold", [cold]),
        ("one-epoch jobs", tiny),
    ):
        print(f"\nmedian seconds per phase, {title}:")
        for k, v in median_phases(jobs).items():
            print(f"  {k:<24} {v:8.3f}")


def mlflow_rows(job: JobView, of: str, target: str) -> list[tuple[str, str, str]]:
    """MLflow's share of one job's attempt (critical path, and in all) and its seconds."""
    critical = (job.result or {})["timings"]["mlflow_critical_s"]
    return [
        (f"  MLflow share{of} (critical path)", pct(share([job], "mlflow_critical_s")), target),
        (f"  MLflow share{of} (all, incl. background)", pct(share([job], "mlflow_total_s")), ""),
        (f"  MLflow seconds{of} (critical path)", f"{critical:.2f} s", ""),
    ]


def pct(x: float) -> str:
    return f"{100 * x:.1f} %"


if __name__ == "__main__":
    main()
