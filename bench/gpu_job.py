"""One job end to end on a CUDA GPU: the queue, the worker's attempt, MLflow, the model.

    .venv/bin/python bench/gpu_job.py [--json] [--epochs 50]

What a GPU worker does with a job, on this machine's GPU: a JobStore on SQLite and MLflow's
SQLite store in a temporary folder; the reference job (digits, hidden [64, 64], relu, batch
32, lr 0.05, momentum 0.9, weight decay 1e-4, ``device: auto`` with ``resources.gpus: 1``) is
submitted, claimed and run by ``workers.task.run_attempt`` — the function a Ray task of the
dispatcher calls, here called in this process (the Ray hop itself is measured by
``bench/service.py``) — twice: the first pays a fresh worker's imports, the second is warm.
Then the logged model is loaded back with ``mlflow.pytorch.load_model`` and its accuracy on
the test part compared with what the job reported. Beside it, the same spec trained directly
through ``core.train`` on the GPU and on the CPU (one thread).
"""

from __future__ import annotations

import sys
from pathlib import Path

# The checkout's gradq (and bench.reference), whether or not it is installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import json
import tempfile
import time
from typing import Any

import torch

from bench.reference import reference_job
from core.data import load_dataset
from core.spec import parse_spec
from core.train import train
from db.migrate import upgrade
from db.session import make_engine
from db.store import JobStore
from workers.task import WorkerConfig, run_attempt


def reference(epochs: int, device: str) -> dict[str, Any]:
    return reference_job(
        epochs,
        name=f"gpu-reference-{epochs}",
        experiment="bench-gpu",
        device=device,
        resources={"cpus": 1, "gpus": 1 if device != "cpu" else 0},
    )


def direct(epochs: int, device: str) -> dict[str, Any]:
    spec = parse_spec(reference(epochs, device))
    train(parse_spec({**reference(1, device)}))  # warm-up: CUDA context, kernels
    t0 = time.perf_counter()
    result = train(spec)
    return {
        "seconds": time.perf_counter() - t0,
        "device": result.device,
        "engine": result.engine,
        "test_accuracy": result.metrics["test_accuracy"],
    }


def end_to_end(epochs: int, folder: Path) -> dict[str, Any]:
    url = f"sqlite:///{folder / 'gradq.db'}"
    upgrade(url)
    store = JobStore(make_engine(url))
    config = WorkerConfig(
        database_url=url,
        tracking_uri=f"sqlite:///{folder / 'mlflow.db'}",
        artifact_root=str(folder / "artifacts"),
    )
    spec = parse_spec(reference(epochs, "auto"))
    cold: float | None = None
    for _ in range(2):  # the first attempt in a fresh worker process pays the imports
        job = store.submit(spec=spec, tenant="bench")
        t0 = time.perf_counter()
        (claimed,) = store.claim(owner="bench-gpu", lease_seconds=60, ids=[job.id])
        status = run_attempt(config, claimed)
        wall = time.perf_counter() - t0
        cold = wall if cold is None else cold
    view = store.get(job_id=job.id)
    result = view.result or {}
    out: dict[str, Any] = {
        "status": status,
        "claim_to_finished_s": wall,
        "cold_worker_claim_to_finished_s": cold,
        "service_s": (view.finished_at - view.created_at).total_seconds()
        if view.finished_at
        else None,
        "device": result.get("device"),
        "engine": result.get("engine"),
        "test_accuracy": (result.get("metrics") or {}).get("test_accuracy"),
        "timings": result.get("timings"),
        "error": view.error,
        "mlflow_run_id": view.mlflow_run_id,
    }
    if status == "succeeded" and view.mlflow_run_id:
        import mlflow
        import mlflow.pytorch

        mlflow.set_tracking_uri(config.tracking_uri)
        uri = mlflow.get_run(view.mlflow_run_id).data.tags["gradq.model_uri"]
        model = mlflow.pytorch.load_model(uri, map_location="cpu")
        data = load_dataset(spec.dataset, seed=spec.seed)
        with torch.no_grad():  # the model takes raw features: undo the standardisation
            probs = model(torch.as_tensor(data.raw(data.X_test), dtype=torch.float32))
        pred = probs.argmax(dim=1).numpy()
        out["loaded_model_test_accuracy"] = float((pred == data.y_test).mean())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--epochs", type=int, default=50)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench/gpu_job.py needs a CUDA GPU")
    torch.set_num_threads(1)
    report: dict[str, Any] = {
        "gpu": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "direct_cuda": direct(args.epochs, "cuda"),
        "direct_cpu": direct(args.epochs, "cpu"),
    }
    with tempfile.TemporaryDirectory(prefix="gradq-gpu-") as tmp:
        report["end_to_end"] = end_to_end(args.epochs, Path(tmp))
    if args.json:
        print(json.dumps(report, indent=2, default=str))
        return
    e2e = report["end_to_end"]
    print(f"{report['gpu']}, torch {report['torch']}, reference job, {args.epochs} epochs")
    for key in ("direct_cuda", "direct_cpu"):
        r = report[key]
        print(
            f"  {key:12s} {r['seconds']:7.2f} s  {r['device']:6s} engine={r['engine']:8s}"
            f" test acc {r['test_accuracy']:.4f}"
        )
    print(
        f"  end to end   {e2e['claim_to_finished_s']:7.2f} s  {e2e['device']} "
        f"engine={e2e['engine']} status={e2e['status']} test acc {e2e['test_accuracy']}"
        f" (loaded model: {e2e.get('loaded_model_test_accuracy')})"
    )
    print(f"  timings {json.dumps(e2e['timings'])}")


if __name__ == "__main__":
    main()
