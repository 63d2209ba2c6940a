"""The training loop: regularised minibatch training (sgd, adam, adamw or rmsprop, see
``core.optim``), as a plain function.

``train(spec, callbacks=..., resume_from=..., data=..., dtype=...)`` loads the data (unless
``data`` is given), builds the model and runs the optimizer with gradients from the engine the spec
names:

- ``manual``: the hand-written backprop of ``core.backprop`` is the training path;
- ``autograd``: PyTorch's autograd;
- ``auto``: ``manual``, on the CPU and on CUDA alike (``resolve_engine``): it records no graph
  and makes its buffers once, and is the faster of the two on both devices, for small and for
  compute-bound networks (bench/RESULTS.md, Engine).

Batches come from indexing in-memory tensors. The loop reports through callbacks (see
``core.callbacks``) and never talks to a database, a tracker or a cluster itself.

``train`` is a loop over named parts: ``TrainingData`` (the encoded parts on the device),
``StepLoop`` (an epoch's steps), ``GradientChecks`` (the validator's schedule),
``DivergenceGuard``, ``EpochEvaluation`` (an epoch's record) and ``core.state.TrainState``
(what a checkpoint carries, with the ``EarlyStopping`` rule).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

import torch
import torch.nn.functional as nnf

from core.backprop import Backprop
from core.callbacks import Callback, CallbackList, EpochRecord
from core.checkpoint import Checkpoint, check_compatible
from core.data import Dataset, load_dataset
from core.evaluate import confusion, evaluate, evaluate_parts
from core.gradcheck import GradcheckFailed, check_gradients
from core.losses import encode_targets, loss_value, output_width
from core.model import MLP, build_mlp, sample_masks
from core.optim import FlatParameters, GradClipper, Optimizer, coupled_decay, make_optimizer
from core.sizes import TRAIN_EVAL_ROWS
from core.spec import JobSpec
from core.state import TrainState

DIVERGENCE_CHECK_STEPS = 32  # on a GPU: steps between divergence read-backs (DivergenceGuard)


class Diverged(RuntimeError):
    """The loss, a gradient or a parameter became NaN or infinite. ``value``: the number
    found; ``found``: what it is, in words (default: the training loss)."""

    def __init__(self, epoch: int, step: int, value: float, found: str | None = None) -> None:
        self.epoch, self.step, self.value = epoch, step, value
        found = found or f"the training loss is {value}"
        super().__init__(
            f"training diverged at epoch {epoch}, step {step}: {found} (try a smaller optimizer.lr)"
        )


def diverged_step(epoch: int, step: int, bias_grad_sum: float) -> Diverged:
    """The divergence a step's guard found: a non-finite gradient (the output layer's bias
    gradient summed over the batch, the guard's test), else a non-finite parameter (the
    guard's test on a GPU)."""
    if not math.isfinite(bias_grad_sum):
        found = (
            f"the gradient is not finite (the output layer's bias gradient sums to {bias_grad_sum})"
        )
    else:
        found = "a parameter is not finite"
    return Diverged(epoch, step, bias_grad_sum, found)


@dataclass
class TrainResult:
    model: MLP
    history: list[EpochRecord]
    metrics: dict[str, float]
    steps: int
    epochs: int
    best_epoch: int | None
    status: str  # "completed" | "early_stopped" | "cancelled"
    engine: str
    device: str
    data: Dataset
    loss: str
    # regression: the model predicts (y − target_shift) / target_scale; 0 and 1 for classifiers
    target_shift: float
    target_scale: float
    gradchecks: list[dict[str, Any]] = field(default_factory=list)
    # a classifier's confusion matrix and per-class scores on the test part (the validation
    # part without one; None for regression or without either), see core.evaluate.confusion
    confusion: dict[str, Any] | None = None


