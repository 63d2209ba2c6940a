"""Memory benchmark: a job's measured peak memory against gradq's admission estimate.

    .venv/bin/python bench/memory.py                  # the table: each job, its estimate, its peak
    .venv/bin/python bench/memory.py --jobs all       # also the jobs that check other paths
    .venv/bin/python bench/memory.py --json
    .venv/bin/python bench/memory.py --jobs moons-wide --tree /tmp/old   # another checkout's code

Each job runs in a fresh subprocess the way a worker runs an attempt: ``warm_up()`` (what an
idle warm worker has imported: gradq, torch, MLflow), the data set loaded as
``workers.task`` loads it (with the worker's per-process cache and the job's own copy),
``core.train.train`` with the tracking callback of a real ``JobTracker`` on a temporary
MLflow SQLite store, and ``finish()`` (the model's export). Its measured peak is its
``ru_maxrss`` less that of a baseline subprocess that only ran ``warm_up()``: what the job adds
to an idle worker, which is what ``core.memory.estimate`` estimates. The ratio
measured/estimate should lie in [0.5, 1]: an estimate is an upper bound, not far above
(``tiny`` shows the floor every job is estimated at, its fixed parts, and lies below 0.5).

``--tree`` runs the jobs on the gradq code of another directory (e.g. a ``git archive`` of an
older commit); its estimate column is empty when that code has no ``core.memory``.
"""

from __future__ import annotations

import sys
from pathlib import Path

# The checkout's gradq, whether or not it is installed (a child puts --tree first instead).
if "--child" not in sys.argv:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import json
import os
import resource
import subprocess
import tempfile
import time
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BASELINE = "idle"

# Three jobs estimated near 1 GiB, each heavy in one thing (the data set, the layers' width,
# the batch); the moons job whose whole-split evaluation passes once took 19.6 GB at a million
# rows (here at 100,000, and at a million with --jobs all); the smallest job, which has only
# the fixed parts; then (--jobs all) jobs through other paths: checkpoints of many parameters,
# autograd, dropout, many classes, regression, the validator's finite differences.
ONE_EPOCH = {"epochs": 1}
JOBS: dict[str, dict[str, Any]] = {
    "data-heavy": {
        "dataset": {"name": "blobs", "n_samples": 250_000, "n_features": 200},
        "model": {"hidden": [32]},
        "optimizer": {**ONE_EPOCH, "batch_size": 256},
    },
    "width-heavy": {
        "dataset": {"name": "moons", "n_samples": 2_000},
        "model": {"hidden": [2048, 2048, 2048]},
        "optimizer": {**ONE_EPOCH, "batch_size": 64},
    },
    "batch-heavy": {
        "dataset": {"name": "moons", "n_samples": 100_000},
        "model": {"hidden": [1024, 1024]},
        "optimizer": {**ONE_EPOCH, "batch_size": 32_768},
    },
    "moons-wide": {
        "dataset": {"name": "moons", "n_samples": 100_000},
        "model": {"hidden": [4096]},
        "optimizer": {**ONE_EPOCH, "batch_size": 1024},
    },
    "tiny": {"dataset": "iris", "optimizer": ONE_EPOCH},
    "moons-wide-1m": {
        "dataset": {"name": "moons", "n_samples": 1_000_000},
        "model": {"hidden": [4096]},
        "optimizer": {**ONE_EPOCH, "batch_size": 1024},
    },
    "parameter-heavy": {
        "dataset": {"name": "moons", "n_samples": 2_000},
        "model": {"hidden": [2048, 2048, 2048]},
        "optimizer": {"epochs": 3, "batch_size": 64},
        "gradcheck": {"at_start": False, "every_steps": 0},
    },
    "autograd-dropout": {
        "dataset": {"name": "moons", "n_samples": 100_000},
        "model": {"hidden": [1024, 1024], "activation": "sigmoid"},
        "optimizer": {**ONE_EPOCH, "batch_size": 16_384},
        "regularization": {"dropout": 0.2},
        "engine": "autograd",
    },
    "manual-dropout": {
        "dataset": {"name": "moons", "n_samples": 100_000},
        "model": {"hidden": [1024, 1024], "activation": "tanh"},
        "optimizer": {**ONE_EPOCH, "batch_size": 16_384},
        "regularization": {"dropout": 0.2},
    },
    "many-classes": {
        "dataset": {"name": "blobs", "n_samples": 100_000, "n_features": 20, "n_classes": 500},
        "model": {"hidden": [64]},
        "optimizer": {**ONE_EPOCH, "batch_size": 512},
    },
    "regression": {
        "dataset": {"name": "sine", "n_samples": 1_000_000},
        "model": {"hidden": [256]},
        "optimizer": {**ONE_EPOCH, "batch_size": 4096},
    },
    "gradcheck-heavy": {
        "dataset": {"name": "digits"},
        "model": {"hidden": [256, 256]},
        "optimizer": {**ONE_EPOCH, "batch_size": 1024},
        "gradcheck": {"fd_samples": 1000, "max_batch": 512},
    },
}
DEFAULT_JOBS = ["data-heavy", "width-heavy", "batch-heavy", "moons-wide", "tiny"]


