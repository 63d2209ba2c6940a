"""The sweep contract: a space of job specs to search, and the pure rules of a search.

A :class:`SweepSpec` names a ``base`` job spec, a ``space`` (a spec path such as
``optimizer.lr`` → a distribution), how to search it (grid, random or TPE: the sampling
itself is Optuna's, in ``workers.sweeps``), the objective (a per-epoch metric and its
direction) and early stopping of bad trials (asynchronous successive halving, ASHA).

:func:`parse_sweep` validates all of it before anything is queued: every problem is a
:class:`core.spec.FieldError` whose path is what the user wrote (``space["optimizer.lrr"]``,
``search.trials``, ``base.optimizer.epochs``). Each bound and choice of the space is put into
the base spec and validated by :class:`JobSpec`, so a range outside a field's bounds is
refused with that field's own message. :func:`trial_spec` makes the job spec of one trial.

ASHA's rule (:func:`promotable`) is the one of Li et al., "A System for Massively Parallel
Hyperparameter Tuning" (2020), as Optuna's ``SuccessiveHalvingPruner`` applies it: at the end
of a rung's epoch a trial goes on when its value is among the best ``1/reduction_factor`` of
the values reported at that rung so far (its own included; the first trials, too few for a
cut, go on when they are the best so far), else it is pruned. Each decision depends only on
the reports stored before it, so it can be recomputed from them.
"""

from __future__ import annotations

import copy
import itertools
import math
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from core.spec import (
    FieldError,
    InvalidSpec,
    JobSpec,
    SpecLimits,
    Tags,
    TrialSpec,
    _from_validation_error,
    dataset_shape,
    epoch_metrics,
    monitor_mode,
    parse_spec,
)

Method = Literal["grid", "random", "tpe"]
Mode = Literal["min", "max"]
KINDS = ("uniform", "loguniform", "int", "choice", "grid")

# Spec paths a sweep may search: the model, the optimizer, the regularisation, the loss, the
# engine and the seed. The data set is the sweep's own (its trials are compared on the same
# data), and where and how a trial runs (resources, device, priority, attempts, names, the
# registered model) is the base's, the same for every trial.
SEARCHABLE = ("model.", "optimizer.", "regularization.", "loss", "engine", "seed")
NOT_SEARCHABLE_WHY = (
    "not a field a sweep searches: the model, optimizer, regularization, loss, engine and "
    "seed are; the data set, resources, device, priority, attempts and names are the base's"
)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class SearchSpec(_Section):
    """How the space is searched: ``grid`` (every point of the ``grid`` values once),
    ``random`` or ``tpe`` (Optuna's Tree-structured Parzen Estimator); ``trials`` in all, at
    most ``parallel`` queued or running at once; the sweep fails once ``max_failed`` trials
    have failed (default: only when every trial failed). ``pack``: the dispatcher trains
    compatible trials queued together as one pack (default)."""

    method: Method = "random"
    trials: int = Field(16, ge=1, le=100_000)
    parallel: int = Field(4, ge=1, le=10_000)
    seed: int = Field(0, ge=0, le=2**32 - 1)
    max_failed: int | None = Field(None, ge=1, le=100_000)
    # trials of one shape (data set, widths, activation, loss, batch size, device) queued
    # together train as one pack, one Ray task (``workers.pack``); false: each alone
    pack: bool = True


class ObjectiveSpec(_Section):
    """The per-epoch metric that ranks trials (``val_accuracy``, ``val_loss``, ``train_loss``,
    …) and whether more (``max``) or less (``min``) is better; default by the metric
    (``core.spec.monitor_mode``): accuracy, r2 and the macro scores up, losses and errors
    down."""

    metric: str = Field("val_loss", min_length=1, max_length=100)
    mode: Mode | None = None

    def direction(self) -> Mode:
        return monitor_mode(self.metric, self.mode)


class SweepEarlyStopping(_Section):
    """``asha``: asynchronous successive halving; rungs at ``min_epochs``,
    ``min_epochs × reduction_factor``, … epochs (those before the last epoch)."""

    kind: Literal["asha", "none"] = "none"
    min_epochs: int = Field(1, ge=1, le=100_000)
    reduction_factor: int = Field(3, ge=2, le=100)