def resolve_device(spec: JobSpec) -> torch.device:
    if spec.device == "cuda" or (
        spec.device == "auto" and spec.resources.gpus > 0 and torch.cuda.is_available()
    ):
        if not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' was asked for but no CUDA GPU is available")
        return torch.device("cuda")
    return torch.device("cpu")


def resolve_engine(spec: JobSpec) -> str:
    """``auto`` is the manual engine, on the CPU and on a GPU alike: it does less work per
    step than autograd (no graph to record; buffers made once) and is the faster of the two
    on both, for small networks and compute-bound ones (bench/RESULTS.md, Engine)."""
    return "manual" if spec.engine == "auto" else spec.engine


def train(
    spec: JobSpec,
    *,
    callbacks: Sequence[Callback] = (),
    resume_from: Checkpoint | None = None,
    data: Dataset | None = None,
    dtype: torch.dtype = torch.float32,
    init_weights: Sequence[torch.Tensor] | None = None,
    extend_schedule: bool = False,
) -> TrainResult:
    """Train the spec's model; same seed, data, device and dtype give identical numbers.

    Raises ``Diverged`` on a non-finite loss and ``GradcheckFailed`` when the validator finds
    the manual gradients wrong. ``data`` overrides loading the spec's data set (a worker
    passes an uploaded file's rows this way). ``init_weights``: another job's weights to
    start from (``init_from``, :meth:`TrainState.warm_start`); a resume ignores them (its
    checkpoint holds the weights trained from them). ``dtype`` is what the model, the data and the
    updates compute in: float32, or float64 (tests); the validator works in float64 always.
    ``resume_from`` may have trained fewer epochs than the spec asks (``check_compatible``;
    ``extend_schedule``: a cosine schedule recomputed over the new epochs).

    Each epoch: ``StepLoop.run_epoch`` takes the optimizer's steps (with the ``GradientChecks`` and
    the ``DivergenceGuard``), ``EpochEvaluation`` makes the epoch's record, the
    ``TrainState`` adds it and asks its ``EarlyStopping``, and a checkpoint of the state goes
    to the callbacks every ``checkpoint_every`` epochs and after the last.
    """
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, not {dtype}")
    cbs = CallbackList(callbacks)
    device, engine = resolve_device(spec), resolve_engine(spec)
    torch.set_num_threads(max(1, int(spec.resources.cpus)))
    data = data if data is not None else load_dataset(spec.dataset, seed=spec.seed)
    tensors = TrainingData.encode(spec, data, dtype=dtype, device=device)
    evaluation = EpochEvaluation(tensors, seed=spec.seed)
    model, flat, opt = build_model(spec, data.n_features, tensors.width, dtype=dtype, device=device)
    state = TrainState.start(spec, flat.params, opt, device)
    spec_dict = spec.model_dump(mode="json")
    if resume_from is not None:
        check_compatible(resume_from, spec_dict, extend_schedule=extend_schedule)
        state.load_checkpoint(resume_from)
    elif init_weights is not None:
        state.warm_start(init_weights)
    checks = GradientChecks(spec, model, tensors, cbs, step=state.step)
    loop = StepLoop(spec, engine, model, flat, opt, tensors, state, checks, cbs)
    cbs.on_train_start(
        spec=spec, engine=engine, device=str(device), n_train=tensors.n, resumed_epoch=state.epoch
    )
    status, epochs = "completed", spec.optimizer.epochs
    model.train()
    for epoch in range(state.epoch, epochs):
        lr = state.schedule.lr(epoch)
        t0 = time.perf_counter()
        before = [w.detach().clone() for w in model.weights]
        if loop.run_epoch(epoch, lr):
            status = "cancelled"
            break
        seconds = time.perf_counter() - t0
        record = evaluation.record(model, epoch + 1, state.step, lr, seconds, before, flat.grad)
        if loop.clipper is not None:
            record.clipped_steps = loop.clipper.take()
        stop_early = state.end_epoch(record)
        cbs.on_epoch_end(record)
        last = stop_early or state.epoch == epochs
        if cbs.wants_checkpoints and (state.epoch % spec.checkpoint_every == 0 or last):
            cbs.on_checkpoint(state.to_checkpoint(spec_dict))
        if stop_early or (cbs.has_should_stop and cbs.should_stop()):
            status = "early_stopped" if stop_early else "cancelled"
            break
    if status != "cancelled":
        state.early.restore(flat.params)
    model.eval()
    metrics = final_metrics(
        model, data, loss=tensors.loss, dtype=dtype, device=device, encoded=tensors
    )
    confusion = final_confusion(model, data, tensors, dtype=dtype, device=device)
    return TrainResult(
        model=model,
        history=state.history,
        metrics=metrics,
        steps=state.step,
        epochs=len(state.history),
        best_epoch=state.early.best_epoch,
        status=status,
        engine=engine,
        device=str(device),
        data=data,
        loss=tensors.loss,
        target_shift=tensors.y_shift,
        target_scale=tensors.y_scale,
        gradchecks=checks.reports,
        confusion=confusion,
    )


