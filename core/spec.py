"""The job contract: one pydantic model, ``JobSpec``, shared by the API, the queue and the workers.

Every invalid value or combination raises :class:`InvalidSpec`, whose ``errors`` each carry a
field path in the form users write it (``model.hidden[1]``) and what is allowed there.

Load a spec with :func:`parse_spec` (a mapping), :func:`load_spec` (YAML or JSON text or a
file). A spec with only a data set trains: every other section has a default.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from core.failures import PERMANENT, TRANSIENT

Activation = Literal[
    "sigmoid", "tanh", "relu", "leaky_relu", "identity", "gelu", "elu", "silu", "softplus"
]
Init = Literal["he", "xavier", "normal"]
LossName = Literal["squared", "logistic", "cross_entropy"]
Task = Literal["classification", "regression"]

BUILTIN_DATASETS = ("iris", "wine", "breast_cancer", "digits", "diabetes")
SYNTHETIC_DATASETS = ("moons", "circles", "blobs", "xor", "spirals", "sine")
FILE_DATASETS = ("csv", "upload")
DatasetName = Literal[
    "iris",
    "wine",
    "breast_cancer",
    "digits",
    "diabetes",
    "moons",
    "circles",
    "blobs",
    "xor",
    "spirals",
    "sine",
    "csv",
    "upload",
]


@dataclass(frozen=True)
class DatasetShape:
    """What is known about a data set before loading it: task, features and classes."""

    task: Task
    n_features: int | None
    n_classes: int | None  # None for regression and for files, known only once loaded
    n_rows: int | None = None  # an uploaded set's, from its record (``core.uploads``)


class FieldError(BaseModel):
    """One problem in a spec: where it is (``model.hidden[1]``) and what is wrong."""

    field: str
    message: str


class InvalidSpec(ValueError):
    """A job spec that cannot run. ``errors`` lists every problem with its field path."""

    def __init__(self, errors: Sequence[FieldError]) -> None:
        self.errors = list(errors)
        super().__init__("; ".join(f"{e.field}: {e.message}" for e in self.errors))

    @classmethod
    def at(cls, field: str, message: str) -> InvalidSpec:
        return cls([FieldError(field=field, message=message)])


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


PositiveInt = Annotated[int, Field(ge=1)]


class DatasetSpec(_Section):
    """Which data to train on and how to split it.

    ``name`` is a bundled real data set (scikit-learn's, read from the package), a synthetic
    one with its parameters, ``csv`` (a file with a named ``target`` column, ``path``) or
    ``upload`` (a data set uploaded to the service, by ``id``).
    """

    name: DatasetName
    n_samples: int | None = Field(None, ge=10, le=1_000_000, description="synthetic sets only")
    noise: float | None = Field(None, ge=0.0, le=10.0, description="synthetic sets only")
    n_features: int | None = Field(None, ge=1, le=10_000, description="blobs only")
    n_classes: int | None = Field(None, ge=2, le=1_000, description="blobs and spirals only")
    path: str | None = Field(None, min_length=1, description="csv only")
    id: str | None = Field(None, min_length=1, description="upload only")
    target: str | None = Field(None, min_length=1, description="csv and upload: target column")
    task: Task | None = Field(None, description="csv and upload: default from the target column")
    validation_fraction: float = Field(0.2, ge=0.0, lt=0.9)
    test_fraction: float = Field(0.2, ge=0.0, lt=0.9)
    seed: int | None = Field(
        None,
        ge=0,
        le=2**32 - 1,
        description="the seed of the data set's generation and split (default: the job's seed)",
    )

    @model_validator(mode="after")
    def _combination(self) -> DatasetSpec:
        errors: list[FieldError] = []
        synthetic_only = {"n_samples": self.n_samples, "noise": self.noise}
        if self.name not in SYNTHETIC_DATASETS:
            for key, value in synthetic_only.items():
                if value is not None:
                    errors.append(_fe(key, f"only synthetic data sets take it, not {self.name!r}"))
        if self.n_features is not None and self.name != "blobs":
            errors.append(_fe("n_features", "only 'blobs' takes it"))
        if self.n_classes is not None and self.name not in ("blobs", "spirals"):
            errors.append(_fe("n_classes", "only 'blobs' and 'spirals' take it"))
        if self.name == "csv" and self.path is None:
            errors.append(_fe("path", "required for a csv data set"))
        if self.name != "csv" and self.path is not None:
            errors.append(_fe("path", "only a csv data set takes a path"))
        if self.name == "upload" and self.id is None:
            errors.append(_fe("id", "required for an uploaded data set"))
        if self.name != "upload" and self.id is not None:
            errors.append(_fe("id", "only an uploaded data set takes an id"))
        if self.name in FILE_DATASETS and self.target is None:
            errors.append(
                _fe("target", f"required for a {self.name} data set: the column to predict")
            )
        if self.name not in FILE_DATASETS:
            if self.target is not None:
                errors.append(_fe("target", "only csv and upload data sets take a target column"))
            if self.task is not None and self.task != dataset_shape(self).task:
                errors.append(
                    _fe("task", f"{self.name!r} is a {dataset_shape(self).task} data set")
                )
        if self.validation_fraction + self.test_fraction >= 0.9:
            errors.append(_fe("test_fraction", "validation_fraction + test_fraction must be < 0.9"))
        if errors:
            raise _Nested(errors)
        return self


class ModelSpec(_Section):
    """The MLP: widths of the hidden layers, their activation and the weight initialisation."""

    hidden: list[Annotated[int, Field(ge=1, le=65_536)]] = Field(default_factory=lambda: [64])
    activation: Activation = "relu"
    init: Init = "he"

    @field_validator("hidden")
    @classmethod
    def _depth(cls, v: list[int]) -> list[int]:
        if len(v) > 64:
            raise ValueError("at most 64 hidden layers")
        return v


OptimizerName = Literal["sgd", "adam", "adamw", "rmsprop"]
# each optimizer's defaults for the fields a spec leaves out (sgd's are gradq's as they were;
# adam's, adamw's and rmsprop's are torch.optim's)
OPTIMIZER_DEFAULTS: dict[str, dict[str, Any]] = {
    "sgd": {"lr": 0.02, "momentum": 0.9},
    "adam": {"lr": 1e-3, "momentum": 0.0},
    "adamw": {"lr": 1e-3, "momentum": 0.0},
    "rmsprop": {"lr": 1e-2, "momentum": 0.0},
}
# what an epoch's record reports, by task: the metrics early stopping and plateau may monitor
EPOCH_METRICS: dict[str, tuple[str, ...]] = {
    "classification": ("loss", "accuracy", "macro_precision", "macro_recall", "macro_f1"),
    "regression": ("loss", "rmse", "r2", "mae"),
}
_MAXIMISED = ("accuracy", "r2", "macro_precision", "macro_recall", "macro_f1")


def epoch_metrics(task: Task) -> tuple[str, ...]:
    """The flat names (``val_loss``, ``train_accuracy``, …) of a ``task``'s per-epoch metrics."""
    return tuple(f"{part}_{n}" for part in ("val", "train") for n in EPOCH_METRICS[task])


# the per-epoch curves a sweep's trial logs under ``trial_metrics: curves``: the losses and the
# headline scores of both splits and the learning rate (:func:`tracked_epoch_metrics`)
CURVE_SCORES = ("loss", "accuracy", "rmse", "r2")


def monitor_mode(monitor: str, mode: Literal["min", "max"] | None) -> Literal["min", "max"]:
    """``mode``, or by default: max for accuracy, R² and the macro scores, min for the
    others (losses and errors)."""
    if mode is not None:
        return mode
    return "max" if monitor.endswith(_MAXIMISED) else "min"


class ScheduleSpec(_Section):
    """Learning-rate schedule, applied per epoch: constant, step (×gamma every step_size epochs),
    cosine (from lr down to min_lr over the epochs) or plateau (×gamma, not below min_lr, when
    ``monitor`` has not improved for ``patience`` epochs; then ``cooldown`` epochs before the
    count starts again). ``warmup_epochs``: the rate rises linearly, lr·(e+1)/(w+1) in epoch
    e < w, before the schedule starts (at its own epoch 0, epoch w of the run). Or
    ``warmup_steps``: step s < w of the run takes the epoch's rate ×(s+1)/(w+1)."""

    kind: Literal["constant", "step", "cosine", "plateau"] = "constant"
    step_size: PositiveInt = 10
    gamma: float = Field(0.5, gt=0.0, le=1.0)
    min_lr: float = Field(0.0, ge=0.0)
    warmup_epochs: int = Field(0, ge=0, le=100_000)
    warmup_steps: int = Field(0, ge=0, le=100_000_000)
    patience: PositiveInt = Field(5, description="plateau only")
    cooldown: int = Field(0, ge=0, description="plateau only")
    monitor: str = Field("val_loss", description="plateau only: a per-epoch metric")
    mode: Literal["min", "max"] | None = Field(
        None, description="plateau only; default: max for accuracy, r2 and macro scores, else min"
    )


class OptimizerSpec(_Section):
    """The optimizer: ``sgd`` (minibatch SGD with (Nesterov) momentum, the default), ``adam``,
    ``adamw`` or ``rmsprop``, each as ``torch.optim``'s (see ``core.optim``); a field left
    out takes the optimizer's default (``lr``: 0.02 for sgd, 0.001 for adam and adamw, 0.01
    for rmsprop). ``momentum`` and ``nesterov`` are sgd's, ``betas`` adam's and adamw's,
    ``alpha`` rmsprop's, ``eps`` the three's. ``clip_norm``: before each step the loss's
    gradient is scaled to at most this global (L2) norm, as
    ``torch.nn.utils.clip_grad_norm_``."""

    name: OptimizerName = "sgd"
    lr: float = Field(0.02, gt=0.0, le=1e9)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    nesterov: bool = False
    betas: tuple[
        Annotated[float, Field(ge=0.0, lt=1.0)], Annotated[float, Field(ge=0.0, lt=1.0)]
    ] = (0.9, 0.999)
    alpha: float = Field(0.99, ge=0.0, lt=1.0)
    eps: float = Field(1e-8, gt=0.0, le=1.0)
    clip_norm: float | None = Field(None, gt=0.0)
    batch_size: int = Field(32, ge=1, le=1_000_000)
    epochs: int = Field(50, ge=1, le=100_000)
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec)

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data: Any) -> Any:
        """The named optimizer's defaults for the fields left out."""
        if isinstance(data, Mapping):
            name = data.get("name", "sgd")
            defaults = OPTIMIZER_DEFAULTS.get(name) if isinstance(name, str) else None
            if defaults:
                data = {**defaults, **data}
        return data

    @model_validator(mode="after")
    def _nesterov(self) -> OptimizerSpec:
        errors = []
        if self.name != "sgd":
            if self.momentum:
                errors.append(_fe("momentum", f"only sgd takes momentum, not {self.name!r}"))
            if self.nesterov:
                errors.append(_fe("nesterov", f"only sgd takes nesterov, not {self.name!r}"))
        elif self.nesterov and self.momentum == 0.0:
            errors.append(_fe("nesterov", "needs momentum > 0"))
        if self.schedule.min_lr > self.lr:
            errors.append(_fe("schedule.min_lr", f"must not exceed lr ({self.lr})"))
        if self.schedule.warmup_epochs and self.schedule.warmup_steps:
            errors.append(_fe("schedule.warmup_steps", "warmup_epochs or warmup_steps, not both"))
        if self.schedule.warmup_epochs >= self.epochs:
            errors.append(
                _fe("schedule.warmup_epochs", f"must be fewer than the epochs ({self.epochs})")
            )
        if errors:
            raise _Nested(errors)
        return self


