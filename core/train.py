"""The training loop: regularised minibatch SGD, as a plain function.

``train(spec, callbacks=..., resume_from=..., data=...)`` loads the data (unless ``data`` is
given), builds the model and runs SGD with gradients from the engine the spec names:

- ``manual``: the hand-written backprop of ``core.backprop`` is the training path;
- ``autograd``: PyTorch's autograd;
- ``auto``: ``manual``, on the CPU and on CUDA alike (``resolve_engine``): it records no graph
  and makes its buffers once, and is the faster of the two on both devices, for small and for
  compute-bound networks (bench/RESULTS.md, Engine).

Batches come from indexing in-memory tensors. The loop reports through callbacks (see
``core.callbacks``) and never talks to a database, a tracker or a cluster itself.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as nnf

from core.backprop import Backprop
from core.callbacks import Callback, CallbackList, EpochRecord
from core.checkpoint import Checkpoint, check_compatible
from core.data import Dataset, load_dataset
from core.evaluate import evaluate, evaluate_parts
from core.gradcheck import GradcheckFailed, check_gradients
from core.losses import encode_targets, loss_value, output_width
from core.model import MLP, build_mlp, sample_masks
from core.optim import SGD, FlatParameters, learning_rate
from core.spec import JobSpec

TRAIN_EVAL_ROWS = 10_000  # training-loss rows evaluated per epoch (a fixed subset beyond this)


DIVERGENCE_CHECK_STEPS = 32  # on a GPU: steps between divergence read-backs (see train)


class Diverged(RuntimeError):
    """The loss became NaN or infinite."""

    def __init__(self, epoch: int, step: int, value: float) -> None:
        self.epoch, self.step, self.value = epoch, step, value
        super().__init__(
            f"training diverged at epoch {epoch}, step {step}: the loss is {value}"
            " (try a smaller optimizer.lr)"
        )


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
) -> TrainResult:
    """Train the spec's model; same seed, data and device give identical numbers.

    Raises ``Diverged`` on a non-finite loss and ``GradcheckFailed`` when the validator finds
    the manual gradients wrong. ``data`` overrides loading the spec's data set (a worker
    passes an uploaded file's rows this way).
    """
    cbs = CallbackList(callbacks)
    device = resolve_device(spec)
    engine = resolve_engine(spec)
    torch.set_num_threads(max(1, int(spec.resources.cpus)))
    data = data if data is not None else load_dataset(spec.dataset, seed=spec.seed)
    loss = spec.resolved_loss(data.task)
    width = output_width(loss, data.task, data.n_classes)
    opt = spec.optimizer
    reg = spec.regularization
    wd = reg.weight_decay
    dtype = torch.float32

    y_shift, y_scale = target_scaling(data)

    def tensors(X: Any, y: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return encode_part(
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

    X, y, T = tensors(data.X_train, data.y_train)
    Xv, yv, Tv = tensors(data.X_val, data.y_val)
    n = X.shape[0]
    if n == 0:
        raise ValueError("the training part of the data set is empty")
    eval_rows = torch.randperm(n, generator=torch.Generator().manual_seed(spec.seed))[
        :TRAIN_EVAL_ROWS
    ].to(device)
    # per epoch, one forward pass over these training rows followed by the validation rows
    X_eval = torch.cat([X[eval_rows], Xv])
    y_eval = torch.cat([y[eval_rows], yv])
    T_eval = torch.cat([T[eval_rows], Tv])
    eval_sizes = [len(eval_rows), Xv.shape[0]]

    model = build_mlp(
        spec.model,
        data.n_features,
        width,
        dropout=reg.dropout,
        generator=torch.Generator().manual_seed(spec.seed),
        dtype=dtype,
    ).to(device)
    flat = FlatParameters(model)
    params, grad_views = flat.params, flat.grads
    weights, biases = model.weights, model.biases
    decay = flat.decay_mask(wd)
    sgd = SGD(flat, momentum=opt.momentum, nesterov=opt.nesterov)
    batch_gen = torch.Generator().manual_seed(spec.seed + 1)
    drop_gen = torch.Generator(device=device).manual_seed(spec.seed + 2)

    spec_dict = spec.model_dump(mode="json")
    start_epoch, step = 0, 0
    history: list[EpochRecord] = []
    history_dicts: list[dict[str, Any]] = []
    best_loss: float | None = None
    best_epoch: int | None = None
    bad_epochs = 0
    best_params: list[torch.Tensor] | None = None
    if resume_from is not None:
        check_compatible(resume_from, spec_dict)
        with torch.no_grad():
            for p, saved in zip(params, resume_from.params, strict=True):
                p.copy_(saved)
            (saved_momentum,) = resume_from.momentum
            sgd.buffer.copy_(saved_momentum)
        batch_gen.set_state(resume_from.batch_rng)
        drop_gen.set_state(resume_from.dropout_rng)
        start_epoch, step = resume_from.epoch, resume_from.step
        history = [EpochRecord.from_dict(h) for h in resume_from.history]
        history_dicts = list(resume_from.history)
        best_loss, best_epoch, bad_epochs = (
            resume_from.best_loss,
            resume_from.best_epoch,
            resume_from.bad_epochs,
        )
        if resume_from.best_params is not None:
            best_params = [t.to(device) for t in resume_from.best_params]

    gc = spec.gradcheck
    gradchecks: list[dict[str, Any]] = []

    @torch.inference_mode(False)  # the validator runs autograd, also inside the manual loop
    def validate(Xb: torch.Tensor, Tb: torch.Tensor, masks: list[torch.Tensor] | None) -> None:
        k = min(gc.max_batch, Xb.shape[0])
        if not Tb.is_floating_point():  # class indices (fused cross-entropy): one-hot them
            Tb = nnf.one_hot(Tb[:k], width).to(Xb.dtype)
        report = check_gradients(
            weights,
            biases,
            Xb[:k],
            Tb[:k],
            activation=spec.model.activation,
            loss=loss,
            weight_decay=wd,
            masks=None if masks is None else [m[:k] for m in masks],
            tolerance=gc.tolerance,
            fd_tolerance=gc.fd_tolerance,
            fd_samples=gc.fd_samples,
            step=step,
            seed=spec.seed,
        )
        gradchecks.append(report.to_dict())
        cbs.on_gradcheck(report)
        if not report.passed:
            raise GradcheckFailed(report)

    # autograd with cross-entropy trains on class indices: PyTorch's fused log-softmax + NLL
    # (the same loss as loss_value on one-hot targets, in fewer operations)
    fused_ce = engine == "autograd" and loss == "cross_entropy"
    T_train = y if fused_ce else T

    def autograd_grads(Xb: torch.Tensor, Tb: torch.Tensor, masks: Any) -> None:
        flat.grad.zero_()  # autograd accumulates into the views of flat.grad
        out: torch.Tensor = model(Xb, masks)
        value = nnf.cross_entropy(out, Tb) if fused_ce else loss_value(loss, out, Tb)
        value.backward()

    # manual engine: features and encoded targets side by side, [X | T], so that one
    # index_select per step gathers a batch, into a buffer made once per batch size (the
    # epoch's last batch may be smaller), and a Backprop pass with its buffers per size
    manual = engine == "manual"
    XT = torch.cat([X, T], dim=1) if manual else X
    d_in = X.shape[1]
    plans: dict[int, tuple[Backprop, torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def plan_for(size: int) -> tuple[Backprop, torch.Tensor, torch.Tensor, torch.Tensor]:
        buf = torch.empty(size, XT.shape[1], dtype=XT.dtype, device=device)
        plan = Backprop(
            weights,
            biases,
            grad_views,
            activation=spec.model.activation,
            loss=loss,
            batch=size,
            masked=reg.dropout > 0.0,
        )
        plans[size] = (plan, buf, buf[:, :d_in], buf[:, d_in:])
        return plans[size]

    stop_checks = cbs.has_should_stop
    isfinite = math.isfinite
    last_bias_grad, flat_grad, flat_data = grad_views[-1], flat.grad, flat.data
    dropout = reg.dropout > 0.0
    # Divergence: on the CPU every step's gradient is checked before it is applied. On a GPU
    # that read-back would make the host wait for each step instead of queueing the next
    # one's kernels, so there the check reads back every DIVERGENCE_CHECK_STEPS steps and at
    # each epoch's last step, and also looks at the parameters: a non-finite parameter stays
    # non-finite under SGD, so a divergence is never missed, only reported that much later.
    check_every = 1 if device.type == "cpu" else DIVERGENCE_CHECK_STEPS
    # gradient checks: before step 0 (at_start), then at every multiple of every_steps
    if step == 0 and gc.at_start:
        next_check = 0
    elif gc.every_steps:
        next_check = max(-(-step // gc.every_steps), 1) * gc.every_steps
    else:
        next_check = -1
    status = "completed"
    cbs.on_train_start(
        spec=spec, engine=engine, device=str(device), n_train=n, resumed_epoch=start_epoch
    )
    bs = min(opt.batch_size, n)
    model.train()
    epoch = start_epoch
    for epoch in range(start_epoch, opt.epochs):
        lr = learning_rate(opt, epoch)
        t0 = time.perf_counter()
        before = [w.detach().clone() for w in weights]
        perm = torch.randperm(n, generator=batch_gen).to(device)
        # the manual engine records nothing for autograd: inference mode skips its bookkeeping
        with torch.inference_mode() if manual else torch.enable_grad():
            batches = perm.split(bs)
            last_batch = len(batches) - 1
            for i_batch, idx in enumerate(batches):
                if manual:
                    size = idx.shape[0]
                    plan, buf, Xb, Tb = plans[size] if size in plans else plan_for(size)
                    torch.index_select(XT, 0, idx, out=buf)
                else:
                    Xb, Tb = X.index_select(0, idx), T_train.index_select(0, idx)
                masks = sample_masks(model, len(idx), generator=drop_gen) if dropout else None
                if step == next_check:
                    validate(Xb, Tb, masks)
                    next_check = step + gc.every_steps if gc.every_steps else -1
                if manual:
                    plan.run(Xb, Tb, masks)
                else:
                    autograd_grads(Xb, Tb, masks)
                # ∇b⁽ᴸ⁾ = Σ Δ⁽ᴸ⁾ is finite iff F is; its few entries are summed in Python
                # (inf − inf is nan there too), cheaper than a tensor sum and its read-back
                if (check_every == 1 or step % check_every == 0 or i_batch == last_batch) and (
                    not isfinite(sum(last_bias_grad.tolist()))
                    or (check_every > 1 and not bool(torch.isfinite(flat_data).all()))
                ):
                    raise Diverged(epoch + 1, step + 1, float(last_bias_grad.sum()))
                if decay is not None:  # the gradient of λ‖W‖² is 2λW: added, not traced
                    flat_grad.addcmul_(decay, flat_data)
                sgd.step(lr)
                step += 1
                if stop_checks and cbs.should_stop():
                    status = "cancelled"
                    break
        if status == "cancelled":
            break
        seconds = time.perf_counter() - t0
        model.eval()
        (train_m, val_m), diags = evaluate_parts(
            model,
            X_eval,
            y_eval,
            T_eval,
            eval_sizes,
            loss=loss,
            task=data.task,
            y_scale=y_scale,
            weights_before=before,
        )
        model.train()
        if not math.isfinite(train_m["loss"]):
            raise Diverged(epoch + 1, step, train_m["loss"])
        record = EpochRecord(
            epoch=epoch + 1,
            step=step,
            lr=lr,
            seconds=seconds,
            samples_per_s=n / seconds if seconds > 0 else float("inf"),
            grad_norm=float(torch.linalg.vector_norm(flat.grad)),
            train=train_m,
            val=val_m,
            layers=diags,
        )
        history.append(record)
        history_dicts.append(record.to_dict())  # built once: checkpoints share the list

        # early stopping on the validation loss
        monitored = val_m.get("loss")
        stop_early = False
        if monitored is not None and (
            best_loss is None or monitored < best_loss - reg.early_stopping.min_delta
        ):
            best_loss, best_epoch, bad_epochs = monitored, epoch + 1, 0
            if reg.early_stopping.enabled and reg.early_stopping.restore_best:
                best_params = [p.detach().clone() for p in params]
        elif monitored is not None:
            bad_epochs += 1
            stop_early = reg.early_stopping.enabled and bad_epochs >= reg.early_stopping.patience
        cbs.on_epoch_end(record)
        last = stop_early or epoch + 1 == opt.epochs
        if cbs.wants_checkpoints and ((epoch + 1) % spec.checkpoint_every == 0 or last):
            cbs.on_checkpoint(
                Checkpoint(
                    spec=spec_dict,
                    epoch=epoch + 1,
                    step=step,
                    params=params,
                    momentum=[sgd.buffer],
                    batch_rng=batch_gen.get_state(),
                    dropout_rng=drop_gen.get_state(),
                    best_loss=best_loss,
                    best_epoch=best_epoch,
                    bad_epochs=bad_epochs,
                    best_params=best_params,
                    history=history_dicts,
                )
            )
        if stop_early:
            status = "early_stopped"
            break
        if stop_checks and cbs.should_stop():
            status = "cancelled"
            break

    if status != "cancelled" and best_params is not None and reg.early_stopping.restore_best:
        with torch.no_grad():
            for p, b in zip(params, best_params, strict=True):
                p.copy_(b)
    model.eval()
    metrics = final_metrics(model, data, loss=loss, dtype=dtype, device=device)
    return TrainResult(
        model=model,
        history=history,
        metrics=metrics,
        steps=step,
        epochs=len(history),
        best_epoch=best_epoch,
        status=status,
        engine=engine,
        device=str(device),
        data=data,
        loss=loss,
        target_shift=y_shift,
        target_scale=y_scale,
        gradchecks=gradchecks,
    )


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


def final_metrics(
    model: MLP, data: Dataset, *, loss: str, dtype: torch.dtype, device: torch.device
) -> dict[str, float]:
    """Loss and accuracy (or RMSE and R²) of the model on each non-empty part of the data."""
    width = model.widths[-1]
    y_shift, y_scale = target_scaling(data)
    out: dict[str, float] = {}
    for part, X, y in (
        ("train", data.X_train, data.y_train),
        ("val", data.X_val, data.y_val),
        ("test", data.X_test, data.y_test),
    ):
        if len(X) == 0:
            continue
        Xt, yt, Tt = encode_part(
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
        metrics, _ = evaluate(model, Xt, yt, Tt, loss=loss, task=data.task, y_scale=y_scale)
        for k, v in metrics.items():
            out[f"{part}_{k}"] = v
    return out
