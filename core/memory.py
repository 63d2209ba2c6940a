"""A job's peak memory, estimated from its spec alone: what admission checks and what the
dispatcher reserves on the cluster for each attempt.

``estimate(spec)`` follows an attempt the way a worker runs it (``workers.task``): the data
set loaded by ``core.data`` and kept twice (the worker process's cache of data sets and the
job's own copy), then ``core.train.train`` in float32 with the tracking callback's checkpoint
snapshots. An attempt passes through phases whose memory does not all coexist: loading the
data, training steps (one of them with the gradient validator) and evaluations. The estimate
is the largest phase, and its ``parts`` are that phase's, in bytes:

=========== ===================================================================================
part        what it counts
=========== ===================================================================================
data        the data set, float64 features and its targets, twice; while loading, instead,
            the generator's, the split's and the standardisation's temporaries
tensors     ``train``'s copies in the training dtype: the training and validation features and
            encoded targets (a one-hot encoding passes through int64 and float64), the epoch
            evaluation's rows, the manual engine's [X | T], the epoch's row order
activations a training step: the manual engine's buffers for the batch size and for the
            epoch's last, smaller batch (autograd: the step's graph), the dropout masks
evaluation  an evaluation chunk's activations (``core.evaluate.rows_per_chunk``), each row's
            loss and hit, the test part encoded for the final metrics
parameters  parameters, gradients, momentum, the weight-decay mask, the weights at the epoch's
            start and at the best epoch, checkpoint snapshots and their serialisation
gradcheck   the validator, in float64: copies of the parameters and the batch, its manual and
            autograd passes, and the finite differences' activations of the ±h copies of the
            network above a perturbed tensor (2·min(fd_samples, ``FD_CHUNK``) of them)
attempt     what an attempt adds whatever its size: torch's first steps, the tracking store's
            client, the model's export (``ATTEMPT_BYTES``, measured by bench/memory.py)
allocator   the C allocator's slack: blocks freed below glibc's mmap threshold stay in the
            process's heap (``HEAP_SLACK``, measured alike)
=========== ===================================================================================

The figures are what a job adds to an idle worker process, one that has imported gradq,
torch and MLflow (its own footprint is the same for every job: the operator leaves room for
it); ``bench/memory.py`` runs jobs as a worker does and sets their measured peaks beside the
estimates. A job on a GPU is counted alike (its tensors then take the GPU's memory instead).

csv and upload data sets: the spec does not tell their shape. An upload's is known from
its record (``core.uploads.upload_shape``: rows, features, classes), which the API passes
as ``shape``. Otherwise the estimate assumes the largest table the default upload limit
allows (50 MiB of CSV holds at most 25 million numbers, each a digit and a separator):
``FILE_ROWS`` rows (the most a CSV may have) of ``FILE_FEATURES`` features, and
``FILE_CLASSES`` classes (the most a target column is detected as a class label with; a
spec that sets ``task: classification`` on a column of more classes takes more).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from core.sizes import DEFAULT_SAMPLES, FD_CHUNK, TRAIN_EVAL_ROWS, part_sizes, rows_per_chunk
from core.spec import (
    FILE_DATASETS,
    SYNTHETIC_DATASETS,
    DatasetShape,
    JobSpec,
    count_parameters,
    dataset_shape,
)

GiB = 2**30
MiB = 2**20
# the activations with an in-place pass (``core.activations.inplace``; named here so that the
# API's admission check does not import torch: tests/unit/core/test_memory.py keeps them equal)
INPLACE_ACTIVATIONS = frozenset({"elu", "identity", "leaky_relu", "relu", "sigmoid", "tanh"})

FILE_ROWS, FILE_FEATURES, FILE_CLASSES = 1_000_000, 24, 50
BUILTIN_ROWS = {"iris": 150, "wine": 178, "breast_cancer": 569, "digits": 1797, "diabetes": 442}
# Loading's peak: this many float64 copies of the features (the table, a part being
# standardised and its temporaries) and, per row, the split's index arrays and the labels.
LOAD_FEATURE_COPIES = 2.25
LOAD_ROW_BYTES = {"classification": 96, "regression": 32}
# Above the largest of their measured figures (bench/RESULTS.md, Memory): what a one-epoch
# iris job adds, and how far a job's peak resident memory lies above its live bytes when
# freed blocks below glibc's dynamic mmap threshold (up to 32 MiB) stay in the heap.
ATTEMPT_BYTES = 96 * MiB
HEAP_SLACK = 96 * MiB
FIXED = ("attempt", "allocator")  # parts every job has
ITEMSIZE = 4  # float32, what a worker trains in


@dataclass(frozen=True)
class MemoryEstimate:
    """``total`` bytes at the job's peak, in ``phase`` (one of ``_phases``: "loading",
    "encoding", "check", "step", "evaluation"); ``parts`` the bytes of each part then;
    ``field`` the spec field behind the largest part (of those a spec changes) and ``what``
    that part in words."""

    total: int
    phase: str
    parts: dict[str, int]
    field: str
    what: str

    def refusal(
        self, limit: int, setting: str = "GRADQ_MAX_JOB_MEMORY", subject: str = "this job"
    ) -> str:
        """Why a service whose limit (``setting``) is ``limit`` bytes refuses ``subject``."""
        return (
            f"{subject} needs about {size(self.total)} of memory ({self.what}); the limit is "
            f"{size(limit)} ({setting})"
        )


def size(n: float) -> str:
    """Bytes for a reader: ``4 GiB``, ``19.6 GiB``, ``312 MiB``."""
    if n >= GiB:
        return f"{n / GiB:.1f}".removesuffix(".0") + " GiB"
    return f"{math.ceil(n / MiB)} MiB"


@dataclass(frozen=True)
class _Shape:
    """The numbers the parts are made of, resolved from the spec."""

    rows: int
    features: int
    classes: int  # 0 for regression
    out: int  # output width, also the encoded targets' width
    parts: tuple[int, int, int]  # train, validation, test rows
    widths: list[int]  # input first
    batch: int
    last_batch: int  # 0 when the batch size divides the training rows
    itemsize: int = ITEMSIZE

    @property
    def hidden(self) -> int:  # units of all hidden layers
        return sum(self.widths[1:-1])

    @property
    def units(self) -> int:  # units of all layers but the input
        return sum(self.widths[1:])

    @property
    def parameters(self) -> int:
        return count_parameters(self.widths)


def _shape(spec: JobSpec, shape: DatasetShape | None = None) -> _Shape:
    ds = spec.dataset
    known = shape or dataset_shape(ds)
    if known.n_rows is not None:
        rows = known.n_rows
    elif ds.name in SYNTHETIC_DATASETS:
        rows = ds.n_samples or DEFAULT_SAMPLES
    else:
        rows = BUILTIN_ROWS.get(ds.name, FILE_ROWS)
    features = known.n_features or FILE_FEATURES
    classes = 0 if known.task == "regression" else known.n_classes or FILE_CLASSES
    loss = spec.resolved_loss(known.task)
    out = 1 if known.task == "regression" or loss == "logistic" else classes
    n_train, n_val, n_test = part_sizes(rows, ds.validation_fraction, ds.test_fraction)
    batch = min(spec.optimizer.batch_size, n_train)
    return _Shape(
        rows=rows,
        features=features,
        classes=classes,
        out=out,
        parts=(n_train, n_val, n_test),
        widths=[features, *spec.model.hidden, out],
        batch=batch,
        last_batch=n_train % batch,
    )


def estimate(spec: JobSpec, shape: DatasetShape | None = None) -> MemoryEstimate:
    """The job's peak memory above an idle worker process, with its parts (see the module).
    ``shape``: the data set's, when known beyond the spec (an upload's record, with its
    rows); default ``dataset_shape``.

    Specs that differ only in fields the estimate does not read (learning rates, seeds,
    names, priorities, …) share one estimate: it is computed once per :func:`estimate_key`
    and kept (up to ``CACHE_SIZE`` keys; the API runs it on every submit, and a sweep's
    specs differ in just such fields). The estimate returned may be shared: do not change
    its ``parts``."""
    key = estimate_key(spec, shape)
    found = _CACHE.get(key)
    if found is None:
        if len(_CACHE) >= CACHE_SIZE:
            _CACHE.clear()
        found = _CACHE[key] = compute(spec, shape)
    return found


# The parts a pack's members share (one data set, its tensors, one attempt's fixed costs),
# and those each member holds only while it alone is worked on (its evaluations and its
# gradient checks run one member at a time); every other part is each member's own.
PACK_SHARED = ("data", "tensors", "attempt", "allocator")
PACK_ONE_AT_A_TIME = ("evaluation", "gradcheck")


def pack_estimate(specs: list[JobSpec], shape: DatasetShape | None = None) -> int:
    """The peak memory of ``specs`` trained as one pack (``core.packed``), above an idle
    worker process: at each phase the parts the members share once (``PACK_SHARED``: the
    data set and its tensors are one for the pack), the largest member's part of those
    worked on one member at a time (``PACK_ONE_AT_A_TIME``), and every member's own parts
    (its parameters, its activations) summed — an upper bound, since a large pack computes a
    group of members at a time. One spec: its ``estimate``."""
    if len(specs) == 1:
        return estimate(specs[0], shape).total
    # members differing only in what the estimate does not read (rates, seeds) share phases
    alike: dict[tuple[object, ...], tuple[JobSpec, int]] = {}
    for spec in specs:
        key = estimate_key(spec, shape)
        first, count = alike.get(key, (spec, 0))
        alike[key] = (first, count + 1)
    own: dict[str, int] = {}
    one_at_a_time: dict[str, int] = {}
    shared: dict[str, int] = {}
    for spec, count in alike.values():
        for phase, parts in _phases(spec, _shape(spec, shape)).items():
            mine = sum(v for k, v in parts.items() if k not in PACK_SHARED + PACK_ONE_AT_A_TIME)
            own[phase] = own.get(phase, 0) + count * mine
            alone = sum(v for k, v in parts.items() if k in PACK_ONE_AT_A_TIME)
            one_at_a_time[phase] = max(one_at_a_time.get(phase, 0), alone)
            common = sum(v for k, v in parts.items() if k in PACK_SHARED)
            shared[phase] = max(shared.get(phase, 0), common)
    return max(own[p] + one_at_a_time[p] + shared[p] for p in own)


CACHE_SIZE = 4096
_CACHE: dict[tuple[object, ...], MemoryEstimate] = {}


def estimate_key(spec: JobSpec, shape: DatasetShape | None = None) -> tuple[object, ...]:
    """Every spec field the estimate reads (for dropout and weight decay, only whether they
    are on), and the data set's shape when given: two specs with one key have one
    estimate."""
    opt, reg, gc = spec.optimizer, spec.regularization, spec.gradcheck
    es = reg.early_stopping
    return (
        shape,
        *spec.dataset.__dict__.values(),  # every field of the data set: scalars
        *spec.model.hidden,
        None,  # the end of the widths
        spec.loss,
        spec.engine,
        opt.batch_size,
        opt.epochs,
        opt.name,
        spec.model.activation in INPLACE_ACTIVATIONS,
        reg.dropout > 0,
        reg.weight_decay > 0,
        es.enabled,
        es.restore_best,
        es.monitor.startswith("val_"),
        gc.at_start,
        gc.every_steps,
        gc.fd_samples,
        gc.max_batch,
    )


def compute(spec: JobSpec, shape: DatasetShape | None = None) -> MemoryEstimate:
    """:func:`estimate` without its cache."""
    s = _shape(spec, shape)
    phases = _phases(spec, s)
    phase = max(phases, key=lambda p: sum(phases[p].values()))
    parts = phases[phase]
    largest = max((p for p in parts if p not in FIXED), key=parts.__getitem__)
    where, what = _blame(spec, s, largest)
    return MemoryEstimate(sum(parts.values()), phase, dict(parts), where, what)


def gradcheck_estimate(
    spec: JobSpec, *, batch: int, fd_samples: int, shape: DatasetShape | None = None
) -> MemoryEstimate:
    """What ``core.gradcheck.check_spec`` holds for ``spec`` on its first ``batch`` training
    rows with ``fd_samples`` coordinates per tensor, as the gradient-check endpoint runs it:
    while loading, the data set's load (``data``); then the loaded data set, the model's
    parameters in float64 and the validator (``gradcheck``, as in a job's check). The
    validator's rows are blamed on ``gradcheck.max_batch`` or its coordinates on
    ``gradcheck.fd_samples``, whichever is further above its default (16 rows, 8)."""
    checked = spec.model_copy(
        update={
            "optimizer": spec.optimizer.model_copy(update={"batch_size": batch}),
            "gradcheck": spec.gradcheck.model_copy(
                update={"max_batch": batch, "fd_samples": fd_samples}
            ),
        }
    )
    s = _shape(checked, shape)
    task = "regression" if s.classes == 0 else "classification"
    data = s.rows * s.features * 8 + s.rows * 8
    loading = int(LOAD_FEATURE_COPIES * s.rows * s.features * 8) + LOAD_ROW_BYTES[task] * s.rows
    phases = {
        "loading": {"data": max(loading, data)},
        "check": {
            "data": data,
            "parameters": s.parameters * 8,
            "gradcheck": _gradcheck(checked, s),
        },
    }
    phase = max(phases, key=lambda p: sum(phases[p].values()))
    parts = phases[phase]
    largest = max(parts, key=parts.__getitem__)
    where, what = _blame(checked, s, largest)
    if largest == "gradcheck":
        where = "gradcheck.max_batch" if batch / 16 >= fd_samples / 8 else "gradcheck.fd_samples"
    elif largest == "parameters":
        what = f"{s.parameters:,} parameters and the check's copies of them, in float64"
    return MemoryEstimate(sum(parts.values()), phase, dict(parts), where, what)


def _phases(spec: JobSpec, s: _Shape) -> dict[str, dict[str, int]]:
    """Each phase of an attempt and the parts it holds at its largest:

    - loading: the data set while ``core.data`` generates, splits and standardises it;
    - encoding: ``TrainingData`` making the training part's tensors (before the model);
    - check: a gradient check (before the step it checks: that step's masks exist);
    - step: a training step;
    - evaluation: an epoch's record or the final metrics.
    """
    n_train = s.parts[0]
    f, d, k = s.itemsize, s.features, s.out
    # the worker's cached copy and the job's (a file's is read for each job, not cached)
    data = (1 if spec.dataset.name in FILE_DATASETS else 2) * (s.rows * d * 8 + s.rows * 8)
    task = "regression" if s.classes == 0 else "classification"
    loading = int(LOAD_FEATURE_COPIES * s.rows * d * 8) + LOAD_ROW_BYTES[task] * s.rows
    # encoding the training part: features, then one-hot targets through int64 and float64
    encoding = n_train * d * f + n_train * (16 * k if s.classes and k > 1 else 16)
    tensors = _tensors(spec, s)
    plans, step, masks = _activations(spec, s)
    fixed = {"data": data, "tensors": tensors, "parameters": _parameters(spec, s, later=True)}
    # a check after the first step meets the last batch's buffers and checkpoint snapshots
    gc = spec.gradcheck
    later = 0 < gc.every_steps < spec.optimizer.epochs * -(-n_train // s.batch)
    check = {
        **fixed,
        "parameters": _parameters(spec, s, later=later),
        "activations": (plans if later else plans * s.batch // (s.batch + s.last_batch)) + masks,
        "gradcheck": _gradcheck(spec, s) if gc.at_start or later else 0,
    }
    phases = {
        "loading": {"data": max(loading, data)},
        "encoding": {"data": data, "tensors": encoding},
        "check": check,
        "step": {**fixed, "activations": plans + step},
        "evaluation": {**fixed, "activations": plans, "evaluation": _evaluation(s)},
    }
    for parts in phases.values():
        parts.update(attempt=ATTEMPT_BYTES, allocator=HEAP_SLACK)
    return phases


def _tensors(spec: JobSpec, s: _Shape) -> int:
    """``train``'s tensors once made: training and validation features and encoded targets
    (and standardised regression targets: class indices share numpy's memory), the epoch
    evaluation's copy of its rows, the manual engine's [X | T] and an epoch's row order."""
    n_train, n_val, _ = s.parts
    f, d, k = s.itemsize, s.features, s.out
    kept = (n_train + n_val) * (d + k + (1 if s.classes == 0 else 0)) * f
    evaluated = min(TRAIN_EVAL_ROWS, n_train) + n_val
    kept += evaluated * ((d + k) * f + 8) + n_train * 8
    if spec.engine != "autograd":
        kept += n_train * (d + k) * f
    return kept


def _activations(spec: JobSpec, s: _Shape) -> tuple[int, int, int]:
    """(buffers kept between steps, a step's transient memory, one step's dropout masks).

    The manual engine keeps ``Backprop``'s buffers for the batch size and for the epoch's
    last batch; a step adds its masks while the previous step's are still held. Autograd
    keeps nothing between steps; a step holds its masks and its graph (each hidden layer's
    output, masked output, the layer being computed, the loss) or, while the next masks are
    drawn, two sets of masks. An activation without the in-place pair (gelu, silu, softplus)
    makes each hidden layer's φ(Z) anew at each step, and its derivative's temporaries
    (three of the widest layer's size, at most), in the manual engine's step."""
    f, d, k, dropout = s.itemsize, s.features, s.out, spec.regularization.dropout > 0
    masks = s.batch * s.hidden * f if dropout else 0
    if spec.engine == "autograd":
        graph = s.batch * (d + k + (1 + dropout) * s.hidden + 3 * max(s.widths[1:]) + 4 * k) * f
        return 0, masks + max(masks, graph), masks
    per_row = (d + k) + s.units + s.hidden * (1 + dropout) + k + 1  # Backprop's buffers
    fresh = 0 if spec.model.activation in INPLACE_ACTIVATIONS else s.hidden + 3 * max(s.widths[1:])
    return (s.batch + s.last_batch) * per_row * f, 2 * masks + s.batch * fresh * f, masks


def _evaluation(s: _Shape) -> int:
    """A chunk's activations (each layer's z and φ(z), the layer's input, |z|), the rows'
    losses, hits and predictions (or absolute errors), and the test part encoded for the
    final metrics (its one-hot targets through int64 and float64) before it is evaluated."""
    n_train, n_val, n_test = s.parts
    f, k = s.itemsize, s.out
    rows = max(n_train, min(TRAIN_EVAL_ROWS, n_train) + n_val)
    chunk = min(rows_per_chunk(s.widths, f), rows) * (4 * max(s.widths[1:]) + 4 * k) * f
    # losses, hits, predictions or absolute errors (regression: also the targets)
    per_row = f + 16 + (8 if s.classes == 0 else 0)
    test = n_test * ((s.features + k) * f + 8)
    test_encoding = n_test * (16 * k if s.classes and k > 1 else 16)
    return max(rows * per_row + chunk, test + max(test_encoding, n_test * per_row + chunk))


# an optimizer's buffers the size of the parameters: all of them, and those a checkpoint saves
OPTIMIZER_BUFFERS = {"sgd": (1, 1), "adam": (3, 2), "adamw": (3, 2), "rmsprop": (2, 1)}


def _parameters(spec: JobSpec, s: _Shape, *, later: bool) -> int:
    """Parameters, gradients, the optimizer's state (``OPTIMIZER_BUFFERS``), the weights at
    the epoch's start and the weight-decay mask; ``later`` (after the first epoch) also the
    best epoch's weights when kept, and checkpoint snapshots: two pending (the last and the
    best), one being serialised (its copies, then its bytes)."""
    reg = spec.regularization
    es = reg.early_stopping
    state, saved = OPTIMIZER_BUFFERS[spec.optimizer.name]
    copies = 3 + state + (reg.weight_decay > 0)
    if later:
        tracked = spec.dataset.validation_fraction > 0 or not es.monitor.startswith("val_")
        best = es.enabled and es.restore_best and tracked
        snapshot = 1 + saved + best  # parameters, the optimizer's state (and the best epoch's)
        copies += best + 4 * snapshot
    return copies * s.parameters * s.itemsize


def _gradcheck(spec: JobSpec, s: _Shape) -> int:
    """The validator in float64: copies of the parameters, the batch and its masks, the
    manual pass's buffers and gradients, autograd's graph and gradients, and the finite
    differences at their largest tensor."""
    gc = spec.gradcheck
    rows, k, dropout = min(gc.max_batch, s.batch), s.out, spec.regularization.dropout > 0
    batch = rows * (s.features + k + s.hidden * dropout)
    passes = rows * (s.units + s.hidden * (1 + dropout) + k) + rows * (3 * s.units + 4 * k)
    total = (4 * s.parameters + batch + passes) * 8
    return total + _finite_differences(gc.fd_samples, rows, s.widths)[0] * 8


def _finite_differences(samples: int, rows: int, widths: list[int]) -> tuple[int, str]:
    """Numbers the finite differences hold at once, at their largest parameter tensor, and
    what they are: per ±h copy of the network (2·min(samples, ``FD_CHUNK``) of them; the
    tensor itself is not copied: its layer's product is moved by one column per copy), the
    batch's activations from that layer up: at most four layers' worth at a time (z, φ(z),
    the next product and z again)."""
    most, what = 0, ""
    if samples == 0:
        return most, what
    for layer, (fan_in, fan_out) in enumerate(itertools.pairwise(widths)):
        widest = max(widths[layer + 1 :])
        for numel, name in ((fan_in * fan_out, f"W{layer + 1}"), (fan_out, f"b{layer + 1}")):
            copies = 2 * min(samples, numel, FD_CHUNK)
            if copies * rows * 4 * widest > most:
                most = copies * rows * 4 * widest
                what = f"{copies} perturbed copies of the layers from {name} up on {rows:,} rows"
    return most, what


def _blame(spec: JobSpec, s: _Shape, part: str) -> tuple[str, str]:
    """The spec field behind ``part`` and the part in words."""
    ds = spec.dataset
    n_train = s.parts[0]
    data_field = {"csv": "dataset.path", "upload": "dataset.id"}.get(ds.name, "dataset.n_samples")
    if ds.name not in SYNTHETIC_DATASETS and ds.name not in ("csv", "upload"):
        data_field = "dataset.name"
    if ds.name == "blobs" and s.features / 2 > s.rows / DEFAULT_SAMPLES:
        data_field = "dataset.n_features"
    table = f"{s.rows:,} rows × {s.features:,} features"
    if part == "data":
        return data_field, f"the data set, {table} in float64"
    if part == "tensors":
        if s.out > s.features and ds.name in ("blobs", "spirals"):
            return "dataset.n_classes", f"{n_train:,} training rows of {s.out:,} one-hot classes"
        return data_field, f"the training tensors of {table}"
    widest = max(s.widths[1:])
    if part == "activations":
        by_batch = s.batch / 32 >= widest / 64  # the further above its default
        what = f"activations of a batch of {s.batch:,} rows × {s.units:,} units"
        return ("optimizer.batch_size" if by_batch else "model.hidden"), what
    if part == "evaluation":
        chunk = min(rows_per_chunk(s.widths, s.itemsize), n_train)
        if 4 * chunk * widest >= 3 * n_train:  # its activations' bytes against 12 per row
            return "model.hidden", f"evaluation chunks of {chunk:,} rows × {widest:,} units"
        return data_field, f"evaluating {n_train:,} rows: a loss and a hit per row"
    if part == "parameters":
        return "model.hidden", f"{s.parameters:,} parameters, their gradients, momentum and copies"
    gc = spec.gradcheck
    rows = min(gc.max_batch, s.batch)
    fd, what = _finite_differences(gc.fd_samples, rows, s.widths)
    if fd * 8 * 2 >= _gradcheck(spec, s):
        return "gradcheck.fd_samples", f"the gradient check's finite differences: {what}"
    return "gradcheck.max_batch", f"the gradient check on {rows:,} rows in float64"
