"""The full training state, enough to resume a job exactly where it stopped.

A checkpoint holds the weights, the optimizer's state (sgd's momentum buffer as ``momentum``,
adam's, adamw's and rmsprop's tensors by name in ``optimizer`` with their step count), the
state of a plateau schedule, the states of the random generators
(minibatch order and dropout masks), the epoch and step reached, the early-stopping state,
the history so far and the spec. Training N epochs straight and training N/2, saving, loading
in a new process and finishing give bit-identical weights on the same device.

Serialised with ``torch.save`` and read back with ``weights_only=True``: loading a checkpoint
runs no pickled code.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or that belongs to a different job."""


@dataclass
class Checkpoint:
    spec: dict[str, Any]
    epoch: int  # epochs completed
    step: int  # optimizer steps taken
    params: list[torch.Tensor]  # W1, b1, …, aligned with model.parameters()
    momentum: list[torch.Tensor]  # sgd's; empty for another optimizer
    batch_rng: torch.Tensor  # torch.Generator state (CPU): minibatch order
    dropout_rng: torch.Tensor  # torch.Generator state on the training device
    best_loss: float | None = None
    best_epoch: int | None = None
    bad_epochs: int = 0
    best_params: list[torch.Tensor] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    # another optimizer's state tensors by name (adam: exp_avg, exp_avg_sq), its steps taken
    optimizer: dict[str, torch.Tensor] = field(default_factory=dict)
    optimizer_steps: int = 0
    schedule: dict[str, Any] | None = None  # a plateau schedule's state (core.optim.Schedule)

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        torch.save(
            {
                "format": FORMAT,
                "spec": json.dumps(self.spec),
                "epoch": self.epoch,
                "step": self.step,
                "params": [_own(p) for p in self.params],
                "momentum": [_own(m) for m in self.momentum],
                "batch_rng": self.batch_rng.cpu(),
                "dropout_rng": self.dropout_rng.cpu(),
                "best_loss": self.best_loss,
                "best_epoch": self.best_epoch,
                "bad_epochs": self.bad_epochs,
                "best_params": None
                if self.best_params is None
                else [_own(p) for p in self.best_params],
                "history": json.dumps(self.history),
                "optimizer": {k: _own(v) for k, v in self.optimizer.items()},
                "optimizer_steps": self.optimizer_steps,
                "schedule": None if self.schedule is None else json.dumps(self.schedule),
            },
            buf,
        )
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> Checkpoint:
        try:
            raw = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many kinds for a corrupt file
            raise CheckpointError(f"not a gradq checkpoint: {exc}") from None
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise CheckpointError("not a gradq checkpoint (unknown format)")
        return cls(
            spec=json.loads(raw["spec"]),
            epoch=raw["epoch"],
            step=raw["step"],
            params=raw["params"],
            momentum=raw["momentum"],
            batch_rng=raw["batch_rng"],
            dropout_rng=raw["dropout_rng"],
            best_loss=raw["best_loss"],
            best_epoch=raw["best_epoch"],
            bad_epochs=raw["bad_epochs"],
            best_params=raw["best_params"],
            history=json.loads(raw["history"]),
            optimizer=raw.get("optimizer") or {},  # absent before optimizers other than sgd
            optimizer_steps=raw.get("optimizer_steps", 0),
            schedule=None if raw.get("schedule") is None else json.loads(raw["schedule"]),
        )

    def save(self, path: str | Path) -> None:
        """Write atomically: a reader never sees half a checkpoint."""
        path = Path(path)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_bytes(self.to_bytes())
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> Checkpoint:
        try:
            return cls.from_bytes(Path(path).read_bytes())
        except OSError as exc:
            raise CheckpointError(f"cannot read checkpoint {path}: {exc.strerror}") from None


def _own(t: torch.Tensor) -> torch.Tensor:
    """A CPU copy with storage of its own: a view would save its whole base buffer."""
    return t.detach().to("cpu", copy=True).contiguous()


# Spec sections that may differ between the run that wrote a checkpoint and the one resuming it.
RESUMABLE_CHANGES = {"name", "priority", "max_attempts", "resources", "register_as", "experiment"}


def check_compatible(
    ckpt: Checkpoint, spec: dict[str, Any], *, extend_schedule: bool = False
) -> None:
    """Refuse to resume a job from another job's checkpoint, naming each field that differs
    (``optimizer.lr: 0.1 in the checkpoint, 0.05 here``). The checkpoint's spec is read as a
    spec today reads (``core.spec.JobSpec``, with the defaults of fields added since it was
    written), so a checkpoint written before a field was added resumes.

    ``optimizer.epochs`` may grow (a run extended): with a schedule that does not depend on
    the epochs (constant, step, plateau, and their warm-up) as it is; with ``cosine`` only
    when ``extend_schedule`` says to recompute the schedule over the new epochs (its rate
    rises again from where the old one ended)."""
    saved = _flat(_normalised(ckpt.spec))
    now = _flat(spec)
    diff = sorted(
        k
        for k in set(now) | set(saved)
        if k.split(".", 1)[0] not in RESUMABLE_CHANGES and now.get(k) != saved.get(k)
    )
    if diff == [EPOCHS]:
        _check_extension(ckpt, saved, now, extend_schedule)
        return
    if diff:
        said = "; ".join(
            f"{k}: {_shown(saved, k)} in the checkpoint, {_shown(now, k)} here" for k in diff
        )
        raise CheckpointError(f"checkpoint was written for a different spec (differs in: {said})")


EPOCHS = "optimizer.epochs"


def _check_extension(
    ckpt: Checkpoint, saved: dict[str, Any], now: dict[str, Any], extend_schedule: bool
) -> None:
    epochs = now[EPOCHS]
    if not isinstance(epochs, int) or epochs < ckpt.epoch:
        raise CheckpointError(
            f"{EPOCHS}: {epochs}, but the checkpoint has trained {ckpt.epoch} epochs already"
        )
    if now.get("optimizer.schedule.kind") == "cosine" and not extend_schedule:
        raise CheckpointError(
            f"{EPOCHS}: {epochs} here, {saved.get(EPOCHS)} in the checkpoint, and a cosine "
            "schedule runs over the epochs: recompute it over the new ones with "
            "--extend-schedule (its rate rises again), or resume with the same epochs"
        )


def _flat(spec: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optimizer": {"lr": 0.1}}`` as ``{"optimizer.lr": 0.1}`` (lists whole)."""
    out: dict[str, Any] = {}
    for k, v in spec.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _shown(flat: dict[str, Any], key: str) -> str:
    return json.dumps(flat[key]) if key in flat else "absent"


def _normalised(spec: dict[str, Any]) -> dict[str, Any]:
    from core.spec import JobSpec  # core.spec does not depend on this module's callers

    try:
        return JobSpec.model_validate(spec).model_dump(mode="json")
    except ValueError:
        return spec
