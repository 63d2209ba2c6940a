"""A pack run in this process (``run_pack`` without Ray) against the real job database (SQLite)
and a real MLflow SQLite store: each member a job of its own — its lease, its run, its final
write — while the pack shares one heartbeat statement per beat."""

from __future__ import annotations

import dataclasses
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

import workers.pack
import workers.task
from core.callbacks import Callback, EpochRecord
from core.spec import JobSpec, parse_spec
from core.train import train
from db.migrate import upgrade
from db.session import make_engine
from db.states import StopReason
from db.store import JobStore
from db.views import ClaimedJob
from workers.pack import run_pack
from workers.task import WorkerConfig
from workers.tracking import metric_history
from workers.tracking.buffer import RunBuffer, SharedSender

pytestmark = pytest.mark.slow

EPOCHS = 6


def trial(k: int, **over: Any) -> JobSpec:
    data: dict[str, Any] = {
        "name": f"t{k}",
        "dataset": {"name": "digits", "seed": 0},
        "model": {"hidden": [16]},
        "optimizer": {"epochs": EPOCHS, "batch_size": 64, "lr": 0.05 * (k + 1)},
        "regularization": {"early_stopping": {"enabled": False}},
        "gradcheck": {"at_start": False, "every_steps": 0},
        "seed": k,
        "trial": {"sweep_id": "s", "number": k, "metric": "val_accuracy", "mode": "max",
                  "pack": True},
    }  # fmt: skip
    for key, value in over.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) else value
    return parse_spec(data)


@dataclass(frozen=True)
class Stores:
    jobs: JobStore
    config: WorkerConfig

    def claim(self, specs: list[JobSpec]) -> list[ClaimedJob]:
        ids = [self.jobs.submit(spec=s).id for s in specs]
        claimed = {c.id: c for c in self.jobs.claim(owner="t", limit=len(ids), ids=ids,
                                                     lease_seconds=30)}  # fmt: skip
        return [claimed[i] for i in ids]


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Stores:
    folder: Path = tmp_path_factory.mktemp("pack")
    db_url = f"sqlite:///{folder}/gradq.db"
    upgrade(db_url)
    config = WorkerConfig(
        database_url=db_url,
        tracking_uri=f"sqlite:///{folder}/mlflow.db",
        artifact_root=str(folder / "artifacts"),
        heartbeat_seconds=0.05,
        checkpoint_upload_seconds=0.0,
    )
    return Stores(JobStore(make_engine(db_url)), config)


