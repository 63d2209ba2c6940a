"""Packed training: K models of one architecture trained at once, along a leading model axis.

The lecture's forward pass, δ recursion and updates (``core.backprop``) with one more index k
for the model: for a batch of K minibatches X (K, n, d₀) and layers W⁽ˡ⁾ (K, dₗ, dₗ₋₁),

    Z⁽ˡ⁾ₖ = H⁽ˡ⁻¹⁾ₖ W⁽ˡ⁾ₖᵀ + b⁽ˡ⁾ₖ,  H⁽ˡ⁾ₖ = φ(Z⁽ˡ⁾ₖ) ⊙ M⁽ˡ⁾ₖ      (one ``baddbmm`` per layer)
    Δ⁽ˡ⁾ₖ = φ′(Z⁽ˡ⁾ₖ) ⊙ M⁽ˡ⁾ₖ ⊙ (Δ⁽ˡ⁺¹⁾ₖ W⁽ˡ⁺¹⁾ₖ)                 (one ``bmm``)
    ∇W⁽ˡ⁾ₖ = Δ⁽ˡ⁾ₖᵀ H⁽ˡ⁻¹⁾ₖ,  ∇b⁽ˡ⁾ₖ = Σₙ Δ⁽ˡ⁾ₖ                     (one ``bmm``, one sum)

so that K small matrix products become one batched product. The members of a pack share
what the batched products need alike: the data set and its split, the widths, the
activation, the loss, the batch size, the optimizer's name, the device (``pack_key``). Each
member keeps its own learning rate, momentum and Nesterov flag (sgd), betas (adam, adamw),
alpha (rmsprop), eps, clip norm, weight decay, dropout rate, schedule (a plateau's
reductions), epochs, early stopping, gradient-check settings and seed, and with the seed
its own initial weights, minibatch order and dropout masks: member k of
``train_packed(specs)`` is the same training as ``core.train.train(specs[k])`` (the same
random streams, drawn in the same order; the numbers agree to rounding, see
tests/unit/core/test_packed.py).

A member leaves the pack when it completes, stops early, is stopped by its ``should_stop``,
diverges (``Diverged``), fails its gradient check or raises in a callback; the pack then
compacts (the members left are not computed any more) and the others go on. The result of
``train_packed`` is one entry per spec: its ``TrainResult``, or the exception it left with.

Parameters, gradients and the optimizer's state (sgd's momentum, adam's two moments and
step counts, rmsprop's square average) are held per layer, (K, dₗ, dₗ₋₁) and (K, dₗ), so that
each batched product writes a contiguous result. On the CPU a pack larger than
``chunk_members`` (as many members as keep their parameters, gradients, momentum and
activations within ``CHUNK_BYTES``) trains as groups of about that size, one epoch of each
group in turn: members are independent, so a group may take all of an epoch's steps while
its numbers stay in the cache, and the model-steps/s of a pack of 128 or 512 stay those of a
pack of 32 (bench/RESULTS.md, Engine, Packed).
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from core.activations import get_activation, inplace
from core.callbacks import Callback, CallbackList
from core.checkpoint import Checkpoint, check_compatible
from core.data import Dataset, load_dataset
from core.evaluate import SATURATION, block_metrics, block_numbers, layer_diagnostics
from core.losses import loss_per_row
from core.model import MLP
from core.optim import FlatParameters, Optimizer
from core.sizes import TRAIN_EVAL_ROWS, rows_per_chunk
from core.spec import JobSpec, dataset_shape
from core.state import TrainState
from core.train import (
    DIVERGENCE_CHECK_STEPS,
    EpochEvaluation,
    GradientChecks,
    TrainingData,
    TrainResult,
    build_model,
    diverged_step,
    epoch_record,
    final_confusion,
    final_metrics,
    resolve_device,
    resolve_engine,
)

log = logging.getLogger("gradq.packed")
ENGINE = "packed"  # what a member's TrainResult.engine and on_train_start say
CHUNK_BYTES = 6 * 2**20  # a group's working set on the CPU (see ``chunk_members``)


class PackIncompatible(ValueError):
    """Specs that cannot train in one pack (``pack_key`` differs, or an engine other than
    the manual one)."""


@dataclass
class PackStats:
    """What a pack's steps took: ``seconds`` (``time.perf_counter``, the epochs' steps as
    members' records count them, summed over the groups) and ``member_steps`` (steps taken,
    summed over the members)."""

    seconds: float = 0.0
    member_steps: int = 0


def pack_key(spec: JobSpec) -> str:
    """What members of one pack share: the data set with the seed of its split, the hidden
    widths, the activation, the loss, the batch size, the optimizer (its name: its other
    settings are each member's) and the device. Specs with equal keys (and the manual
    engine, ``packable``) can train in one pack."""
    ds = spec.dataset.model_dump(mode="json")
    ds["seed"] = spec.seed if spec.dataset.seed is None else spec.dataset.seed
    return json.dumps(
        {
            "dataset": ds,
            "hidden": list(spec.model.hidden),
            "activation": spec.model.activation,
            "loss": spec.resolved_loss(dataset_shape(spec.dataset).task),
            "batch_size": spec.optimizer.batch_size,
            "optimizer": spec.optimizer.name,
            "device": resolve_device(spec).type,
        },
        sort_keys=True,
    )


def unpackable_reason(spec: JobSpec) -> str | None:
    """Why the spec may not train in a pack, in words for the job's events; None when it
    may. A pack trains with the manual engine (``auto`` or ``manual``), any optimizer
    (with or without clipping), a schedule whose rate changes per epoch only (no ``warmup_steps``)
    and an activation whose derivative follows from its value (``core.activations``,
    in-place pair)."""
    opt = spec.optimizer
    if spec.init_from is not None:
        return "init_from: a warm start trains alone"
    if resolve_engine(spec) != "manual":
        return f"engine {spec.engine!r}: packs train with the manual engine"
    if opt.schedule.warmup_steps:
        return "schedule.warmup_steps: packs set rates per epoch (warmup_epochs packs)"
    if not inplace(spec.model.activation):
        return f"activation {spec.model.activation!r}: packs take in-place activations only"
    return None


def packable(spec: JobSpec) -> bool:
    """Whether the spec may train in a pack (``unpackable_reason`` gives none); a spec
    that may not trains alone."""
    return unpackable_reason(spec) is None


def chunk_members(widths: Sequence[int], batch: int, itemsize: int) -> int:
    """The most members trained together on the CPU: as many as keep their parameters,
    gradients, momentum and activations within ``CHUNK_BYTES`` (at least one)."""
    params = sum(a * b + b for a, b in itertools.pairwise(widths))
    acts = batch * (widths[0] + widths[-1] + 3 * sum(widths[1:]))
    return max(1, CHUNK_BYTES // ((3 * params + acts) * itemsize))


class PackedPass:
    """The forward and backward pass above for K members and batches of one size, every
    buffer allocated once: ``run(X, T, masks)`` overwrites ``grad_w``/``grad_b`` (lists of
    (K, dₗ, dₗ₋₁) and (K, dₗ) tensors) with each member's gradient of its batch's mean loss
    (no weight decay). ``X`` (K, n, d₀), ``T`` (K, n, d_L) encoded targets, ``masks``: one
    (K, n, dₗ) dropout mask per hidden layer (entries 0 or 1/p; rows of 1 for a member
    without dropout) when built ``masked``. The weights are read at each call.

    The output layer is computed transposed, Fᵀ = W⁽ᴸ⁾ H⁽ᴸ⁻¹⁾ᵀ + b⁽ᴸ⁾ (K, d_L, n), and so are
    its error signal Δ⁽ᴸ⁾ᵀ and ∇W⁽ᴸ⁾ = Δ⁽ᴸ⁾ᵀ H⁽ᴸ⁻¹⁾: with a narrow output (a few classes) the
    batched product then has d_L rows instead of d_L columns, and the softmax and the sums
    over the classes run along a contiguous axis; on the CPU both were faster so
    (bench/RESULTS.md, Engine, Packed)."""

    def __init__(
        self,
        weights: Sequence[torch.Tensor],
        biases: Sequence[torch.Tensor],
        grad_w: Sequence[torch.Tensor],
        grad_b: Sequence[torch.Tensor],
        *,
        activation: str,
        loss: str,
        batch: int,
        masked: bool,
    ) -> None:
        act = get_activation(activation)
        if act.forward_ is None or act.backward_h is None:
            raise ValueError(f"the packed engine needs an in-place activation, not {activation!r}")
        if loss not in ("cross_entropy", "squared", "logistic"):
            raise ValueError(f"unknown loss {loss!r}")
        self.forward_, self.backward_h = act.forward_, act.backward_h
        self.loss, self.inv_n = loss, 1.0 / batch
        self.W = list(weights)
        self.Wt = [w.transpose(1, 2) for w in weights]
        self.b = [b.unsqueeze(1) for b in biases[:-1]]  # (K, 1, dₗ): broadcast over the rows
        self.b_out = biases[-1].unsqueeze(2)  # (K, d_L, 1): over the columns of Fᵀ
        self.grad_w, self.grad_b = list(grad_w), list(grad_b)
        K, ref = weights[0].shape[0], weights[0]

        def buffer(rows: int, cols: int) -> torch.Tensor:
            return torch.empty(K, rows, cols, dtype=ref.dtype, device=ref.device)

        widths = [w.shape[1] for w in weights]
        self.z = [buffer(batch, k) for k in widths[:-1]]  # φ(Z⁽ˡ⁾), in place over Z⁽ˡ⁾
        self.masked = [buffer(batch, k) for k in widths[:-1]] if masked else None
        self.g = [buffer(batch, k) for k in widths[:-1]]  # Δ⁽ˡ⁾ of the hidden layers
        self.f_t = buffer(widths[-1], batch)  # Fᵀ
        self.delta_t = buffer(widths[-1], batch)  # Δ⁽ᴸ⁾ᵀ
        self.col_sums = buffer(1, batch)

    def run(self, X: torch.Tensor, T: torch.Tensor, masks: Sequence[torch.Tensor] | None) -> None:
        baddbmm, bmm, total = torch.baddbmm, torch.bmm, torch.sum
        forward_, backward_h = self.forward_, self.backward_h
        z, W, Wt, b = self.z, self.W, self.Wt, self.b
        L = len(W)
        hs = [X]  # what each layer receives: X, then φ(Z⁽ˡ⁾) ⊙ M⁽ˡ⁾
        for l in range(L - 1):
            h = forward_(baddbmm(b[l], hs[l], Wt[l], out=z[l]))
            if masks is not None:
                assert self.masked is not None, "built with masked=False"
                h = torch.mul(h, masks[l], out=self.masked[l])
            hs.append(h)
        F = baddbmm(self.b_out, W[-1], hs[-1].transpose(1, 2), out=self.f_t)
        Tt, d = T.transpose(1, 2), self.delta_t
        # Δ⁽ᴸ⁾ᵀ: the operations of core.losses.loss_delta, along the class axis
        if self.loss == "cross_entropy":
            torch.sub(torch.softmax(F, 1), Tt, out=d)
            s = total(d, 1, keepdim=True, out=self.col_sums)
            d.addcmul_(Tt, s, value=-1.0).mul_(self.inv_n)
        elif self.loss == "squared":
            torch.sub(F, Tt, out=d).mul_(2.0 * self.inv_n)
        else:
            d.copy_(torch.sigmoid(-Tt * F).mul_(Tt).mul_(-self.inv_n))
        bmm(d, hs[-1], out=self.grad_w[-1])
        total(d, 2, out=self.grad_b[-1])
        if L == 1:
            return
        delta = bmm(d.transpose(1, 2), W[-1], out=self.g[-1])
        for l in range(L - 2, -1, -1):
            if masks is not None:
                delta.mul_(masks[l])
            delta = backward_h(z[l], delta)
            bmm(delta.transpose(1, 2), hs[l], out=self.grad_w[l])
            total(delta, 1, out=self.grad_b[l])
            if l > 0:
                delta = bmm(delta, W[l], out=self.g[l - 1])


class PackedParameters:
    """The parameters, gradients and momentum of K members, per layer: ``params`` =
    [W⁽¹⁾ (K, d₁, d₀), b⁽¹⁾ (K, d₁), …], ``grads`` and ``momentum`` alike. Member k's
    tensors are row k of each; ``read``/``write`` copy them to and from a member's own
    flat buffer (``FlatParameters`` layout: W⁽¹⁾, b⁽¹⁾, … one after the other)."""

    def __init__(
        self,
        shapes: Sequence[torch.Size],
        K: int,
        *,
        dtype: torch.dtype,
        device: Any,
        second: bool = False,
    ):
        self.shapes = [tuple(s) for s in shapes]
        self.sizes = [math.prod(s) for s in self.shapes]
        self.K = K
        self.params = [torch.zeros(K, *s, dtype=dtype, device=device) for s in self.shapes]
        self.grads = [torch.zeros_like(p) for p in self.params]
        # the optimizer's state: sgd's momentum, adam's first moment, rmsprop's square average
        self.momentum = [torch.zeros_like(p) for p in self.params]
        # adam's second moment (``second``)
        self.second = [torch.zeros_like(p) for p in self.params] if second else []

    def read(self, tensors: Sequence[torch.Tensor], k: int, flat: torch.Tensor) -> None:
        """The flat buffer ``flat`` := member k's row of ``tensors``."""
        offset = 0
        for t, n in zip(tensors, self.sizes, strict=True):
            flat[offset : offset + n].view_as(t[k]).copy_(t[k])
            offset += n

    def write(self, tensors: Sequence[torch.Tensor], k: int, flat: torch.Tensor) -> None:
        """Member k's row of ``tensors`` := the flat buffer ``flat``."""
        offset = 0
        for t, n in zip(tensors, self.sizes, strict=True):
            t[k].copy_(flat[offset : offset + n].view_as(t[k]))
            offset += n

    def compact(self, keep: torch.Tensor) -> None:
        """Keep only the members ``keep`` (indices, in their order)."""
        self.K = int(keep.numel())
        self.params = [p.index_select(0, keep) for p in self.params]
        self.grads = [g.index_select(0, keep) for g in self.grads]
        self.momentum = [v.index_select(0, keep) for v in self.momentum]
        self.second = [v.index_select(0, keep) for v in self.second]


