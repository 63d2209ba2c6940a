"""The training state: what a run changes as it trains, and its conversion to and from a
``Checkpoint``, so that a resumed run continues bit for bit where the checkpoint was written.

``TrainState`` holds the live tensors (the parameters, the optimizer's state) and random
generators (minibatch order, dropout masks) by reference, the learning-rate ``Schedule`` (a
plateau's state), and the counters, the history and the early-stopping state by value.
``EarlyStopping`` is the early-stopping rule with its state.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from core.callbacks import EpochRecord
from core.checkpoint import Checkpoint, CheckpointError
from core.optim import SGD, Optimizer, Schedule
from core.spec import EarlyStoppingSpec, JobSpec, monitor_mode


@dataclass
class EarlyStopping:
    """Early stopping on a monitored per-epoch metric (``monitor``, default the validation
    loss; ``maximise`` for accuracy and R² unless the spec's mode says otherwise).

    An epoch improves when its value is better than the best so far by more than
    ``min_delta`` (below best − min_delta, or above best + min_delta when maximising); after
    ``patience`` epochs in a row without an improvement training stops, when ``enabled``.
    The best value (``best_loss``, as checkpoints name it) and epoch are tracked (and
    reported) also when it is not enabled; with ``enabled`` and ``restore_best`` the best
    epoch's parameters are kept and ``restore`` puts them back at the end. Without the
    monitored metric (a validation metric without a validation part) nothing is tracked.
    """

    enabled: bool
    patience: int
    min_delta: float
    restore_best: bool
    best_loss: float | None = None
    best_epoch: int | None = None
    bad_epochs: int = 0
    best_params: list[torch.Tensor] | None = None
    monitor: str = "val_loss"
    maximise: bool = False

    @classmethod
    def from_spec(cls, spec: EarlyStoppingSpec) -> EarlyStopping:
        return cls(
            spec.enabled,
            spec.patience,
            spec.min_delta,
            spec.restore_best,
            monitor=spec.monitor,
            maximise=monitor_mode(spec.monitor, spec.mode) == "max",
        )

    def value(self, record: EpochRecord) -> float | None:
        """The monitored metric in ``record`` (None when the record has none)."""
        part, _, name = self.monitor.partition("_")
        return (record.val if part == "val" else record.train).get(name)

    def update(self, epoch: int, value: float | None, params: Sequence[torch.Tensor]) -> bool:
        """Take epoch ``epoch``'s (1-based) monitored value, None when there is none; copies
        ``params`` when they are the best kept so far. True: stop training now."""
        if value is None:
            return False
        best = self.best_loss
        if best is None or (
            value > best + self.min_delta if self.maximise else value < best - self.min_delta
        ):
            self.best_loss, self.best_epoch, self.bad_epochs = value, epoch, 0
            if self.enabled and self.restore_best:
                self.best_params = [p.detach().clone() for p in params]
            return False
        self.bad_epochs += 1
        return self.enabled and self.bad_epochs >= self.patience

    def restore(self, params: Sequence[torch.Tensor]) -> None:
        """Copy the best epoch's parameters into ``params``, when they were kept."""
        if self.best_params is None or not self.restore_best:
            return
        with torch.no_grad():
            for p, best in zip(params, self.best_params, strict=True):
                p.copy_(best)


@dataclass
class TrainState:
    """Everything a checkpoint carries. ``params`` (aligned with ``model.parameters()``),
    the ``optimizer`` (its state tensors) and the generators are the live objects training
    updates; ``schedule`` gives each epoch's rate; ``epoch`` and
    ``step`` count the epochs completed and the optimizer steps taken; ``history_dicts`` is
    ``history`` as dicts, built once per epoch and shared by every checkpoint."""

    params: list[torch.Tensor]
    optimizer: Optimizer
    schedule: Schedule
    batch_rng: torch.Generator  # on the CPU: minibatch order
    dropout_rng: torch.Generator  # on the training device: dropout masks
    early: EarlyStopping
    epoch: int = 0
    step: int = 0
    history: list[EpochRecord] = field(default_factory=list)
    history_dicts: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def start(
        cls,
        spec: JobSpec,
        params: list[torch.Tensor],
        optimizer: Optimizer,
        device: torch.device,
    ) -> TrainState:
        """Before the first step: generators seeded from the spec's seed, nothing learnt."""
        return cls(
            params=params,
            optimizer=optimizer,
            schedule=Schedule(spec.optimizer),
            batch_rng=torch.Generator().manual_seed(spec.seed + 1),
            dropout_rng=torch.Generator(device=device).manual_seed(spec.seed + 2),
            early=EarlyStopping.from_spec(spec.regularization.early_stopping),
        )

    def end_epoch(self, record: EpochRecord) -> bool:
        """Add the epoch's record and let early stopping see it; True: stop training now."""
        self.epoch = record.epoch
        self.history.append(record)
        self.history_dicts.append(record.to_dict())
        if self.schedule.plateau:
            self.schedule.observe(record.epoch - 1, record.metrics())
        return self.early.update(record.epoch, self.early.value(record), self.params)

    def to_checkpoint(self, spec: dict[str, Any]) -> Checkpoint:
        """The state now, for the job whose spec (as JSON) is ``spec``. Its tensors are the
        live ones (``Callback.on_checkpoint`` serialises them before training goes on)."""
        early, opt = self.early, self.optimizer
        return Checkpoint(
            spec=spec,
            epoch=self.epoch,
            step=self.step,
            params=self.params,
            momentum=[opt.buffer] if isinstance(opt, SGD) else [],
            optimizer={} if isinstance(opt, SGD) else opt.state_tensors(),
            optimizer_steps=opt.steps,
            schedule=self.schedule.state_dict() if self.schedule.plateau else None,
            batch_rng=self.batch_rng.get_state(),
            dropout_rng=self.dropout_rng.get_state(),
            best_loss=early.best_loss,
            best_epoch=early.best_epoch,
            bad_epochs=early.bad_epochs,
            best_params=early.best_params,
            history=self.history_dicts,
        )

    def warm_start(self, weights: Sequence[torch.Tensor]) -> None:
        """Start from another job's weights (``init_from``): copied into the live parameters;
        everything else stays as a fresh start's (step and epoch 0, a fresh optimizer state,
        the schedule from its start, the generators from the spec's seed)."""
        theirs = [tuple(w.shape) for w in weights]
        ours = [tuple(p.shape) for p in self.params]
        if theirs != ours:
            raise CheckpointError(
                f"init_from: the weights have shapes {theirs}, this model's are {ours}"
            )
        with torch.no_grad():
            for p, w in zip(self.params, weights, strict=True):
                p.copy_(w.to(dtype=p.dtype))

    def load_checkpoint(self, ckpt: Checkpoint) -> None:
        """Continue from ``ckpt``: its tensors and generator states are copied into the live
        ones, its counters, history and early-stopping state replace these. The caller checks
        that it belongs to the same job (``check_compatible``)."""
        device, dtype = self.params[0].device, self.params[0].dtype
        if ckpt.params and ckpt.params[0].dtype != dtype:
            raise CheckpointError(
                f"checkpoint holds {ckpt.params[0].dtype} parameters, but this run trains in"
                f" {dtype}"
            )
        with torch.no_grad():
            for p, saved in zip(self.params, ckpt.params, strict=True):
                p.copy_(saved)
            opt = self.optimizer
            held = dict(zip(["momentum"], ckpt.momentum, strict=False)) | ckpt.optimizer
            live = opt.state_tensors()
            if set(held) != set(live):
                raise CheckpointError(
                    f"checkpoint holds the state of another optimizer ({', '.join(sorted(held))})"
                )
            for name, tensor in live.items():
                tensor.copy_(held[name])
            opt.steps = ckpt.optimizer_steps
        if ckpt.schedule is not None:
            self.schedule.load_state_dict(ckpt.schedule)
        self.batch_rng.set_state(ckpt.batch_rng)
        self.dropout_rng.set_state(ckpt.dropout_rng)
        self.epoch, self.step = ckpt.epoch, ckpt.step
        self.history = [EpochRecord.from_dict(h) for h in ckpt.history]
        self.history_dicts = list(ckpt.history)
        early = self.early
        early.best_loss, early.best_epoch = ckpt.best_loss, ckpt.best_epoch
        early.bad_epochs = ckpt.bad_epochs
        if ckpt.best_params is not None:
            early.best_params = [t.to(device) for t in ckpt.best_params]
