"""A job's MLflow run as its run page shows it: metric keys grouped by section (``loss/train``,
``accuracy/val``, …), the description, the training data as a dataset input; and the same
keys through each kind of MLflow store (SQLite, the file store, an ``mlflow server`` over
HTTP), a resumed attempt, the buffered sends and the read interface, which also reads runs
logged under the former flat names.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from core.callbacks import Callback
from core.checkpoint import Checkpoint
from core.data import load_dataset
from core.spec import JobSpec, parse_spec
from core.train import train
from workers.tracking import JobTracker, Tracking, latest_checkpoint
from workers.tracking import buffer as tracking_buffer
from workers.tracking import run as tracking_run
from workers.tracking.names import legacy_key

EPOCH_KEYS = {
    "loss/train", "loss/val", "accuracy/train", "accuracy/val", "training/lr",
    "training/grad_norm", "timing/epoch_seconds", "timing/samples_per_s",
    "weights/layer1_dead_fraction", "weights/layer1_update_ratio",
    "weights/layer1_weight_norm", "weights/layer2_weight_norm",
}  # fmt: skip
FINALS = {"final_test_accuracy", "final_val_loss", "final_epochs", "final_steps",
          "gradcheck_count"}  # fmt: skip


def spec(**optimizer: Any) -> JobSpec:
    return parse_spec({
        "name": "keys", "experiment": "key-tests", "dataset": "iris",
        "model": {"hidden": [8], "activation": "tanh"},
        "optimizer": {"lr": 0.05, "batch_size": 16, "epochs": 6, **optimizer},
        "regularization": {"early_stopping": {"enabled": False}}, "seed": 1,
    })  # fmt: skip


class LostAfter(Callback):
    """Stops training once the checkpoint of ``epoch`` is taken (a worker lost then), and
    keeps a copy of the checkpoint of epoch ``keep``: resuming from it, an attempt trains
    again epochs whose metrics are in the run already (as when the last checkpoint upload
    did not arrive)."""

    def __init__(self, epoch: int, keep: int) -> None:
        self.epoch, self.keep, self.seen = epoch, keep, 0
        self.kept: Checkpoint | None = None

    def on_checkpoint(self, checkpoint: Checkpoint) -> None:
        self.seen = checkpoint.epoch
        if checkpoint.epoch == self.keep:
            self.kept = Checkpoint.from_bytes(checkpoint.to_bytes())

    def should_stop(self) -> bool:
        return self.seen >= self.epoch


@pytest.fixture(params=["sqlite", "file", "server"])
def store(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[str, str | None]:
    """(tracking URI, artifact root) of each kind of MLflow store gradq may track into."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/mlflow.db", str(tmp_path / "artifacts")
    if request.param == "file":  # in maintenance in MLflow 3, still a store users have
        monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
        return (tmp_path / "mlruns").as_uri(), None
    return str(request.getfixturevalue("mlflow_server")), None


def tracker(uri: str, root: str | None, job_id: str, **kwargs: Any) -> JobTracker:
    kwargs.setdefault("attempt", 1)
    kwargs.setdefault("spec", spec())
    return JobTracker(tracking_uri=uri, job_id=job_id, artifact_root=root, **kwargs)


def steps(client: MlflowClient, run_id: str, key: str) -> list[int]:
    """Every logged step of a metric, duplicates included, in order."""
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def resumed_job(uri: str, root: str | None, job_id: str) -> tuple[str, Any]:
    """A job whose first attempt is lost after epoch 3 and whose second attempt resumes the
    run from epoch 2's checkpoint: epoch 3, in the run already, is trained again and must not
    be logged again. Sends are buffered (metrics every 5 s, checkpoints every 10 s: most of
    each attempt's points go in its last flush)."""
    job = spec()
    first = tracker(uri, root, job_id, spec=job)
    run_id = first.start()
    data = load_dataset(job.dataset, seed=job.seed)
    first.log_dataset(data)
    lost = LostAfter(3, keep=2)
    partial = train(job, callbacks=[first.callback(), lost], data=data)
    assert partial.epochs == 3 and first.flush() is True and lost.kept is not None
    second = tracker(uri, root, job_id, spec=job, run_id=run_id, attempt=2)
    assert second.start() == run_id
    second.log_dataset(data)  # the run has it: not logged twice
    latest = latest_checkpoint(tracking_uri=uri, run_id=run_id)
    assert latest is not None and latest.epoch == 3
    result = train(job, callbacks=[second.callback()], resume_from=lost.kept, data=data)
    second.finish(status="succeeded", result=result)
    return run_id, result


