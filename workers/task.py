"""One attempt of one job, as it runs inside a Ray task.

``run_attempt(config, claimed, board)`` loads the data, resumes from the run's last checkpoint
when this is not the first attempt, trains with ``core.train``, heartbeats the lease with
progress from a background thread, stops between two steps when a stop is requested (a cancel,
a prune: through the dispatcher's stop signal, ``workers.stops``, or else the heartbeat) and
says why in its final write, and writes the final status once,
in one ``try/except/finally``. Every database write is fenced by the attempt number: a zombie
attempt (its lease expired and the job was claimed again) is refused and stops quietly; an
attempt cut off from the database stops by itself once its lease's deadline has passed with
no heartbeat through, and writes nothing more to MLflow (``Lease``). A job
is ``succeeded`` only once its model and artifacts are in MLflow: when ``finish()`` fails for
a job that trained well, the job fails (``tracking_failed``) and its run is closed FAILED. An
uploaded data set whose fetched bytes are not those uploaded (their sha256) fails the job at
once (``dataset_changed``), without training on them. MLflow unreachable when the run
opens fails the attempt as ``tracking_unavailable``; the database away mid-attempt, for a
job whose ``retry.on`` lists ``database_unavailable``, as that class once the database
answers again (else the lease decides, as ever). Whether a failure is retried is decided
by ``JobStore.finish`` (``core.failures``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import math
import os
import socket
import tempfile
import threading
import time
import traceback
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from core import defaults
from core.callbacks import Callback, EpochRecord
from core.checkpoint import Checkpoint, CheckpointError
from core.data import Dataset, load_dataset
from core.gradcheck import GradcheckFailed
from core.gradcheck_summary import checks_summary
from core.spec import InvalidSpec, JobSpec, TrialSpec
from core.sweep import better
from core.train import Diverged, TrainResult, train
from db.datasets import DatasetStore
from db.errors import JobNotFound, StaleAttempt, StoreError, StoreUnavailable
from db.models import utcnow
from db.session import make_engine
from db.states import StopReason
from db.store import JobStore
from db.sweeps import SweepStore
from db.views import ClaimedJob, DatasetView
from workers.stops import listen
from workers.tracking import JobTracker, close_run, latest_checkpoint
from workers.tracking.artifacts import import_model_logging
from workers.tracking.buffer import SharedSender
from workers.tracking.client import make_client, unavailable
from workers.tracking.read import TrackingUnavailable
from workers.tracking.run import Outcome

log = logging.getLogger("gradq.task")
_ARRAYS = [
    f for f in dataclasses.fields(Dataset) if f.name.startswith(("X_", "y_", "mean", "scale"))
]


@dataclass(frozen=True)
class WorkerConfig:
    """What an attempt needs to reach the shared services; sent to the Ray task."""

    database_url: str
    tracking_uri: str
    artifact_root: str | None = None
    lease_seconds: float = defaults.LEASE_SECONDS
    heartbeat_seconds: float = defaults.HEARTBEAT_SECONDS
    metrics_flush_seconds: float = 1.0  # sends run on a background thread (tracking.buffer)
    checkpoint_upload_seconds: float = 10.0
    # API keys are on (GRADQ_AUTH=keys): a job's MLflow experiment and registered model are
    # named for its tenant (workers.tracking.scope); off, names are as the spec gives them
    tenant_names: bool = False
    # database connections a worker process keeps at most (its pool, no overflow): the
    # attempt's thread and its heartbeat thread each hold one at a time
    db_connections: int = 2


# THE one place where a stop's reason becomes the final status of the job its attempt ends.
STOPPED_STATUS: dict[StopReason, Literal["cancelled", "pruned"]] = {
    StopReason.CANCEL: "cancelled",
    StopReason.PRUNED: "pruned",
}
VIA = {"signal": "the stop signal", "heartbeat": "the heartbeat"}  # how a stop arrived

_engines: dict[str, Any] = {}
FINAL_WRITE_RETRY_S = 120.0  # how long the final write waits for a database that is away


def _engine(config: WorkerConfig) -> Any:
    """One engine per database URL and pool size per worker process (Ray reuses worker
    processes), holding at most ``config.db_connections`` connections, and none once an
    attempt has ended."""
    key = f"{config.db_connections}:{config.database_url}"
    if key not in _engines:
        _engines[key] = make_engine(
            config.database_url, pool_size=config.db_connections, max_overflow=0
        )
    return _engines[key]


def node_name() -> str:
    try:
        import ray

        # Outside Ray (tests, benchmarks) asking for the runtime context would start a
        # local Ray instance just to name the node.
        node = ray.get_runtime_context().get_node_id()[:12] if ray.is_initialized() else "local"
    except Exception:  # Ray not installed
        node = "local"
    return f"{socket.gethostname()}/{node}"


class Lease(Callback):
    """Heartbeats from a thread (a long epoch must not lose the lease) with the latest
    progress; ``should_stop`` turns True on a stop request (:meth:`stopped`: from the stop
    signal or a heartbeat) or when the lease was lost.

    A stop is recorded in ``progress["stop"]``: its ``reason``, ``via`` ("signal" or
    "heartbeat"), ``signalled_at`` (when the attempt learnt it) and ``stopped_at`` (when the
    training loop first asked after it, between two steps), wall-clock epoch seconds.

    The attempt knows its lease's deadline: the expiry the last successful heartbeat set
    (``lease_seconds`` after that heartbeat began, on this process's monotonic clock; at first
    the claim's). Once the deadline has passed without a successful heartbeat (the database
    unreachable) the job may have been claimed again, so the lease counts as lost: training
    stops at the next step and ``alive()`` turns False, which stops every MLflow write of the
    attempt (``JobTracker(alive=...)``)."""

    def __init__(self, store: JobStore, job: ClaimedJob, config: WorkerConfig, epochs: int) -> None:
        self.store, self.job, self.config = store, job, config
        self.node = node_name()
        self.progress: dict[str, Any] = {
            "epoch": 0,
            "epochs": epochs,
            "step": 0,
            "pid": os.getpid(),
            "node": self.node,
        }
        self.cancel = threading.Event()
        self.stop_reason: StopReason | None = None  # set with ``cancel``: why
        self.stop_via: str | None = None
        self._stopping = threading.Lock()
        self.lost = threading.Event()
        left = (job.lease_expires_at - utcnow()).total_seconds()
        self.deadline = time.monotonic() + max(0.0, min(left, config.lease_seconds))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"lease-{job.id}", daemon=True)

    def start(self) -> None:
        self.beat()
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def alive(self) -> bool:
        """Whether this attempt still holds its lease; sets ``lost`` once the deadline passed."""
        if not self.lost.is_set() and time.monotonic() >= self.deadline:
            log.warning(
                "job %s attempt %s: no heartbeat went through for %.0f s, the lease ran out; "
                "the attempt stops and writes nothing more",
                self.job.id,
                self.job.attempt,
                self.config.lease_seconds,
            )
            self.lost.set()
        return not self.lost.is_set()

    def stopped(self, reason: str, via: str) -> None:
        """A stop was asked of this attempt, for ``reason``; it arrived ``via`` "signal" or
        "heartbeat". The first one stands. Called from the stop signal's callback thread or
        the heartbeat thread."""
        with self._stopping:
            if self.stop_reason is not None:
                return
            self.stop_reason, self.stop_via = StopReason(reason), via
            self.progress["stop"] = {"reason": reason, "via": via, "signalled_at": time.time()}
            self.cancel.set()

    def beat(self) -> None:
        began = time.monotonic()
        try:
            asked = self.store.heartbeat(
                job_id=self.job.id,
                attempt=self.job.attempt,
                lease_seconds=self.config.lease_seconds,
                progress=dict(self.progress),
                node=self.node,
            )
            self.renewed(began, asked)
        except StoreUnavailable as exc:  # the database is away: retry until the deadline
            log.warning("job %s: heartbeat failed (%s), retrying", self.job.id, exc)
        except StoreError as exc:  # stale attempt, job finished or gone: this attempt is over
            self.refused(exc)
        except Exception:  # unexpected: keep training, the next beat tries again
            log.exception("job %s: heartbeat failed, retrying", self.job.id)
        self.alive()

    def renewed(self, began: float, asked: bool) -> None:
        """A heartbeat that ``began`` (``time.monotonic``) went through; ``asked``: a stop
        was asked of the job (its reason is then read)."""
        self.deadline = began + self.config.lease_seconds
        if asked and self.stop_reason is None:
            reason = self.store.stop_reason(job_id=self.job.id) or StopReason.CANCEL
            self.stopped(reason, "heartbeat")

    def refused(self, why: object) -> None:
        """A heartbeat was refused: the attempt no longer holds its job."""
        log.warning("job %s attempt %s: lease lost (%s)", self.job.id, self.job.attempt, why)
        self.lost.set()

    def _loop(self) -> None:
        while not self._stop.wait(self.config.heartbeat_seconds) and not self.lost.is_set():
            self.beat()

    def on_train_start(
        self, *, spec: JobSpec, engine: str, device: str, n_train: int, resumed_epoch: int
    ) -> None:
        self.progress.update(
            engine=engine, device=device, epoch=resumed_epoch, resumed_from_epoch=resumed_epoch
        )

    def on_epoch_end(self, record: EpochRecord) -> None:
        self.progress.update(
            epoch=record.epoch,
            step=record.step,
            metrics={k: v for k, v in record.metrics().items() if not k.startswith("layer")},
        )

    def should_stop(self) -> bool:
        if self.cancel.is_set():
            stop = self.progress.get("stop")
            if stop is not None and "stopped_at" not in stop:
                # a new dict: the heartbeat thread may be serialising the one it replaces
                self.progress["stop"] = {**stop, "stopped_at": time.time()}
            return True
        return not self.alive()

    def stop_message(self, steps: int) -> str:
        """The final event's reason of an attempt that stopped on request."""
        return (
            f"stop requested ({self.stop_reason}), seen through {VIA.get(self.stop_via or '')}; "
            f"stopped at step {steps}"
        )


