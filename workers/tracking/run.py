"""The MLflow adapter: one MLflow run per job, written through an explicit ``MlflowClient``.

Nothing connects at import; every entry point takes a ``tracking_uri``. A job's run carries:

- params: the flattened spec (``model.hidden``, ``optimizer.lr``, …; see ``flatten_params``);
- tags: ``gradq.job_id``, ``gradq.attempt``, ``gradq.node`` and ``gradq.attempt.<n>.node``;
- a description (tag ``mlflow.note.content``: the job's model, loss and optimizer in one
  line) and, once ``log_dataset`` is called, the training data as a dataset input
  (``workers.tracking.inputs``);
- metrics, keyed for MLflow's run page (``workers.tracking.names``): ``EpochRecord.metrics()``
  at step = epoch (1-based, continued by a resumed attempt: ``loss/train``, ``accuracy/val``,
  ``timing/…``, ``training/…``, ``weights/…``), ``training/gradcheck_max_rel_error`` /
  ``training/gradcheck_max_fd_rel_error`` at step = optimizer step, and at the end
  ``final_<name>`` for each of ``TrainResult.metrics`` plus ``final_epochs``,
  ``final_steps``, ``gradcheck_count`` (no step: logged at step 0, so that they are also the
  logged model's metrics);
- artifacts: ``checkpoints/last/checkpoint.pt``, ``checkpoints/best/checkpoint.pt``,
  ``gradcheck/step_XXXXXXXX.json``, ``plots/learning_curve.png``, ``error.txt``, the model
  ``model`` (``runs:/<run_id>/model``) and, with it, ``predictors.npz``: the model's and the
  last epoch's weights with their preprocessing (``core.predictor``, read by the API); each
  checkpoint folder also holds its own ``predictors.npz`` (set ``weights``) once the data
  set is logged.

Failure policy: the training callback never raises for an MLflow error (it keeps its buffer
and retries); ``start()`` and ``finish()`` do raise, and the worker task decides what an
unreachable tracker means for the job. ``start()`` first tries again while MLflow is away
(``client.unavailable``: a connection refused or an answer cut off mid-body), up to
``START_TRIES`` tries.
"""

from __future__ import annotations

import json
import logging
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from mlflow.entities import Metric, RunStatus, RunTag

from core.checkpoint import Checkpoint
from core.export import checkpoint_predictor, export_predictors
from core.predictor import dump_predictors
from core.spec import tracked_epoch_metrics
from workers.tracking.artifacts import RunArtifacts, flatten_params, log_model, param_entities
from workers.tracking.buffer import (
    CHECKPOINT_FILE,
    LAST_CHECKPOINT,
    RunBuffer,
    SharedSender,
    TrackingCallback,
)
from workers.tracking.client import (
    find_or_create_experiment,
    is_remote,
    make_client,
    unavailable,
)
from workers.tracking.clock import Clock
from workers.tracking.inputs import DESCRIPTION_TAG, dataset_input, description
from workers.tracking.names import aliases
from workers.tracking.plot import confusion_png, confusion_table, learning_curve_png
from workers.tracking.read import PREDICTORS_FILE
from workers.tracking.scope import scoped_name

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

    from core.callbacks import Callback
    from core.data import Dataset
    from core.spec import JobSpec
    from core.train import TrainResult

log = logging.getLogger(__name__)

MAX_ERROR_TAG = 5000
# a pruned trial's run ends KILLED (MLflow has no status of its own for it), tagged
# ``gradq.outcome = pruned``
_STATUS = {"succeeded": "FINISHED", "failed": "FAILED", "cancelled": "KILLED", "pruned": "KILLED"}
Outcome = Literal["succeeded", "failed", "cancelled", "pruned"]
_ACTIVE = {"RUNNING", "SCHEDULED"}
_EXPERIMENTS: dict[tuple[str, str], str] = {}  # (tracking URI, name) → experiment id
# start()'s tries while MLflow is away, and the wait before the second (doubled before each
# next)
START_TRIES = 3
START_RETRY_WAIT_S = 2.0


class LeaseExpired(RuntimeError):
    """``finish()`` stopped because the attempt's lease ran out: its successor owns the run."""


