"""The optimizers on a flat parameter buffer, gradient clipping, and the learning-rate schedules.

Each optimizer's update is ``torch.optim``'s (its single-tensor form), so both engines and a
plain PyTorch loop take the same steps from the same gradients (tests/unit/core/test_optim.py
checks each against ``torch.optim`` in float64, to 1e-12 a step). With g the gradient, η the
rate and t the step (from 1):

    sgd       v ← μ·v + g  (v starts at 0);  d = g + μ·v if Nesterov else v;  θ ← θ − η·d
    adam      m ← β₁m + (1−β₁)g;  s ← β₂s + (1−β₂)g²;
              θ ← θ − η/(1−β₁ᵗ) · m / (√s/√(1−β₂ᵗ) + ε)
    adamw     θ ← θ − η·2λ·θ on the weight matrices, then adam's step
    rmsprop   s ← αs + (1−α)g²;  θ ← θ − η·g/(√s + ε)

Weight decay λ·Σ‖W‖² (``core.spec.RegularizationSpec``) is part of the objective for sgd,
adam and rmsprop: the training loop adds 2λW to g before the step. adamw's decay is
decoupled, in the step above. Either way it is ``torch.optim``'s ``weight_decay`` = 2λ with
the weight matrices in one parameter group and the biases in another without decay.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from core.spec import OptimizerSpec


def learning_rate(spec: OptimizerSpec, epoch: int) -> float:
    """The rate for epoch ``epoch`` (0-based) under the spec's schedule, after its linear
    warm-up; a ``plateau`` schedule's rate before any reduction (``Schedule`` reduces it)."""
    s = spec.schedule
    w = s.warmup_epochs
    if epoch < w:
        return spec.lr * (epoch + 1) / (w + 1)
    epoch -= w
    if s.kind in ("constant", "plateau"):
        return spec.lr
    if s.kind == "step":
        return spec.lr * s.gamma ** (epoch // s.step_size)
    # cosine, from lr at the schedule's epoch 0 towards min_lr at the last epoch
    t = epoch / max(spec.epochs - w - 1, 1)
    return s.min_lr + 0.5 * (spec.lr - s.min_lr) * (1.0 + math.cos(math.pi * t))


class Schedule:
    """The rate of each epoch: ``learning_rate``, and for ``plateau`` the reductions, whose
    state (``state_dict``) a checkpoint carries. ``observe(metrics)`` takes an epoch's
    record (``EpochRecord.metrics()``) after the epoch: a plateau schedule counts the epochs
    in a row whose ``monitor`` did not improve on the best (by ``mode``); at ``patience``
    of them the rate is multiplied by gamma (not below min_lr), the count restarts and
    ``cooldown`` epochs pass before it counts again. Warm-up epochs are not observed."""

    def __init__(self, spec: OptimizerSpec) -> None:
        from core.spec import monitor_mode

        self.spec = spec
        self.plateau = spec.schedule.kind == "plateau"
        self.maximise = monitor_mode(spec.schedule.monitor, spec.schedule.mode) == "max"
        self.rate: float = spec.lr  # plateau: the rate now
        self.best: float | None = None
        self.bad_epochs = 0
        self.cooldown = 0

    def lr(self, epoch: int) -> float:
        if self.plateau and epoch >= self.spec.schedule.warmup_epochs:
            return self.rate
        return learning_rate(self.spec, epoch)

    def observe(self, epoch: int, metrics: dict[str, float]) -> None:
        """After epoch ``epoch`` (0-based) with its record's ``metrics``."""
        s = self.spec.schedule
        if not self.plateau or epoch < s.warmup_epochs or s.monitor not in metrics:
            return
        value = metrics[s.monitor]
        better = self.best is None or (value > self.best if self.maximise else value < self.best)
        if better:
            self.best, self.bad_epochs = value, 0
        elif self.cooldown > 0:
            self.bad_epochs = 0
        else:
            self.bad_epochs += 1
        if self.cooldown > 0:
            self.cooldown -= 1
        if self.bad_epochs >= s.patience:
            self.rate = max(self.rate * s.gamma, s.min_lr)
            self.bad_epochs, self.cooldown = 0, s.cooldown

    def state_dict(self) -> dict[str, Any]:
        return {
            "rate": self.rate,
            "best": self.best,
            "bad_epochs": self.bad_epochs,
            "cooldown": self.cooldown,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rate, self.best = state["rate"], state["best"]
        self.bad_epochs, self.cooldown = state["bad_epochs"], state["cooldown"]


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
    """The sgd update above on a :class:`FlatParameters` buffer: three operations a step."""

    name = "sgd"

    def __init__(self, flat: FlatParameters, *, momentum: float, nesterov: bool) -> None:
        self.flat = flat
        self.momentum = momentum
        self.nesterov = nesterov
        self.buffer = torch.zeros_like(flat.data)
        self.steps = 0  # not counted: sgd's update does not depend on it

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

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The live state tensors, by name."""
        return {"momentum": self.buffer}


_FUSED_ADAM = getattr(torch, "_fused_adam_", None)  # torch.optim.Adam(fused=True)'s kernel


class Adam:
    """adam's update above (adamw's with ``decoupled``: the 2λ mask of
    ``FlatParameters.decay_mask``) on a :class:`FlatParameters` buffer. The update is one
    kernel, ``torch.optim.Adam(fused=True)``'s, where this torch has it (``fused``): the
    operations below one by one cost several times an sgd step on a small network; both
    forms take torch.optim.Adam's steps (tests/unit/core/test_optim.py)."""

    def __init__(
        self,
        flat: FlatParameters,
        *,
        betas: tuple[float, float],
        eps: float,
        decoupled: torch.Tensor | None = None,
        fused: bool = True,
    ) -> None:
        self.name = "adam" if decoupled is None else "adamw"
        self.flat, self.beta1, self.beta2, self.eps = flat, betas[0], betas[1], eps
        self.decoupled = decoupled
        self.exp_avg = torch.zeros_like(flat.data)
        self.exp_avg_sq = torch.zeros_like(flat.data)
        self.denom = torch.empty_like(flat.data)
        self.steps = 0
        self.fused = fused and _FUSED_ADAM is not None
        self._step_t = torch.zeros((), dtype=torch.float32, device=flat.data.device)
        self._lists: tuple[list[torch.Tensor], ...] = (
            [flat.data],
            [flat.grad],
            [self.exp_avg],
            [self.exp_avg_sq],
            [],
        )

    def step(self, lr: float) -> None:
        g, p, b1, b2 = self.flat.grad, self.flat.data, self.beta1, self.beta2
        self.steps += 1
        t = self.steps
        if self.decoupled is not None:
            p.addcmul_(self.decoupled, p, value=-lr)  # θ − η·2λ·θ, 0 at the biases
        if self.fused:
            self._step_t.fill_(t)
            _FUSED_ADAM(  # type: ignore[misc]
                *self._lists,
                [self._step_t],
                lr=lr,
                beta1=b1,
                beta2=b2,
                weight_decay=0.0,
                eps=self.eps,
                amsgrad=False,
                maximize=False,
            )
            return
        self.exp_avg.lerp_(g, 1 - b1)
        self.exp_avg_sq.mul_(b2).addcmul_(g, g, value=1 - b2)
        bias_correction2_sqrt = (1 - b2**t) ** 0.5
        torch.sqrt(self.exp_avg_sq, out=self.denom).div_(bias_correction2_sqrt).add_(self.eps)
        p.addcdiv_(self.exp_avg, self.denom, value=-lr / (1 - b1**t))

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {"exp_avg": self.exp_avg, "exp_avg_sq": self.exp_avg_sq}


class RMSprop:
    """rmsprop's update above on a :class:`FlatParameters` buffer."""

    name = "rmsprop"

    def __init__(self, flat: FlatParameters, *, alpha: float, eps: float) -> None:
        self.flat, self.alpha, self.eps = flat, alpha, eps
        self.square_avg = torch.zeros_like(flat.data)
        self.denom = torch.empty_like(flat.data)
        self.steps = 0

    def step(self, lr: float) -> None:
        g = self.flat.grad
        self.steps += 1
        self.square_avg.mul_(self.alpha).addcmul_(g, g, value=1 - self.alpha)
        torch.sqrt(self.square_avg, out=self.denom).add_(self.eps)
        self.flat.data.addcdiv_(g, self.denom, value=-lr)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {"square_avg": self.square_avg}


Optimizer = SGD | Adam | RMSprop


def make_optimizer(spec: OptimizerSpec, flat: FlatParameters, weight_decay: float) -> Optimizer:
    """The spec's optimizer on ``flat``; ``weight_decay`` (λ) matters to adamw only (the
    others see it in the gradient)."""
    if spec.name == "sgd":
        return SGD(flat, momentum=spec.momentum, nesterov=spec.nesterov)
    if spec.name in ("adam", "adamw"):
        decoupled = flat.decay_mask(weight_decay) if spec.name == "adamw" else None
        if spec.name == "adamw" and decoupled is None:
            decoupled = torch.zeros_like(flat.data)
        return Adam(flat, betas=spec.betas, eps=spec.eps, decoupled=decoupled)
    if spec.name == "rmsprop":
        return RMSprop(flat, alpha=spec.alpha, eps=spec.eps)
    raise ValueError(f"unknown optimizer {spec.name!r}")


def coupled_decay(spec: OptimizerSpec) -> bool:
    """Whether weight decay's gradient 2λW goes into g (every optimizer but adamw)."""
    return spec.name != "adamw"


class GradClipper:
    """Scales the gradient buffer to a global L2 norm of at most ``max_norm``, as
    ``torch.nn.utils.clip_grad_norm_`` does (×min(1, max_norm/(‖g‖ + 1e-6))), in tensor
    operations only (no read-back: a GPU's queue goes on). ``clipped`` counts the steps it
    scaled down, on the device; ``take()`` reads and resets it (once an epoch)."""

    def __init__(self, grad: torch.Tensor, max_norm: float) -> None:
        self.grad, self.max_norm = grad, max_norm
        self.clipped = torch.zeros((), dtype=torch.int64, device=grad.device)
        self.coef = torch.empty((), dtype=grad.dtype, device=grad.device)

    def __call__(self) -> None:
        norm = torch.linalg.vector_norm(self.grad)
        coef = torch.reciprocal(norm.add_(1e-6), out=self.coef).mul_(self.max_norm)
        self.clipped.add_(coef < 1.0)
        self.grad.mul_(coef.clamp_(max=1.0))

    def take(self) -> int:
        n = int(self.clipped)
        self.clipped.zero_()
        return n