class Rungs(Callback):
    """A sweep's trial under asynchronous successive halving: at the end of each rung epoch
    the objective is reported (``SweepStore.report``, fenced by the attempt) and ASHA's
    decision read back; a trial below its rung's cut stops after that epoch's checkpoint
    (``pruned``). A database away at a report lets the trial go on (the heartbeats, failing
    too, decide the attempt's fate); a refused report (the attempt lost its job) loses the
    lease."""

    def __init__(self, sweeps: SweepStore, job: ClaimedJob, trial: TrialSpec, lease: Lease) -> None:
        self.sweeps, self.job, self.trial, self.lease = sweeps, job, trial, lease
        self.rungs = set(trial.rungs)
        self.pruned_at: int | None = None

    def on_epoch_end(self, record: EpochRecord) -> None:
        if record.epoch not in self.rungs or self.pruned_at is not None:
            return
        value = float(record.metrics().get(self.trial.metric, math.nan))
        try:
            goes_on = self.sweeps.report(
                sweep_id=self.trial.sweep_id,
                job_id=self.job.id,
                attempt=self.job.attempt,
                rung=record.epoch,
                value=value,
                reduction_factor=self.trial.reduction_factor,
                mode=self.trial.mode,
            )
        except StoreUnavailable as exc:
            log.warning("job %s: rung report at epoch %s failed (%s); going on",
                        self.job.id, record.epoch, exc)  # fmt: skip
            return
        except StoreError as exc:
            log.warning("job %s attempt %s: rung report refused (%s)",
                        self.job.id, self.job.attempt, exc)  # fmt: skip
            self.lease.lost.set()
            return
        if not goes_on:
            log.info("job %s: pruned at epoch %s (%s %s)",
                     self.job.id, record.epoch, self.trial.metric, value)  # fmt: skip
            self.pruned_at = record.epoch

    def should_stop(self) -> bool:
        return self.pruned_at is not None


