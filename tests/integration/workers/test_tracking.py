"""The MLflow adapter against a real MLflow SQLite store and real ``core.train`` jobs.

The store (``sqlite:///{tmp}/mlflow.db``, artifacts under ``{tmp}/artifacts``) is made once
per module: creating it runs MLflow's migrations. Each test uses its own job id. The tests run
with ``{tmp}`` as the working directory, so a file MLflow wrote relative to it is caught. One
job is trained, tracked and finished with a registered model once (logging a model is the slow
part) and several tests read what it left; the others train a few epochs each.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import mlflow.artifacts
import mlflow.models
import mlflow.pytorch
import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from core.callbacks import Callback, EpochRecord
from core.checkpoint import Checkpoint
from core.spec import JobSpec, parse_spec
from core.train import TrainResult, train
from workers.tracking import (
    JobTracker,
    close_run,
    latest_checkpoint,
    make_client,
    metric_history,
    run_url,
)
from workers.tracking.artifacts import RunArtifacts
from workers.tracking.buffer import RunBuffer

REGISTERED = "gradq-test-iris"


@dataclass(frozen=True)
class Store:
    uri: str
    artifacts: Path
    folder: Path


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    folder = tmp_path_factory.mktemp("mlflow")
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        yield Store(f"sqlite:///{folder}/mlflow.db", folder / "artifacts", folder)
    finally:
        os.chdir(cwd)


def iris_spec(**overrides: Any) -> JobSpec:
    """A small, fast iris job: exactly ``optimizer.epochs`` epochs (no early stopping).
    ``section__field=value`` overrides one field of a section (``optimizer__epochs=30``)."""
    raw: dict[str, Any] = {
        "name": "iris-mlp",
        "experiment": "tracking-tests",
        "dataset": "iris",
        "model": {"hidden": [16, 8], "activation": "tanh"},
        "optimizer": {"lr": 0.05, "batch_size": 16, "epochs": 8},
        "regularization": {"early_stopping": {"enabled": False}},
        "seed": 3,
    }
    for key, value in overrides.items():
        section, _, field = key.partition("__")
        if field:
            raw.setdefault(section, {})[field] = value
        else:
            raw[key] = value
    return parse_spec(raw)


def tracker_for(store: Store, spec: JobSpec, job_id: str, **kwargs: Any) -> JobTracker:
    """A tracker on the module's store (``attempt`` 1 unless given)."""
    kwargs.setdefault("attempt", 1)
    return JobTracker(
        tracking_uri=store.uri,
        job_id=job_id,
        spec=spec,
        artifact_root=str(store.artifacts),
        **kwargs,
    )


@dataclass
class Finished:
    """One job trained, tracked and finished (with a registered model) per module."""

    tracker: JobTracker
    run_id: str
    result: TrainResult
    client: MlflowClient


@pytest.fixture(scope="module")
def finished(mlflow_store: Store) -> Finished:
    spec = iris_spec(register_as=REGISTERED)
    tracker = tracker_for(mlflow_store, spec, "job-ok", node="node-a", flush_interval_s=0)
    run_id = tracker.start()
    result = train(spec, callbacks=[tracker.callback()])
    tracker.finish(status="succeeded", result=result)
    return Finished(tracker, run_id, result, MlflowClient(tracking_uri=mlflow_store.uri))


@pytest.fixture
def global_uri(mlflow_store: Store) -> Iterator[None]:
    """``mlflow.pytorch.load_model`` reads the process-wide tracking URI; restored after."""
    mlflow.set_tracking_uri(mlflow_store.uri)
    yield
    mlflow.set_tracking_uri(None)  # type: ignore[arg-type]


def steps(client: MlflowClient, run_id: str, key: str) -> list[int]:
    """Every logged step of a metric, duplicates included, in order."""
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def download(client: MlflowClient, run_id: str, path: str, tmp: Path) -> bytes:
    return Path(client.download_artifacts(run_id, path, dst_path=str(tmp))).read_bytes()