@dataclass
class _Member:
    """One member's job: its spec, callbacks, model (its parameters in its own flat buffer,
    synchronised with the pack at epoch ends and when it leaves), state and checks."""

    index: int
    spec: JobSpec
    callbacks: CallbackList
    model: MLP
    flat: FlatParameters
    sgd: Optimizer  # (any optimizer: the name is the packs' first one's)
    state: TrainState
    checks: GradientChecks
    spec_dict: dict[str, Any]
    lr: float = 0.0
    status: str = "completed"
    stoppers: bool = False
    keep: float = 1.0  # 1 − dropout

    @property
    def epochs(self) -> int:
        return self.spec.optimizer.epochs


@dataclass
class _Chunk:
    """Members a … b − 1 of the pack: views of their tensors and per-member scalars."""

    a: int
    b: int
    params: list[torch.Tensor]
    grads: list[torch.Tensor]
    momentum: list[torch.Tensor]
    second: list[torch.Tensor]
    steps: torch.Tensor  # (n,) adam's steps taken
    lam2: list[torch.Tensor]
    mu: list[torch.Tensor]
    mu_nest: list[torch.Tensor]
    nest: list[torch.Tensor]
    neg_lr: list[torch.Tensor]
    dropout: list[int]
    clip: torch.Tensor  # (n,) each member's clip_norm (inf: none)
    clipped: torch.Tensor  # (n,) view of the pack's counts of clipped steps this epoch