_DATASETS: dict[tuple[str, int], Dataset] = {}  # built-in and synthetic ones, per process
_MAX_CACHED_DATASETS = 4


def _data(spec: JobSpec, datasets: DatasetStore, tracking_uri: str) -> Dataset:
    """The job's data set. An uploaded one is fetched from where the database says its bytes
    live (into a temporary folder, removed once it is parsed) and trained on only when its
    sha256 is the one recorded at upload (:class:`DatasetChanged` otherwise). A built-in or
    synthetic one depends only on its spec and the seed: the worker process keeps the last
    few it loaded (a warm worker runs many jobs; scikit-learn parses ``digits`` from its CSV
    again at each load) and hands each job its own copy of the arrays."""
    if spec.dataset.name == "csv":  # a file that may change between jobs: read each time
        return load_dataset(spec.dataset, seed=spec.seed)
    if spec.dataset.name != "upload":
        key = (spec.dataset.model_dump_json(), spec.seed)
        cached = _DATASETS.get(key)
        if cached is None:
            cached = load_dataset(spec.dataset, seed=spec.seed)
            if len(_DATASETS) >= _MAX_CACHED_DATASETS:
                _DATASETS.pop(next(iter(_DATASETS)))
            _DATASETS[key] = cached
        return dataclasses.replace(
            cached,
            **{f.name: getattr(cached, f.name).copy() for f in _ARRAYS},
            feature_names=list(cached.feature_names),
            classes=list(cached.classes),
        )
    assert spec.dataset.id is not None
    record = datasets.get(dataset_id=spec.dataset.id)
    uri = record.uri
    if uri.startswith("file://"):
        return _verified(spec, record, Path(uri.removeprefix("file://")))
    if not urlparse(uri).scheme:  # a plain path; ``runs:/…`` has a scheme but no "//"
        return _verified(spec, record, Path(uri))
    import mlflow.artifacts

    with tempfile.TemporaryDirectory(prefix="gradq-data-") as folder:
        path = mlflow.artifacts.download_artifacts(
            artifact_uri=uri, dst_path=folder, tracking_uri=tracking_uri
        )
        return _verified(spec, record, Path(path))