def peak_rss() -> int:
    """This process's peak resident memory in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child(name: str, store: str) -> dict[str, Any]:
    """Run job ``name`` (or nothing but the imports, ``idle``) as a worker would, tracked in
    the MLflow store under the folder ``store``."""
    from workers.dispatcher import warm_up

    warm_up()
    if name == BASELINE:
        return {"peak_rss": peak_rss()}
    from core.spec import parse_spec
    from core.train import train
    from workers.task import _data
    from workers.tracking import JobTracker

    spec = parse_spec(JOBS[name])
    try:
        from core.memory import estimate
    except ImportError:  # an older gradq
        estimated: dict[str, Any] = {}
    else:
        e = estimate(spec)
        estimated = {"estimate": e.total, "phase": e.phase, "parts": e.parts, "field": e.field}
    tracker = JobTracker(
        tracking_uri=tracking_uri(store),
        job_id=f"bench-{name}-{time.time_ns()}",
        spec=spec,
        attempt=1,
        artifact_root=f"{store}/artifacts",
        flush_interval_s=1.0,  # a worker's defaults (WorkerConfig)
        checkpoint_interval_s=10.0,
    )
    tracker.start()
    started = time.perf_counter()
    data = _data(spec, None, "")  # type: ignore[arg-type]  # no store: not an upload
    result = train(spec, callbacks=[tracker.callback()], data=data)
    seconds = time.perf_counter() - started
    tracker.finish(status="succeeded", result=result)
    return {"peak_rss": peak_rss(), "train_s": seconds, **estimated}


def tracking_uri(store: str) -> str:
    return f"sqlite:///{store}/mlflow.db"


def spawn(name: str, tree: Path, store: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(tree), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", name, "--store", store],
        cwd=tree,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def gib(n: float) -> str:
    return f"{n / 2**30:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", nargs="*", default=DEFAULT_JOBS, choices=["all", *JOBS])
    parser.add_argument("--tree", type=Path, default=ROOT, help="the gradq code to run")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.store)))
        return
    with tempfile.TemporaryDirectory(prefix="gradq-memory-") as store:
        # the tracking store's schema made once, as the dispatcher does before any attempt
        from workers.tracking import make_client

        make_client(tracking_uri(store)).search_experiments(max_results=1)
        idle = spawn(BASELINE, args.tree, store)["peak_rss"]
        rows = []
        for name in list(JOBS) if "all" in args.jobs else args.jobs:  # one at a time
            job = spawn(name, args.tree, store)
            rows.append({"job": name, "measured": job["peak_rss"] - idle, **job})
    if args.json:
        print(json.dumps({"idle_peak_rss": idle, "jobs": rows}, indent=2))
        return
    print(f"idle worker process (imports only): peak RSS {gib(idle)} GiB; code: {args.tree}")
    print(f"{'job':<16} {'estimate GiB':>12} {'measured GiB':>12} {'ratio':>6}  peak phase, field")
    for r in rows:
        est = r.get("estimate")
        cells = [gib(est), gib(r["measured"]), f"{r['measured'] / est:.2f}"] if est else []
        cells = cells or ["—", gib(r["measured"]), "—"]
        where = f"{r['phase']}, {r['field']}" if est else ""
        print(f"{r['job']:<16} {cells[0]:>12} {cells[1]:>12} {cells[2]:>6}  {where}")
    for r in rows:
        if "parts" in r:
            parts = ", ".join(f"{k} {v / 2**20:.0f}" for k, v in r["parts"].items())
            print(f"  {r['job']}: MiB by part: {parts}; training {r['train_s']:.1f} s")


if __name__ == "__main__":
    main()