def final_confusion(
    model: MLP, data: Dataset, tensors: TrainingData, *, dtype: torch.dtype, device: torch.device
) -> dict[str, Any] | None:
    """``core.evaluate.confusion`` on the test part, or the validation part without one;
    None for a regression or without either part."""
    if data.task != "classification":
        return None
    if len(data.X_test):
        X = torch.as_tensor(data.X_test, dtype=dtype).to(device)
        y = torch.as_tensor(data.y_test).to(device).long()
    elif tensors.X_val.shape[0]:
        X, y = tensors.X_val, tensors.y_val
    else:
        return None
    return confusion(model, X, y, loss=tensors.loss)


def build_model(
    spec: JobSpec, n_features: int, width: int, *, dtype: torch.dtype, device: torch.device
) -> tuple[MLP, FlatParameters, Optimizer]:
    """The spec's MLP, initialised from the spec's seed, on ``device``; its parameters as
    views of one buffer (``FlatParameters``), and the optimizer that updates that buffer."""
    model = build_mlp(
        spec.model,
        n_features,
        width,
        dropout=spec.regularization.dropout,
        generator=torch.Generator().manual_seed(spec.seed),
        dtype=dtype,
    ).to(device)
    flat = FlatParameters(model)
    return model, flat, make_optimizer(spec.optimizer, flat, spec.regularization.weight_decay)


@dataclass
class TrainingData:
    """The data as the loop uses it, on the training device: the training part (features X,
    targets y: class indices or standardised values, encoded targets T, see ``core.losses``),
    the validation part alike, the loss, the output width and the targets' scaling."""

    loss: str
    task: str
    width: int
    y_shift: float
    y_scale: float
    X: torch.Tensor
    y: torch.Tensor
    T: torch.Tensor
    X_val: torch.Tensor
    y_val: torch.Tensor
    T_val: torch.Tensor

    @property
    def n(self) -> int:
        return int(self.X.shape[0])

    @classmethod
    def encode(
        cls, spec: JobSpec, data: Dataset, *, dtype: torch.dtype, device: torch.device
    ) -> TrainingData:
        loss = spec.resolved_loss(data.task)
        width = output_width(loss, data.task, data.n_classes)
        parts = ((data.X_train, data.y_train), (data.X_val, data.y_val))
        train_part, val_part = encode_parts(
            data, parts, loss=loss, width=width, dtype=dtype, device=device
        )
        if train_part[0].shape[0] == 0:
            raise ValueError("the training part of the data set is empty")
        return cls(loss, data.task, width, *target_scaling(data), *train_part, *val_part)