class SweepSpec(_Section):
    name: str = Field("sweep", min_length=1, max_length=200)
    base: dict[str, Any]
    space: dict[str, dict[str, Any]] = Field(min_length=1)
    search: SearchSpec = Field(default_factory=SearchSpec)
    objective: ObjectiveSpec = Field(default_factory=ObjectiveSpec)
    early_stopping: SweepEarlyStopping = Field(default_factory=SweepEarlyStopping)
    register_as: str | None = Field(
        None, min_length=1, max_length=200, description="register the best trial's model"
    )
    log_models: Literal["all", "best"] = Field(
        "best",
        description="best: a trial logs its model only when it beats the best so far (a "
        "model is most of a small trial's tracking cost); all: every succeeded trial",
    )
    trial_metrics: Literal["curves", "all"] = Field(
        "curves",
        description="curves: a trial's run gets per epoch its losses, headline scores "
        "(accuracy; rmse, r2) and learning rate, and the metrics the sweep decides by (most of "
        "a small trial's tracking is its per-epoch points); all: every per-epoch metric, the "
        "timing and per-layer diagnostics too",
    )
    tags: Tags = Field(default_factory=dict, description="labels to find the sweep by")

    @field_validator("register_as")
    @classmethod
    def _model_name(cls, v: str | None) -> str | None:
        return JobSpec._model_name(v)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, v: Any) -> Any:
        if isinstance(v, dict) and isinstance(v.get("early_stopping"), str):
            v = {**v, "early_stopping": {"kind": v["early_stopping"]}}
        return v


@dataclass(frozen=True)
class Dimension:
    """One searched path: its kind (``uniform``, ``loguniform``, ``int``, ``choice``,
    ``grid``) and its bounds (low, high) or values."""

    path: str
    kind: str
    low: float = 0.0
    high: float = 0.0
    values: tuple[Any, ...] = ()

    @property
    def where(self) -> str:
        return space_path(self.path)

    @property
    def categorical(self) -> bool:
        return self.kind in ("choice", "grid")


@dataclass(frozen=True)
class Sweep:
    """A validated sweep: its spec, its base (a valid job spec's mapping) and dimensions."""

    spec: SweepSpec
    base: JobSpec
    dimensions: tuple[Dimension, ...]

    @property
    def direction(self) -> Mode:
        return self.spec.objective.direction()

    def rungs(self) -> list[int]:
        """ASHA's rung epochs (none without ASHA): min_epochs × rf^k before the last epoch."""
        es = self.spec.early_stopping
        if es.kind != "asha":
            return []
        out, epoch = [], es.min_epochs
        while epoch < self.base.optimizer.epochs:
            out.append(epoch)
            epoch *= es.reduction_factor
        return out

    def grid_size(self) -> int:
        return math.prod(len(d.values) for d in self.dimensions)

    def trial_count(self) -> int:
        """How many trials the sweep makes: ``search.trials``; a grid's points (each once)."""
        if self.spec.search.method == "grid":
            return self.grid_size()
        return self.spec.search.trials

    def max_failed(self) -> int:
        return self.spec.search.max_failed or self.trial_count()


def space_path(path: str) -> str:
    return f'space["{path}"]'


def objective_metrics(task: str) -> tuple[str, ...]:
    """The per-epoch metrics a trial of a ``task`` reports (``EpochRecord.metrics``)."""
    return epoch_metrics("classification" if task == "classification" else "regression")


def parse_sweep(data: Any, *, limits: SpecLimits | None = None, max_trials: int = 10_000) -> Sweep:
    """Validate a sweep (a mapping): the sweep's own fields, the base as a job spec, each
    dimension of the space against the base, the objective, the rungs and the size (at most
    ``max_trials`` trials; a grid no larger than ``search.trials``). Raises
    :class:`InvalidSpec` with every problem found."""
    limits = limits or SpecLimits()
    if not isinstance(data, Mapping):
        raise InvalidSpec.at("(root)", f"a sweep is a mapping, got {type(data).__name__}")
    try:
        spec = SweepSpec.model_validate(dict(data))
    except ValidationError as exc:
        raise InvalidSpec(_space_paths(_from_validation_error(exc))) from None
    errors: list[FieldError] = []
    if "trial" in spec.base:
        errors.append(FieldError(field="base.trial", message="set by the sweep, not in a spec"))
    try:
        base = parse_spec({k: v for k, v in spec.base.items() if k != "trial"}, limits=limits)
    except InvalidSpec as exc:
        raise InvalidSpec(
            errors + [FieldError(field=f"base.{e.field}", message=e.message) for e in exc.errors]
        ) from None
    dimensions = []
    for path, raw in spec.space.items():
        dim, problems = _dimension(path, raw, spec.search.method)
        errors += problems
        if dim is not None:
            problems = _fits(dim, spec.base, limits)
            errors += problems
            if not problems:
                dimensions.append(dim)
    sweep = Sweep(spec, base, tuple(dimensions))
    errors += _sweep_errors(sweep, max_trials)
    if errors:
        raise InvalidSpec(errors)
    return sweep