class _Pack:
    """The live members and their packed tensors, with the per-member scalars of the
    update as (K, 1, 1) / (K, 1) views, and the chunks a step runs over."""

    def __init__(
        self,
        members: list[_Member],
        data: TrainingData,
        XT: torch.Tensor,
        *,
        activation: str,
        dtype: torch.dtype,
        device: torch.device,
        chunk: int | None = None,
    ) -> None:
        self.members, self.data, self.activation = members, data, activation
        self.dtype, self.device = dtype, device
        ref = members[0].model
        self.widths = list(ref.widths)
        self.L = len(ref.widths) - 1
        shapes = [p.shape for p in ref.parameters()]
        self.optimizer = members[0].spec.optimizer.name  # one a pack (``pack_key``)
        self.packed = PackedParameters(
            shapes,
            len(members),
            dtype=dtype,
            device=device,
            second=self.optimizer in ("adam", "adamw"),
        )
        for k, m in enumerate(members):
            self.packed.write(self.packed.params, k, m.flat.data)
            states = _state_tensors(m.sgd)
            self.packed.write(self.packed.momentum, k, states[0])
            if len(states) > 1:
                self.packed.write(self.packed.second, k, states[1])
        self.steps = torch.tensor(
            [float(m.sgd.steps) for m in members], dtype=torch.float64, device=device
        )
        self.XT = XT  # [X | T]: one row per training sample, shared by the groups
        self.d_in = data.X.shape[1]
        self.chunk = max(1, chunk or len(members))
        self.plans: dict[
            int, list[tuple[_Chunk, PackedPass, torch.Tensor, list[torch.Tensor]]]
        ] = {}
        # per member: the steps its clipping scaled down this epoch (taken at its end)
        self.clipped = torch.zeros(len(members), dtype=torch.int64, device=device)
        self._scalars()

    # -- per-member scalars ------------------------------------------------------------------

    def _scalars(self) -> None:
        """The per-member scalars and, per chunk, the views its update works on (made
        again after each compaction)."""
        ms, dt, dev = self.members, self.dtype, self.device
        opt = [m.spec.optimizer for m in ms]
        reg = [m.spec.regularization for m in ms]
        self.mu = torch.tensor([o.momentum for o in opt], dtype=dt, device=dev)
        self.mu_nest = torch.tensor(
            [o.momentum if o.nesterov else 0.0 for o in opt], dtype=dt, device=dev
        )
        self.lam2 = torch.tensor([2.0 * r.weight_decay for r in reg], dtype=dt, device=dev)
        self.neg_lr = torch.tensor([-m.lr for m in ms], dtype=dt, device=dev)
        self.nest = torch.tensor([o.nesterov for o in opt], device=dev)
        self.any_momentum = any(o.momentum for o in opt)
        self.any_nesterov = any(o.nesterov for o in opt)
        self.all_nesterov = all(o.nesterov for o in opt)
        self.any_decay = any(r.weight_decay for r in reg)

        def vec(values: list[float]) -> torch.Tensor:
            return torch.tensor(values, dtype=dt, device=dev)

        self.beta1 = torch.tensor([o.betas[0] for o in opt], dtype=torch.float64, device=dev)
        self.beta2 = torch.tensor([o.betas[1] for o in opt], dtype=torch.float64, device=dev)
        self.one_b1, self.one_b2 = (
            vec([1 - o.betas[0] for o in opt]),
            vec([1 - o.betas[1] for o in opt]),
        )
        self.b2 = vec([o.betas[1] for o in opt])
        self.alpha, self.one_alpha = vec([o.alpha for o in opt]), vec([1 - o.alpha for o in opt])
        self.eps = vec([o.eps for o in opt])
        self.step_size = vec([0.0] * len(ms))  # adam: −η/(1 − β₁ᵗ), per step
        self.bc2_sqrt = vec([1.0] * len(ms))  # adam: √(1 − β₂ᵗ), per step
        clips = [math.inf if o.clip_norm is None else o.clip_norm for o in opt]
        self.clip = torch.tensor(clips, dtype=dt, device=dev)
        self.any_clip = any(math.isfinite(c) for c in clips)
        self.dropout = [k for k, m in enumerate(ms) if m.keep < 1.0]
        self.stoppers = [k for k, m in enumerate(ms) if m.stoppers]
        self.sums = torch.empty(len(ms), dtype=torch.float64, device=dev)
        self.plans = {}
        p, K = self.packed, len(ms)
        self.chunks = []
        for a in range(0, K, self.chunk):
            b = min(a + self.chunk, K)
            self.chunks.append(
                _Chunk(
                    a,
                    b,
                    params=[t[a:b] for t in p.params],
                    grads=[t[a:b] for t in p.grads],
                    momentum=[t[a:b] for t in p.momentum],
                    second=[t[a:b] for t in p.second],
                    steps=self.steps[a:b],
                    lam2=self._per_member(self.lam2, a, b)[0::2],
                    mu=self._per_member(self.mu, a, b),
                    mu_nest=self._per_member(self.mu_nest, a, b),
                    nest=self._per_member(self.nest, a, b),
                    neg_lr=self._per_member(self.neg_lr, a, b),
                    dropout=[k for k in self.dropout if a <= k < b],
                    clip=self.clip[a:b],
                    clipped=self.clipped[a:b],
                )
            )

    def set_rates(self) -> None:
        """The members' rates (``_Member.lr``) into the update's per-member scalars."""
        self.neg_lr.copy_(torch.tensor([-m.lr for m in self.members], dtype=self.dtype))

    def compact(self, leaving: set[int]) -> None:
        """Drop the members at positions ``leaving``; the others keep their order."""
        keep = [k for k in range(len(self.members)) if k not in leaving]
        kept = torch.tensor(keep, dtype=torch.long, device=self.device)
        self.packed.compact(kept)
        self.steps = self.steps.index_select(0, kept)
        self.clipped = self.clipped.index_select(0, kept)
        self.members = [self.members[k] for k in keep]
        if self.members:
            self._scalars()

    def _per_member(self, vec: torch.Tensor, a: int, b: int) -> list[torch.Tensor]:
        """``vec[a:b]`` shaped to broadcast over each parameter tensor of the chunk."""
        return [vec[a:b].view(-1, *([1] * len(shape))) for shape in self.packed.shapes]

    def plan(self, size: int) -> list[tuple[_Chunk, PackedPass, torch.Tensor, list[torch.Tensor]]]:
        """Per chunk of members: its pass for batches of ``size`` rows, its [X | T] gather
        buffer and its dropout masks (rows of 1 for members without dropout)."""
        if size in self.plans:
            return self.plans[size]
        masked = bool(self.dropout)
        plans = []
        for c in self.chunks:
            n = c.b - c.a
            plan = PackedPass(
                c.params[0::2],
                c.params[1::2],
                c.grads[0::2],
                c.grads[1::2],
                activation=self.activation,
                loss=self.data.loss,
                batch=size,
                masked=masked,
            )
            buf = torch.empty(n, size, self.XT.shape[1], dtype=self.dtype, device=self.device)
            masks = (
                [
                    torch.ones(n, size, width, dtype=self.dtype, device=self.device)
                    for width in self.widths[1:-1]
                ]
                if masked
                else []
            )
            plans.append((c, plan, buf, masks))
        self.plans[size] = plans
        return plans

    def chunk_update(self, c: _Chunk) -> None:
        """SGD with weight decay on the chunk's members (``core.optim.SGD``'s update with
        per-member rates): with clipping g ×= min(1, clip/(‖g‖ + 1e-6)) (``GradClipper``,
        each member's norm over all its layers); g += 2λW; v ← g + μv; Nesterov: g += μv,
        d = g, else d = v; θ −= η d. The gradient buffer ends as the solo engine's does."""
        params, grads = c.params, c.grads
        if self.any_clip:
            squares = [g.pow(2).sum(dim=tuple(range(1, g.dim()))) for g in grads]
            norm = torch.stack(squares).sum(dim=0).sqrt_()
            coef = torch.div(c.clip, norm.add_(1e-6))
            c.clipped.add_(coef < 1.0)
            coef.clamp_(max=1.0)
            torch._foreach_mul_(grads, [coef.view(-1, *([1] * (g.dim() - 1))) for g in grads])
        if self.optimizer != "sgd":
            self._adaptive_update(c)
            return
        if self.any_decay:
            torch._foreach_addcmul_(grads[0::2], c.lam2, params[0::2])
        direction = grads
        if self.any_momentum:
            for g, mu, v in zip(grads, c.mu, c.momentum, strict=True):
                torch.addcmul(g, mu, v, out=v)
            if self.any_nesterov:
                torch._foreach_addcmul_(grads, c.mu_nest, c.momentum)
                if not self.all_nesterov:
                    direction = [
                        torch.where(n, g, v)
                        for n, g, v in zip(c.nest, grads, c.momentum, strict=True)
                    ]
            else:
                direction = c.momentum
        torch._foreach_addcmul_(params, c.neg_lr, direction)

    def _adaptive_update(self, c: _Chunk) -> None:
        """adam's, adamw's or rmsprop's update (``core.optim``) on the chunk's members, each
        with its own rate, betas (alpha), eps, weight decay and step count."""
        params, grads, a, b = c.params, c.grads, c.a, c.b
        weights = params[0::2]
        if self.any_decay:
            if self.optimizer == "adamw":  # θ − η·2λ·θ on the weights, before the step
                torch._foreach_addcmul_(
                    weights, c.neg_lr[0::2], torch._foreach_mul(weights, c.lam2)
                )
            else:
                torch._foreach_addcmul_(grads[0::2], c.lam2, weights)
        per = self._per_member
        c.steps.add_(1.0)
        if self.optimizer == "rmsprop":
            s = c.momentum
            torch._foreach_mul_(s, per(self.alpha, a, b))
            torch._foreach_addcmul_(s, torch._foreach_mul(grads, per(self.one_alpha, a, b)), grads)
            denom = torch._foreach_sqrt(s)
            torch._foreach_add_(denom, per(self.eps, a, b))
            torch._foreach_addcmul_(params, c.neg_lr, torch._foreach_div(grads, denom))
            return
        t = c.steps
        # −η/(1 − β₁ᵗ) and √(1 − β₂ᵗ), per member, in float64 as the solo computes them
        lr = -self.neg_lr[a:b].to(torch.float64)
        self.step_size[a:b] = -lr / (1.0 - self.beta1[a:b].pow(t))
        self.bc2_sqrt[a:b] = (1.0 - self.beta2[a:b].pow(t)).sqrt()
        m, v = c.momentum, c.second
        torch._foreach_addcmul_(m, per(self.one_b1, a, b), torch._foreach_sub(grads, m))
        torch._foreach_mul_(v, per(self.b2, a, b))
        torch._foreach_addcmul_(v, torch._foreach_mul(grads, per(self.one_b2, a, b)), grads)
        denom = torch._foreach_sqrt(v)
        torch._foreach_div_(denom, per(self.bc2_sqrt, a, b))
        torch._foreach_add_(denom, per(self.eps, a, b))
        torch._foreach_addcmul_(params, per(self.step_size, a, b), torch._foreach_div(m, denom))

    # -- members' own tensors ------------------------------------------------------------------

    def read_member(self, k: int, m: _Member, *, momentum: bool) -> None:
        """Copy member k's parameters and last gradient (and momentum) into its own buffers."""
        p = self.packed
        with torch.no_grad():
            p.read(p.params, k, m.flat.data)
            p.read(p.grads, k, m.flat.grad)
            if momentum and (m.spec.optimizer.momentum or self.optimizer != "sgd"):
                states = _state_tensors(m.sgd)
                p.read(p.momentum, k, states[0])
                if len(states) > 1:
                    p.read(p.second, k, states[1])
                if self.optimizer != "sgd":  # sgd counts none
                    m.sgd.steps = int(self.steps[k])


