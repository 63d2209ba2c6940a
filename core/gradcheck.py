"""The gradient validator: manual backprop vs autograd vs central finite differences, float64.

For every parameter tensor the report gives the largest absolute difference of the manual
gradient against autograd, and against central differences (f(θ + h) − f(θ − h)) / 2h on
``fd_samples`` coordinates drawn at random (all of them when ``fd_samples`` is None), and
each difference relative to the gradient's scale S: the largest magnitude in the autograd
gradient or in the weight-decay term 2λW, over the whole model.

Why the whole model's scale and not each tensor's own: a tensor's gradient can be far smaller
than the terms it is computed from. With weight decay the data gradient of W approaches
−2λW as training converges, and a bias gradient is a sum over the batch that may cancel; the
rounding error of those terms (≈ ε·S) divided by the tiny remainder would flag a correct
backprop. A tensor passes when both relative errors are within their tolerances; the report
passes when every tensor does.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from core.activations import get_activation
from core.backprop import backprop
from core.data import Dataset, load_dataset
from core.losses import encode_targets, loss_value, output_width
from core.model import build_mlp, forward, sample_masks
from core.sizes import FD_CHUNK
from core.spec import JobSpec

FD_STEP = 1e-6  # central differences in float64: truncation O(h²) ≈ 1e-12, rounding ≈ ε/h ≈ 1e-10


@dataclass(frozen=True)
class TensorCheck:
    name: str  # W1, b1, … W_L, b_L in the lecture's numbering
    shape: list[int]
    autograd_max_abs: float
    autograd_rel: float
    fd_max_abs: float | None
    fd_rel: float | None
    fd_coordinates: int
    passed: bool


@dataclass(frozen=True)
class GradcheckReport:
    passed: bool
    step: int
    batch: int
    tolerance: float
    fd_tolerance: float
    tensors: list[TensorCheck] = field(default_factory=list)

    @property
    def max_rel_error(self) -> float:
        """Worst manual-vs-autograd relative error over all tensors."""
        return max((t.autograd_rel for t in self.tensors), default=0.0)

    @property
    def max_fd_rel_error(self) -> float:
        return max((t.fd_rel or 0.0 for t in self.tensors), default=0.0)

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["max_rel_error"] = self.max_rel_error
        d["max_fd_rel_error"] = self.max_fd_rel_error
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def summary(self) -> str:
        worst = max(self.tensors, key=lambda t: t.autograd_rel, default=None)
        where = f" (worst: {worst.name})" if worst else ""
        verdict = "passed" if self.passed else "FAILED"
        return (
            f"gradient check {verdict} at step {self.step}:"
            f" manual vs autograd rel {self.max_rel_error:.2e}"
            f" (tol {self.tolerance:g}), vs finite differences rel {self.max_fd_rel_error:.2e}"
            f" (tol {self.fd_tolerance:g}){where}"
        )


class GradcheckStopped(RuntimeError):
    """The caller's ``stop`` said to stop: the check ended between two chunks of its finite
    differences, without a report."""


class GradcheckFailed(RuntimeError):
    """Manual gradients disagree with autograd or finite differences beyond the tolerance."""

    def __init__(self, report: GradcheckReport) -> None:
        self.report = report
        super().__init__(report.summary())


def _max_abs(t: torch.Tensor) -> float:
    return float(t.detach().abs().max()) if t.numel() else 0.0


def gradient_scale(
    grads: Sequence[torch.Tensor], weights: Sequence[torch.Tensor], weight_decay: float
) -> float:
    """S: the largest |entry| of the gradient or of 2λW over the model (at least 1e-12)."""
    scale = max((_max_abs(g) for g in grads), default=0.0)
    if weight_decay:
        scale = max(scale, 2.0 * weight_decay * max(_max_abs(w) for w in weights))
    return max(scale, 1e-12)


def central_differences(
    W: Sequence[torch.Tensor],
    b: Sequence[torch.Tensor],
    X: torch.Tensor,
    T: torch.Tensor,
    masks: Sequence[torch.Tensor] | None,
    *,
    activation: str,
    loss: str,
    weight_decay: float,
    tensor: int,
    coords: torch.Tensor,
    stop: Callable[[], bool] | None = None,
) -> torch.Tensor:
    """(f(θ + h·eᵢ) − f(θ − h·eᵢ)) / 2h for coordinates ``coords`` of parameter ``tensor``
    (0 = W1, 1 = b1, 2 = W2, …), f = mean loss + λ·Σ‖W‖².

    The layers below the perturbed one run once, and so does the perturbed layer's product
    z = hWᵀ + b: moving Wᵢⱼ by ±h moves only column i of z, by ±h·hⱼ (bᵢ: by ±h), so each of
    the 2k perturbed networks (k coordinates at a time) starts from a copy of z with that one
    column moved, and only the layers above run on the batch of 2k. Terms of f that a
    coordinate does not touch are identical in both evaluations and cancel; of the penalty
    only the perturbed entry's own term λ(w ± h)² is evaluated, which also keeps its rounding
    out of the data loss's differences. ``stop`` is asked before each chunk of k coordinates:
    when it says so, :class:`GradcheckStopped` is raised.
    """
    act = get_activation(activation)
    layer, is_bias = divmod(tensor, 2)
    h = forward(W, b, X, activation=act, masks=masks, hidden=layer)  # unperturbed: computed once
    z0 = torch.matmul(h, W[layer].t()) + b[layer]  # (n, out)
    flat = (b[layer] if is_bias else W[layer]).reshape(-1)
    fan_in = W[layer].shape[1]
    out = torch.empty(len(coords), dtype=X.dtype, device=X.device)
    done = 0
    for chunk in coords.to(X.device).split(FD_CHUNK):
        if stop is not None and stop():
            raise GradcheckStopped("the gradient check was stopped")
        k = len(chunk)
        steps = torch.cat([torch.full((k,), FD_STEP), torch.full((k,), -FD_STEP)]).to(X)
        both = chunk.repeat(2)
        rows = torch.arange(2 * k, device=X.device)
        unit = both if is_bias else torch.div(both, fan_in, rounding_mode="floor")
        z = z0.expand(2 * k, *z0.shape).clone()  # (2k, n, out)
        moved = steps[:, None] if is_bias else steps[:, None] * h[:, both % fan_in].t()
        z[rows, :, unit] += moved
        for j in range(layer + 1, len(W)):
            phi = act.forward(z)
            z = torch.matmul(phi * masks[j - 1] if masks is not None else phi, W[j].t()) + b[j]
        values = loss_value(loss, z, T)  # (2k,)
        if weight_decay and not is_bias:
            w0 = flat[chunk].repeat(2)
            values = values + weight_decay * (w0 + steps) ** 2
        out[done : done + k] = (values[:k] - values[k:]) / (2 * FD_STEP)
        done += k
    return out


def _f64(t: torch.Tensor) -> torch.Tensor:
    """A float64 copy (also of an inference-mode tensor, which autograd may not save)."""
    return t.detach().to(torch.float64, copy=True)


@dataclass(frozen=True)
class _Batch64:
    """One batch's objective f(θ) = mean loss + λ·Σ‖W‖² on float64 copies of the caller's
    tensors, and its gradient three ways; gradients are listed like the parameters, W1, b1,
    W2, b2, …"""

    W: list[torch.Tensor]
    b: list[torch.Tensor]
    X: torch.Tensor
    T: torch.Tensor
    masks: list[torch.Tensor] | None
    activation: str
    loss: str
    weight_decay: float

    @property
    def params(self) -> list[torch.Tensor]:
        return [p for pair in zip(self.W, self.b, strict=True) for p in pair]

    @property
    def terms(self) -> dict[str, Any]:
        """The objective's terms, as ``backprop`` and ``central_differences`` take them."""
        return {"activation": self.activation, "loss": self.loss, "weight_decay": self.weight_decay}

    def objective(self, Ws: Sequence[torch.Tensor], bs: Sequence[torch.Tensor]) -> torch.Tensor:
        """f at the weights ``Ws`` and biases ``bs``, with this batch and its masks."""
        out = forward(Ws, bs, self.X, activation=self.activation, masks=self.masks)
        value = loss_value(self.loss, out, self.T)
        if self.weight_decay:
            value = value + self.weight_decay * sum((w * w).sum() for w in Ws)
        return value

    @torch.no_grad()
    def manual(self) -> list[torch.Tensor]:
        """The hand-written backprop's gradient (``core.backprop.backprop``)."""
        grads = backprop(self.W, self.b, self.X, self.T, masks=self.masks, **self.terms)
        return [g for pair in grads for g in pair]

    def autograd(self) -> list[torch.Tensor]:
        """Autograd's gradient of ``objective``, the validator's reference."""
        L = len(self.W)
        with torch.enable_grad():  # the training loop may call this under no_grad
            leaves = [t.clone().requires_grad_(True) for t in self.W + self.b]
            auto = torch.autograd.grad(self.objective(leaves[:L], leaves[L:]), leaves)
        return [auto[i // 2] if i % 2 == 0 else auto[L + i // 2] for i in range(2 * L)]

    def central_differences(
        self, tensor: int, coords: torch.Tensor, stop: Callable[[], bool] | None = None
    ) -> torch.Tensor:
        """``central_differences`` of f for coordinates ``coords`` of parameter ``tensor``."""
        W, b, X, T, masks = self.W, self.b, self.X, self.T, self.masks
        return central_differences(
            W, b, X, T, masks, tensor=tensor, coords=coords, stop=stop, **self.terms
        )


def check_gradients(
    weights: Sequence[torch.Tensor],
    biases: Sequence[torch.Tensor],
    X: torch.Tensor,
    T: torch.Tensor,
    *,
    activation: str,
    loss: str,
    weight_decay: float = 0.0,
    masks: Sequence[torch.Tensor] | None = None,
    tolerance: float = 1e-8,
    fd_tolerance: float = 1e-5,
    fd_samples: int | None = 8,
    step: int = 0,
    seed: int = 0,
    stop: Callable[[], bool] | None = None,
    manual: Sequence[torch.Tensor] | None = None,
) -> GradcheckReport:
    """Check the manual gradients of one batch (encoded targets ``T``, see ``core.losses``).

    Everything is copied to float64 first; the caller's tensors are not touched. ``stop`` is
    asked between chunks of the finite differences (:class:`GradcheckStopped` when it says so).
    ``manual``: the gradients to check, of the same objective (mean loss + λ·Σ‖W‖²), listed
    W1, b1, W2, …, computed by another engine in float64 (the packed engine's, per member);
    default: ``core.backprop.backprop``'s on the float64 copies.
    """
    batch = _Batch64(
        W=[_f64(w) for w in weights],
        b=[_f64(v) for v in biases],
        X=_f64(X),
        T=_f64(T),
        masks=None if masks is None else [_f64(m) for m in masks],
        activation=activation,
        loss=loss,
        weight_decay=weight_decay,
    )
    if manual is None:
        manual = batch.manual()
    else:
        manual = [_f64(g) for g in manual]
        shapes = [list(g.shape) for g in manual]
        if shapes != [list(p.shape) for p in batch.params]:
            raise ValueError(f"manual gradients of shapes {shapes} do not match the parameters")
    auto = batch.autograd()
    scale = gradient_scale(auto, batch.W, weight_decay)
    gen = torch.Generator(device="cpu").manual_seed(seed * 1_000_003 + step)
    names = [f"{k}{i + 1}" for i in range(len(batch.W)) for k in ("W", "b")]
    checks: list[TensorCheck] = []
    with torch.no_grad():
        for i, (p, g_manual, g_auto) in enumerate(zip(batch.params, manual, auto, strict=True)):
            n = p.numel()
            coords = (
                torch.arange(n)
                if fd_samples is None or fd_samples >= n
                else torch.randperm(n, generator=gen)[:fd_samples]
            )
            fd = None
            if fd_samples != 0 and len(coords):
                fd = batch.central_differences(i, coords, stop)
            checks.append(
                _compare(
                    names[i],
                    p,
                    g_manual,
                    g_auto,
                    coords,
                    fd,
                    scale=scale,
                    tolerance=tolerance,
                    fd_tolerance=fd_tolerance,
                )
            )
    return GradcheckReport(
        passed=all(c.passed for c in checks),
        step=step,
        batch=int(X.shape[0]),
        tolerance=tolerance,
        fd_tolerance=fd_tolerance,
        tensors=checks,
    )


def _compare(
    name: str,
    p: torch.Tensor,
    g_manual: torch.Tensor,
    g_auto: torch.Tensor,
    coords: torch.Tensor,
    numeric: torch.Tensor | None,
    *,
    scale: float,
    tolerance: float,
    fd_tolerance: float,
) -> TensorCheck:
    """One tensor's check: manual vs autograd and, when ``numeric`` holds the central
    differences at ``coords``, vs finite differences, each relative to ``scale``."""
    a_abs = _max_abs(g_manual - g_auto)
    a_rel = a_abs / scale
    fd_abs = fd_rel = None
    if numeric is not None:
        analytic = g_manual.reshape(-1)[coords.to(p.device)]
        fd_abs = _max_abs(analytic - numeric)
        fd_rel = fd_abs / scale
    passed = a_rel <= tolerance and (fd_rel is None or fd_rel <= fd_tolerance)
    used = 0 if fd_rel is None else len(coords)
    return TensorCheck(name, list(p.shape), a_abs, a_rel, fd_abs, fd_rel, used, passed)


def check_spec(
    spec: JobSpec,
    *,
    batch_size: int = 16,
    fd_samples: int | None = None,
    data: Dataset | None = None,
    stop: Callable[[], bool] | None = None,
) -> GradcheckReport:
    """The instructor's proof for a spec, without training: the spec's model, freshly
    initialised, on the first ``batch_size`` training rows, with dropout masks when the spec
    has dropout, checked in float64 against autograd and (all, by default) central differences.
    ``stop``: as for :func:`check_gradients`.
    """
    data = data if data is not None else load_dataset(spec.dataset, seed=spec.seed)
    loss = spec.resolved_loss(data.task)
    width = output_width(loss, data.task, data.n_classes)
    gen = torch.Generator().manual_seed(spec.seed)
    model = build_mlp(
        spec.model,
        data.n_features,
        width,
        dropout=spec.regularization.dropout,
        generator=gen,
        dtype=torch.float64,
    )
    X = torch.as_tensor(data.X_train[:batch_size], dtype=torch.float64)
    y = torch.as_tensor(data.y_train[:batch_size])
    if data.task == "regression":
        y = y.to(torch.float64)
    T = encode_targets(loss, data.task, y, width)
    masks = sample_masks(model, X.shape[0], generator=gen)
    return check_gradients(
        model.weights,
        model.biases,
        X,
        T,
        activation=spec.model.activation,
        loss=loss,
        weight_decay=spec.regularization.weight_decay,
        masks=masks,
        tolerance=spec.gradcheck.tolerance,
        fd_tolerance=spec.gradcheck.fd_tolerance,
        fd_samples=fd_samples,
        seed=spec.seed,
        stop=stop,
    )