class DatasetChanged(Exception):
    """An uploaded data set's bytes are not those uploaded: their sha256 differs from the
    one the data-set store recorded at upload (someone replaced the artifact)."""


def _verified(spec: JobSpec, record: DatasetView, path: Path) -> Dataset:
    """The data set of the fetched file ``path`` once its sha256 is the one recorded at
    upload; :class:`DatasetChanged` otherwise, before anything is parsed or trained."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    if digest.hexdigest() != record.sha256:
        raise DatasetChanged(
            f"dataset.id: the bytes of uploaded data set {record.id} have changed since "
            f"its upload (sha256 {digest.hexdigest()}, uploaded as {record.sha256}); "
            "the job does not train on them. Upload the data set again."
        )
    return load_dataset(spec.dataset, seed=spec.seed, path=path)


def _timings(
    marks: dict[str, float], started: float, started_cpu: float, tracker: JobTracker | None
) -> dict[str, float]:
    """Where the attempt's time went: wall-clock marks (epoch seconds), the worker process's
    CPU seconds meanwhile (``attempt_cpu_s``, all its threads) and MLflow seconds, on the
    attempt's own thread (``mlflow_critical_s``) and in all (``mlflow_total_s``)."""
    out = dict(marks)
    out["attempt_s"] = time.perf_counter() - started
    out["attempt_cpu_s"] = time.process_time() - started_cpu
    if tracker is not None:
        out["mlflow_critical_s"] = tracker.clock.critical_s
        out["mlflow_total_s"] = tracker.clock.total_s
    return out


def _close_failed_run(config: WorkerConfig, tracker: JobTracker | None, reason: str) -> None:
    """End the run of a job that failed in ``finish()`` FAILED, if MLflow lets us."""
    if tracker is None or tracker.run_id is None:
        return
    try:
        close_run(
            tracking_uri=config.tracking_uri, run_id=tracker.run_id, status="failed", reason=reason
        )
    except Exception as exc:  # MLflow is away: the run stays RUNNING, the job says why
        log.warning("run %s: could not close it: %s", tracker.run_id, exc)


def _logs_model(
    engine: Any, spec: JobSpec, result: TrainResult | None, pack_best: float | None = None
) -> bool:
    """Whether a succeeded attempt logs its model: always, but for a sweep's trial under
    ``log_models: best`` that does not beat the sweep's best so far (its final objective
    against the best the controller stored; a database away: it logs) and, in a pack,
    ``pack_best``: the best objective of the pack's members that ended before it with their
    model logged (succeeded, not yet told to the controller)."""
    trial = spec.trial
    if trial is None or trial.log_models == "all" or result is None:
        return True
    value = result.metrics.get(trial.metric)
    if value is None or not math.isfinite(value):
        return False
    if pack_best is not None and not better(float(value), pack_best, trial.mode):
        return False
    try:
        best = SweepStore(engine).get(sweep_id=trial.sweep_id).best
    except StoreError:
        return True
    return best is None or better(float(value), float(best["objective"]), trial.mode)