class JobTracker:
    """One attempt's writer into the job's MLflow run. Use: ``start()``, pass ``callback()``
    to ``core.train``, then ``finish()`` exactly once (``flush()`` at any time). With
    ``tenant``, the spec's experiment and registered model are the tenant's own in MLflow
    (``workers.tracking.scope``)."""

    def __init__(
        self,
        *,
        tracking_uri: str,
        job_id: str,
        spec: JobSpec,
        attempt: int,
        run_id: str | None = None,
        node: str | None = None,
        artifact_root: str | None = None,
        flush_interval_s: float = 5.0,
        checkpoint_interval_s: float = 10.0,
        alive: Callable[[], bool] | None = None,
        tenant: str | None = None,
        sender: SharedSender | None = None,
    ) -> None:
        self.sender = sender  # the pack's one sender thread (RunBuffer), or None: its own
        self.alive = alive  # see RunBuffer; finish() raises LeaseExpired once it is False
        self.tracking_uri, self.job_id, self.spec, self.attempt = (
            tracking_uri,
            job_id,
            spec,
            attempt,
        )
        self.node = node or socket.gethostname()
        # the spec's experiment and registered model as MLflow names them: scoped by
        # ``tenant`` when one is given (API keys on), else as given (workers.tracking.scope)
        self.experiment_name = scoped_name(spec.experiment, tenant=tenant, field="experiment")
        self.registered_name = (
            None
            if spec.register_as is None
            else scoped_name(spec.register_as, tenant=tenant, field="register_as")
        )
        self.artifact_root = artifact_root
        self.flush_interval_s, self.checkpoint_interval_s = flush_interval_s, checkpoint_interval_s
        self.client = make_client(tracking_uri)
        self.run_id: str | None = run_id
        self.model_uri: str | None = None  # set by finish() when a model was logged
        self.model_version: str | None = None  # set when it was registered
        self.finished = False  # set when finish() closed the run
        self._buffer: RunBuffer | None = None
        self._experiment: str | None = None  # the run's experiment id and params, for the
        self._params: dict[str, str] | None = None  # logged model (no get_run to find them)
        self.clock = Clock()  # seconds spent in MLflow work: see ``Clock``
        self._artifact_uri: str | None = None  # the run's, once known
        self._run_artifacts: RunArtifacts | None = None
        self._has_dataset = False  # the run already has its dataset input (a resumed run)

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> str:
        """Open the job's run and return its id.

        While MLflow is away (``client.unavailable``: a connection refused, or an answer cut
        off mid-body, as when the server is killed while it answers) the opening is tried
        again from the start, up to ``START_TRIES`` tries; then the error is raised, as is at
        once any error MLflow answered with. Before each new try the attempt must still be
        alive (else ``LeaseExpired``). A retried opening keeps the job at one run (see
        below).

        Without ``run_id``: the experiment ``experiment_name`` is fetched or created, and a
        run already tagged with this job id is reused (a first attempt that died before its
        run id was saved), else a run named ``spec.name`` is created and the flattened spec
        logged as params. A job has one run: when several carry its id (a create retried by
        MLflow's client, or made by an earlier attempt), the first created is kept and the
        others deleted. With ``run_id``: that run (it must carry this job id) is set
        RUNNING again; params are not re-logged. Either way the attempt and node tags are
        updated, and epochs or gradient checks already in the run are not logged again."""
        wait = START_RETRY_WAIT_S
        for tries in range(1, START_TRIES + 1):
            try:
                with self.clock.measure():
                    return self._open()
            except Exception as exc:
                if tries == START_TRIES or not unavailable(exc):
                    raise
                log.warning("job %s: MLflow is away while its run opens (%s: %s); "
                            "trying again in %.0f s", self.job_id, type(exc).__name__, exc,
                            wait)  # fmt: skip
            time.sleep(wait)
            wait *= 2
            self._check_alive()
        raise AssertionError("unreachable")  # the last try returned or raised

    def _open(self) -> str:
        client = self.client
        tags = {
            "gradq.job_id": self.job_id,
            "gradq.attempt": str(self.attempt),
            "gradq.node": self.node,
            f"gradq.attempt.{self.attempt}.node": self.node,
        }
        trial = self.spec.trial
        if trial is not None:  # a sweep's trial: a child of the sweep's run in MLflow's views
            tags |= {"gradq.sweep_id": trial.sweep_id, "gradq.trial": str(trial.number)}
            if trial.parent_run_id is not None:
                tags["mlflow.parentRunId"] = trial.parent_run_id
        if self.run_id is None:
            experiment_id = self._experiment_id()
            # Only a later attempt can find a run of this job (its first attempt died before
            # saving the run id): a first attempt skips the search.
            found = self._job_runs(experiment_id) if self.attempt > 1 else []
            if found:
                self.run_id = self._one_run(found).info.run_id
            else:  # tagged at creation, so that a retry finds it; nothing in it to skip
                tags[DESCRIPTION_TAG] = description(self.job_id, self.spec)
                run = self._create_run(experiment_id, tags)
                # A create that MLflow's client retried (the server committed it, the answer
                # was lost) or one by an earlier attempt still alive made a second run: the
                # job keeps one (MLflow's SQLite store has no HTTP retries: one create, one run)
                if is_remote(self.tracking_uri) or self.attempt > 1:
                    run = self._one_run(self._job_runs(experiment_id) or [run])
                self.run_id = run.info.run_id
                self._experiment = run.info.experiment_id
                self._artifact_uri = run.info.artifact_uri
                self._params = flatten_params(self.spec.model_dump(mode="json"))
                # the params go with the first metrics (one call less on the job's path)
                self._make_buffer().add_params(param_entities(self._params))
                return self.run_id
        run = client.get_run(self.run_id)
        self._experiment, self._params = run.info.experiment_id, dict(run.data.params)
        self._artifact_uri = run.info.artifact_uri
        owner = run.data.tags.get("gradq.job_id")
        if owner not in (None, self.job_id):
            raise ValueError(f"MLflow run {self.run_id} belongs to job {owner}, not {self.job_id}")
        if run.info.status != "RUNNING":
            client.update_run(self.run_id, status="RUNNING")
        if DESCRIPTION_TAG not in run.data.tags:  # a description someone edited stays
            tags[DESCRIPTION_TAG] = description(self.job_id, self.spec)
        client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        self._has_dataset = bool(run.inputs and run.inputs.dataset_inputs)
        buffer = self._make_buffer()
        buffer.skip_epochs_through = _max_step(client, run, "train_loss", default=0)
        buffer.skip_gradchecks_through = _max_step(
            client, run, "gradcheck_max_rel_error", default=-1
        )
        return self.run_id

    @property
    def experiment_id(self) -> str | None:
        """The run's experiment id, known once ``start()`` has returned (stored with the run
        id, so that the API builds the run's link without asking MLflow)."""
        return self._experiment

    def log_dataset(self, data: Dataset) -> None:
        """Record ``data`` (its training part) as the run's dataset input, sent with the next
        metrics (needs ``start()``). A resumed run that has it already is left as it is. Never
        raises: a data set MLflow cannot describe is logged as a warning, the job goes on.

        From then on each checkpoint is uploaded with its ``predictors.npz`` (its weights and
        the data's preprocessing, ``core.predictor``): a job's predictions while it runs."""
        activation = self.spec.model.activation
        loss = self.spec.resolved_loss(data.task)
        self._make_buffer().predictors = lambda params: dump_predictors(
            {"weights": checkpoint_predictor(params, data, activation=activation, loss=loss)}
        )
        if self._has_dataset:
            return
        try:
            with self.clock.measure():
                self._make_buffer().add_inputs([dataset_input(self.spec, data)])
        except Exception as exc:
            log.warning("job %s: no dataset input for its run: %s", self.job_id, exc)
        self._has_dataset = True

    def callback(self) -> Callback:
        """The core callback of this run (needs ``start()`` or a ``run_id``); never raises
        for an MLflow error. Buffering: see ``workers.tracking.buffer``."""
        return TrackingCallback(self._make_buffer())

    def flush(self) -> bool:
        """Send what is buffered; True when nothing stays pending (never raises)."""
        return self._buffer.flush() if self._buffer is not None else True

    @property
    def pending_points(self) -> int:
        """Metric points buffered and not yet in MLflow."""
        return len(self._buffer.points) if self._buffer is not None else 0

    def finish(
        self,
        *,
        status: Outcome,
        result: TrainResult | None = None,
        error: str | None = None,
        error_detail: str | None = None,
        with_model: bool = True,
    ) -> None:
        """Flush, record the outcome and close the run: FINISHED, FAILED or KILLED.
        ``with_model`` False: a succeeded run is closed without its model (a sweep's trial
        that is not the best so far, under ``log_models: best``); such a trial's run gets no
        plots either (its curves are its metrics), nor does a run stopped on request
        (``cancelled``, ``pruned``: drawing them held the stop up); every other run does.

        With ``result``: the ``final_*`` metrics, ``final_epochs``, ``final_steps``,
        ``gradcheck_count`` and ``plots/learning_curve.png`` (a classifier's also
        ``plots/confusion_matrix.png`` and the table ``confusion_matrix.json``); for
        ``succeeded`` also the model (``self.model_uri``), registered as
        ``registered_name`` when set (``self.model_version``). With ``error``: tag
        ``gradq.error`` (cut to 5000 characters) and the full text as ``error.txt``,
        followed by ``error_detail`` (a traceback) if given. Raises when MLflow fails; the
        run is then left RUNNING, and ``close_run`` (or a retry) closes it."""
        try:
            with self.clock.measure():
                self._close(status, result, error, error_detail, with_model)
        finally:
            if self._buffer is not None:
                self._buffer.close()

    def _close(
        self,
        status: Outcome,
        result: TrainResult | None,
        error: str | None,
        error_detail: str | None = None,
        with_model: bool = True,
    ) -> None:
        run_id = self._require_run()
        client = self.client
        buffer = self._make_buffer()
        self._check_alive()
        metrics: list[Metric] = []  # sent with the last epochs and the tags: one call
        tags: list[RunTag] = []
        if result is not None:
            finals = {f"final_{k}": v for k, v in result.metrics.items()}
            finals |= {
                "final_epochs": result.epochs,
                "final_steps": result.steps,
                "gradcheck_count": len(result.gradchecks),
            }
            trial = self.spec.trial
            plots = status not in ("cancelled", "pruned") and (
                with_model or trial is None or trial.log_models == "all"
            )
            if result.history and plots:
                png = learning_curve_png(result.history)
                self._artifacts().log_bytes(png, "plots/learning_curve.png")
            if result.confusion is not None and plots:
                cm = result.confusion
                self._artifacts().log_bytes(
                    confusion_png(cm["matrix"]), "plots/confusion_matrix.png"
                )
                table = json.dumps(confusion_table(cm)).encode()
                self._artifacts().log_bytes(table, "confusion_matrix.json")
            model_id = None
            if status == "succeeded" and with_model:
                self._check_alive()
                try:
                    info = log_model(
                        result,
                        client=client,
                        tracking_uri=self.tracking_uri,
                        run_id=run_id,
                        experiment_id=self._run_experiment(),
                        params=self._params or {},
                        register_as=self.registered_name,
                        job_id=self.job_id,
                    )
                except BaseException:
                    buffer.flush()  # the epochs stay in the run that is closed FAILED
                    raise
                self._artifacts().log_bytes(self._predictors(result), PREDICTORS_FILE)
                self.model_uri = info.model_uri
                self.model_version = info.registered_model_version
                tags.append(RunTag("gradq.model_uri", info.model_uri))
                model_id = info.model_id
            now = _now_ms()  # at step 0, linked to the model: also the model's metrics
            metrics = [Metric(k, float(v), now, 0, model_id=model_id) for k, v in finals.items()]
        if status == "pruned":
            tags.append(RunTag("gradq.outcome", "pruned"))
        if error is not None:
            tags.append(RunTag("gradq.error", error[:MAX_ERROR_TAG]))
            text = error if error_detail is None else f"{error}\n\n{error_detail}"
            self._artifacts().log_bytes(text.encode(), "error.txt")
        buffer.add_final(metrics, tags)
        if not buffer.flush():
            self._check_alive()
            raise RuntimeError(f"run {run_id}: could not flush buffered metrics to MLflow")
        self._check_alive()
        client.set_terminated(run_id, _STATUS[status])
        self.finished = True

    def _predictors(self, result: TrainResult) -> bytes:
        """The model's weights and the last checkpoint's (this attempt's last epoch), with
        their preprocessing, for predictions without torch (``core.predictor``)."""
        latest = self._buffer.latest if self._buffer is not None else None
        return export_predictors(result, last=None if latest is None else latest.params)

    def abandon(self) -> None:
        """Stop the sender thread and drop what is buffered: the run is another attempt's."""
        if self._buffer is not None:
            self._buffer.close()

    # --- internals -------------------------------------------------------------------------

    def _check_alive(self) -> None:
        if self.alive is not None and not self.alive():
            raise LeaseExpired(f"run {self.run_id}: this attempt's lease ran out")

    def _make_buffer(self) -> RunBuffer:
        if self._buffer is None:
            self._buffer = RunBuffer(
                self.client,
                self._require_run(),
                flush_interval_s=self.flush_interval_s,
                checkpoint_interval_s=self.checkpoint_interval_s,
                clock=self.clock,
                artifacts=self._artifacts(),
                alive=self.alive,
                sender=self.sender,
                epoch_metrics=tracked_epoch_metrics(self.spec),
            )
        return self._buffer

    def _run_experiment(self) -> str:
        if self._experiment is None:  # a tracker given a run id, finishing without start()
            run = self.client.get_run(self._require_run())
            self._experiment, self._params = run.info.experiment_id, dict(run.data.params)
        return self._experiment

    def _artifacts(self) -> RunArtifacts:
        if self._run_artifacts is None:
            self._run_artifacts = RunArtifacts(
                self.client,
                self._require_run(),
                artifact_uri=self._artifact_uri,
                tracking_uri=self.tracking_uri,
            )
        return self._run_artifacts

    def _require_run(self) -> str:
        if self.run_id is None:
            raise RuntimeError("JobTracker.start() has not been called")
        return self.run_id

    def _job_runs(self, experiment_id: str) -> list[Run]:
        """The live (not deleted) runs of the experiment tagged with this job's id."""
        if "'" in self.job_id:  # not a job id gradq makes; never put in a filter string
            return []
        query = f"tags.`gradq.job_id` = '{self.job_id}'"
        return list(self.client.search_runs([experiment_id], query, max_results=100))

    def _one_run(self, runs: list[Run]) -> Run:
        """The job's run among ``runs`` (all tagged with its id): the first created (the
        earliest start, then the smallest id), the same whichever attempt asks; the others
        are deleted (MLflow keeps a deleted run restorable, out of every search and view)."""
        keep = min(runs, key=lambda r: (r.info.start_time or 0, r.info.run_id))
        for run in runs:
            if run.info.run_id != keep.info.run_id:
                log.warning("job %s: run %s duplicates run %s, deleted",
                            self.job_id, run.info.run_id, keep.info.run_id)  # fmt: skip
                self.client.delete_run(run.info.run_id)
        return keep

    def _create_run(self, experiment_id: str, tags: dict[str, str]) -> Run:
        """A new run named ``spec.name``; an experiment id remembered from an earlier job
        whose experiment has since been deleted is looked up once more."""
        from mlflow.exceptions import MlflowException

        try:
            return self.client.create_run(experiment_id, run_name=self.spec.name, tags=tags)
        except MlflowException:
            if _EXPERIMENTS.pop((self.tracking_uri, self.experiment_name), None) is None:
                raise
        experiment_id = self._experiment_id()
        return self.client.create_run(experiment_id, run_name=self.spec.name, tags=tags)

    def _experiment_id(self) -> str:
        """The id of ``experiment_name``, created or restored when needed; remembered per
        process (a worker runs many jobs of few experiments)."""
        key = (self.tracking_uri, self.experiment_name)
        if key not in _EXPERIMENTS:
            _EXPERIMENTS[key] = find_or_create_experiment(
                self.client,
                self.experiment_name,
                tracking_uri=self.tracking_uri,
                artifact_root=self.artifact_root,
            )
        return _EXPERIMENTS[key]