def test_keys_description_and_dataset_through_every_store_and_a_resume(
    store: tuple[str, str | None],
) -> None:
    uri, root = store
    run_id, result = resumed_job(uri, root, "job-keys")
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    keys = set(run.data.metrics)
    assert keys >= EPOCH_KEYS | FINALS | {"training/gradcheck_max_rel_error"}, keys
    assert not keys & {"train_loss", "val_loss", "lr", "epoch_seconds", "layer1_weight_norm"}
    unprefixed = {k for k in keys if "/" not in k}
    assert all(k.startswith("final_") or k == "gradcheck_count" for k in unprefixed), unprefixed
    for key in ("loss/train", "accuracy/val", "timing/epoch_seconds", "weights/layer1_weight_norm"):
        assert steps(client, run_id, key) == list(range(1, 7)), key  # each epoch once
    val = Tracking(tracking_uri=uri, artifact_root=root, ui_url="http://ui").curves(
        run_id, ["loss/val", "val_loss"]
    )
    expected = [(r.epoch, pytest.approx(r.val["loss"])) for r in result.history]
    assert val["loss/val"] == val["val_loss"] == expected

    assert run.data.tags["mlflow.note.content"] == (
        "gradq job job-keys on iris: MLP [8] tanh, cross_entropy, SGD lr 0.05 momentum 0.9, "
        "batch 16, 6 epochs"
    )
    inputs = run.inputs.dataset_inputs
    assert len(inputs) == 1, inputs  # the resumed attempt did not log it again
    (dataset_input,) = inputs
    assert dataset_input.dataset.name == "iris" and len(dataset_input.dataset.digest) >= 8
    assert {(t.key, t.value) for t in dataset_input.tags} == {("mlflow.data.context", "training")}
    shape = json.loads(dataset_input.dataset.profile)["features_shape"]
    assert shape == [len(result.data.X_train), 4]


def test_a_run_started_under_the_former_names_is_continued_and_read_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job whose first attempt ran before the keys changed (its run has ``train_loss``, …)
    and whose second attempt runs after: no epoch is logged twice, and its curves read
    whole under either name."""
    uri, root = f"sqlite:///{tmp_path}/mlflow.db", str(tmp_path / "artifacts")
    job = spec()
    with monkeypatch.context() as before:  # the former writer: flat names
        before.setattr(tracking_buffer, "mlflow_metrics", dict)
        before.setattr(tracking_buffer, "mlflow_key", legacy_key)
        first = tracker(uri, root, "job-upgraded", spec=job)
        run_id = first.start()
        lost = LostAfter(3, keep=2)
        partial = train(job, callbacks=[first.callback(), lost])
        assert partial.epochs == 3 and first.flush() is True
    client = MlflowClient(tracking_uri=uri)
    assert steps(client, run_id, "train_loss") == [1, 2, 3]
    assert steps(client, run_id, "gradcheck_max_rel_error") == [0]

    client.set_tag(run_id, "mlflow.note.content", "edited by its user")
    second = tracker(uri, root, "job-upgraded", spec=job, run_id=run_id, attempt=2)
    second.start()
    assert client.get_run(run_id).data.tags["mlflow.note.content"] == "edited by its user"
    result = train(job, callbacks=[second.callback()], resume_from=lost.kept)
    second.finish(status="succeeded", result=result)
    assert steps(client, run_id, "train_loss") == [1, 2, 3]
    assert steps(client, run_id, "loss/train") == [4, 5, 6]  # epoch 3 trained again, not logged

    tracking = Tracking(tracking_uri=uri, artifact_root=root, ui_url="http://ui")
    expected = [(r.epoch, pytest.approx(r.train["loss"])) for r in result.history]
    asked = tracking.curves(run_id, ["train_loss", "loss/train"])
    assert asked["train_loss"] == asked["loss/train"] == expected
    every = tracking.curves(run_id)  # named by key, whichever name a point was logged under
    assert every["loss/train"] == expected and "train_loss" not in every
    assert [s for s, _ in every["training/gradcheck_max_rel_error"]] == [0]


def test_a_run_logged_only_under_the_former_names_keeps_its_curves(tmp_path: Path) -> None:
    """A job tracked before this version of gradq: its curves are found under both names."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    run_id = client.create_run(client.create_experiment("before")).info.run_id
    for epoch in (1, 2, 3):
        client.log_metric(run_id, "val_accuracy", 0.5 + epoch / 10, step=epoch)
        client.log_metric(run_id, "layer1_dead_fraction", 0.1, step=epoch)
    client.log_metric(run_id, "final_test_accuracy", 0.9, step=0)
    tracking = Tracking(tracking_uri=uri, artifact_root=None, ui_url="http://ui")
    curve = [(1, pytest.approx(0.6)), (2, pytest.approx(0.7)), (3, pytest.approx(0.8))]
    assert tracking.curves(run_id, ["accuracy/val", "val_accuracy", "loss/val"]) == {
        "accuracy/val": curve, "val_accuracy": curve, "loss/val": [],
    }  # fmt: skip
    assert sorted(tracking.curves(run_id)) == [
        "accuracy/val", "final_test_accuracy", "weights/layer1_dead_fraction"
    ]  # fmt: skip


def test_a_data_set_mlflow_cannot_describe_does_not_stop_the_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def undescribable(*_: Any) -> Any:
        raise TypeError("cannot infer a schema")

    monkeypatch.setattr(tracking_run, "dataset_input", undescribable)
    job = spec(epochs=1)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    job_tracker = tracker(uri, str(tmp_path / "artifacts"), "job-undescribed", spec=job)
    run_id = job_tracker.start()
    data = load_dataset(job.dataset, seed=job.seed)
    job_tracker.log_dataset(data)
    result = train(job, callbacks=[job_tracker.callback()], data=data)
    job_tracker.finish(status="succeeded", result=result)
    run = MlflowClient(tracking_uri=uri).get_run(run_id)
    assert run.info.status == "FINISHED" and not run.inputs.dataset_inputs