@pytest.fixture
def beats(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of each heartbeat statement a pack sent; a member's own heartbeat fails the
    test (a pack renews its members' leases together)."""
    sizes: list[int] = []
    many = JobStore.heartbeat_many

    def counted(self: JobStore, **kwargs: Any) -> dict[str, bool]:
        sizes.append(len(kwargs["beats"]))
        return many(self, **kwargs)

    def alone(self: JobStore, **kwargs: Any) -> bool:
        raise AssertionError("a pack's member beat alone")

    monkeypatch.setattr(JobStore, "heartbeat_many", counted)
    monkeypatch.setattr(JobStore, "heartbeat", alone)
    return sizes


def test_each_member_is_a_job_of_its_own_trained_as_alone(
    stores: Stores, beats: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    senders: list[SharedSender] = []

    class Sender(SharedSender):
        def __init__(self) -> None:
            super().__init__()
            senders.append(self)

    def own_sender(self: RunBuffer) -> None:
        raise AssertionError("a pack member's run started a sender thread of its own")

    monkeypatch.setattr(workers.pack, "SharedSender", Sender)
    monkeypatch.setattr(RunBuffer, "_sender_loop", own_sender)
    specs = [trial(k) for k in range(4)]
    jobs = stores.claim(specs)
    # a send due at every epoch: the pack's one sender thread sends them all
    config = dataclasses.replace(stores.config, metrics_flush_seconds=0.0)
    assert run_pack(config, jobs) == ["succeeded"] * 4
    [sender] = senders
    assert sender.threads == 1 and sender.sends >= 4
    client = MlflowClient(stores.config.tracking_uri)
    runs = set()
    for spec, job in zip(specs, jobs, strict=True):
        view = stores.jobs.get(job_id=job.id)
        assert view.status.value == "succeeded" and view.result is not None
        assert view.result["engine"] == "packed" and view.result["pack"] == {"members": 4}
        assert view.result["epochs"] == EPOCHS
        # member k is its spec trained alone: float32, so within a row of the validation set
        alone = train(spec)
        n_val = len(alone.data.y_val)
        assert abs(view.result["metrics"]["val_accuracy"] - alone.metrics["val_accuracy"]) <= (
            1.0 / n_val + 1e-9
        )
        assert view.mlflow_run_id is not None
        runs.add(view.mlflow_run_id)
        curve = metric_history(
            tracking_uri=stores.config.tracking_uri, run_id=view.mlflow_run_id, key="loss/train"
        )
        assert [s for s, _ in curve] == list(range(1, EPOCHS + 1))
        run = client.get_run(view.mlflow_run_id)
        assert run.info.status == "FINISHED" and run.data.tags["gradq.job_id"] == job.id
    assert len(runs) == 4
    assert beats and beats[0] == 4 and max(beats) == 4  # one statement for every member
    # the worker process, idle again, holds no database connection
    pool = workers.task._engine(stores.config).pool
    assert (pool.checkedin(), pool.checkedout()) == (0, 0)


class At(Callback):
    """Calls ``then()`` at the end of epoch ``epoch`` of one member's training."""

    def __init__(self, epoch: int, then: Any) -> None:
        self.epoch, self.then = epoch, then

    def on_epoch_end(self, record: EpochRecord) -> None:
        if record.epoch == self.epoch:
            self.then()


def test_members_leave_cancelled_diverged_or_lost_while_the_rest_finish(
    stores: Stores, beats: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """In one pack: a member cancelled at its epoch 2 ends cancelled right there (its job's
    end written while the pack still trains); one diverging fails alone; one whose job was
    claimed again by a later attempt is fenced out and touches nothing; the rest succeed."""
    relu = {"activation": "relu"}
    specs = [
        trial(0, model=relu),
        trial(1, model=relu),
        trial(2, model=relu, optimizer={"lr": 1e6}),
        trial(3, model=relu),
        trial(4, model=relu),
    ]
    jobs = stores.claim(specs)
    cancelled, diverging, lost = jobs[1], jobs[2], jobs[3]
    # job 3's lease runs out and it is claimed again: the pack holds a stale attempt of it
    stores.jobs.heartbeat_many(beats=[(lost.id, lost.attempt, {})], lease_seconds=-1)
    stores.jobs.requeue_expired()
    beats.clear()
    [again] = stores.jobs.claim(owner="other", ids=[lost.id], lease_seconds=60)
    assert again.attempt == lost.attempt + 1

    heard = threading.Event()

    def cancel_and_wait() -> None:
        stores.jobs.request_stop(job_id=cancelled.id, reason=StopReason.CANCEL)
        assert heard.wait(10)  # the next heartbeat brings it: the pack goes on meanwhile

    callbacks = workers.task.AttemptLife.callbacks

    def with_hooks(life: workers.task.AttemptLife) -> list[Callback]:
        out = callbacks(life)
        if life.job.id == cancelled.id:
            life.lease.cancel = Watched(life.lease.cancel, heard)
            out.append(At(2, cancel_and_wait))
        return out

    monkeypatch.setattr(workers.task.AttemptLife, "callbacks", with_hooks)
    outcomes = run_pack(stores.config, jobs)
    assert outcomes == ["succeeded", "cancelled", "failed", "stale", "succeeded"]
    views = {j.id: stores.jobs.get(job_id=j.id) for j in jobs}
    stopped = views[cancelled.id]
    assert stopped.status.value == "cancelled"
    assert stopped.progress is not None and stopped.progress["epoch"] == 2
    failed = views[diverging.id]
    assert failed.status.value == "failed" and failed.error["type"] == "diverged"
    still = views[lost.id]  # the later attempt's job, untouched by the stale member
    assert (still.status.value, still.attempt, still.lease_owner) == ("running", 2, "other")
    assert still.mlflow_run_id is None and still.progress == {}  # as the test left it
    for j in (jobs[0], jobs[4]):
        assert views[j.id].status.value == "succeeded"
        # the cancelled member ended while the pack trained on
        assert stopped.finished_at is not None and views[j.id].finished_at is not None
        assert stopped.finished_at < views[j.id].finished_at
    assert max(beats) == 5 and beats[-1] < 5  # members that ended are renewed no more


class Watched:
    """A ``threading.Event`` that also sets ``heard`` when set."""

    def __init__(self, event: threading.Event, heard: threading.Event) -> None:
        self.event, self.heard = event, heard

    def set(self) -> None:
        self.event.set()
        self.heard.set()

    def is_set(self) -> bool:
        return self.event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self.event.wait(timeout)


def test_a_pack_whose_data_set_fails_to_load_fails_each_member_saying_why(
    stores: Stores, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise OSError("the data set's disk is gone")

    monkeypatch.setattr(workers.pack, "_data", broken)
    jobs = stores.claim([trial(k) for k in range(2)])
    started = time.monotonic()
    assert run_pack(stores.config, jobs) == ["failed", "failed"]
    assert time.monotonic() - started < 60
    for j in jobs:
        view = stores.jobs.get(job_id=j.id)
        assert view.error is not None and "the data set's disk is gone" in view.error["message"]


def test_members_ending_together_log_their_model_only_when_they_beat_those_before(
    stores: Stores,
) -> None:
    """Under ``log_models: best`` a pack's members, ending together before the controller has
    told any of them, log a model as if each had been told before the next ended: a member
    logs its model only when it beats every member that ended before it with its model
    logged; the pack's best member always has its model."""
    best = {"log_models": "best"}
    lrs = [0.3, 1e-5, 2e-5, 0.02]  # a strong member first, then two that hardly train
    specs = [trial(k, optimizer={"lr": lr}, trial=best) for k, lr in enumerate(lrs)]
    jobs = stores.claim(specs)
    assert run_pack(stores.config, jobs) == ["succeeded"] * 4
    client = MlflowClient(stores.config.tracking_uri)
    values, models = [], []
    for job in jobs:  # in the order they ended: one epoch's end hands them over in order
        view = stores.jobs.get(job_id=job.id)
        assert view.result is not None and view.mlflow_run_id is not None
        values.append(view.result["metrics"]["val_accuracy"])
        models.append("gradq.model_uri" in client.get_run(view.mlflow_run_id).data.tags)
    expected, so_far = [], float("-inf")
    for value in values:
        expected.append(value > so_far)
        so_far = max(so_far, value) if value > so_far else so_far
    assert models == expected, (values, models)
    assert models[values.index(max(values))]
    assert not all(models), values  # the weak members kept no model
    # the plots go with the model: a member closed without its model has none
    for job, with_model in zip(jobs, models, strict=True):
        run_id = stores.jobs.get(job_id=job.id).mlflow_run_id or ""
        listed = {f.path for f in client.list_artifacts(run_id, "plots")}
        expected_plots = {"plots/learning_curve.png", "plots/confusion_matrix.png"}
        assert listed == (expected_plots if with_model else set()), (with_model, listed)


@pytest.mark.parametrize("detail", ["curves", "all"])
def test_a_trial_s_run_gets_the_per_epoch_metrics_its_sweep_asked_for(
    stores: Stores, detail: str
) -> None:
    """``trial_metrics: curves``: each member's run gets per epoch its losses, headline
    scores and learning rate, and the metrics it is judged by (here early stopping monitors
    the validation macro F1); the timing and per-layer diagnostics stay out. ``all``: every
    per-epoch metric."""
    es = {"early_stopping": {"enabled": True, "monitor": "val_macro_f1", "patience": 50}}
    specs = [trial(k, trial={"epoch_metrics": detail}, regularization=es) for k in range(2)]
    jobs = stores.claim(specs)
    assert run_pack(stores.config, jobs) == ["succeeded"] * 2
    client = MlflowClient(stores.config.tracking_uri)
    for job in jobs:
        run = client.get_run(stores.jobs.get(job_id=job.id).mlflow_run_id or "")
        per_epoch = {
            k
            for k in run.data.metrics
            if not k.startswith("final_") and k not in ("gradcheck_count",)
        }
        curves = {"loss/train", "loss/val", "accuracy/train", "accuracy/val", "training/lr"}
        assert curves | {"macro_f1/val"} <= per_epoch, per_epoch
        diagnostics = {"weights/layer1_dead_fraction", "timing/epoch_seconds"}
        if detail == "curves":
            assert per_epoch == curves | {"macro_f1/val"}, per_epoch
        else:
            assert diagnostics <= per_epoch, per_epoch
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "loss/val")]
        assert steps == list(range(1, EPOCHS + 1))


def test_a_pack_s_members_send_their_points_as_often_as_one_job_alone(
    stores: Stores, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each of K members flushes its points every K × ``metrics_flush_seconds``; every
    epoch's points reach its run all the same."""
    intervals: list[float] = []

    class Recorded(workers.task.JobTracker):
        def __init__(self, **kwargs: Any) -> None:
            intervals.append(kwargs["flush_interval_s"])
            super().__init__(**kwargs)

    monkeypatch.setattr(workers.task, "JobTracker", Recorded)
    jobs = stores.claim([trial(k) for k in range(3)])
    assert run_pack(stores.config, jobs) == ["succeeded"] * 3
    assert intervals == [3 * stores.config.metrics_flush_seconds] * 3
    for job in jobs:
        run_id = stores.jobs.get(job_id=job.id).mlflow_run_id
        assert run_id is not None
        curve = metric_history(tracking_uri=stores.config.tracking_uri, run_id=run_id,
                               key="loss/train")  # fmt: skip
        assert [s for s, _ in curve] == list(range(1, EPOCHS + 1))


def test_a_member_records_the_pack_s_warnings_until_it_ended(
    stores: Stores, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pack's training is each member's: a warning it raised reaches the result (and the
    final event) of every member still in it, not of one that had ended before."""
    real = workers.pack.train_packed
    order: list[int] = []

    def warning_pack(specs: list[JobSpec], *, on_result: Any, **kwargs: Any) -> Any:
        warnings.warn("the pack's data is odd", UserWarning, stacklevel=1)

        def then(i: int, result: Any) -> None:
            on_result(i, result)
            order.append(i)
            warnings.warn(f"after member {i}", UserWarning, stacklevel=1)

        return real(specs, on_result=then, **kwargs)

    monkeypatch.setattr(workers.pack, "train_packed", warning_pack)
    jobs = stores.claim([trial(0, optimizer={"epochs": 2}), trial(1)])
    assert run_pack(stores.config, jobs) == ["succeeded"] * 2
    assert order == [0, 1]  # the 2-epoch member left first
    first, second = (stores.jobs.get(job_id=j.id) for j in jobs)
    assert first.result is not None and second.result is not None
    assert first.result["warnings"] == ["UserWarning: the pack's data is odd"]
    assert second.result["warnings"] == [
        "UserWarning: the pack's data is odd", "UserWarning: after member 0"
    ]  # fmt: skip
    reasons = [e.reason or "" for e in stores.jobs.events(job_id=jobs[1].id)]
    assert (
        "warnings: UserWarning: the pack's data is odd | UserWarning: after member 0"
        in (reasons[-1])
    )
