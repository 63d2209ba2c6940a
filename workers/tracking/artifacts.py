"""What the MLflow adapter writes besides metrics: spec params and the model (the learning
curve is drawn by ``workers.tracking.plot``).

Helpers of ``workers.tracking``; nothing here connects anywhere at import. MLflow's model
registration reads the process-wide tracking URI, so :func:`log_model` sets it under a lock for
the duration of that call and puts the previous value back: two jobs in one process that
register models against different stores never see each other's URI.
"""

from __future__ import annotations

import importlib
import json
import os
import tempfile
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from mlflow.entities import LoggedModelOutput, Param
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

from core.export import ExportedModel, export_model

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from core.train import TrainResult

MODEL_NAME = "model"  # the model's name in the run: runs:/<run_id>/model
JOB_TAG = "gradq.job_id"  # on a run and on the model version registered from it
_GLOBAL_URI_LOCK = threading.Lock()


def flatten_params(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Flatten a spec dump into MLflow params: nested keys joined by ``.``
    (``optimizer.schedule.kind``), strings as they are, every other value (numbers, booleans,
    None, lists) as JSON (``0.02``, ``true``, ``null``, ``[64, 32]``). Values longer than
    MLflow's limit are cut to it."""
    out: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten_params(value, prefix=f"{name}."))
            continue
        text = value if isinstance(value, str) else json.dumps(value)
        out[name] = text[:MAX_PARAM_VAL_LENGTH]
    return out


def param_entities(params: Mapping[str, str]) -> list[Param]:
    return [Param(k, v) for k, v in sorted(params.items())]


@contextmanager
def _process_tracking_uri(uri: str) -> Iterator[None]:
    """Set MLflow's process-wide tracking URI for the block, under a lock, then restore it."""
    import mlflow
    from mlflow.tracking import is_tracking_uri_set

    with _GLOBAL_URI_LOCK:
        previous = mlflow.get_tracking_uri() if is_tracking_uri_set() else None
        mlflow.set_tracking_uri(uri)
        try:
            yield
        finally:
            mlflow.set_tracking_uri(previous)  # type: ignore[arg-type]  # None unsets it