def test_a_finished_run_has_status_tags_params_final_metrics_and_a_url(finished: Finished) -> None:
    run_id = finished.run_id
    run = finished.client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "iris-mlp"
    tags = run.data.tags
    assert tags["gradq.job_id"] == "job-ok" and tags["gradq.attempt"] == "1"
    assert tags["gradq.node"] == tags["gradq.attempt.1.node"] == "node-a"
    params = run.data.params
    assert params["model.hidden"] == "[16, 8]" and json.loads(params["model.hidden"]) == [16, 8]
    assert float(params["optimizer.lr"]) == 0.05 and params["dataset.name"] == "iris"
    assert params["regularization.early_stopping.enabled"] == "false"
    assert params["register_as"] == REGISTERED
    metrics = run.data.metrics
    assert metrics["final_test_accuracy"] == pytest.approx(finished.result.metrics["test_accuracy"])
    assert metrics["final_epochs"] == 8 and metrics["gradcheck_count"] == 1
    url = run_url(
        ui_base="http://ui:5000/", tracking_uri=finished.client.tracking_uri, run_id=run_id
    )
    assert (
        url == f"http://ui:5000/#/experiments/{run.info.experiment_id}/runs/{run_id}/model-metrics"
    )


def test_each_epoch_is_one_point_and_the_history_matches_training(finished: Finished) -> None:
    client, run_id = finished.client, finished.run_id
    for key in (
        "loss/train",
        "loss/val",
        "accuracy/val",
        "weights/layer2_dead_fraction",
        "training/lr",
    ):
        assert steps(client, run_id, key) == list(range(1, 9)), key
    val = metric_history(tracking_uri=client.tracking_uri, run_id=run_id, key="loss/val")
    assert val == [(r.epoch, pytest.approx(r.val["loss"])) for r in finished.result.history]
    grad = metric_history(
        tracking_uri=client.tracking_uri, run_id=run_id, key="training/gradcheck_max_rel_error"
    )
    assert len(grad) == 1 and grad[0][0] == 0 and grad[0][1] < 1e-8


def test_artifacts_checkpoint_gradcheck_and_learning_curve(
    finished: Finished, mlflow_store: Store, tmp_path: Path
) -> None:
    client, run_id = finished.client, finished.run_id
    assert client.get_run(run_id).info.artifact_uri.startswith(mlflow_store.artifacts.as_uri())
    last = Checkpoint.from_bytes(
        download(client, run_id, "checkpoints/last/checkpoint.pt", tmp_path)
    )
    assert (last.epoch, last.step) == (8, finished.result.steps)
    assert [h["epoch"] for h in last.history] == list(range(1, 9))
    best = Checkpoint.from_bytes(
        download(client, run_id, "checkpoints/best/checkpoint.pt", tmp_path)
    )
    assert best.best_epoch == best.epoch == finished.result.best_epoch
    report = json.loads(download(client, run_id, "gradcheck/step_00000000.json", tmp_path))
    assert report["passed"] is True and report["step"] == 0 and report["tensors"]
    png = download(client, run_id, "plots/learning_curve.png", tmp_path)
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5_000
    confusion = download(client, run_id, "plots/confusion_matrix.png", tmp_path)
    assert confusion.startswith(b"\x89PNG\r\n\x1a\n")
    table = json.loads(download(client, run_id, "confusion_matrix.json", tmp_path))
    assert finished.result.confusion is not None
    assert [row[1 : 1 + len(table["data"])] for row in table["data"]] == (
        finished.result.confusion["matrix"]
    )
    restored = latest_checkpoint(tracking_uri=mlflow_store.uri, run_id=run_id)
    assert restored is not None and restored.epoch == 8
    assert all(torch.equal(a, b) for a, b in zip(restored.params, last.params, strict=True))