def _space_paths(errors: list[FieldError]) -> list[FieldError]:
    """pydantic's ``space.optimizer.lr`` → ``space["optimizer.lr"]``."""
    out = []
    for e in errors:
        if e.field.startswith("space."):
            rest = e.field.removeprefix("space.")
            for kind in KINDS:  # the dimension's key may follow the path
                if rest.endswith(f".{kind}"):
                    rest = rest.removesuffix(f".{kind}")
            e = FieldError(field=space_path(rest), message=e.message)
        out.append(e)
    return out


def _dimension(path: str, raw: dict[str, Any], method: str) -> tuple[Dimension | None, list]:
    where = space_path(path)

    def bad(message: str) -> tuple[None, list[FieldError]]:
        return None, [FieldError(field=where, message=message)]

    if not _is_field(path):
        return bad(f"{path!r} is not a field of a job spec")
    if not any(path == p or path.startswith(p) for p in SEARCHABLE):
        return bad(NOT_SEARCHABLE_WHY)
    if len(raw) != 1 or next(iter(raw)) not in KINDS:
        return bad(f"one of {', '.join(KINDS)}, e.g. {{loguniform: [0.001, 0.1]}}; got {raw!r}")
    kind, args = next(iter(raw.items()))
    if kind == "grid" and method != "grid":
        return bad(f"grid values are for method grid; this sweep's method is {method}")
    if kind != "grid" and method == "grid":
        return bad(f"method grid takes grid values only, e.g. {{grid: [...]}}; got {kind}")
    if not isinstance(args, list) or not args:
        return bad(f"{kind} takes a non-empty list, got {args!r}")
    numbers = _numeric(_annotation(path))
    if kind in ("uniform", "loguniform") and float not in numbers:
        return bad(f"{kind} draws real numbers: {path!r} does not take them; use choice")
    if kind == "int" and not numbers:
        return bad(f"int draws integers: {path!r} does not take them; use choice")
    if kind in ("choice", "grid"):
        if len(args) > 10_000:
            return bad(f"at most 10,000 values, got {len(args):,}")
        return Dimension(path, kind, values=tuple(args)), []
    if len(args) != 2 or not all(_number(a) for a in args):
        return bad(f"{kind} takes [low, high], two numbers; got {args!r}")
    low, high = float(args[0]), float(args[1])
    if not low < high:
        return bad(f"low ({args[0]}) must be below high ({args[1]})")
    if kind == "loguniform" and low <= 0:
        return bad(f"loguniform needs low > 0, got {args[0]}")
    if kind == "int" and not all(float(a).is_integer() for a in args):
        return bad(f"int takes two integers, got {args!r}")
    return Dimension(path, kind, low, high), []


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _annotation(path: str) -> Any:
    """The type of the ``JobSpec`` field ``path`` (dotted) names, section by section;
    ``_MISSING`` when it names none."""
    model: Any = JobSpec
    annotation: Any = _MISSING
    for part in path.split("."):
        fields = getattr(model, "model_fields", None)
        if fields is None or part not in fields or part == "trial":
            return _MISSING
        annotation = fields[part].annotation
        model = annotation if isinstance(annotation, type) else None
    return annotation


_MISSING = object()


def _is_field(path: str) -> bool:
    return _annotation(path) is not _MISSING


def _numeric(annotation: Any) -> set[type]:
    """The number types a field takes (``float``, ``int``; ``X | None`` as ``X``)."""
    members = typing.get_args(annotation) if typing.get_origin(annotation) in (
        typing.Union, types.UnionType
    ) else (annotation,)  # fmt: skip
    return {m for m in members if m in (int, float)}


