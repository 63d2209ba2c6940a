"""What a job's run says about itself on its MLflow page: its description (one line, the
``mlflow.note.content`` tag) and the data set it trained on (a dataset input with context
``training``: the page's "Datasets" panel).

Helpers of ``workers.tracking.run``; nothing here connects anywhere.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from core.spec import FILE_DATASETS

if TYPE_CHECKING:
    from mlflow.entities import DatasetInput

    from core.data import Dataset
    from core.spec import JobSpec

DESCRIPTION_TAG = "mlflow.note.content"
TRAINING_CONTEXT = "training"


def description(job_id: str, spec: JobSpec) -> str:
    """One line: ``gradq job <id> on digits: MLP [64, 32] relu, cross_entropy, SGD lr 0.05
    momentum 0.9, batch 32, 50 epochs``. The loss is the spec's or, where the spec leaves it
    to the data (a file without ``task``), said to be the task's default."""
    ds, opt = spec.dataset, spec.optimizer
    if spec.loss is None and ds.name in FILE_DATASETS and ds.task is None:
        loss = "the task's default loss"
    else:
        loss = spec.resolved_loss()
    momentum = f" momentum {opt.momentum:g}" + (" (Nesterov)" if opt.nesterov else "")
    name = {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW", "rmsprop": "RMSprop"}[opt.name]
    return (
        f"gradq job {job_id} on {dataset_name(spec)}: MLP {spec.model.hidden} "
        f"{spec.model.activation}, {loss}, {name} lr {opt.lr:g}"
        f"{momentum if opt.momentum else ''}, batch {opt.batch_size}, {opt.epochs} epochs"
    )


def dataset_name(spec: JobSpec) -> str:
    """The data set as its spec names it: a built-in or synthetic set by its name, an upload by
    its id, a CSV by its path."""
    ds = spec.dataset
    if ds.name == "upload":
        return f"upload {ds.id}"
    if ds.name == "csv":
        return f"csv {ds.path}"
    return ds.name


def dataset_input(spec: JobSpec, data: Dataset) -> DatasetInput:
    """The training part of the job's data (standardised features and targets, as trained on)
    as an MLflow dataset input with context ``training``: its name, its digest (MLflow's hash
    of the arrays), its schema and its shape. The source records the data set's spec and the
    split's seed, from which gradq rebuilds it."""
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.numpy_dataset import from_numpy
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    source = CodeDatasetSource(
        {
            "gradq.dataset": json.dumps(spec.dataset.model_dump(mode="json", exclude_none=True)),
            "gradq.seed": str(spec.seed),
            "gradq.split": "train",
        }
    )
    dataset = from_numpy(data.X_train, targets=data.y_train, source=source, name=dataset_name(spec))
    tags = [InputTag(MLFLOW_DATASET_CONTEXT, TRAINING_CONTEXT)]
    return DatasetInput(dataset._to_mlflow_entity(), tags=tags)