class AttemptLife:
    """One attempt's life around its training, the same whether it trains alone
    (:func:`run_attempt`) or as a member of a pack (``workers.pack``): ``begin`` (the lease,
    the stop signal, the MLflow run, the checkpoint to resume from), then ``callbacks`` for
    the training, then ``trained`` with its result or ``failed`` with what it raised, then
    ``end`` exactly once (the run finished, the final write, the lease given up).

    ``beats``: the attempt's lease heartbeats from its own thread; False when the pack's
    heartbeat thread renews it with the other members' (``workers.pack.PackBeats``).
    ``sender``: the pack's one thread sending its members' MLflow buffers."""

    def __init__(
        self,
        config: WorkerConfig,
        engine: Any,
        job: ClaimedJob,
        board: Any,
        *,
        beats: bool = True,
        sender: SharedSender | None = None,
    ) -> None:
        self.config, self.engine, self.job, self.board = config, engine, job, board
        self.sender = sender  # the pack's one MLflow sender thread; None: the run's own
        self.store = JobStore(engine)
        self.spec = JobSpec.model_validate(job.spec)
        self.lease = Lease(self.store, job, config, self.spec.optimizer.epochs)
        self.beats = beats
        self.tracker: JobTracker | None = None
        self.status: Literal["succeeded", "cancelled", "pruned"] = "succeeded"
        self.stop_message: str | None = None  # the final event's reason of a stopped attempt
        self.warnings: list[str] = []  # what its training warned of (recorded_warnings)
        trial = self.spec.trial
        self.rungs = (
            Rungs(SweepStore(engine), job, trial, self.lease)
            if trial is not None and trial.rungs
            else None
        )
        self.resume: Checkpoint | None = None
        self.init_weights: list[Any] | None = None  # a warm start's (``init_from``)
        self.result_body: dict[str, Any] | None = None
        self.error: dict[str, Any] | None = None
        self.result: TrainResult | None = None
        self.pack: int | None = None  # the members of its pack when it trains in one
        # in a pack, under ``log_models: best``: the best objective of the members that ended
        # before it with their model logged (the sweep's stored best does not know them yet)
        self.pack_best: float | None = None
        self.started, self.started_cpu = time.perf_counter(), time.process_time()
        self.marks: dict[str, float] = {"task_start": time.time()}  # wall clock, for the bench

    def begin(self) -> bool:
        """Take up the lease (a first heartbeat), listen for a stop, open the MLflow run and
        record it, and find the checkpoint to resume from (a later attempt); False when the
        attempt no longer holds its job (then only ``end`` is left)."""
        job, config, lease = self.job, self.config, self.lease
        if self.beats:
            lease.start()
        if lease.lost.is_set():
            return False
        listen(self.board, job.id, job.attempt, lambda reason: lease.stopped(reason, "signal"))
        self.tracker = tracker = JobTracker(
            tracking_uri=config.tracking_uri,
            job_id=job.id,
            spec=self.spec,
            attempt=job.attempt,
            run_id=job.mlflow_run_id,
            node=lease.node,
            artifact_root=config.artifact_root,
            # a pack's members share one process: together they send their points to MLflow
            # as often as one job alone (each of K members every K intervals), else their K
            # senders take the training's CPU; every point is sent all the same by the end
            flush_interval_s=config.metrics_flush_seconds * (self.pack or 1),
            checkpoint_interval_s=config.checkpoint_upload_seconds,
            alive=lease.alive,
            tenant=job.tenant if config.tenant_names else None,
            sender=self.sender,
        )
        self.marks["tracker_start"] = time.time()
        if not lease.alive():  # the run may be a successor's already: leave it alone
            return False
        try:
            run_id = tracker.start()
        except Exception as exc:
            if unavailable(exc):  # after start()'s own tries: the service's trouble
                raise TrackingUnavailable(
                    f"MLflow could not be reached when the run opened: {type(exc).__name__}: {exc}"
                ) from exc
            raise
        self.marks["tracker_started"] = time.time()
        self.store.set_run(
            job_id=job.id,
            attempt=job.attempt,
            mlflow_run_id=run_id,
            mlflow_experiment_id=tracker.experiment_id,
            checkpoint_uri=f"runs:/{run_id}/checkpoints/last/checkpoint.pt",
        )
        if job.attempt > 1:
            self.resume = latest_checkpoint(tracking_uri=config.tracking_uri, run_id=run_id)
        if self.spec.init_from is not None and self.resume is None:
            self.init_weights = warm_start_weights(config, self.store, job, self.spec, run_id)
        return True

    def callbacks(self) -> list[Callback]:
        assert self.tracker is not None
        out: list[Callback] = [self.lease, self.tracker.callback()]
        if self.rungs is not None:
            out.append(self.rungs)
        return out

    def trained(self, result: TrainResult) -> None:
        """The training ended with ``result``: what the final write will say."""
        self.result = result
        self.marks["trained"] = time.time()
        lease, rungs = self.lease, self.rungs
        if not lease.alive():
            return
        if result.status == "cancelled" and (rungs is None or rungs.pruned_at is None):
            reason = lease.stop_reason or StopReason.CANCEL
            self.status = STOPPED_STATUS[reason]
            if "stop" in lease.progress:
                lease.progress["stop"] = {**lease.progress["stop"], "step": result.steps}
            self.stop_message = lease.stop_message(result.steps)
            return
        if result.status == "cancelled":  # stopped by its rung: a result all the same
            self.status = "pruned"
        self.result_body = {
            "metrics": result.metrics,
            "epochs": result.epochs,
            "steps": result.steps,
            "best_epoch": result.best_epoch,
            "stopped": "pruned" if self.status == "pruned" else result.status,
            "engine": result.engine,
            "device": result.device,
            "resumed_from_epoch": self.resume.epoch if self.resume else None,
            "seconds": time.perf_counter() - self.started,
            # one line, as `gradq train` prints it (`gradq show` and `gradq logs` too)
            "gradchecks": checks_summary(result.gradchecks),
            "warnings": list(self.warnings),
        }
        if self.pack is not None:
            self.result_body["pack"] = {"members": self.pack}

    def failed(self, exc: BaseException) -> None:
        """The attempt raised ``exc`` (in its training or around it): the job's error, or,
        for a database that went away or a refused write, no final write at all."""
        job = self.job
        if isinstance(exc, Diverged):
            self.error = {
                "type": "diverged", "message": str(exc), "epoch": exc.epoch, "step": exc.step
            }  # fmt: skip
        elif isinstance(exc, GradcheckFailed):
            self.error = {
                "type": "gradcheck_failed", "message": str(exc), "report": exc.report.to_dict()
            }  # fmt: skip
        elif isinstance(exc, (InvalidSpec, CheckpointError)):
            self.error = {"type": "invalid", "message": str(exc)}
        elif isinstance(exc, DatasetChanged):  # final: another attempt would fetch the same bytes
            self.error = {"type": "dataset_changed", "message": str(exc)}
        elif isinstance(exc, StaleAttempt):
            self.lease.lost.set()
        elif isinstance(exc, TrackingUnavailable):  # transient: spec.retry may retry it
            self.error = {"type": "tracking_unavailable", "message": str(exc)}
        elif isinstance(exc, StoreUnavailable) and self._retries("database_unavailable"):
            # the database went away and its spec retries that: the attempt ends failed
            # with that class once the database answers again (the final write waits for
            # it), and the job goes back to the queue as a retry; while the database stays
            # away the lease decides, as below
            log.warning("job %s attempt %s: database unreachable (%s)", job.id, job.attempt, exc)
            self.error = {"type": "database_unavailable", "message": f"{type(exc).__name__}: {exc}"}
        elif isinstance(exc, StoreUnavailable):  # the database went away: not the job's
            # fault. No final write (it could not be made): the heartbeats stop, the lease
            # runs out and the job is claimed again, resuming from its checkpoint.
            log.warning("job %s attempt %s: database unreachable (%s)", job.id, job.attempt, exc)
            self.lease.lost.set()
        else:  # anything else ends this attempt as failed, with its cause
            # the traceback is for operators: this log, the job's row and the run's error.txt
            # (the API answers the job without it)
            log.error("job %s attempt %s failed", job.id, job.attempt, exc_info=exc)
            self.error = {
                "type": type(exc).__name__,
                "message": str(exc),
                "traceback": "".join(traceback.format_exception(exc, limit=8)),
            }

    def _retries(self, kind: str) -> bool:
        """Whether the job's ``retry.on`` lists the failure class ``kind``."""
        return self.spec.retry is not None and kind in self.spec.retry.on

    def end(self) -> str:
        """Finish the MLflow run and make the final write, while the attempt holds its job;
        give up the lease. Returns the status written, or "stale"."""
        job, config, lease, tracker = self.job, self.config, self.lease, self.tracker
        error = self.error
        final: Outcome = "failed" if error else self.status
        written = False
        if lease.alive():
            try:
                if tracker is not None and tracker.run_id is not None:
                    message = None if error is None else str(error["message"])
                    detail = None if error is None else error.get("traceback")
                    tracker.finish(
                        status=final,
                        result=self.result,
                        error=message,
                        error_detail=detail,
                        with_model=final != "succeeded"
                        or _logs_model(self.engine, self.spec, self.result, self.pack_best),
                    )
            except Exception as exc:
                log.warning("job %s: MLflow finish failed: %s", job.id, exc)
                # once the lease ran out (LeaseExpired) the run is the next attempt's
                if final == "succeeded" and lease.alive():
                    error = self.error = {
                        "type": "tracking_failed",
                        "message": "the model and artifacts could not be written to MLflow: "
                        f"{type(exc).__name__}: {exc}",
                    }
                    final, self.result_body = "failed", None
                    _close_failed_run(config, tracker, error["message"])
        # after a finish() that went through, the final write is made even if the lease ran
        # out meanwhile: the database fences it, and a job still ours is then done
        if not lease.lost.is_set() or (tracker is not None and tracker.finished):
            written = _write_outcome(
                self.store,
                job,
                config,
                lease,
                self.marks,
                self.started,
                self.started_cpu,
                tracker,
                final,
                self.result_body,
                {**error, "warnings": self.warnings} if error and self.warnings else error,
                self.stop_message,
            )
        if tracker is not None and not written:
            tracker.abandon()
        lease.close()
        return final if written else "stale"