def set_path(spec: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of ``spec`` with ``path`` (dotted) set to ``value``."""
    out = copy.deepcopy(spec)
    node = out
    *parents, last = path.split(".")
    for part in parents:
        child = node.get(part)
        node[part] = child = dict(child) if isinstance(child, dict) else {}
        node = child
    node[last] = value
    return out


def _fits(dim: Dimension, base: dict[str, Any], limits: SpecLimits) -> list[FieldError]:
    """Each bound (or value) of ``dim`` put into the base must make a valid job spec: a range
    outside the field's bounds, or a type the field does not take, is refused with the
    field's own message."""
    if dim.categorical:
        probes: Sequence[Any] = dim.values
    elif dim.kind == "int":
        probes = (int(dim.low), int(dim.high))
    else:
        probes = (dim.low, dim.high)
    errors = []
    for value in probes:
        try:
            parse_spec(set_path(base, dim.path, value), limits=limits)
        except InvalidSpec as exc:
            for e in exc.errors:
                at = "" if e.field == dim.path else f" (at {e.field})"
                errors.append(FieldError(field=dim.where, message=f"{value!r}{at}: {e.message}"))
            break  # the first value refused says enough
    return errors


def _sweep_errors(sweep: Sweep, max_trials: int) -> list[FieldError]:
    spec, errors = sweep.spec, []
    task = dataset_shape(sweep.base.dataset).task
    metrics = objective_metrics(task)
    if spec.objective.metric not in metrics:
        errors.append(
            FieldError(
                field="objective.metric",
                message=f"{spec.objective.metric!r} is not a per-epoch metric of a {task} job; "
                f"one of {', '.join(metrics)}",
            )
        )
    elif spec.objective.metric.startswith("val_") and sweep.base.dataset.validation_fraction == 0:
        errors.append(
            FieldError(
                field="objective.metric", message="needs base.dataset.validation_fraction > 0"
            )
        )
    if spec.search.method == "grid" and sweep.dimensions:
        size = sweep.grid_size()
        if size > spec.search.trials:
            errors.append(
                FieldError(
                    field="search.trials",
                    message=f"the grid has {size:,} points, more than trials "
                    f"({spec.search.trials:,})",
                )
            )
    if sweep.trial_count() > max_trials:
        errors.append(
            FieldError(field="search.trials", message=f"at most {max_trials:,} trials a sweep")
        )
    es = spec.early_stopping
    if es.kind == "asha" and es.min_epochs >= sweep.base.optimizer.epochs:
        errors.append(
            FieldError(
                field="early_stopping.min_epochs",
                message=f"the first rung must come before the last epoch "
                f"(base.optimizer.epochs = {sweep.base.optimizer.epochs})",
            )
        )
    return errors


def grid_points(sweep: Sweep) -> list[dict[str, Any]]:
    """Every point of a grid sweep, in order."""
    dims = sweep.dimensions
    return [
        {d.path: v for d, v in zip(dims, values, strict=True)}
        for values in itertools.product(*(d.values for d in dims))
    ]


def trial_spec(
    sweep: Sweep,
    *,
    sweep_id: str,
    number: int,
    params: Mapping[str, Any],
    parent_run_id: str | None,
) -> JobSpec:
    """The job spec of trial ``number``: the base with ``params`` set, named after the sweep,
    its data set's generation and split seeded by the sweep (the base's data set seed, else
    the base's seed: the same for every trial, whatever seed the trial trains with), and the
    trial's :class:`TrialSpec`. Raises :class:`InvalidSpec` when the point makes no valid
    spec (a combination no single bound shows, e.g. ``min_lr`` above a sampled ``lr``)."""
    data = dict(sweep.spec.base)
    for path, value in params.items():
        data = set_path(data, path, value)
    dataset = data["dataset"]
    dataset = {"name": dataset} if isinstance(dataset, str) else dict(dataset)
    if dataset.get("seed") is None:
        dataset["seed"] = sweep.base.seed
    data["dataset"] = dataset
    data["name"] = f"{sweep.spec.name}-t{number}"[:200]
    data["trial"] = TrialSpec(
        sweep_id=sweep_id,
        number=number,
        params=dict(params),
        metric=sweep.spec.objective.metric,
        mode=sweep.direction,
        rungs=sweep.rungs(),
        reduction_factor=sweep.spec.early_stopping.reduction_factor,
        parent_run_id=parent_run_id,
        log_models=sweep.spec.log_models,
        pack=sweep.spec.search.pack,
        epoch_metrics=sweep.spec.trial_metrics,
    ).model_dump()
    spec = parse_spec(data)
    return spec


def worst(mode: Mode) -> float:
    return -math.inf if mode == "max" else math.inf


def better(a: float, b: float, mode: Mode) -> bool:
    """Whether ``a`` is strictly better than ``b``."""
    return a > b if mode == "max" else a < b


def promotable(
    value: float, rung_values: Sequence[float], reduction_factor: int, mode: Mode
) -> bool:
    """ASHA at one rung: does a trial that reported ``value`` go on? ``rung_values`` are the
    values reported at the rung so far, its own included. A non-finite value (a diverging
    trial) ranks last. The best ``len // reduction_factor`` go on; while fewer than
    ``reduction_factor`` have reported, only the best so far does."""
    clean = [v if math.isfinite(v) else worst(mode) for v in rung_values]
    value = value if math.isfinite(value) else worst(mode)
    keep = max(1, len(clean) // reduction_factor)
    ranked = sorted(clean, reverse=(mode == "max"))
    cut = ranked[keep - 1]
    return value >= cut if mode == "max" else value <= cut