def artifact_repository(artifact_uri: str, tracking_uri: str | None) -> Any:
    """The repository MLflow's client makes for an artifact location it looked up (a run's
    ``artifact_uri``, a logged model's ``artifact_location``), made from one already known."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
    from mlflow.utils.uri import add_databricks_profile_info_to_artifact_uri

    if tracking_uri is not None:
        artifact_uri = add_databricks_profile_info_to_artifact_uri(artifact_uri, tracking_uri)
    return get_artifact_repository(artifact_uri, tracking_uri=tracking_uri)


class RunArtifacts:
    """Uploads into one run's artifact location.

    Given the run's ``artifact_uri`` (``run.info.artifact_uri``, which the tracker has from
    ``create_run`` or ``get_run``), it writes through the artifact repository that MLflow's
    client would pick for it (the same call, with the tracking URI), made once: the client's
    ``log_artifact`` and ``log_text`` first look the whole run up again (``get_run``, with its
    params, tags and latest metrics: a noticeable part of a short job's CPU;
    bench/RESULTS.md, Service). Without it, it goes through the client."""

    def __init__(
        self,
        client: MlflowClient,
        run_id: str,
        *,
        artifact_uri: str | None = None,
        tracking_uri: str | None = None,
    ) -> None:
        self._client, self._run_id = client, run_id
        self._repo: Any = None
        if artifact_uri is not None:
            self._repo = artifact_repository(artifact_uri, tracking_uri)

    def log_file(self, local_path: str, folder: str | None) -> None:
        """Upload the file ``local_path`` into ``folder`` (None: the run's root)."""
        if self._repo is None:
            self._client.log_artifact(self._run_id, local_path, folder)
        else:
            self._repo.log_artifact(local_path, folder)

    def log_bytes(self, data: bytes, path: str) -> None:
        """Upload ``data`` as the artifact ``path`` (``folder/name``)."""
        folder, _, name = path.rpartition("/")
        with tempfile.TemporaryDirectory(prefix="gradq-artifact-") as tmp:
            local = os.path.join(tmp, name)
            with open(local, "wb") as f:
                f.write(data)
            self.log_file(local, folder or None)


@dataclass(frozen=True)
class LoggedModelInfo:
    """The logged model of a run: ``models:/<model_id>``, and its registered version."""

    model_uri: str
    model_id: str
    registered_model_version: str | None = None


@lru_cache(maxsize=1)
def pip_requirements() -> tuple[str, ...]:
    """What a loaded model needs besides MLflow (which MLflow adds itself): torch, at the
    version the worker runs. Given explicitly, so that MLflow infers nothing."""
    return (f"torch=={torch.__version__.split('+')[0]}",)


def import_model_logging() -> None:
    """Import what :func:`log_model` needs (MLflow's PyTorch flavour, ``torch.export`` and the
    tracer behind it). A process's first import of them can hold the GIL long enough to keep
    an attempt's heartbeat thread from renewing a short lease (the 1 s leases of
    tests/integration/workers/test_task_outages.py): an attempt does it before its
    heartbeats start, and a Ray worker when it is warmed up."""
    for module in ("mlflow.models", "mlflow.pytorch", "torch._dynamo", "torch.export"):
        importlib.import_module(module)


# A worker process's exported programs (``torch.export``), by what their graph is made of
# (:func:`program_key`): a model whose graph is one seen before is saved from that program
# with its own weights copied in, instead of being traced again (a trace is most of a pt2
# save, bench/RESULTS.md, Service). Sweeps train many models of one shape in a process.
PROGRAMS_KEPT = 16
_programs: dict[tuple[object, ...], Any] = {}
_programs_lock = threading.Lock()


def program_key(model: ExportedModel) -> tuple[object, ...]:
    """What the traced graph of ``model`` depends on beyond its tensors' values: the
    activation, the loss and task (the output's transform), a regression's target shift and
    scale (constants of the graph) and every tensor's name, shape and dtype."""
    return (
        model.mlp.activation,
        model.loss,
        model.task,
        model.target_shift,
        model.target_scale,
        *((name, tuple(t.shape), t.dtype) for name, t in model.state_dict().items()),
    )


@contextmanager
def _traced_once() -> Iterator[None]:
    """While MLflow saves a model, its ``torch.export.export`` of an :class:`ExportedModel`
    returns the kept program of the model's :func:`program_key` with the model's weights
    copied in (the first model of a key is traced, and its program kept). Any other module
    is exported as usual. One save at a time per process."""
    original = torch.export.export

    def export(module: Any, args: Any, *rest: Any, **kwargs: Any) -> Any:
        if not isinstance(module, ExportedModel):
            return original(module, args, *rest, **kwargs)
        key = program_key(module)
        program = _programs.get(key)
        if program is None:
            program = original(module, args, *rest, **kwargs)
            if len(_programs) >= PROGRAMS_KEPT:
                _programs.clear()
            _programs[key] = program
            return program
        with torch.no_grad():
            for name, tensor in module.state_dict().items():
                program.state_dict[name].copy_(tensor)
        return program

    with _programs_lock:
        torch.export.export = export  # type: ignore[assignment]  # MLflow calls it by this name
        try:
            yield
        finally:
            torch.export.export = original


def log_model(
    result: TrainResult,
    *,
    client: MlflowClient,
    tracking_uri: str,
    run_id: str,
    experiment_id: str,
    params: Mapping[str, str],
    register_as: str | None,
    job_id: str | None = None,
) -> LoggedModelInfo:
    """Log ``export_model(result)`` as the run's model ``model`` in MLflow's ``pt2`` format (a
    ``torch.export`` program: the graph and its tensors, no pickled code; the loaded module
    takes raw float32 features of any batch size and computes what ``ExportedModel`` does;
    its classes, task and loss are the model's metadata ``gradq_classes``, ``gradq_task``,
    ``gradq_loss``) with a signature and an input example of 5 raw training rows, and
    register it under ``register_as`` when given. With
    ``job_id`` the version is tagged ``gradq.job_id`` and registered once per job: when a
    version of ``register_as`` already has the job's tag (an earlier attempt registered it and
    could not record the outcome), that version is the answer and none is added.
    ``mlflow.pytorch.load_model`` loads ``models:/<model_id>`` and ``runs:/<run_id>/model``,
    also with ``MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false``, which makes MLflow refuse a model
    file that someone replaced with one that unpickles code (README, Security).

    The caller logs the run's ``final_*`` metrics at step 0 with ``model_id=info.model_id``,
    which links them to the model (in the same call as its last tags).

    This is what ``mlflow.pytorch.log_model`` does, in the calls it needs and no more: the
    logged model is created in the run's experiment (``log_model`` would use the process's
    active experiment) with the run's params as the caller knows them (no ``get_run``),
    attached to the run, its metrics linked by the caller (``log_model`` reads back the whole
    history of every metric of the run to find the step-0 points, a cost that grows with the
    run's length), saved with ``mlflow.pytorch.save_model`` (signature, input and
    serving-input examples, requirements given, not inferred), its files uploaded to the
    logged model's artifact location through the repository that ``log_model_artifacts``
    would use (without its read-back of the logged model) and the model finalised READY
    (FAILED when any step fails). Not
    done: MLflow's serving-input validation, which loads the saved model back through pyfunc
    in a fresh copy and predicts the example on every job's path; the model here is always
    the same ``ExportedModel`` class, and its loading and predictions are checked by the
    tests of this package instead, against the real store."""
    import mlflow.pytorch
    from mlflow.entities import LoggedModelStatus
    from mlflow.models import Model, infer_signature

    model = export_model(result)
    data = result.data
    example = data.raw(data.X_train[:5]).astype(np.float32)
    with torch.no_grad():
        output = model(torch.from_numpy(example)).numpy()
    logged = client.create_logged_model(
        experiment_id, name=MODEL_NAME, source_run_id=run_id, params=dict(params)
    )
    model_id = logged.model_id
    try:
        client.log_outputs(run_id, [LoggedModelOutput(model_id, step=0)])
        with tempfile.TemporaryDirectory(prefix="gradq-model-") as tmp:
            path = os.path.join(tmp, MODEL_NAME)
            with _traced_once():
                mlflow.pytorch.save_model(
                    model,
                    path,
                    mlflow_model=Model(
                        artifact_path=logged.artifact_location,
                        model_uuid=model_id,
                        run_id=run_id,
                        model_id=model_id,
                        metadata={
                            "gradq_classes": list(model.classes),
                            "gradq_task": model.task,
                            "gradq_loss": model.loss,
                        },
                    ),
                    signature=infer_signature(example, output),
                    input_example=example,
                    pip_requirements=list(pip_requirements()),
                    serialization_format="pt2",
                )
            # the client's log_model_artifacts reads the whole logged model back first (its
            # params too) to find the location create_logged_model has just returned
            artifact_repository(logged.artifact_location, tracking_uri).log_artifacts(path)
    except BaseException:
        client.finalize_logged_model(model_id, LoggedModelStatus.FAILED)
        raise
    client.finalize_logged_model(model_id, LoggedModelStatus.READY)
    version = None
    if register_as is not None:
        version = _register_once(client, tracking_uri, model_id, register_as, job_id)
    return LoggedModelInfo(f"models:/{model_id}", model_id, version)


def _register_once(
    client: MlflowClient, tracking_uri: str, model_id: str, name: str, job_id: str | None
) -> str:
    """The version of ``name`` that holds the job's model: the one tagged with ``job_id``
    when there is one, else a new one (tagged)."""
    import mlflow

    if job_id is not None:  # a uuid; the name (any text) is compared here, not quoted
        registered = [
            v
            for v in client.search_model_versions(f"tags.`{JOB_TAG}` = '{job_id}'")
            if v.name == name
        ]
        if registered:
            return str(min(int(v.version) for v in registered))
    tags = None if job_id is None else {JOB_TAG: job_id}
    with _process_tracking_uri(tracking_uri):  # the registry client reads the process's URI
        return str(mlflow.register_model(f"models:/{model_id}", name, tags=tags).version)
