"""Minibatch SGD with (Nesterov) momentum, and the learning-rate schedules.

The update follows PyTorch's ``torch.optim.SGD`` (dampening 0), so both engines and a plain
PyTorch loop take identical steps from identical gradients:

    v ← μ·v + g            (v starts at 0, so the first v is g)
    d = g + μ·v if Nesterov else v
    θ ← θ − η·d

Weight decay is not applied here: it is part of the objective (λ‖W‖², see ``core.spec``), so it
is already inside g.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from core.spec import OptimizerSpec


class SGD:
    def __init__(self, params: Sequence[torch.Tensor], *, momentum: float, nesterov: bool) -> None:
        self.params = list(params)
        self.momentum = momentum
        self.nesterov = nesterov
        self.buffers = [torch.zeros_like(p) for p in self.params] if momentum else []

    @torch.no_grad()
    def step(self, grads: list[torch.Tensor], lr: float) -> None:
        """Apply one update; ``grads`` (aligned with params) may be overwritten."""
        if self.momentum:
            torch._foreach_mul_(self.buffers, self.momentum)
            torch._foreach_add_(self.buffers, grads)
            if self.nesterov:
                torch._foreach_add_(grads, self.buffers, alpha=self.momentum)
                direction = grads
            else:
                direction = self.buffers
        else:
            direction = grads
        torch._foreach_add_(self.params, direction, alpha=-lr)


def learning_rate(spec: OptimizerSpec, epoch: int) -> float:
    """The rate for epoch ``epoch`` (0-based) under the spec's schedule."""
    s = spec.schedule
    if s.kind == "constant":
        return spec.lr
    if s.kind == "step":
        return spec.lr * s.gamma ** (epoch // s.step_size)
    # cosine, from lr at epoch 0 towards min_lr at the last epoch
    t = epoch / max(spec.epochs - 1, 1)
    return s.min_lr + 0.5 * (spec.lr - s.min_lr) * (1.0 + math.cos(math.pi * t))