def warm_start_weights(
    config: WorkerConfig, store: JobStore, job: ClaimedJob, spec: JobSpec, run_id: str
) -> list[Any]:
    """The weights a warm start (``init_from``) begins with: those of the origin job's last
    checkpoint (``last``: its final epoch's), or of its best epoch (``best``: kept when its
    early stopping restores the best, else the last ones). The origin must be a job of the
    same tenant (any other tenant's is not found). The lineage is tagged on both MLflow
    runs: ``gradq.init_from`` (the origin job), ``gradq.init_from_run`` and
    ``gradq.init_from_checkpoint`` on this one, ``gradq.warm_started_by.<job id>`` (this
    run) on the origin's."""
    assert spec.init_from is not None
    origin_id, which = spec.init_from.job, spec.init_from.checkpoint
    try:
        origin = store.get(job_id=origin_id, tenant=job.tenant)
    except JobNotFound:
        raise CheckpointError(f"init_from: no job {origin_id!r}") from None
    ckpt = None
    if origin.mlflow_run_id is not None:
        ckpt = latest_checkpoint(tracking_uri=config.tracking_uri, run_id=origin.mlflow_run_id)
    if ckpt is None or origin.mlflow_run_id is None:
        raise CheckpointError(f"init_from: job {origin_id} has no checkpoint")
    client = make_client(config.tracking_uri)
    for key, value in (
        ("gradq.init_from", origin_id),
        ("gradq.init_from_run", origin.mlflow_run_id),
        ("gradq.init_from_checkpoint", which),
    ):
        client.set_tag(run_id, key, value)
    client.set_tag(origin.mlflow_run_id, f"gradq.warm_started_by.{job.id}", run_id)
    log.info("job %s: warm start from job %s (%s checkpoint)", job.id, origin_id, which)
    if which == "best" and ckpt.best_params is not None:
        return list(ckpt.best_params)
    return list(ckpt.params)


