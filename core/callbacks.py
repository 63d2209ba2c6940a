"""How the training loop reports: per-epoch records and a callback interface.

A callback overrides any of the hooks; the loop calls ``should_stop`` between steps only for
callbacks that override it, so an unused hook costs nothing in the hot loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from core.checkpoint import Checkpoint
    from core.gradcheck import GradcheckReport
    from core.spec import JobSpec


@dataclass
class EpochRecord:
    """What one epoch did. ``train``/``val`` map metric names (loss, accuracy or rmse, r2) to
    values; ``layers`` has per-layer diagnostics (dead_fraction, update_ratio, weight_norm)."""

    epoch: int  # 1-based
    step: int  # optimizer steps taken so far
    lr: float
    seconds: float
    samples_per_s: float
    grad_norm: float  # of the last step's gradient, all parameters
    train: dict[str, float] = field(default_factory=dict)
    val: dict[str, float] = field(default_factory=dict)
    layers: list[dict[str, float]] = field(default_factory=list)
    clipped_steps: int | None = None  # with optimizer.clip_norm: the steps it scaled down

    def to_dict(self) -> dict[str, Any]:
        """What ``dataclasses.asdict`` gives (fresh dicts and lists), built directly: a job
        builds one per epoch."""
        return {
            "epoch": self.epoch,
            "step": self.step,
            "lr": self.lr,
            "seconds": self.seconds,
            "samples_per_s": self.samples_per_s,
            "grad_norm": self.grad_norm,
            "train": dict(self.train),
            "val": dict(self.val),
            "layers": [dict(layer) for layer in self.layers],
            "clipped_steps": self.clipped_steps,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EpochRecord:
        return cls(**d)

    def metrics(self) -> dict[str, float]:
        """Flat metric names: train_loss, val_accuracy, layer1_dead_fraction, … (a job's
        progress carries them; its MLflow run keys them by section, ``loss/train``, …)."""
        out = {
            "lr": self.lr,
            "epoch_seconds": self.seconds,
            "samples_per_s": self.samples_per_s,
            "grad_norm": self.grad_norm,
        }
        if self.clipped_steps is not None:
            out["clipped_steps"] = self.clipped_steps
        out.update({f"train_{k}": v for k, v in self.train.items()})
        out.update({f"val_{k}": v for k, v in self.val.items()})
        for i, layer in enumerate(self.layers, start=1):
            out.update({f"layer{i}_{k}": v for k, v in layer.items()})
        return out


class Callback:
    """Base class: every hook does nothing."""

    def on_train_start(
        self, *, spec: JobSpec, engine: str, device: str, n_train: int, resumed_epoch: int
    ) -> None:
        """Before the first step (``resumed_epoch`` > 0 when resuming a checkpoint)."""

    def on_epoch_end(self, record: EpochRecord) -> None:
        """After each epoch's evaluation."""

    def on_gradcheck(self, report: GradcheckReport) -> None:
        """After each gradient check, passed or not."""

    def on_checkpoint(self, checkpoint: Checkpoint) -> None:
        """Every ``spec.checkpoint_every`` epochs and after the last one. The tensors are the
        live ones: serialise (``checkpoint.to_bytes()``) before returning."""

    def should_stop(self) -> bool:
        """Asked between steps; True stops training with status "cancelled"."""
        return False


class CallbackList:
    def __init__(self, callbacks: Sequence[Callback]) -> None:
        self.callbacks = list(callbacks)
        self._stoppers = [
            c for c in self.callbacks if type(c).should_stop is not Callback.should_stop
        ]

    @property
    def wants_checkpoints(self) -> bool:
        """Whether any callback takes checkpoints (building one copies the state)."""
        return any(type(c).on_checkpoint is not Callback.on_checkpoint for c in self.callbacks)

    @property
    def has_should_stop(self) -> bool:
        return bool(self._stoppers)

    def on_train_start(self, **kwargs: Any) -> None:
        for c in self.callbacks:
            c.on_train_start(**kwargs)

    def on_epoch_end(self, record: EpochRecord) -> None:
        for c in self.callbacks:
            c.on_epoch_end(record)

    def on_gradcheck(self, report: GradcheckReport) -> None:
        for c in self.callbacks:
            c.on_gradcheck(report)

    def on_checkpoint(self, checkpoint: Checkpoint) -> None:
        for c in self.callbacks:
            c.on_checkpoint(checkpoint)

    def should_stop(self) -> bool:
        return any(c.should_stop() for c in self._stoppers)
