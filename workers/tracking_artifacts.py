"""What the MLflow adapter writes besides metrics: spec params, the learning curve, the model.

Helpers of ``workers.tracking``; nothing here connects anywhere at import. MLflow's model
logging reads the process-wide tracking URI, so :func:`log_model` sets it under a lock for the
duration of the call and puts the previous value back: two jobs in one process that log models
against different stores never see each other's URI.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from mlflow.entities import LoggedModelOutput, Metric, Param
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

from core.callbacks import EpochRecord
from core.export import export_model

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from mlflow import MlflowClient
    from mlflow.models.model import ModelInfo

    from core.train import TrainResult

MODEL_NAME = "model"  # the model's name in the run: runs:/<run_id>/model
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


def learning_curve(history: list[EpochRecord]) -> Figure:
    """Train and validation loss per epoch (left axis, log scale when positive) and validation
    accuracy, or R² for a regressor, on a second axis when the history has it.

    Drawn for speed (it is on every job's path): fixed margins instead of ``tight_layout``
    (which draws the figure twice) and plain-text tick labels instead of mathtext (whose
    parser dominated the drawing time): about half the time of the default layout."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, NullFormatter

    fig = Figure(figsize=(7, 4.2), dpi=100)
    fig.subplots_adjust(left=0.11, right=0.88, bottom=0.12, top=0.95)
    ax = fig.add_subplot(1, 1, 1)
    epochs = [r.epoch for r in history]
    for part, style in (("train", "-"), ("val", "--")):
        values = [getattr(r, part).get("loss", float("nan")) for r in history]
        if any(np.isfinite(values)):
            ax.plot(epochs, values, style, color="tab:blue", label=f"{part} loss")
    if history and all(r.train.get("loss", 0.0) > 0 for r in history):
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    handles, labels = ax.get_legend_handles_labels()
    second = next((k for k in ("accuracy", "r2") if any(k in r.val for r in history)), None)
    if second is not None:
        ax2 = ax.twinx()
        for part, style in (("train", "-"), ("val", "--")):
            values = [getattr(r, part).get(second, float("nan")) for r in history]
            ax2.plot(epochs, values, style, color="tab:orange", label=f"{part} {second}")
        ax2.set_ylabel(second)
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, loc="center right", fontsize="small")
    ax.grid(alpha=0.3)
    return fig


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


def log_model(
    result: TrainResult,
    *,
    client: MlflowClient,
    tracking_uri: str,
    run_id: str,
    register_as: str | None,
    metrics: Mapping[str, float],
) -> ModelInfo:
    """Log ``export_model(result)`` as the run's model ``model`` (pickle format: the loaded
    module is the same ``ExportedModel``, taking raw float32 features of any batch size; the
    ``core`` package must be importable where it is loaded) with a signature and an input
    example of 5 raw training rows, and register it under ``register_as`` when given.
    ``mlflow.pytorch.load_model`` loads ``info.model_uri`` and ``runs:/<run_id>/model``.

    ``metrics`` (the run's ``final_*``) are logged to the run at step 0 linked to the model.

    The logged model is created here, in the run's experiment: left to ``log_model`` it would
    land in the process's active (default) experiment, not the run's. It is attached to the
    run here too (``log_outputs``, its metrics linked as above) instead of by passing
    ``run_id``: MLflow would then read back the whole history of every metric of the run to
    link the step-0 points, ~0.2 s for a 50-epoch run and growing with its length."""
    import mlflow.pytorch
    from mlflow.models import infer_signature

    model = export_model(result)
    data = result.data
    example = data.raw(data.X_train[:5]).astype(np.float32)
    with torch.no_grad():
        output = model(torch.from_numpy(example)).numpy()
    requirement = f"torch=={torch.__version__.split('+')[0]}"
    run = client.get_run(run_id)
    logged = client.create_logged_model(
        run.info.experiment_id, name=MODEL_NAME, source_run_id=run_id, params=run.data.params
    )
    now = int(time.time() * 1000)
    client.log_batch(
        run_id,
        metrics=[Metric(k, float(v), now, 0, model_id=logged.model_id) for k, v in metrics.items()],
    )
    client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=0)])
    with _process_tracking_uri(tracking_uri):
        info: ModelInfo = mlflow.pytorch.log_model(
            model,
            name=MODEL_NAME,
            model_id=logged.model_id,
            signature=infer_signature(example, output),
            input_example=example,
            pip_requirements=[requirement],
            registered_model_name=register_as,
            serialization_format="pickle",
        )
    return info
