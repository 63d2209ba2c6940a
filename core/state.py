"""The training state: what a run changes as it trains, and its conversion to and from a
``Checkpoint``, so that a resumed run continues bit for bit where the checkpoint was written.

``TrainState`` holds the live tensors (the parameters, the momentum buffer) and random
generators (minibatch order, dropout masks) by reference, and the counters, the history and
the early-stopping state by value. ``EarlyStopping`` is the early-stopping rule with its state.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from core.callbacks import EpochRecord
from core.checkpoint import Checkpoint, CheckpointError
from core.spec import EarlyStoppingSpec, JobSpec


@dataclass
class EarlyStopping:
    """Early stopping on the validation loss.

    An epoch improves when its validation loss is below the best so far minus ``min_delta``;
    after ``patience`` epochs in a row without an improvement training stops, when
    ``enabled``. The best loss and epoch are tracked (and reported) also when it is not
    enabled; with ``enabled`` and ``restore_best`` the best epoch's parameters are kept and
    ``restore`` puts them back at the end. Without a validation part nothing is tracked.
    """

    enabled: bool
    patience: int
    min_delta: float
    restore_best: bool
    best_loss: float | None = None
    best_epoch: int | None = None
    bad_epochs: int = 0
    best_params: list[torch.Tensor] | None = None

    @classmethod
    def from_spec(cls, spec: EarlyStoppingSpec) -> EarlyStopping:
        return cls(spec.enabled, spec.patience, spec.min_delta, spec.restore_best)

    def update(self, epoch: int, val_loss: float | None, params: Sequence[torch.Tensor]) -> bool:
        """Take epoch ``epoch``'s (1-based) validation loss, None without a validation part;
        copies ``params`` when they are the best kept so far. True: stop training now."""
        if val_loss is None:
            return False
        if self.best_loss is None or val_loss < self.best_loss - self.min_delta:
            self.best_loss, self.best_epoch, self.bad_epochs = val_loss, epoch, 0
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
    ``momentum`` and the generators are the live objects training updates; ``epoch`` and
    ``step`` count the epochs completed and the optimizer steps taken; ``history_dicts`` is
    ``history`` as dicts, built once per epoch and shared by every checkpoint."""

    params: list[torch.Tensor]
    momentum: torch.Tensor
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
        momentum: torch.Tensor,
        device: torch.device,
    ) -> TrainState:
        """Before the first step: generators seeded from the spec's seed, nothing learnt."""
        return cls(
            params=params,
            momentum=momentum,
            batch_rng=torch.Generator().manual_seed(spec.seed + 1),
            dropout_rng=torch.Generator(device=device).manual_seed(spec.seed + 2),
            early=EarlyStopping.from_spec(spec.regularization.early_stopping),
        )

    def end_epoch(self, record: EpochRecord) -> bool:
        """Add the epoch's record and let early stopping see it; True: stop training now."""
        self.epoch = record.epoch
        self.history.append(record)
        self.history_dicts.append(record.to_dict())
        return self.early.update(record.epoch, record.val.get("loss"), self.params)

    def to_checkpoint(self, spec: dict[str, Any]) -> Checkpoint:
        """The state now, for the job whose spec (as JSON) is ``spec``. Its tensors are the
        live ones (``Callback.on_checkpoint`` serialises them before training goes on)."""
        early = self.early
        return Checkpoint(
            spec=spec,
            epoch=self.epoch,
            step=self.step,
            params=self.params,
            momentum=[self.momentum],
            batch_rng=self.batch_rng.get_state(),
            dropout_rng=self.dropout_rng.get_state(),
            best_loss=early.best_loss,
            best_epoch=early.best_epoch,
            bad_epochs=early.bad_epochs,
            best_params=early.best_params,
            history=self.history_dicts,
        )

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
            (saved_momentum,) = ckpt.momentum
            self.momentum.copy_(saved_momentum)
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