class EpochEvaluation:
    """Each epoch's record: one evaluation (``evaluate_parts``, in chunks of rows) of a fixed
    random subset of ``TRAIN_EVAL_ROWS`` training rows followed by the validation rows, the
    per-layer diagnostics against the weights at the epoch's start, and the norm of the last
    step's gradient. A non-finite training loss is a divergence."""

    def __init__(self, data: TrainingData, *, seed: int) -> None:
        rows = torch.randperm(data.n, generator=torch.Generator().manual_seed(seed))
        rows = rows[:TRAIN_EVAL_ROWS].to(data.X.device)
        self.X = torch.cat([data.X[rows], data.X_val])
        self.y = torch.cat([data.y[rows], data.y_val])
        self.T = torch.cat([data.T[rows], data.T_val])
        self.sizes = [len(rows), data.X_val.shape[0]]
        self.data, self.n = data, data.n

    def record(
        self,
        model: MLP,
        epoch: int,
        step: int,
        lr: float,
        seconds: float,
        weights_before: list[torch.Tensor],
        grad: torch.Tensor,
    ) -> EpochRecord:
        """Evaluate ``model`` (in eval mode, put back in training mode) after epoch ``epoch``
        (1-based) and ``step`` steps, of ``seconds``, run at rate ``lr``."""
        model.eval()
        (train_m, val_m), diags = evaluate_parts(
            model,
            self.X,
            self.y,
            self.T,
            self.sizes,
            loss=self.data.loss,
            task=self.data.task,
            y_scale=self.data.y_scale,
            weights_before=weights_before,
        )
        model.train()
        return epoch_record(train_m, val_m, diags, epoch, step, lr, seconds, self.n, grad)


def epoch_record(
    train_m: dict[str, float],
    val_m: dict[str, float],
    layers: list[dict[str, float]],
    epoch: int,
    step: int,
    lr: float,
    seconds: float,
    n: int,
    grad: torch.Tensor,
) -> EpochRecord:
    """The record of epoch ``epoch`` from its evaluation (``n`` training rows, the last
    step's gradient ``grad``); a non-finite training loss is a divergence."""
    if not math.isfinite(train_m["loss"]):
        raise Diverged(epoch, step, train_m["loss"])
    return EpochRecord(
        epoch=epoch,
        step=step,
        lr=lr,
        seconds=seconds,
        samples_per_s=n / seconds if seconds > 0 else float("inf"),
        grad_norm=float(torch.linalg.vector_norm(grad)),
        train=train_m,
        val=val_m,
        layers=layers,
    )