def run_attempt(config: WorkerConfig, job: ClaimedJob, board: Any = None) -> str:
    """Run one attempt to its end; returns the status written ("stale" when fenced out).
    ``board``: the dispatcher's stop board (``workers.stops``), None to learn of stops from
    the heartbeat alone."""
    logging.basicConfig(level=logging.INFO)
    engine = _engine(config)
    import_model_logging()  # before the heartbeats: see its docstring
    life = AttemptLife(config, engine, job, board)
    try:
        if life.begin():
            assert life.tracker is not None
            data = _data(life.spec, DatasetStore(engine), config.tracking_uri)
            life.tracker.log_dataset(data)
            with recorded_warnings(life.warnings):
                result = train(
                    life.spec,
                    callbacks=life.callbacks(),
                    resume_from=life.resume,
                    data=data,
                    init_weights=life.init_weights,
                )
            life.trained(result)
    except Exception as exc:
        life.failed(exc)
    finally:
        out = life.end()
        engine.dispose()  # an idle worker process holds no connection until its next attempt
    return out


def _write_outcome(
    store: JobStore,
    job: ClaimedJob,
    config: WorkerConfig,
    lease: Lease,
    marks: dict[str, float],
    started: float,
    started_cpu: float,
    tracker: JobTracker | None,
    final: Outcome,
    result_body: dict[str, Any] | None,
    error: dict[str, Any] | None,
    stop_message: str | None = None,
) -> bool:
    """The attempt's final write (:func:`_final_write`); whether it went through. An attempt
    stopped on request writes ``stop_message`` as its event's reason."""
    marks["tracker_finished"] = time.time()
    if result_body is not None:
        result_body["timings"] = _timings(marks, started, started_cpu, tracker)
    try:
        _final_write(
            store,
            job,
            config,
            status=final,
            result=result_body,
            error=error,
            reason=event_reason(error, result_body, stop_message),
            progress=dict(lease.progress),
        )
        return True
    except StoreUnavailable as exc:  # the database stayed away: the lease decides
        log.error(
            "job %s attempt %s: final write failed for %.0f s (%s); the lease expires "
            "and the job runs again from its checkpoint",
            job.id,
            job.attempt,
            FINAL_WRITE_RETRY_S,
            exc,
        )
    except StoreError as exc:
        log.warning("job %s attempt %s: final write refused: %s", job.id, job.attempt, exc)
    except Exception:  # unexpected: the lease decides
        log.exception("job %s attempt %s: final write failed", job.id, job.attempt)
    lease.lost.set()
    return False