class EarlyStoppingSpec(_Section):
    """Stop when ``monitor`` (a per-epoch metric, default the validation loss) has not
    improved by min_delta for patience epochs; ``mode``: max for accuracy, r2 and the macro
    scores, min for the others unless given. ``restore_best`` keeps the parameters of the
    best epoch by it."""

    enabled: bool = True
    patience: PositiveInt = 10
    min_delta: float = Field(0.0, ge=0.0)
    restore_best: bool = True
    monitor: str = "val_loss"
    mode: Literal["min", "max"] | None = None


class RegularizationSpec(_Section):
    """``weight_decay`` is the lecture's λ: the objective is the mean minibatch loss plus
    λ·Σ‖W⁽ˡ⁾‖² over the weight matrices (biases are not penalised), so it adds 2λW to each
    weight gradient (sgd, adam, rmsprop); adamw decays decoupled, W ← W − η·2λ·W before
    its step. Either is ``torch.optim``'s ``weight_decay`` = 2λ on a group of the weight
    matrices, with the biases in a group without decay. ``dropout`` is the probability of
    dropping a hidden unit in training, at most ``MAX_DROPOUT``."""

    weight_decay: float = Field(1e-4, ge=0.0, le=10.0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    early_stopping: EarlyStoppingSpec = Field(default_factory=EarlyStoppingSpec)

    @field_validator("dropout")
    @classmethod
    def _dropout(cls, v: float) -> float:
        if v > MAX_DROPOUT:
            raise ValueError(
                f"at most {MAX_DROPOUT}, got {v}: beyond it a unit is kept in fewer than 1 row"
                f" in {round(1 / (1 - MAX_DROPOUT))} and the kept ones are scaled by more than"
                f" {round(1 / (1 - MAX_DROPOUT))}×"
            )
        return v


# The most dropout a spec may ask for (issue 22: at 0.99 a job trained to meaningless losses).
MAX_DROPOUT = 0.9


class GradcheckSpec(_Section):
    """The gradient validator: manual backprop vs autograd vs central differences, in float64,
    on the live minibatch with its dropout masks. It runs before the first step when
    ``at_start`` and then every ``every_steps`` optimizer steps (0: never again)."""

    at_start: bool = True
    every_steps: int = Field(1000, ge=0)
    tolerance: float = Field(1e-8, gt=0.0, le=1.0, description="relative error, manual vs autograd")
    fd_tolerance: float = Field(
        1e-5, gt=0.0, le=1.0, description="relative error vs finite differences"
    )
    fd_samples: int = Field(
        8, ge=0, le=100_000, description="coordinates per tensor checked by finite differences"
    )
    max_batch: int = Field(32, ge=1, le=4096)


class ResourcesSpec(_Section):
    """What one attempt reserves on the cluster; ``cpus`` also sets the training threads."""

    cpus: float = Field(1.0, gt=0.0, le=512)
    gpus: float = Field(0.0, ge=0.0, le=16)


class RetrySpec(_Section):
    """Retries of a job whose attempt failed for a transient class (``core.failures``):
    at most ``max`` of them, each after a backoff of ``backoff_seconds`` doubled at each
    retry (at most an hour). A permanent class is never retried."""

    max: int = Field(3, ge=1, le=10)
    on: list[str] = Field(min_length=1, max_length=len(TRANSIENT))
    backoff_seconds: float = Field(10.0, ge=0.0, le=3600.0)

    @model_validator(mode="after")
    def _classes(self) -> RetrySpec:
        allowed = ", ".join(TRANSIENT)
        errors = []
        for i, name in enumerate(self.on):
            if name in PERMANENT:
                message = f"{name!r} is permanent ({PERMANENT[name]}): never retried; "
            elif name not in TRANSIENT:
                message = f"unknown failure class {name!r}; "
            else:
                continue
            errors.append(_fe(f"on[{i}]", message + f"retriable ones: {allowed}"))
        if errors:
            raise _Nested(errors)
        return self

    def delay(self, retries: int) -> float:
        """Seconds before the retry that follows ``retries`` earlier ones."""
        return float(min(self.backoff_seconds * 2**retries, 3600.0))


class TrialSpec(_Section):
    """What makes a job a sweep's trial: set by the sweep controller (``workers.sweeps``),
    never by a user's submit. ``params`` are the searched values (a path of the spec → the
    value sampled), ``metric``/``mode`` the sweep's objective. With ``rungs`` (epochs, in
    increasing order) the attempt reports the objective at the end of each rung epoch and
    stops as pruned when asynchronous successive halving puts it below its rung's cut
    (``reduction_factor``). ``parent_run_id``: the sweep's MLflow run, the trial's run's parent."""

    sweep_id: str = Field(min_length=1, max_length=36)
    number: int = Field(ge=0)
    params: dict[str, Any] = Field(default_factory=dict)
    metric: str = Field(min_length=1, max_length=100)
    mode: Literal["min", "max"]
    rungs: list[PositiveInt] = Field(default_factory=list)
    reduction_factor: int = Field(3, ge=2, le=100)
    parent_run_id: str | None = Field(None, max_length=64)
    # "best": the trial logs its model only when it beats the sweep's best so far
    log_models: Literal["all", "best"] = "all"
    # the dispatcher may train this trial in a pack with compatible trials of its sweep
    pack: bool = False
    # "curves": the trial's run gets per epoch only the curves (:func:`tracked_epoch_metrics`)
    epoch_metrics: Literal["all", "curves"] = "all"


MAX_TAGS = 20
TAG_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")
TAG_VALUE = re.compile(r"[A-Za-z0-9_.:/@+=\-]{1,100}")


def check_tags(tags: dict[str, str]) -> dict[str, str]:
    """Labels of a job or a sweep: at most :data:`MAX_TAGS`; a key is 1-64 letters, digits,
    ``_ . -`` (starting with a letter or digit), a value 1-100 of those or ``: / @ + =``."""
    if len(tags) > MAX_TAGS:
        raise ValueError(f"at most {MAX_TAGS} tags, got {len(tags)}")
    for key, value in tags.items():
        if not TAG_KEY.fullmatch(key):
            raise ValueError(
                f"tag key {key[:80]!r}: 1-64 letters, digits, '_', '.' or '-', "
                "starting with a letter or digit"
            )
        if not TAG_VALUE.fullmatch(value):
            raise ValueError(
                f"tag {key!r}: its value is 1-100 letters, digits or any of _ . : / @ + = -"
            )
    return tags


Tags = Annotated[dict[str, str], AfterValidator(check_tags)]


class InitFromSpec(_Section):
    """Start training from the weights of another finished job of the same tenant and model:
    its ``best`` checkpoint (the best epoch's weights) or its ``last`` one. The new job
    starts at step 0 with a fresh optimizer state."""

    job: str = Field(min_length=1, max_length=36)
    checkpoint: Literal["best", "last"] = "last"


class JobSpec(_Section):
    """A training job. Only ``dataset`` is required."""

    name: str = Field("job", min_length=1, max_length=200)
    experiment: str = Field("gradq", min_length=1, max_length=200)
    dataset: DatasetSpec
    model: ModelSpec = Field(default_factory=ModelSpec)
    loss: LossName | None = Field(None, description="default: cross_entropy or squared, by task")
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    regularization: RegularizationSpec = Field(default_factory=RegularizationSpec)
    engine: Literal["auto", "autograd", "manual"] = "auto"
    gradcheck: GradcheckSpec = Field(default_factory=GradcheckSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = Field(0, ge=0, le=2**32 - 1)
    priority: int = Field(0, ge=-1000, le=1000)
    max_attempts: int = Field(3, ge=1, le=100)
    retry: RetrySpec | None = Field(None, description="retries after a transient failure")
    checkpoint_every: int = Field(1, ge=1, le=100_000, description="epochs between checkpoints")
    register_as: str | None = Field(None, min_length=1, max_length=200)
    trial: TrialSpec | None = Field(None, description="set by sweeps only")
    tags: Tags = Field(default_factory=dict, description="labels to find the job by")
    init_from: InitFromSpec | None = Field(None, description="start from another job's weights")

    @field_validator("register_as")
    @classmethod
    def _model_name(cls, v: str | None) -> str | None:
        """What MLflow's model registry accepts as a name: no '/' or ':', not '.' or '..'."""
        if v is not None and (set(v) & {"/", ":"} or v.strip(".") == ""):
            raise ValueError("a registered model's name has no '/' or ':' and is not '.' or '..'")
        return v

    @field_validator("dataset", mode="before")
    @classmethod
    def _dataset_shorthand(cls, v: Any) -> Any:
        return {"name": v} if isinstance(v, str) else v

    @model_validator(mode="after")
    def _combination(self) -> JobSpec:
        errors = self.loss_errors(dataset_shape(self.dataset))
        es = self.regularization.early_stopping
        no_val = self.dataset.validation_fraction == 0.0
        if es.enabled and no_val and es.monitor.startswith("val_"):
            errors.append(
                _fe(
                    "regularization.early_stopping.enabled", "needs dataset.validation_fraction > 0"
                )
            )
        ds = self.dataset
        if ds.name in FILE_DATASETS and ds.task is None:  # known once the file is read
            monitors = (*epoch_metrics("classification"), *epoch_metrics("regression"))
        else:
            monitors = epoch_metrics(dataset_shape(ds).task)
        sched = self.optimizer.schedule
        for where, monitor in (
            ("regularization.early_stopping.monitor", es.monitor),
            ("optimizer.schedule.monitor", sched.monitor),
        ):
            if monitor not in monitors:
                allowed = ", ".join(dict.fromkeys(monitors))
                errors.append(
                    _fe(where, f"{monitor!r} is not a per-epoch metric; one of {allowed}")
                )
        if sched.kind == "plateau" and no_val and sched.monitor.startswith("val_"):
            errors.append(
                _fe("optimizer.schedule.monitor", "needs dataset.validation_fraction > 0")
            )
        if self.device == "cuda" and self.resources.gpus == 0:
            errors.append(_fe("resources.gpus", "device 'cuda' needs gpus > 0"))
        if self.device == "cpu" and self.resources.gpus > 0:
            errors.append(_fe("resources.gpus", "device 'cpu' takes no gpus"))
        if errors:
            raise _Nested(errors)
        return self

    def loss_errors(self, shape: DatasetShape) -> list[FieldError]:
        """What is wrong with the spec's loss for a data set of ``shape``."""
        errors: list[FieldError] = []
        if self.loss is None:
            return errors
        if shape.task == "regression" and self.loss != "squared":
            errors.append(_fe("loss", f"{self.loss!r} needs a classification task; use 'squared'"))
        if self.loss == "logistic" and shape.n_classes is not None and shape.n_classes != 2:
            errors.append(
                _fe(
                    "loss",
                    f"'logistic' needs 2 classes, {self.dataset.name!r} has"
                    f" {shape.n_classes}; use 'cross_entropy'",
                )
            )
        return errors

    def resolved_loss(self, task: Task | None = None) -> LossName:
        """The loss to train with: the spec's, or the task's default."""
        if self.loss is not None:
            return self.loss
        task = task or dataset_shape(self.dataset).task
        return "cross_entropy" if task == "classification" else "squared"

    def hash_fields(self) -> str:
        """Canonical JSON of the spec (with defaults), for idempotency comparisons."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))


def architecture(spec: JobSpec) -> dict[str, Any]:
    """What fixes the shapes of a job's weights: its hidden layers, its loss (one output or
    one per class) and what fixes its inputs and outputs in its data set. A warm start
    (``init_from``) needs the same as its origin's."""
    ds = spec.dataset
    inputs = {k: getattr(ds, k) for k in ("name", "n_features", "n_classes", "path", "id")}
    return {
        "hidden": list(spec.model.hidden),
        "loss": spec.resolved_loss(),
        "dataset": {**inputs, "target": ds.target, "task": ds.task},
    }


def merge_patch(target: Any, patch: Any) -> Any:
    """``target`` changed by a JSON merge patch (RFC 7396): an object's members replace the
    target's, recursively; a null removes the member; anything else replaces the whole."""
    if not isinstance(patch, Mapping):
        return patch
    merged = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged


# ---------------------------------------------------------------------------------------------
# Limits and parsing


@dataclass(frozen=True)
class SpecLimits:
    """Service-wide limits a spec must stay within; the API builds them from its settings.
    ``max_job_memory``: bytes of ``core.memory.estimate`` a job may need (None: no limit).
    ``min_cpus``: the fewest CPUs a job may ask for; each attempt is a Ray worker process, and
    Ray starts as many of them on a CPU as fit, so a tiny share packs hundreds onto one node.
    A spec stored before the floor still reads back (``JobSpec`` itself allows any share)."""

    max_parameters: int = 50_000_000
    max_epochs: int = 100_000
    max_hidden_layers: int = 64
    max_job_memory: int | None = None
    min_cpus: float = 0.25


def tracked_epoch_metrics(spec: JobSpec) -> frozenset[str] | None:
    """The per-epoch metrics (flat names: ``train_loss``, ``lr``, …) a job's MLflow run gets;
    None: every one of them. A sweep's trial under ``trial_metrics: curves`` keeps the
    learning rate, each split's loss and headline score (:data:`CURVE_SCORES`) and every
    metric the trial or its sweep decides by (the objective, early stopping's and plateau's
    monitors); the timing and per-layer diagnostics are left out."""
    trial = spec.trial
    if trial is None or trial.epoch_metrics == "all":
        return None
    curves = {f"{part}_{name}" for part in ("train", "val") for name in CURVE_SCORES}
    return frozenset(
        {
            "lr",
            *curves,
            trial.metric,
            spec.regularization.early_stopping.monitor,
            spec.optimizer.schedule.monitor,
        }
    )


def count_parameters(layers: Sequence[int]) -> int:
    """Weights and biases of an MLP whose layer widths, input first, are ``layers``."""
    return sum(a * b + b for a, b in itertools.pairwise(layers))


def estimated_parameters(spec: JobSpec, shape: DatasetShape | None = None) -> int:
    """Parameters of the spec's model on a data set of ``shape`` (default: what the spec
    tells, ``dataset_shape``), with unknown input/output widths counted as 1."""
    shape = shape or dataset_shape(spec.dataset)
    out = 1 if shape.task == "regression" else (shape.n_classes or 1)
    if spec.resolved_loss(shape.task) == "logistic":
        out = 1
    return count_parameters([shape.n_features or 1, *spec.model.hidden, out])


def check_limits(spec: JobSpec, limits: SpecLimits, shape: DatasetShape | None = None) -> None:
    """Refuse a spec beyond ``limits``, every problem with its field.

    The parameter and memory limits depend on the data set's width and rows. An ``upload``'s
    are known only from its record: without ``shape`` those two limits are not checked for
    an upload (the caller that has the record checks them, with the upload's shape,
    ``core.uploads.upload_shape``); for every other data set ``shape`` defaults to
    ``dataset_shape``."""
    errors: list[FieldError] = []
    sized = shape is not None or spec.dataset.name != "upload"
    n = estimated_parameters(spec, shape) if sized else 0
    if n > limits.max_parameters:
        errors.append(
            FieldError(
                field="model.hidden",
                message=f"{n:,} parameters exceed the limit of {limits.max_parameters:,}",
            )
        )
    if spec.optimizer.epochs > limits.max_epochs:
        errors.append(
            FieldError(field="optimizer.epochs", message=f"at most {limits.max_epochs} epochs")
        )
    if spec.resources.cpus < limits.min_cpus:
        errors.append(
            FieldError(field="resources.cpus", message=f"at least {limits.min_cpus:g} CPUs a job")
        )
    if len(spec.model.hidden) > limits.max_hidden_layers:
        errors.append(
            FieldError(
                field="model.hidden", message=f"at most {limits.max_hidden_layers} hidden layers"
            )
        )
    if limits.max_job_memory is not None and sized:
        from core.memory import estimate  # core.memory builds on this module

        needs = estimate(spec, shape)
        if needs.total > limits.max_job_memory:
            errors.append(
                FieldError(field=needs.field, message=needs.refusal(limits.max_job_memory))
            )
    if errors:
        raise InvalidSpec(errors)


def parse_spec(data: Any, *, limits: SpecLimits | None = None) -> JobSpec:
    """Validate a mapping into a ``JobSpec``; every problem becomes an ``InvalidSpec`` error."""
    if not isinstance(data, Mapping):
        raise InvalidSpec.at("(root)", f"a job spec is a mapping, got {type(data).__name__}")
    try:
        spec = JobSpec.model_validate(dict(data))
    except ValidationError as exc:
        raise InvalidSpec(_from_validation_error(exc)) from None
    check_limits(spec, limits or SpecLimits())
    return spec


def load_spec(source: str | Path, *, limits: SpecLimits | None = None) -> JobSpec:
    """Load a spec from a YAML or JSON file path, or from YAML/JSON text."""
    text = source
    if isinstance(source, Path) or (
        isinstance(source, str)
        and "\n" not in source
        and source.endswith((".yaml", ".yml", ".json"))
    ):
        path = Path(source)
        try:
            text = path.read_text()
        except OSError as exc:
            raise InvalidSpec.at("(file)", f"cannot read {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(str(text))  # YAML is a superset of JSON
    except yaml.YAMLError as exc:
        raise InvalidSpec.at("(root)", f"not valid YAML or JSON: {exc}") from None
    return parse_spec(data, limits=limits)


# ---------------------------------------------------------------------------------------------
# What is known about each data set before loading it

_BUILTIN_SHAPES: dict[str, DatasetShape] = {
    "iris": DatasetShape("classification", 4, 3),
    "wine": DatasetShape("classification", 13, 3),
    "breast_cancer": DatasetShape("classification", 30, 2),
    "digits": DatasetShape("classification", 64, 10),
    "diabetes": DatasetShape("regression", 10, None),
    "moons": DatasetShape("classification", 2, 2),
    "circles": DatasetShape("classification", 2, 2),
    "xor": DatasetShape("classification", 2, 2),
    "sine": DatasetShape("regression", 1, None),
}


def dataset_shape(ds: DatasetSpec) -> DatasetShape:
    if ds.name == "blobs":
        return DatasetShape("classification", ds.n_features or 2, ds.n_classes or 3)
    if ds.name == "spirals":
        return DatasetShape("classification", 2, ds.n_classes or 2)
    if ds.name in FILE_DATASETS:
        return DatasetShape(ds.task or "classification", None, None)
    return _BUILTIN_SHAPES[ds.name]


# ---------------------------------------------------------------------------------------------
# Error paths


class _Nested(ValueError):
    """Raised in a model validator: errors relative to that model, prefixed by its loc."""

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = errors
        super().__init__(json.dumps([e.model_dump() for e in errors]))


def _fe(field: str, message: str) -> FieldError:
    return FieldError(field=field, message=message)


def field_path(loc: Sequence[int | str]) -> str:
    """``('model', 'hidden', 1)`` → ``model.hidden[1]``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(root)"


def _sections() -> dict[str, type[BaseModel]]:
    """Every section of a job's or a sweep's spec (core's models), by class name (a
    ``ValidationError``'s ``title``)."""
    out: dict[str, type[BaseModel]] = {}
    todo: list[type[BaseModel]] = [BaseModel]
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            if sub.__module__.startswith("core."):
                out[sub.__name__] = sub
            todo.append(sub)
    return out


def _nearest_field(title: str, loc: Sequence[Any]) -> str | None:
    """For an unknown field at ``loc`` under the model named ``title``: the field of its
    section whose name is closest (difflib), when one is close enough."""
    import difflib
    import typing

    model: type[BaseModel] | None = _sections().get(title)
    for part in loc[:-1]:
        if model is None:
            return None
        if not isinstance(part, str) or part not in model.model_fields:
            continue  # an index into a list: the same section's items
        annotation = model.model_fields[part].annotation
        inner = [a for a in (annotation, *typing.get_args(annotation)) if isinstance(a, type)]
        model = next((a for a in inner if issubclass(a, BaseModel)), None)
    if model is None or not loc or not isinstance(loc[-1], str):
        return None
    found = difflib.get_close_matches(loc[-1], list(model.model_fields), n=1, cutoff=0.6)
    return found[0] if found else None


def _from_validation_error(exc: ValidationError) -> list[FieldError]:
    errors: list[FieldError] = []
    for err in exc.errors(include_url=False):
        loc = [p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-"))]
        ctx_error = (err.get("ctx") or {}).get("error")
        if isinstance(ctx_error, _Nested):
            for inner in ctx_error.errors:
                prefix = field_path(loc)
                path = inner.field if prefix == "(root)" else f"{prefix}.{inner.field}"
                errors.append(FieldError(field=path, message=inner.message))
            continue
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown field"
            near = _nearest_field(exc.title, loc)
            if near is not None:
                message += f"; did you mean {near!r}?"
        elif err["type"] == "literal_error":
            expected = (err.get("ctx") or {}).get("expected", "")
            message = f"got {err.get('input')!r}, allowed: {expected}"
        elif err["type"] in ("float_parsing", "int_parsing", "finite_number"):
            message = f"{message}, got {err.get('input')!r}"
        errors.append(FieldError(field=field_path(loc), message=message))
    return errors
