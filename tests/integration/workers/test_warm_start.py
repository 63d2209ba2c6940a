"""Warm starts (``init_from``) through the real queue, a real local Ray and a real MLflow
store: the new job begins from the origin's weights, at step 0 with its own optimizer state,
and the lineage is tagged on both runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from mlflow import MlflowClient

from core.spec import parse_spec
from db.store import JobStore
from db.views import JobView
from tests.integration.workers.dispatching import running, wait
from workers.tracking import latest_checkpoint

pytestmark = pytest.mark.slow

EPOCHS = 12
BASE: dict[str, Any] = {
    "dataset": "iris",
    "model": {"hidden": [8]},
    "optimizer": {"name": "adam", "epochs": EPOCHS, "lr": 0.01},
    "seed": 3,
}
# one epoch at a rate too small to move the weights: they stay those it started from
STILL = {**BASE, "optimizer": {"name": "adam", "epochs": 1, "lr": 1e-9}}


def ended(store: JobStore, job_id: str) -> JobView:
    return wait(store, job_id, lambda j: j.status.value in ("succeeded", "failed", "cancelled"))


def test_a_warm_start_begins_from_the_origins_weights(ray_local: None, tmp_path: Path) -> None:
    with running(tmp_path) as (store, dispatcher):
        uri = dispatcher.config.worker.tracking_uri
        origin = store.submit(spec=parse_spec(BASE), tenant="a").id
        done = ended(store, origin)
        assert done.status.value == "succeeded" and done.mlflow_run_id is not None
        theirs = latest_checkpoint(tracking_uri=uri, run_id=done.mlflow_run_id)
        assert theirs is not None and theirs.best_params is not None

        def submit(spec: dict[str, Any], tenant: str = "a") -> str:
            return store.submit(spec=parse_spec(spec), tenant=tenant).id

        last = submit({**STILL, "init_from": {"job": origin, "checkpoint": "last"}})
        best = submit({**STILL, "init_from": {"job": origin, "checkpoint": "best"}})
        cold = submit(STILL)
        # an origin whose early stopping kept no best weights: "best" takes its last ones
        plain = submit({**BASE, "regularization": {"early_stopping": {"enabled": False}}})
        plain_done = ended(store, plain)
        assert plain_done.mlflow_run_id is not None
        plain_ckpt = latest_checkpoint(tracking_uri=uri, run_id=plain_done.mlflow_run_id)
        assert plain_ckpt is not None and plain_ckpt.best_params is None
        best_of_plain = submit({**STILL, "init_from": {"job": plain, "checkpoint": "best"}})
        stranger = submit({**STILL, "init_from": {"job": origin}}, tenant="b")
        runs = {}
        for job_id in (last, best, cold, best_of_plain):
            job = ended(store, job_id)
            assert job.status.value == "succeeded", job.error
            assert job.mlflow_run_id is not None
            ckpt = latest_checkpoint(tracking_uri=uri, run_id=job.mlflow_run_id)
            assert ckpt is not None
            runs[job_id] = (job.mlflow_run_id, ckpt)
        refused = ended(store, stranger)  # another tenant's job is not found by the worker
        assert refused.status.value == "failed"
        assert refused.error == {"type": "invalid", "message": f"init_from: no job {origin!r}"}

    _, from_last = runs[last]
    _, from_best = runs[best]
    _, from_scratch = runs[cold]
    for ours, origin_w in zip(from_last.params, theirs.params, strict=True):
        assert torch.allclose(ours, origin_w, atol=1e-6)
    for ours, origin_w in zip(from_best.params, theirs.best_params, strict=True):
        assert torch.allclose(ours, origin_w, atol=1e-6)
    assert not torch.allclose(from_scratch.params[0], theirs.params[0], atol=1e-2)
    # a fresh start otherwise: one epoch's steps from step 0, not the origin's count
    steps_per_epoch = theirs.step // EPOCHS
    assert from_last.step == from_scratch.step == steps_per_epoch
    # adam's own state: its step count restarted (the origin's counted every epoch's)
    assert theirs.optimizer_steps == theirs.step
    assert from_last.optimizer_steps == from_scratch.optimizer_steps == steps_per_epoch
    for ours, origin_w in zip(runs[best_of_plain][1].params, plain_ckpt.params, strict=True):
        assert torch.allclose(ours, origin_w, atol=1e-6)
    assert [r["epoch"] for r in from_last.history] == [1]
    # the first validation loss is the origin's at its best epoch (the same weights on the
    # same split), below the one a fresh start has
    assert theirs.best_epoch is not None
    origin_best_val = theirs.history[theirs.best_epoch - 1]["val"]["loss"]
    warm_val = from_best.history[0]["val"]["loss"]
    assert warm_val == pytest.approx(origin_best_val, rel=1e-4)
    assert warm_val < from_scratch.history[0]["val"]["loss"]

    client = MlflowClient(uri)
    last_run = client.get_run(runs[last][0]).data.tags
    assert last_run["gradq.init_from"] == origin
    assert last_run["gradq.init_from_run"] == done.mlflow_run_id
    assert last_run["gradq.init_from_checkpoint"] == "last"
    origin_tags = client.get_run(done.mlflow_run_id).data.tags
    assert origin_tags[f"gradq.warm_started_by.{last}"] == runs[last][0]
    assert origin_tags[f"gradq.warm_started_by.{best}"] == runs[best][0]
    assert not any(k.startswith("gradq.init_from") for k in client.get_run(runs[cold][0]).data.tags)
