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

import torch

from core.spec import OptimizerSpec


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


class FlatParameters:
    """Every parameter of a model as a view into one contiguous buffer, and every gradient as
    a view into another, so that an optimizer step and weight decay are a handful of tensor
    operations on one tensor instead of several per parameter.

    The model's parameters are replaced by views of ``data`` (same values), which keeps
    ``model.parameters()``, ``state_dict()`` and autograd working as before. ``grads`` lists
    views of ``grad`` in the order of ``model.parameters()``; the autograd engine accumulates
    into them (they are installed as each parameter's ``.grad``), the manual engine writes
    into them with ``out=``.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        named = list(model.named_parameters())
        total = sum(p.numel() for _, p in named)
        ref = named[0][1]
        self.data = torch.empty(total, dtype=ref.dtype, device=ref.device)
        self.grad = torch.zeros_like(self.data)
        self.params: list[torch.Tensor] = []
        self.grads: list[torch.Tensor] = []
        offset = 0
        for name, p in named:
            n = p.numel()
            view = self.data[offset : offset + n].view_as(p)
            view.copy_(p.detach())
            param = torch.nn.Parameter(view, requires_grad=p.requires_grad)
            module_name, _, attr = name.rpartition(".")
            setattr(model.get_submodule(module_name), attr, param)
            param.grad = self.grad[offset : offset + n].view_as(p)
            self.params.append(param)
            self.grads.append(param.grad)
            offset += n

    def decay_mask(self, weight_decay: float) -> torch.Tensor | None:
        """2λ at the weight matrices' entries, 0 at the biases': ``grad += mask ⊙ data`` adds
        the gradient of λ·Σ‖W‖² in one operation. None when λ = 0."""
        if not weight_decay:
            return None
        mask = torch.zeros_like(self.data)
        offset = 0
        for p in self.params:
            if p.dim() == 2:
                mask[offset : offset + p.numel()] = 2.0 * weight_decay
            offset += p.numel()
        return mask


class SGD:
    """The update above on a :class:`FlatParameters` buffer: three operations a step."""

    def __init__(self, flat: FlatParameters, *, momentum: float, nesterov: bool) -> None:
        self.flat = flat
        self.momentum = momentum
        self.nesterov = nesterov
        self.buffer = torch.zeros_like(flat.data)

    def step(self, lr: float) -> None:
        """In place on buffers no autograd graph records: no ``no_grad`` needed (or paid)."""
        g = self.flat.grad
        if self.momentum:
            torch.add(g, self.buffer, alpha=self.momentum, out=self.buffer)  # v ← g + μv
            if self.nesterov:
                g.add_(self.buffer, alpha=self.momentum)
                direction = g
            else:
                direction = self.buffer
        else:
            direction = g
        self.flat.data.add_(direction, alpha=-lr)