def _state_tensors(opt: Optimizer) -> list[torch.Tensor]:
    """An optimizer's state tensors in the pack's order (``PackedParameters``)."""
    return list(opt.state_tensors().values())


class PackEvaluation:
    """The members' epoch evaluations (``core.train.EpochEvaluation``'s numbers) in one
    batched pass: each hidden layer's pre-activations of every member at once, Z (K, r, dₗ)
    = H W⁽ˡ⁾ᵀ + b⁽ˡ⁾, over the rows every member evaluates alike.

    A solo job evaluates a random subset of ``TRAIN_EVAL_ROWS`` training rows (its seed's)
    and the validation rows. With at most that many training rows the subset is every
    training row, in the seed's order: the members then share the rows (the means differ
    from the solo's only in the order of their sums), and ``shared`` is True. With more,
    each member's subset differs, and ``core.train.EpochEvaluation`` evaluates each member
    alone. A pass holds at most ``EVAL_CHUNK_BYTES`` of one member's activations at a time
    per member of a group; its rows per chunk depend on the widths alone, never on how many
    members the pack has, so that a member's numbers do not depend on its pack."""

    def __init__(self, data: TrainingData, activation: str) -> None:
        self.data, self.act = data, get_activation(activation)
        self.shared = data.n <= TRAIN_EVAL_ROWS
        self.sizes = [data.n, int(data.X_val.shape[0])]
        if self.shared:
            self.X = torch.cat([data.X, data.X_val])
            self.y = torch.cat([data.y, data.y_val])
            self.T = torch.cat([data.T, data.T_val])

    @torch.no_grad()
    def evaluate(
        self, pack: _Pack, before: Sequence[Sequence[torch.Tensor]]
    ) -> list[tuple[list[dict[str, float]], list[dict[str, float]]]]:
        """Per member of ``pack`` (``shared`` only): its (train, val) metrics and its layers'
        diagnostics, as ``core.evaluate.evaluate_parts`` gives them for the member alone;
        ``before[k]``: member k's weights at the epoch's start."""
        data, X = self.data, self.X
        W, B = pack.packed.params[0::2], pack.packed.params[1::2]
        K, L, n = len(pack.members), len(W), X.shape[0]
        widths = pack.widths
        rows = rows_per_chunk(widths, X.element_size())
        bounds = [0, self.sizes[0], n]
        group = max(1, rows // n) if rows >= n else 1  # members a pass holds, all rows each
        step = min(rows, n)
        losses = torch.empty(K, n, dtype=X.dtype, device=X.device)
        hits = torch.empty(K, n, dtype=torch.float64, device=X.device)
        # predicted classes, or absolute errors (regression)
        regression = data.task == "regression"
        preds = torch.empty(K, n, dtype=torch.float64 if regression else torch.int64,
                            device=X.device)  # fmt: skip
        classes = max(widths[-1], 2)
        relu = pack.activation == "relu"
        dying = pack.activation in ("relu", *SATURATION) and bounds[1] > 0
        # per hidden layer and member: the largest pre-activation (ReLU) or smallest |z| of
        # each unit over the training rows
        start = -math.inf if relu else math.inf
        extremes = [
            torch.full((K, width), start, dtype=X.dtype, device=X.device) for width in widths[1:-1]
        ]
        for g in range(0, K, group):
            h_ = min(g + group, K)
            Ws = [w[g:h_].transpose(1, 2) for w in W]
            Bs = [b[g:h_].unsqueeze(1) for b in B]
            for a in range(0, n, step):
                b = min(a + step, n)
                H = X[a:b]
                for l in range(L - 1):
                    Z = torch.matmul(H, Ws[l]).add_(Bs[l])
                    if dying and a < bounds[1]:
                        z, seen = Z[:, : bounds[1] - a], extremes[l][g:h_]
                        if relu:
                            torch.maximum(seen, z.amax(dim=1), out=seen)
                        else:
                            torch.minimum(seen, z.abs().amin(dim=1), out=seen)
                    H = self.act.forward(Z)
                F = torch.matmul(H, Ws[-1]).add_(Bs[-1])
                losses[g:h_, a:b] = loss_per_row(data.loss, F, self.T[a:b])
                hits[g:h_, a:b], preds[g:h_, a:b] = _hits(data.loss, data.task, F, self.y[a:b])
        # every member's block numbers at once, (K,) each, as evaluate_parts makes them
        numbers = [
            t.to(torch.float64)
            for t in block_numbers(data.task, losses, hits, preds, self.y, bounds, classes)
        ]
        for ext in extremes:
            if not dying:  # no rows, or units that cannot die
                numbers.append(torch.zeros(K, dtype=torch.float64, device=X.device))
            elif relu:
                numbers.append((ext <= 0.0).to(torch.float64).mean(1))
            else:
                numbers.append((ext > SATURATION[pack.activation]).to(torch.float64).mean(1))
        was = [torch.stack([before[k][l] for k in range(K)]) for l in range(L)]
        norms = [torch.linalg.vector_norm(t, dim=(1, 2)) for t in was]
        norms += [torch.linalg.vector_norm(w - v, dim=(1, 2)) for w, v in zip(W, was, strict=True)]
        norms += [torch.linalg.vector_norm(w, dim=(1, 2)) for w in W]
        table = torch.stack(numbers + [t.to(torch.float64) for t in norms], 1).tolist()
        out = []
        for k in range(K):
            values = iter(table[k])
            parts = block_metrics(values, bounds, data.task, data.y_scale)
            out.append((parts, layer_diagnostics(values, L - 1, L)))
        return out


def _hits(
    loss: str, task: str, F: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``core.evaluate``'s per-row hit (1.0/0.0) and predicted class, or squared and absolute
    error (regression), for (K, r, d_L) outputs."""
    if task == "regression":
        err = F[..., 0].to(torch.float64) - y.to(torch.float64)
        return err * err, err.abs()
    pred = (F[..., 0] > 0).long() if loss == "logistic" else F.argmax(dim=-1)
    return (pred == y).to(torch.float64), pred


def data_batch(members: Sequence[_Member], data: TrainingData) -> int:
    return min(members[0].spec.optimizer.batch_size, data.n)


def train_packed(
    specs: Sequence[JobSpec],
    *,
    callbacks: Sequence[Sequence[Callback]] | None = None,
    resume_from: Sequence[Checkpoint | None] | None = None,
    data: Dataset | None = None,
    dtype: torch.dtype = torch.float32,
    chunk: int | None = None,
    stats: PackStats | None = None,
    on_result: Callable[[int, TrainResult | Exception], None] | None = None,
) -> list[TrainResult | Exception]:
    """Train the specs as one pack; entry k is what ``core.train.train(specs[k],
    callbacks=callbacks[k], resume_from=resume_from[k], data=data, dtype=dtype)`` returns,
    or the exception it raises (``Diverged``, ``GradcheckFailed``, a ``CheckpointError``,
    a callback's), without stopping the other members.

    ``callbacks[k]``: member k's callbacks (its ``should_stop`` stops member k alone, with
    status "cancelled"). ``resume_from[k]``: a checkpoint of member k's job (written by a
    pack or by ``train``), or None. ``data``: the data set of every member (default: loaded
    from the first spec). ``chunk``: the most members computed together (default:
    ``chunk_members`` on the CPU, the whole pack on a GPU): a larger pack trains as groups of
    that many, one epoch of each group in turn, so that a group's numbers stay in the cache
    for the whole epoch; groups that shrink are merged at epoch ends. ``stats``: filled
    with the time the steps took. ``on_result(k, result)``: called as member k leaves the
    pack, with what entry k will be, while the others go on (a service ends the member's
    job there; what it raises is logged, not the pack's). The specs must share a
    ``pack_key`` and be ``packable`` (``PackIncompatible``)."""
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, not {dtype}")
    if not specs:
        return []
    if len({pack_key(s) for s in specs}) > 1:
        raise PackIncompatible(
            "the specs differ in data set, widths, activation, loss,"
            " batch size, optimizer or device: they cannot share a pack"
        )
    reasons = [r for r in map(unpackable_reason, specs) if r is not None]
    if reasons:
        raise PackIncompatible(f"a spec trains alone, not in a pack: {reasons[0]}")
    cbs_lists = list(callbacks) if callbacks is not None else [()] * len(specs)
    resumes = list(resume_from) if resume_from is not None else [None] * len(specs)
    if len(cbs_lists) != len(specs) or len(resumes) != len(specs):
        raise ValueError("callbacks and resume_from need one entry per spec")
    device = resolve_device(specs[0])
    torch.set_num_threads(max(1, int(max(s.resources.cpus for s in specs))))
    data = data if data is not None else load_dataset(specs[0].dataset, seed=specs[0].seed)
    tensors = TrainingData.encode(specs[0], data, dtype=dtype, device=device)
    activation = specs[0].model.activation
    run = _Run(data, tensors, activation=activation, dtype=dtype, device=device)
    results: list[TrainResult | Exception | None] = _Results(len(specs), on_result)
    live: list[_Member] = []
    for i, spec in enumerate(specs):
        try:
            m = run.start_member(i, spec, cbs_lists[i], resumes[i])
        except Exception as exc:  # this member's checkpoint or callback: it alone fails
            results[i] = exc
            continue
        if m.state.epoch >= m.epochs:
            results[i] = run.finish(m)
        else:
            live.append(m)
    if live:
        if chunk is None:
            itemsize = torch.finfo(dtype).bits // 8
            widths = live[0].model.widths
            cpu = device.type == "cpu"
            chunk = chunk_members(widths, data_batch(live, tensors), itemsize) if cpu else len(live)
        run.train(live, results, group=max(1, chunk), stats=stats)
    assert all(r is not None for r in results)
    return [r for r in results if r is not None]


class _Results(list[TrainResult | Exception | None]):
    """The members' entries, each handed to ``on_result`` as it is set."""

    def __init__(
        self, n: int, on_result: Callable[[int, TrainResult | Exception], None] | None
    ) -> None:
        super().__init__([None] * n)
        self.on_result = on_result

    def __setitem__(self, index: Any, value: Any) -> None:
        super().__setitem__(index, value)
        if self.on_result is not None and value is not None:
            try:
                self.on_result(index, value)
            except Exception:
                log.exception("member %s: its on_result raised", index)


class _Run:
    """The members' lives around the pack: start, epochs (records, early stopping,
    checkpoints) and their end, each as ``core.train.train`` does it for one job."""

    def __init__(
        self,
        data: Dataset,
        tensors: TrainingData,
        *,
        activation: str,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        self.data, self.tensors, self.dtype, self.device = data, tensors, dtype, device
        self.XT = torch.cat([tensors.X, tensors.T], dim=1)
        self.evaluation = PackEvaluation(tensors, activation)

    def start_member(
        self, index: int, spec: JobSpec, callbacks: Sequence[Callback], ckpt: Checkpoint | None
    ) -> _Member:
        t = self.tensors
        cbs = CallbackList(callbacks)
        model, flat, sgd = build_model(
            spec, self.data.n_features, t.width, dtype=self.dtype, device=self.device
        )
        state = TrainState.start(spec, flat.params, sgd, self.device)
        spec_dict = spec.model_dump(mode="json")
        if ckpt is not None:
            check_compatible(ckpt, spec_dict)
            state.load_checkpoint(ckpt)
        checks = GradientChecks(spec, model, t, cbs, step=state.step)
        cbs.on_train_start(
            spec=spec,
            engine=ENGINE,
            device=str(self.device),
            n_train=t.n,
            resumed_epoch=state.epoch,
        )
        model.train()
        return _Member(
            index=index,
            spec=spec,
            callbacks=cbs,
            model=model,
            flat=flat,
            sgd=sgd,
            state=state,
            checks=checks,
            spec_dict=spec_dict,
            stoppers=cbs.has_should_stop,
            keep=1.0 - spec.regularization.dropout,
        )

    def finish(self, m: _Member) -> TrainResult | Exception:
        """The member's result, as ``train`` ends: the best epoch's parameters put back
        (unless cancelled), the final metrics."""
        try:
            if m.status != "cancelled":
                m.state.early.restore(m.flat.params)
            m.model.eval()
            t = self.tensors
            metrics = final_metrics(
                m.model, self.data, loss=t.loss, dtype=self.dtype, device=self.device, encoded=t
            )
            confusion = final_confusion(m.model, self.data, t, dtype=self.dtype, device=self.device)
        except Exception as exc:
            return exc
        return TrainResult(
            model=m.model,
            history=m.state.history,
            metrics=metrics,
            steps=m.state.step,
            epochs=len(m.state.history),
            best_epoch=m.state.early.best_epoch,
            status=m.status,
            engine=ENGINE,
            device=str(self.device),
            data=self.data,
            loss=t.loss,
            target_shift=t.y_shift,
            target_scale=t.y_scale,
            gradchecks=m.checks.reports,
            confusion=confusion,
        )

    def train(
        self,
        members: list[_Member],
        results: list[TrainResult | Exception | None],
        *,
        group: int,
        stats: PackStats | None,
    ) -> None:
        """Rounds until no member is left: in each, every group of at most ``group``
        members takes one epoch (each member its own: its rate, its order), each step for
        the whole group at once; then groups that fit in fewer are merged."""
        packs = self.groups(members, group)
        while packs:
            for pack in packs:
                self.epoch(pack, results, stats)
            packs = [p for p in packs if p.members]
            if len(packs) > 1 and -(-sum(len(p.members) for p in packs) // group) < len(packs):
                for pack in packs:
                    for k, m in enumerate(pack.members):
                        pack.read_member(k, m, momentum=True)
                packs = self.groups([m for p in packs for m in p.members], group)

    def groups(self, members: list[_Member], group: int) -> list[_Pack]:
        """As few packs as hold at most ``group`` members each, of sizes that differ by one
        at most, from the members' own tensors."""
        activation = members[0].spec.model.activation
        count = -(-len(members) // group)
        bounds = [len(members) * g // count for g in range(count + 1)]
        return [
            _Pack(
                members[a:b],
                self.tensors,
                self.XT,
                activation=activation,
                dtype=self.dtype,
                device=self.device,
            )
            for a, b in itertools.pairwise(bounds)
        ]

    def epoch(
        self, pack: _Pack, results: list[TrainResult | Exception | None], stats: PackStats | None
    ) -> None:
        """One epoch of every member of ``pack``: its steps, then each member's epoch end;
        the members that end leave, the pack compacts."""
        t_data = self.tensors
        n, batch = t_data.n, data_batch(pack.members, t_data)
        every = 1 if self.device.type == "cpu" else DIVERGENCE_CHECK_STEPS
        for m in pack.members:
            m.lr = m.state.schedule.lr(m.state.epoch)  # a plateau's reductions included
        pack.set_rates()
        t0 = time.perf_counter()
        before = [[w.detach().clone() for w in m.model.weights] for m in pack.members]
        perms = torch.stack(
            [torch.randperm(n, generator=m.state.batch_rng) for m in pack.members]
        ).to(self.device)
        bases = [m.state.step for m in pack.members]
        n_batches = -(-n // batch)
        due = _next_due(pack.members, bases, 0)
        member_steps = 0
        for i in range(n_batches):
            idx = perms[:, i * batch : (i + 1) * batch]
            check = every == 1 or i % every == 0 or i == n_batches - 1
            leaving = self.step(pack, idx, bases, i, due if due == i else None, check)
            member_steps += len(pack.members)
            if due == i:
                due = _next_due(pack.members, bases, i + 1)
            if leaving:
                for k, (status, error) in leaving.items():
                    m = pack.members[k]
                    m.state.step = bases[k] + i + 1
                    if error is not None:
                        results[m.index] = error
                    else:
                        m.status = status
                        pack.read_member(k, m, momentum=True)
                        results[m.index] = self.finish(m)
                keep = [k for k in range(len(pack.members)) if k not in leaving]
                pack.compact(set(leaving))
                if not pack.members:
                    return
                perms = perms[torch.tensor(keep, dtype=torch.long, device=perms.device)]
                bases = [bases[k] for k in keep]
                before = [before[k] for k in keep]
                due = _next_due(pack.members, bases, i + 1)
        seconds = time.perf_counter() - t0
        if stats is not None:
            stats.seconds += seconds
            stats.member_steps += member_steps
        ended: dict[int, tuple[str, Exception | None]] = {}
        evaluated = self.evaluation.evaluate(pack, before) if self.evaluation.shared else None
        for k, m in enumerate(pack.members):
            m.state.step = bases[k] + n_batches
            try:
                found = None if evaluated is None else evaluated[k]
                ends = self.end_epoch(pack, k, m, seconds, before[k], found)
            except Exception as exc:
                ended[k] = ("failed", exc)
                continue
            if ends is not None:
                ended[k] = (ends, None)
        for k, (status, error) in ended.items():
            m = pack.members[k]
            if error is not None:
                results[m.index] = error
            else:
                m.status = status
                results[m.index] = self.finish(m)
        if ended:
            pack.compact(set(ended))

    def end_epoch(
        self,
        pack: _Pack,
        k: int,
        m: _Member,
        seconds: float,
        before: list[torch.Tensor],
        evaluated: tuple[list[dict[str, float]], list[dict[str, float]]] | None,
    ) -> str | None:
        """Member k's epoch record (from the pack's batched ``evaluated`` numbers, else its
        own evaluation), early stopping, checkpoint and stop, as in ``train``; the status it
        leaves with, or None when it goes on."""
        pack.read_member(k, m, momentum=False)
        state, cbs = m.state, m.callbacks
        epoch, step = state.epoch + 1, state.step
        if evaluated is None:
            evaluation = EpochEvaluation(self.tensors, seed=m.spec.seed)
            record = evaluation.record(m.model, epoch, step, m.lr, seconds, before, m.flat.grad)
        else:
            (train_m, val_m), layers = evaluated
            record = epoch_record(
                train_m, val_m, layers, epoch, step, m.lr, seconds, self.tensors.n, m.flat.grad
            )
        if m.spec.optimizer.clip_norm is not None:
            record.clipped_steps = int(pack.clipped[k])
            pack.clipped[k] = 0
        stop_early = state.end_epoch(record)
        cbs.on_epoch_end(record)
        last = stop_early or state.epoch == m.epochs
        if cbs.wants_checkpoints and (state.epoch % m.spec.checkpoint_every == 0 or last):
            pack.read_member(k, m, momentum=True)
            cbs.on_checkpoint(state.to_checkpoint(m.spec_dict))
        if stop_early:
            return "early_stopped"
        if cbs.has_should_stop and cbs.should_stop():
            return "cancelled"
        return "completed" if last else None

    def step(
        self,
        pack: _Pack,
        idx: torch.Tensor,
        bases: list[int],
        i: int,
        due: int | None,
        check: bool,
    ) -> dict[int, tuple[str, Exception | None]]:
        """One SGD step of every member (rows ``idx`` (K, b) of the training data), chunk
        by chunk; the members that leave after it: position → (status, error)."""
        members, XT, d_in = pack.members, pack.XT, pack.d_in
        size = idx.shape[1]
        leaving: dict[int, tuple[str, Exception | None]] = {}
        sums, last_bias_grad = pack.sums, pack.packed.grads[-1]
        for c, plan, buf, masks in pack.plan(size):
            a, b = c.a, c.b
            torch.index_select(XT, 0, idx[a:b].reshape(-1), out=buf.view(-1, buf.shape[2]))
            for k in c.dropout:  # each member's masks from its own generator, as train's
                m = members[k]
                for mask in masks:
                    mask[k - a].bernoulli_(m.keep, generator=m.state.dropout_rng).div_(m.keep)
            X, T = buf[:, :, :d_in], buf[:, :, d_in:]
            if due is not None:
                self.gradchecks(pack, a, b, X, T, masks, bases, i, leaving)
            plan.run(X, T, masks or None)
            torch.sum(last_bias_grad[a:b], 1, dtype=torch.float64, out=sums[a:b])
            pack.chunk_update(c)
        if check:
            self.divergence(pack, bases, i, leaving)
        for k in pack.stoppers:
            if k not in leaving:
                try:
                    if members[k].callbacks.should_stop():
                        leaving[k] = ("cancelled", None)
                except Exception as exc:
                    leaving[k] = ("failed", exc)
        return leaving

    def divergence(self, pack: _Pack, bases: list[int], i: int, leaving: dict[int, Any]) -> None:
        """The ``DivergenceGuard``'s test for every member: its ∇b⁽ᴸ⁾ summed (in float64:
        finite exactly when the solo's sum in Python is), on a GPU also its parameters."""
        bad: list[int] = []
        if not math.isfinite(float(pack.sums.sum())):
            bad = torch.nonzero(~torch.isfinite(pack.sums)).flatten().tolist()
        if self.device.type != "cpu":
            finite = torch.stack(
                [torch.isfinite(p).flatten(1).all(1) for p in pack.packed.params]
            ).all(0)
            bad = sorted(set(bad) | set(torch.nonzero(~finite).flatten().tolist()))
        for k in bad:
            if k not in leaving:
                m = pack.members[k]
                value = float(pack.sums[k])
                error = diverged_step(m.state.epoch + 1, bases[k] + i + 1, value)
                leaving[k] = ("failed", error)

    def gradchecks(
        self,
        pack: _Pack,
        a: int,
        b: int,
        X: torch.Tensor,
        T: torch.Tensor,
        masks: list[torch.Tensor],
        bases: list[int],
        i: int,
        leaving: dict[int, Any],
    ) -> None:
        """The validator for the members of chunk a … b − 1 whose check is due at this step:
        the packed pass, run in float64 on float64 copies of their parameters, batch rows
        and masks, gives each one's gradient, which ``GradientChecks.run`` checks against
        autograd and central differences on the member's own model."""
        due = [k for k in range(a, b) if pack.members[k].checks.next == bases[k] + i]
        groups: dict[int, list[int]] = {}
        for k in due:
            rows = min(pack.members[k].spec.gradcheck.max_batch, X.shape[1])
            groups.setdefault(rows, []).append(k)
        f64, p = torch.float64, pack.packed
        for rows, ks in groups.items():
            sel = torch.tensor(ks, dtype=torch.long, device=X.device)
            local = sel - a
            params = [t.index_select(0, sel).to(f64) for t in p.params]
            grads = [torch.empty_like(t) for t in params]
            m64 = [mk.index_select(0, local)[:, :rows].to(f64) for mk in masks] if masks else None
            PackedPass(
                params[0::2],
                params[1::2],
                grads[0::2],
                grads[1::2],
                activation=pack.activation,
                loss=pack.data.loss,
                batch=rows,
                masked=m64 is not None,
            ).run(
                X.index_select(0, local)[:, :rows].to(f64),
                T.index_select(0, local)[:, :rows].to(f64),
                m64,
            )
            for j, k in enumerate(ks):
                m = pack.members[k]
                lam = m.spec.regularization.weight_decay
                manual = [g[j] for g in grads]
                if lam:
                    for g, w in zip(manual[0::2], params[0::2], strict=True):
                        g.add_(w[j], alpha=2.0 * lam)
                pack.read_member(k, m, momentum=False)  # the check's autograd uses the model
                mk = [mask[k - a] for mask in masks] if m.keep < 1.0 else None
                try:
                    m.checks.run(X[k - a], T[k - a], mk, bases[k] + i, manual=manual)
                except Exception as exc:  # GradcheckFailed, or a callback's
                    leaving[k] = ("failed", exc)


def _next_due(members: Sequence[_Member], bases: Sequence[int], i: int) -> int | None:
    """The first step index ≥ i of this epoch at which some member's check is due."""
    due = [m.checks.next - base for m, base in zip(members, bases, strict=True)]
    later = [d for d in due if d >= i]
    return min(later) if later else None