class GradientChecks:
    """The gradient-check schedule, and the validator's runs in the training loop.

    A check runs before step 0 (``gradcheck.at_start``), then at every multiple of
    ``gradcheck.every_steps``; a resumed run goes on with the first multiple from the step it
    resumes at. ``next`` is the step of the next check (−1: none): the step loop compares its
    step with it and calls ``run`` only then. ``reports`` collects every report's dict.
    """

    def __init__(
        self, spec: JobSpec, model: MLP, data: TrainingData, callbacks: CallbackList, *, step: int
    ) -> None:
        self.spec, self.gc, self.data, self.callbacks = spec, spec.gradcheck, data, callbacks
        self.weights, self.biases = model.weights, model.biases
        self.every = self.gc.every_steps
        self.reports: list[dict[str, Any]] = []
        if step == 0 and self.gc.at_start:
            self.next = 0
        elif self.every:
            self.next = max(-(-step // self.every), 1) * self.every
        else:
            self.next = -1

    @torch.inference_mode(False)  # the validator runs autograd, also inside the manual loop
    def run(
        self,
        Xb: torch.Tensor,
        Tb: torch.Tensor,
        masks: list[torch.Tensor] | None,
        step: int,
        *,
        manual: Sequence[torch.Tensor] | None = None,
    ) -> int:
        """Check the gradients of the batch's first ``max_batch`` rows at ``step`` (manual
        vs autograd vs central differences, float64) and report to the callbacks; raises
        ``GradcheckFailed`` when the check fails. Returns the step of the next check.
        ``manual``: the gradients under test, computed elsewhere on those rows (the packed
        engine's, see ``core.gradcheck.check_gradients``); default: ``core.backprop``'s."""
        k = min(self.gc.max_batch, Xb.shape[0])
        if not Tb.is_floating_point():  # class indices (fused cross-entropy): one-hot them
            Tb = nnf.one_hot(Tb[:k], self.data.width).to(Xb.dtype)
        report = check_gradients(
            self.weights,
            self.biases,
            Xb[:k],
            Tb[:k],
            activation=self.spec.model.activation,
            loss=self.data.loss,
            weight_decay=self.spec.regularization.weight_decay,
            masks=None if masks is None else [m[:k] for m in masks],
            tolerance=self.gc.tolerance,
            fd_tolerance=self.gc.fd_tolerance,
            fd_samples=self.gc.fd_samples,
            step=step,
            seed=self.spec.seed,
            manual=manual,
        )
        self.reports.append(report.to_dict())
        self.callbacks.on_gradcheck(report)
        if not report.passed:
            raise GradcheckFailed(report)
        self.next = step + self.every if self.every else -1
        return self.next


class DivergenceGuard:
    """Stops training with ``Diverged`` when the loss becomes NaN or infinite.

    After a step's gradient is computed and before it is applied: ∇b⁽ᴸ⁾ = Σ Δ⁽ᴸ⁾ is finite
    iff the batch's loss is; its few entries are summed in Python (inf − inf is nan there
    too), cheaper than a tensor sum and its read-back. On the CPU every step is checked. On
    a GPU that read-back would make the host wait for each step instead of queueing the next
    one's kernels, so there the check reads back every ``DIVERGENCE_CHECK_STEPS`` steps and at
    each epoch's last step, and also looks at the parameters: a non-finite parameter stays
    non-finite under every optimizer's update, so a divergence is never missed, only
    reported that much later.

    ``StepLoop.run_epoch`` writes the per-step test out from ``every``, ``bias_grad`` and
    ``params`` (a call per step would cost more than the test) and calls ``fail``.
    """

    def __init__(self, device: torch.device, flat: FlatParameters) -> None:
        self.every = 1 if device.type == "cpu" else DIVERGENCE_CHECK_STEPS
        self.bias_grad = flat.grads[-1]  # ∇b⁽ᴸ⁾
        self.params = flat.data

    def fail(self, epoch: int, step: int) -> NoReturn:
        raise diverged_step(epoch, step, float(self.bias_grad.sum()))


def autograd_gradients(
    model: MLP, flat: FlatParameters, loss: str, *, fused_ce: bool
) -> Callable[[torch.Tensor, torch.Tensor, list[torch.Tensor] | None], None]:
    """The autograd engine's step: the gradient of a batch's mean loss into ``flat.grad``
    (zeroed first: autograd accumulates into its views). With ``fused_ce`` the targets are
    class indices and the loss is PyTorch's fused log-softmax + NLL, the same loss as
    ``loss_value`` on one-hot targets, in fewer operations."""

    def gradients(Xb: torch.Tensor, Tb: torch.Tensor, masks: list[torch.Tensor] | None) -> None:
        flat.grad.zero_()
        out: torch.Tensor = model(Xb, masks)
        value = nnf.cross_entropy(out, Tb) if fused_ce else loss_value(loss, out, Tb)
        value.backward()

    return gradients


Plan = tuple[Backprop, torch.Tensor, torch.Tensor, torch.Tensor]


class StepLoop:
    """The optimizer's steps of an epoch, with the gradients of the spec's engine.

    ``manual``: features and encoded targets side by side, [X | T], so that one index_select
    per step gathers a batch into a buffer made once per batch size (the epoch's last batch
    may be smaller), and a ``Backprop`` pass with its buffers per size. ``autograd``:
    ``autograd_gradients``, on class indices with cross-entropy. Then the gradient is
    clipped to ``optimizer.clip_norm`` (``GradClipper``), the weight decay's gradient 2λW is
    added (not traced; adamw decays in its step instead) and the optimizer takes its step.
    """

    def __init__(
        self,
        spec: JobSpec,
        engine: str,
        model: MLP,
        flat: FlatParameters,
        opt: Optimizer,
        data: TrainingData,
        state: TrainState,
        checks: GradientChecks,
        callbacks: CallbackList,
    ) -> None:
        self.spec, self.model, self.flat, self.opt = spec, model, flat, opt
        self.state, self.checks, self.callbacks = state, checks, callbacks
        self.guard = DivergenceGuard(data.X.device, flat)
        self.loss, self.n, self.device = data.loss, data.n, data.X.device
        self.batch_size = min(spec.optimizer.batch_size, data.n)
        self.dropout = spec.regularization.dropout > 0.0
        wd = spec.regularization.weight_decay
        self.decay = flat.decay_mask(wd) if coupled_decay(spec.optimizer) else None
        clip = spec.optimizer.clip_norm
        self.clipper = None if clip is None else GradClipper(flat.grad, clip)
        self.manual = engine == "manual"
        fused_ce = engine == "autograd" and data.loss == "cross_entropy"
        self.X, self.T = data.X, data.y if fused_ce else data.T
        self.XT = torch.cat([data.X, data.T], dim=1) if self.manual else data.X
        self.plans: dict[int, Plan] = {}
        self.autograd_step = autograd_gradients(model, flat, data.loss, fused_ce=fused_ce)

    def plan_for(self, size: int) -> Plan:
        """The manual engine's pass for batches of ``size`` rows: (Backprop, the [X | T]
        buffer, its X and T column views), made on first use."""
        buf = torch.empty(size, self.XT.shape[1], dtype=self.XT.dtype, device=self.device)
        plan = Backprop(
            self.model.weights,
            self.model.biases,
            self.flat.grads,
            activation=self.spec.model.activation,
            loss=self.loss,
            batch=size,
            masked=self.dropout,
        )
        d_in = self.X.shape[1]
        self.plans[size] = (plan, buf, buf[:, :d_in], buf[:, d_in:])
        return self.plans[size]

    def run_epoch(self, epoch: int, lr: float) -> bool:
        """One pass over the training rows in a new random order, a step per batch, at rate
        ``lr``; True when a callback cancelled the run. Every name the steps use is bound to
        a local first: each Python operation inside the loop is paid at every step."""
        state, checks, guard, model, opt = self.state, self.checks, self.guard, self.model, self.opt
        clipper, warmup = self.clipper, self.spec.optimizer.schedule.warmup_steps
        manual, plans, plan_for, XT = self.manual, self.plans, self.plan_for, self.XT
        X, T, autograd_step = self.X, self.T, self.autograd_step
        dropout, drop_gen = self.dropout, state.dropout_rng
        decay, flat_grad, flat_data = self.decay, self.flat.grad, self.flat.data
        check_every, last_bias_grad, isfinite = guard.every, guard.bias_grad, math.isfinite
        should_stop = self.callbacks.should_stop if self.callbacks.has_should_stop else None
        step, next_check, cancelled = state.step, checks.next, False
        perm = torch.randperm(self.n, generator=state.batch_rng).to(self.device)
        # the manual engine records nothing for autograd: inference mode skips its bookkeeping
        with torch.inference_mode() if manual else torch.enable_grad():
            batches = perm.split(self.batch_size)
            last_batch = len(batches) - 1
            for i_batch, idx in enumerate(batches):
                if manual:
                    size = idx.shape[0]
                    plan, buf, Xb, Tb = plans[size] if size in plans else plan_for(size)
                    torch.index_select(XT, 0, idx, out=buf)
                else:
                    Xb, Tb = X.index_select(0, idx), T.index_select(0, idx)
                masks = sample_masks(model, len(idx), generator=drop_gen) if dropout else None
                if step == next_check:
                    next_check = checks.run(Xb, Tb, masks, step)
                if manual:
                    plan.run(Xb, Tb, masks)
                else:
                    autograd_step(Xb, Tb, masks)
                # the DivergenceGuard's test
                if (check_every == 1 or step % check_every == 0 or i_batch == last_batch) and (
                    not isfinite(sum(last_bias_grad.tolist()))
                    or (check_every > 1 and not bool(torch.isfinite(flat_data).all()))
                ):
                    guard.fail(epoch + 1, step + 1)
                if clipper is not None:
                    clipper()
                if decay is not None:  # the gradient of λ‖W‖² is 2λW: added, not traced
                    flat_grad.addcmul_(decay, flat_data)
                opt.step(lr if step >= warmup else lr * (step + 1) / (warmup + 1))
                step += 1
                if should_stop is not None and should_stop():
                    cancelled = True
                    break
        state.step = step
        return cancelled


def target_scaling(data: Dataset) -> tuple[float, float]:
    """Regression targets are standardised with the training part's mean and standard
    deviation, like the features, so that one learning rate suits every data set; the
    reported RMSE is converted back to the target's own units."""
    if data.task != "regression" or len(data.y_train) == 0:
        return 0.0, 1.0
    std = float(data.y_train.std())
    return float(data.y_train.mean()), std if std > 0 else 1.0


def encode_part(
    data: Dataset,
    X: Any,
    y: Any,
    *,
    loss: str,
    width: int,
    dtype: torch.dtype,
    device: torch.device,
    y_shift: float,
    y_scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Features, targets (class indices or scaled values) and encoded targets on the device."""
    Xt = torch.as_tensor(X, dtype=dtype).to(device)
    yt = torch.as_tensor(y).to(device)
    if data.task == "regression":
        yt = ((yt.to(torch.float64) - y_shift) / y_scale).to(dtype)
    else:
        yt = yt.long()
    return Xt, yt, encode_targets(loss, data.task, yt, width).to(dtype)


def encode_parts(
    data: Dataset,
    parts: Iterable[tuple[Any, Any]],
    *,
    loss: str,
    width: int,
    dtype: torch.dtype,
    device: torch.device,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``encode_part`` for each (X, y) of ``parts``, with the data set's target scaling; one
    part at a time, as it is asked for."""
    y_shift, y_scale = target_scaling(data)
    for X, y in parts:
        yield encode_part(
            data,
            X,
            y,
            loss=loss,
            width=width,
            dtype=dtype,
            device=device,
            y_shift=y_shift,
            y_scale=y_scale,
        )


def final_metrics(
    model: MLP,
    data: Dataset,
    *,
    loss: str,
    dtype: torch.dtype,
    device: torch.device,
    encoded: TrainingData | None = None,
) -> dict[str, float]:
    """Loss and accuracy (or RMSE and R²) of the model on each non-empty part of the data.
    ``encoded``: the training and validation parts as ``train`` holds them on the device,
    evaluated as they are instead of encoded a second time; the other parts are encoded one
    at a time, each released before the next."""
    y_shift, y_scale = target_scaling(data)
    ready: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
    if encoded is not None:
        ready["train"] = (encoded.X, encoded.y, encoded.T)
        ready["val"] = (encoded.X_val, encoded.y_val, encoded.T_val)
    out: dict[str, float] = {}
    for part, X, y in (
        ("train", data.X_train, data.y_train),
        ("val", data.X_val, data.y_val),
        ("test", data.X_test, data.y_test),
    ):
        if not len(X):
            continue
        if part in ready:
            Xt, yt, Tt = ready.pop(part)
        else:
            Xt, yt, Tt = encode_part(
                data,
                X,
                y,
                loss=loss,
                width=model.widths[-1],
                dtype=dtype,
                device=device,
                y_shift=y_shift,
                y_scale=y_scale,
            )
        metrics, _ = evaluate(model, Xt, yt, Tt, loss=loss, task=data.task, y_scale=y_scale)
        del Xt, yt, Tt
        for k, v in metrics.items():
            out[f"{part}_{k}"] = v
    return out