# --- module functions ----------------------------------------------------------------------


def latest_checkpoint(*, tracking_uri: str, run_id: str) -> Checkpoint | None:
    """The run's ``checkpoints/last/checkpoint.pt``, or None when it has none yet."""
    client = make_client(tracking_uri)
    listed = {f.path for f in client.list_artifacts(run_id, LAST_CHECKPOINT)}
    path = f"{LAST_CHECKPOINT}/{CHECKPOINT_FILE}"
    if path not in listed:
        return None
    with tempfile.TemporaryDirectory(prefix="gradq-ckpt-") as tmp:
        local = client.download_artifacts(run_id, path, dst_path=tmp)
        return Checkpoint.from_bytes(Path(local).read_bytes())


def close_run(*, tracking_uri: str, run_id: str, status: str, reason: str | None = None) -> None:
    """Terminate a run whose worker is gone. ``status``: succeeded/failed/cancelled or
    FINISHED/FAILED/KILLED. A run that is no longer RUNNING (or SCHEDULED) is left as it is,
    so calling this twice, or after the worker's own ``finish()``, changes nothing; so is a
    run someone deleted in MLflow meanwhile."""
    mlflow_status = _STATUS.get(status, status.upper())
    RunStatus.from_string(mlflow_status)  # raises for an unknown status
    client = make_client(tracking_uri)
    info = client.get_run(run_id).info
    if info.status not in _ACTIVE or info.lifecycle_stage == "deleted":
        return
    if reason is not None:
        client.set_tag(run_id, "gradq.close_reason", reason[:MAX_ERROR_TAG])
    client.set_terminated(run_id, mlflow_status)


def _max_step(client: MlflowClient, run: Run, name: str, *, default: int) -> int:
    """The last step of metric ``name`` in the run, under its key or the name it had before
    (a run that an attempt before this version of gradq started)."""
    logged = [k for k in aliases(name) if k in run.data.metrics]
    return max(
        (m.step for k in logged for m in client.get_metric_history(run.info.run_id, k)),
        default=default,
    )


def _now_ms() -> int:
    return int(time.time() * 1000)