def test_the_model_loads_from_the_run_and_reproduces_the_test_accuracy(
    finished: Finished, mlflow_store: Store, global_uri: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # loaded as the README says: with MLflow told to unpickle nothing from the store
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    data, run_id = finished.result.data, finished.run_id
    X = torch.as_tensor(data.raw(data.X_test), dtype=torch.float32)
    for uri in (f"runs:/{run_id}/model", finished.tracker.model_uri):
        assert uri is not None
        model = mlflow.pytorch.load_model(uri)
        with torch.no_grad():
            probs = model(X).numpy()
        assert probs.shape == (len(X), 3) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
        accuracy = float((probs.argmax(axis=1) == data.y_test).mean())
        assert accuracy == pytest.approx(finished.result.metrics["test_accuracy"])
        metadata = mlflow.models.get_model_info(uri).metadata
        assert metadata == {"gradq_classes": data.classes, "gradq_task": "classification",
                            "gradq_loss": "cross_entropy"}  # fmt: skip
    # the logged model belongs to the run's experiment, its files under the artifact root
    model_id = finished.tracker.model_uri.removeprefix("models:/")  # type: ignore[union-attr]
    logged = finished.client.get_logged_model(model_id)
    run = finished.client.get_run(run_id)
    assert logged.experiment_id == run.info.experiment_id and logged.source_run_id == run_id
    assert logged.artifact_location.startswith(mlflow_store.artifacts.as_uri())
    linked = {m.key: m.value for m in logged.metrics or []}
    assert linked["final_test_accuracy"] == pytest.approx(finished.result.metrics["test_accuracy"])
    outputs = run.outputs.model_outputs if run.outputs else []
    assert [o.model_id for o in outputs] == [model_id]
    assert not (mlflow_store.folder / "mlruns").exists()


class Payload:
    """What a replaced model file carries: unpickling it touches ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.marker.touch, ())


def tampered_copy(finished: Finished, tmp: Path, marker: Path, how: str) -> Path:
    """The run's model as someone who reaches MLflow could leave it: ``"record"``, its
    weights record replaced by a pickle that runs code (flagged as pickled in the archive's
    config); ``"file"``, a pickled model file (MLflow's pickle format) put in its place."""
    local = Path(mlflow.artifacts.download_artifacts(f"runs:/{finished.run_id}/model",
                                                     dst_path=str(tmp)))  # fmt: skip
    evil = tmp / "evil.pt"
    torch.save(Payload(marker), evil)
    data_file = local / "data" / "model.pt2"
    if how == "file":
        data_file.unlink()
        (local / "data" / "model.pth").write_bytes(evil.read_bytes())
        (local / "data" / "pickle_module_info.txt").write_text("mlflow.pytorch.pickle_module")
        return local
    records = {}
    with zipfile.ZipFile(data_file) as archive:
        records = {name: archive.read(name) for name in archive.namelist()}
    [config_name] = [n for n in records if n.endswith("weights/model_weights_config.json")]
    config = json.loads(records[config_name])
    entry = next(iter(config["config"].values()))
    entry["use_pickle"] = True
    records[config_name] = json.dumps(config).encode()
    records[config_name.rsplit("/", 1)[0] + "/" + entry["path_name"]] = evil.read_bytes()
    with zipfile.ZipFile(data_file, "w") as archive:
        for name, content in records.items():
            archive.writestr(name, content)
    return local


@pytest.mark.parametrize("how", ["record", "file"])
def test_a_replaced_model_file_is_refused_and_runs_no_code(
    finished: Finished, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    marker = tmp_path / "code-ran"
    local = tampered_copy(finished, tmp_path / "copy", marker, how)
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    with pytest.raises(MlflowException, match="pickle"):
        mlflow.pytorch.load_model(str(local))
    assert not marker.exists()
    # the payload is live: a loader that allows pickles (MLflow's default) runs it
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")
    with pytest.raises(Exception):  # noqa: B017  # what fails after the code ran varies
        mlflow.pytorch.load_model(str(local))
    assert marker.exists()


def test_models_of_one_graph_are_traced_once_and_each_keeps_its_own_weights(
    mlflow_store: Store, global_uri: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two iris models of one shape share a traced program (the second saved from it with its
    weights copied in); two diabetes models whose target constants differ get one each. Every
    model loads (pickles refused) and computes what its own training made."""
    from core.export import export_model
    from workers.tracking import artifacts

    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    artifacts._programs.clear()
    specs = [iris_spec(seed=4), iris_spec(seed=5),
             iris_spec(dataset={"name": "diabetes", "test_fraction": 0.2}),
             iris_spec(dataset={"name": "diabetes", "test_fraction": 0.3})]  # fmt: skip
    outputs = []
    for n, spec in enumerate(specs):
        tracker = tracker_for(mlflow_store, spec, f"job-shared-graph-{n}", flush_interval_s=0)
        tracker.start()
        result = train(spec, callbacks=[tracker.callback()])
        expected = export_model(result)  # a copy of its own, untouched by later saves
        tracker.finish(status="succeeded", result=result)
        X = torch.as_tensor(result.data.raw(result.data.X_test), dtype=torch.float32)
        outputs.append((tracker.model_uri, X, expected(X).detach()))
    assert len(artifacts._programs) == 3  # iris once, each diabetes split once
    for uri, X, expected in outputs:
        assert uri is not None
        with torch.no_grad():
            got = mlflow.pytorch.load_model(uri)(X)
        assert torch.allclose(got, expected, atol=1e-6), uri
    first, second = outputs[0][2], outputs[1][2]
    assert not torch.allclose(first, second, atol=1e-3)  # the two iris models do differ


def test_the_model_is_registered_under_register_as(finished: Finished) -> None:
    versions = finished.client.search_model_versions(f"name = '{REGISTERED}'")
    assert [str(v.version) for v in versions] == [finished.tracker.model_version] == ["1"]
    assert versions[0].run_id == finished.run_id and versions[0].status == "READY"


class StopAfterCheckpoint(Callback):
    """Stops training after the checkpoint of ``epoch`` (as a lost worker would, roughly)."""

    def __init__(self, epoch: int) -> None:
        self.epoch, self.seen = epoch, 0

    def on_checkpoint(self, checkpoint: Checkpoint) -> None:
        self.seen = checkpoint.epoch

    def should_stop(self) -> bool:
        return self.seen >= self.epoch


def test_a_second_attempt_resumes_the_same_run_without_gaps_or_duplicates(
    mlflow_store: Store,
) -> None:
    spec = iris_spec()
    first = tracker_for(mlflow_store, spec, "job-resume", node="node-a")  # default intervals
    run_id = first.start()
    partial = train(spec, callbacks=[first.callback(), StopAfterCheckpoint(4)])
    assert partial.status == "cancelled" and partial.epochs == 4
    assert first.flush() is True  # the run stays RUNNING: the worker "died"
    client = MlflowClient(tracking_uri=mlflow_store.uri)
    assert client.get_run(run_id).info.status == "RUNNING"

    second = tracker_for(mlflow_store, spec, "job-resume", run_id=run_id, attempt=2, node="node-b")
    assert second.start() == run_id
    checkpoint = latest_checkpoint(tracking_uri=mlflow_store.uri, run_id=run_id)
    assert checkpoint is not None and checkpoint.epoch == 4
    result = train(spec, callbacks=[second.callback()], resume_from=checkpoint)
    second.finish(status="succeeded", result=result)

    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    for key in ("loss/train", "loss/val", "training/grad_norm"):
        assert steps(client, run_id, key) == list(range(1, 9)), key
    logged = metric_history(tracking_uri=mlflow_store.uri, run_id=run_id, key="loss/train")
    assert logged == [(r.epoch, pytest.approx(r.train["loss"])) for r in result.history]
    tags = run.data.tags
    assert tags["gradq.attempt"] == "2" and tags["gradq.node"] == "node-b"
    assert (tags["gradq.attempt.1.node"], tags["gradq.attempt.2.node"]) == ("node-a", "node-b")
    assert run.data.params["model.hidden"] == "[16, 8]"  # params from attempt 1, unchanged


def test_a_restarted_first_attempt_reuses_the_jobs_run(mlflow_store: Store) -> None:
    spec = iris_spec(experiment="restart-tests")
    run_id = tracker_for(mlflow_store, spec, "job-restart").start()
    again = tracker_for(mlflow_store, spec, "job-restart", attempt=2)  # run id never saved
    assert again.start() == run_id
    assert latest_checkpoint(tracking_uri=mlflow_store.uri, run_id=run_id) is None
    other = tracker_for(mlflow_store, spec, "job-other", run_id=run_id, attempt=2)
    with pytest.raises(ValueError, match="belongs to job job-restart"):
        other.start()


def test_failed_and_cancelled_runs_end_failed_and_killed(
    mlflow_store: Store, tmp_path: Path
) -> None:
    spec = iris_spec(optimizer__epochs=2)
    client = MlflowClient(tracking_uri=mlflow_store.uri)
    failing = tracker_for(mlflow_store, spec, "job-failed")
    failed_id = failing.start()
    result = train(spec, callbacks=[failing.callback()])
    failing.finish(status="failed", result=result, error="Diverged: the loss is nan\n" + "x" * 9000)
    run = client.get_run(failed_id)
    assert run.info.status == "FAILED" and run.data.tags["gradq.error"].startswith("Diverged")
    assert len(download(client, failed_id, "error.txt", tmp_path)) > 9000
    assert steps(client, failed_id, "loss/train") == [1, 2]
    assert not [a for a in client.list_artifacts(failed_id) if a.path == "model"]
    plots = {"plots/learning_curve.png", "plots/confusion_matrix.png"}
    assert {a.path for a in client.list_artifacts(failed_id, "plots")} == plots

    cancelled = tracker_for(mlflow_store, spec, "job-cancelled")
    cancelled_id = cancelled.start()
    cancelled.finish(status="cancelled")
    assert client.get_run(cancelled_id).info.status == "KILLED"
    # stopped on request with a result (a cancel, a prune): its curves and final metrics,
    # no plots (drawing them held the stop up)
    for status in ("cancelled", "pruned"):
        stopped = tracker_for(mlflow_store, spec, f"job-{status}-trained")
        stopped_id = stopped.start()
        result = train(spec, callbacks=[stopped.callback()])
        stopped.finish(status=status, result=result)  # type: ignore[arg-type]
        run = client.get_run(stopped_id)
        assert run.info.status == "KILLED" and run.data.metrics["final_epochs"] == 2
        assert steps(client, stopped_id, "loss/train") == [1, 2]
        assert client.list_artifacts(stopped_id, "plots") == []


def test_close_run_terminates_a_running_run_once(mlflow_store: Store) -> None:
    client = MlflowClient(tracking_uri=mlflow_store.uri)
    run_id = tracker_for(mlflow_store, iris_spec(), "job-lost").start()
    close_run(tracking_uri=mlflow_store.uri, run_id=run_id, status="failed", reason="lease expired")
    run = client.get_run(run_id)
    assert run.info.status == "FAILED" and run.data.tags["gradq.close_reason"] == "lease expired"
    end = run.info.end_time
    close_run(tracking_uri=mlflow_store.uri, run_id=run_id, status="cancelled", reason="again")
    run = client.get_run(run_id)
    assert (run.info.status, run.info.end_time) == ("FAILED", end)
    assert run.data.tags["gradq.close_reason"] == "lease expired"
    # MLflow's RunStatus.from_string refuses it with a bare Exception (it has no narrower one)
    with pytest.raises(Exception, match=r"^Could not get run status corresponding to string BOGUS"):
        close_run(tracking_uri=mlflow_store.uri, run_id=run_id, status="bogus")
    assert client.get_run(run_id).info.status == "FAILED"  # refused before any change


def test_close_run_leaves_a_deleted_run_alone(mlflow_store: Store) -> None:
    client = MlflowClient(tracking_uri=mlflow_store.uri)
    run_id = tracker_for(mlflow_store, iris_spec(), "job-deleted").start()
    client.delete_run(run_id)  # a user cleaned it up before the dispatcher closed it
    close_run(tracking_uri=mlflow_store.uri, run_id=run_id, status="failed", reason="lost")
    run = client.get_run(run_id)
    assert (run.info.lifecycle_stage, run.info.status) == ("deleted", "RUNNING")
    assert "gradq.close_reason" not in run.data.tags


def test_fast_epochs_are_sent_in_few_batches(
    mlflow_store: Store,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spec = iris_spec(optimizer__epochs=30, optimizer__batch_size=120)  # one step an epoch
    tracker = tracker_for(mlflow_store, spec, "job-batched", flush_interval_s=5.0)
    run_id = tracker.start()
    calls: list[int] = []
    real = tracker.client.log_batch

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(len(kwargs.get("metrics", ())))
        return real(*args, **kwargs)

    monkeypatch.setattr(tracker.client, "log_batch", counted)
    result = train(spec, callbacks=[tracker.callback()])
    assert result.epochs == 30 and tracker.flush() is True
    assert 1 <= len(calls) <= 2, calls  # the first checkpoint's upload flushes epoch 1
    assert steps(tracker.client, run_id, "loss/train") == list(range(1, 31))


def log_batch_sizes(tracker: JobTracker, monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, ...]]:
    """From now on, (metrics, params, tags) sent by each of the tracker's log_batch calls."""
    calls: list[tuple[int, ...]] = []
    real = tracker.client.log_batch

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(tuple(len(kwargs.get(k) or ()) for k in ("metrics", "params", "tags")))
        return real(*args, **kwargs)

    monkeypatch.setattr(tracker.client, "log_batch", counted)
    return calls


def first_checkpoint_sent(tracker: JobTracker, timeout_s: float = 60.0) -> None:
    """Wait for the send that the first checkpoint starts in the background (the params, the
    data set and the epochs so far): on a loaded host it may still be on its way when training
    ends, and finish() would then be its second call."""
    buffer = tracker._buffer
    assert buffer is not None
    deadline = time.monotonic() + timeout_s
    while buffer.params or buffer.inputs:
        assert time.monotonic() < deadline, "the first checkpoint's send never happened"
        time.sleep(0.01)


def test_finish_sends_the_last_epochs_the_final_metrics_and_tags_in_one_call(
    mlflow_store: Store,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spec = iris_spec(optimizer__epochs=3)
    tracker = tracker_for(mlflow_store, spec, "job-one-call", flush_interval_s=60.0)
    run_id = tracker.start()
    result = train(spec, callbacks=[tracker.callback()])
    first_checkpoint_sent(tracker)
    calls = log_batch_sizes(tracker, monkeypatch)
    tracker.finish(status="succeeded", result=result)
    assert len(calls) == 1, calls  # the finals, the model's tag and the last epochs
    metrics, _, tags = calls[0]
    assert tags >= 1 and metrics > len(result.metrics)
    run = tracker.client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["gradq.model_uri"] == tracker.model_uri
    assert run.data.metrics["final_epochs"] == 3
    assert steps(tracker.client, run_id, "loss/train") == [1, 2, 3]


def test_a_one_epoch_job_is_tracked_in_one_log_batch(
    mlflow_store: Store,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its only checkpoint is also its last: not uploaded (with a flush of the params and the
    epoch) while training ends, but by finish(), after the one call with everything."""
    spec = iris_spec(optimizer__epochs=1)
    tracker = tracker_for(mlflow_store, spec, "job-one-epoch", flush_interval_s=60.0)
    calls = log_batch_sizes(tracker, monkeypatch)
    run_id = tracker.start()
    result = train(spec, callbacks=[tracker.callback()])
    tracker.finish(status="succeeded", result=result)
    assert len(calls) == 1, calls
    metrics, params, tags = calls[0]
    assert params > 10 and tags >= 1 and metrics > len(result.metrics)
    listed = {f.path for f in tracker.client.list_artifacts(run_id, "checkpoints/last")}
    assert "checkpoints/last/checkpoint.pt" in listed
    assert steps(tracker.client, run_id, "loss/train") == [1]


def test_a_failed_flush_keeps_the_points_and_the_retry_sends_them_once(
    mlflow_store: Store,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spec = iris_spec(optimizer__epochs=3)
    tracker = tracker_for(
        mlflow_store, spec, "job-flaky", flush_interval_s=0, checkpoint_interval_s=0
    )
    run_id = tracker.start()
    real = tracker.client.log_batch

    def down(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("MLflow is down")

    monkeypatch.setattr(tracker.client, "log_batch", down)
    train(spec, callbacks=[tracker.callback()])
    assert tracker.pending_points >= 3 * 10 and tracker.flush() is False
    assert latest_checkpoint(tracking_uri=mlflow_store.uri, run_id=run_id) is None  # held back
    monkeypatch.setattr(tracker.client, "log_batch", real)
    assert tracker.flush() is True and tracker.pending_points == 0
    assert steps(tracker.client, run_id, "loss/train") == [1, 2, 3]
    checkpoint = latest_checkpoint(tracking_uri=mlflow_store.uri, run_id=run_id)
    assert checkpoint is not None and checkpoint.epoch == 3


def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_training_goes_on_when_the_mlflow_server_is_down(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "1")
    spec = iris_spec(optimizer__epochs=3)
    tracker = JobTracker(
        tracking_uri=f"http://127.0.0.1:{unused_port()}",
        job_id="job-down",
        spec=spec,
        attempt=2,
        run_id="0" * 32,
        flush_interval_s=0,
        checkpoint_interval_s=0,
    )
    result = train(spec, callbacks=[tracker.callback()])  # flushes after every epoch: all fail
    assert result.epochs == 3 and result.metrics["test_accuracy"] > 0
    assert tracker.flush() is False and tracker.pending_points > 0
    with pytest.raises(  # start() raises; the worker task decides
        MlflowException,
        match=r"^API request to http://127\.0\.0\.1:\d+/api/2\.0/mlflow/runs/get "
        r"failed with exception .*Connection refused",
    ):
        tracker.start()


def test_the_buffer_is_bounded_and_counts_what_it_dropped() -> None:
    client = MlflowClient(tracking_uri="http://127.0.0.1:9")  # never called: no flush is due
    buffer = RunBuffer(
        client, "0" * 32, flush_interval_s=3600, checkpoint_interval_s=3600, max_points=20
    )
    for epoch in range(1, 11):  # 5 metrics an epoch: training/lr, …, loss/train
        buffer.add_epoch(EpochRecord(epoch, epoch, 0.1, 0.01, 1e4, 1.0, {"loss": 1.0 / epoch}))
    assert (len(buffer.points), buffer.dropped, buffer.failures) == (20, 30, 0)
    assert [p.step for p in buffer.points] == [s for s in range(7, 11) for _ in range(5)]


def test_training_never_waits_for_a_slow_mlflow(
    mlflow_store: Store,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spec = iris_spec(optimizer__epochs=3)
    tracker = tracker_for(
        mlflow_store, spec, "job-slow", flush_interval_s=0, checkpoint_interval_s=0
    )
    run_id = tracker.start()
    real = tracker.client.log_batch
    release = threading.Event()
    entered = threading.Event()
    training = threading.current_thread()
    on_training_thread: list[int] = []

    def stuck(*args: Any, **kwargs: Any) -> Any:
        if threading.current_thread() is training and not release.is_set():
            on_training_thread.append(len(kwargs.get("metrics", ())))
            return real(*args, **kwargs)
        entered.set()
        if not release.wait(60):
            raise TimeoutError("never released")
        return real(*args, **kwargs)

    monkeypatch.setattr(tracker.client, "log_batch", stuck)
    result = train(spec, callbacks=[tracker.callback()])  # sends run on the sender thread
    assert result.epochs == 3 and entered.wait(30) and not release.is_set()
    assert on_training_thread == []
    assert latest_checkpoint(tracking_uri=mlflow_store.uri, run_id=run_id) is None
    release.set()
    assert tracker.flush() is True and tracker.pending_points == 0
    assert steps(tracker.client, run_id, "loss/train") == [1, 2, 3]
    checkpoint = latest_checkpoint(tracking_uri=mlflow_store.uri, run_id=run_id)
    assert checkpoint is not None and checkpoint.epoch == 3


def test_a_checkpoint_uploaded_late_holds_the_history_of_its_epoch(
    mlflow_store: Store,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The sender serialises a checkpoint when it uploads it, while training goes on: what it
    uploads is the state at the checkpoint's epoch, its history included (a resumed attempt
    whose checkpoint held later epochs' history counted more epochs than it trained)."""
    spec = iris_spec(optimizer__epochs=4)
    tracker = tracker_for(
        mlflow_store, spec, "job-late-checkpoint", flush_interval_s=3600, checkpoint_interval_s=0
    )
    run_id = tracker.start()
    real_batch, real_bytes = tracker.client.log_batch, RunArtifacts.log_bytes
    release, entered = threading.Event(), threading.Event()
    uploaded: list[Checkpoint] = []

    def stuck(*args: Any, **kwargs: Any) -> Any:  # the sender holds epoch 1's checkpoint
        entered.set()
        if not release.wait(60):
            raise TimeoutError("never released")
        return real_batch(*args, **kwargs)

    def recorded(self: RunArtifacts, data: bytes, path: str) -> None:
        if path.endswith("checkpoint.pt"):
            uploaded.append(Checkpoint.from_bytes(data))
        real_bytes(self, data, path)

    monkeypatch.setattr(tracker.client, "log_batch", stuck)
    monkeypatch.setattr(RunArtifacts, "log_bytes", recorded)
    result = train(spec, callbacks=[tracker.callback()])
    assert result.epochs == 4 and entered.wait(30)
    release.set()
    assert tracker.flush() is True
    assert 1 in {c.epoch for c in uploaded}, [c.epoch for c in uploaded]
    for checkpoint in uploaded:
        assert [h["epoch"] for h in checkpoint.history] == list(range(1, checkpoint.epoch + 1))
    last = latest_checkpoint(tracking_uri=mlflow_store.uri, run_id=run_id)
    assert last is not None and len(last.history) == last.epoch == 4


def test_mlflows_sqlite_store_runs_in_wal_with_normal_sync(tmp_path: Path) -> None:
    """The store's file is switched to WAL once, and every connection MLflow opens to it gets
    synchronous=NORMAL; another SQLite file of the process keeps SQLite's defaults."""
    import sqlalchemy

    client = make_client(f"sqlite:///{tmp_path}/mlflow.db")
    client.search_experiments()
    store = client._tracking_client.store
    for _ in range(2):  # a second connection of MLflow's pool as well
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
        store.engine.dispose()
    other = sqlalchemy.create_engine(f"sqlite:///{tmp_path}/other.db")
    with other.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL, untouched
    other.dispose()


class LoseLeaseAfter(Callback):
    """Turns ``alive`` False at the end of epoch ``n`` (the attempt's lease ran out)."""

    def __init__(self, n: int) -> None:
        self.n, self.held = n, True

    def alive(self) -> bool:
        return self.held

    def on_epoch_end(self, record: EpochRecord) -> None:
        if record.epoch >= self.n:
            self.held = False


def test_a_tracker_whose_lease_ran_out_writes_nothing_more(mlflow_store: Store) -> None:
    """Once ``alive()`` is False no metric, checkpoint, model or status reaches the run:
    ``flush()`` sends nothing and ``finish()`` raises ``LeaseExpired`` with the run RUNNING,
    its epochs only some of those before the lease ran out, and no model version registered."""
    from workers.tracking.run import LeaseExpired

    spec = iris_spec(register_as="lease-ran-out")
    lease = LoseLeaseAfter(3)
    tracker = tracker_for(mlflow_store, spec, "job-lease", flush_interval_s=0, alive=lease.alive)
    run_id = tracker.start()
    # the lease callback first: epoch 3 is the first one that comes after the lease ran out
    result = train(spec, callbacks=[lease, tracker.callback()])
    assert result.epochs == 8
    assert tracker.flush() is False  # epochs 3-8 and their checkpoints stay buffered
    with pytest.raises(LeaseExpired):
        tracker.finish(status="succeeded", result=result)
    client = MlflowClient(tracking_uri=mlflow_store.uri)
    assert client.get_run(run_id).info.status == "RUNNING"
    assert set(steps(client, run_id, "loss/train")) <= {1, 2}  # sent in the background
    assert client.search_model_versions("name='lease-ran-out'") == []
    assert tracker.finished is False