def event_reason(
    error: dict[str, Any] | None, result: dict[str, Any] | None, stop_message: str | None
) -> str | None:
    """The final event's reason, which `gradq logs` shows: a failure's kind and message; how
    a training ended (``early_stopped after 14 epochs, best epoch 4``) and its gradient
    checks; or the stop's message."""
    if error is not None:
        text = f"{error['type']}: {error.get('message', '')}"
    elif result is not None:
        text = f"{result.get('stopped')} after {result.get('epochs')} epochs"
        if result.get("best_epoch") is not None:
            text += f", best epoch {result['best_epoch']}"
        if result.get("gradchecks"):
            text += f"; {result['gradchecks']}"
    else:
        return stop_message
    warned = (error or result or {}).get("warnings")
    if warned:
        text = f"{text[: EVENT_REASON_CHARS // 2]}; warnings: {' | '.join(warned)}"
    return text[:EVENT_REASON_CHARS]


@contextlib.contextmanager
def recorded_warnings(into: list[str]) -> Iterator[None]:
    """Python's warnings raised in the block on the calling thread, each distinct one once
    (at most ``MAX_WARNINGS``), appended to ``into`` as ``Category: message`` as they are
    raised: the attempt's, which its final event names (a worker's stderr reaches no user).
    A warning of another thread meanwhile (a pack's member ending on its ending thread) is
    shown as usual, not recorded."""
    me = threading.get_ident()
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        show = warnings.showwarning

        def record(
            message: Warning | str,
            category: type[Warning],
            filename: str,
            lineno: int,
            file: Any = None,
            line: str | None = None,
        ) -> None:
            if threading.get_ident() != me:
                show(message, category, filename, lineno, file, line)
                return
            text = f"{category.__name__}: {message}"
            if text not in into and len(into) < MAX_WARNINGS:
                into.append(text)

        warnings.showwarning = record
        yield


MAX_WARNINGS = 5


EVENT_REASON_CHARS = 500


def _final_write(store: JobStore, job: ClaimedJob, config: WorkerConfig, **outcome: Any) -> None:
    """``store.finish``, retried while the database is away (:class:`StoreUnavailable`: a
    restart, a failover) for up to ``FINAL_WRITE_RETRY_S``: the lease's heartbeats go on
    meanwhile, so a short outage does not make a finished attempt run again. A refusal (any
    other ``StoreError``) is not retried."""
    deadline = time.monotonic() + FINAL_WRITE_RETRY_S
    while True:
        try:
            store.finish(job_id=job.id, attempt=job.attempt, **outcome)
            return
        except StoreUnavailable as exc:
            if time.monotonic() >= deadline:
                raise
            log.warning("job %s: final write failed (%s), retrying", job.id, exc)
            time.sleep(min(config.heartbeat_seconds, 2.0))
