"""Activation functions φ and their derivatives φ′, element-wise, for forward and backward passes.

Each activation gives ``forward(z)`` and ``backward(z, h, g)`` = φ′(z) ⊙ g, the chain-rule step
through the activation for an upstream gradient ``g``. ``backward`` receives both the
pre-activation ``z`` and the activation ``h = φ(z)`` so that each derivative uses whichever is
cheaper (σ′ = h(1 − h), tanh′ = 1 − h², relu′ = [z > 0]).

The built-in activations also give the in-place pair the training loop uses
(``core.backprop.Backprop``): ``forward_(z)`` overwrites z with φ(z), and ``backward_h(h, g)``
overwrites g with φ′ ⊙ g computed from h alone. Every φ here allows that: relu′ and leaky_relu′
are [h > 0]-based because h > 0 exactly when z > 0 (also at z = 0, where both take the
subgradient 0 resp. the slope, as autograd does), σ′ and tanh′ are functions of h, and so is
elu′ (1 where h > 0, else h + 1 = eᶻ).

gelu, silu and softplus are not monotone or not invertible in floating point near their
ends, so their derivatives take z: the training pass keeps Z⁽ˡ⁾ and φ(Z⁽ˡ⁾) apart for them.
Their derivatives, written out:

    gelu      φ = z·Φ(z), Φ(z) = (1 + erf(z/√2))/2     φ′ = Φ(z) + z·e^(−z²/2)/√(2π)
    elu       φ = z (z > 0), eᶻ − 1                   φ′ = 1 (z > 0), eᶻ
    silu      φ = z·σ(z)                              φ′ = σ(z)·(1 + z·(1 − σ(z)))
    softplus  φ = log(1 + eᶻ), z beyond 20            φ′ = σ(z), 1 beyond 20

softplus is PyTorch's (β = 1, threshold 20: the identity where z > 20), and so is its
derivative there.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

LEAKY_SLOPE = 0.01  # slope of leaky_relu for z < 0
SOFTPLUS_THRESHOLD = 20.0  # softplus is the identity beyond it (PyTorch's default)
_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
# ATen's own backward kernels, bound once (an overload skips the per-call overload lookup)
_THRESHOLD_BACKWARD = torch.ops.aten.threshold_backward.default
_LEAKY_BACKWARD = torch.ops.aten.leaky_relu_backward.default
_THRESHOLD_BACKWARD_OUT = torch.ops.aten.threshold_backward.grad_input
_LEAKY_BACKWARD_OUT = torch.ops.aten.leaky_relu_backward.grad_input
_SIGMOID_BACKWARD_OUT = torch.ops.aten.sigmoid_backward.grad_input
_TANH_BACKWARD_OUT = torch.ops.aten.tanh_backward.grad_input

Unary = Callable[[torch.Tensor], torch.Tensor]
Binary = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class ActivationFn:
    name: str
    forward: Unary
    backward: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
    module: Callable[[], torch.nn.Module]
    forward_: Unary | None = None  # φ(z) written over z
    backward_h: Binary | None = None  # (h, g) ↦ φ′ ⊙ g from h = φ(z), written over g


def _relu_backward(z: torch.Tensor, h: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    # relu′(z) = 1 for z > 0, 0 otherwise (the subgradient 0 at z = 0, as autograd takes it)
    return _THRESHOLD_BACKWARD(g, z, 0.0)


def _leaky_backward(z: torch.Tensor, h: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return _LEAKY_BACKWARD(g, z, LEAKY_SLOPE, False)


def _sigmoid_backward(z: torch.Tensor, h: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return g * h * (1.0 - h)  # σ′(z) = σ(z)(1 − σ(z))


def _tanh_backward(z: torch.Tensor, h: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return g * (1.0 - h * h)  # tanh′(z) = 1 − tanh²(z)


def _identity_backward(z: torch.Tensor, h: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return g


def _relu_backward_h(h: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return _THRESHOLD_BACKWARD_OUT(g, h, 0.0, grad_input=g)  # h > 0 ⇔ z > 0


def _leaky_backward_h(h: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return _LEAKY_BACKWARD_OUT(g, h, LEAKY_SLOPE, True, grad_input=g)  # h > 0 ⇔ z > 0


def _sigmoid_backward_h(h: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return _SIGMOID_BACKWARD_OUT(g, h, grad_input=g)  # g ⊙ (1 − h) ⊙ h


def _tanh_backward_h(h: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return _TANH_BACKWARD_OUT(g, h, grad_input=g)  # g ⊙ (1 − h²)


def _identity_h(h: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return g


def _identity(z: torch.Tensor) -> torch.Tensor:
    return z


def _leaky(z: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.leaky_relu(z, LEAKY_SLOPE)


def _leaky_(z: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.leaky_relu_(z, LEAKY_SLOPE)


def _gelu(z: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.gelu(z)  # the exact form, z·Φ(z)


def _gelu_backward(z: torch.Tensor, h: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    cdf = torch.erf(z * _INV_SQRT2).add_(1.0).mul_(0.5)  # Φ(z)
    pdf = torch.exp(z * z * -0.5).mul_(_INV_SQRT_2PI)  # e^(−z²/2)/√(2π)
    return g * cdf.addcmul_(z, pdf)


def _elu(z: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.elu(z)


def _elu_(z: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.elu_(z)


def _elu_backward(z: torch.Tensor, h: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return g * torch.where(z > 0, 1.0, torch.exp(z))


def _elu_backward_h(h: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return g.mul_(torch.where(h > 0, 1.0, h + 1.0))  # h > 0 ⇔ z > 0; else eᶻ = h + 1


def _silu_backward(z: torch.Tensor, h: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    s = torch.sigmoid(z)
    return g * s * (1.0 + z * (1.0 - s))


def _softplus(z: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.softplus(z, 1.0, SOFTPLUS_THRESHOLD)


def _softplus_backward(z: torch.Tensor, h: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return g * torch.where(z > SOFTPLUS_THRESHOLD, 1.0, torch.sigmoid(z))


ACTIVATIONS: dict[str, ActivationFn] = {
    "relu": ActivationFn(
        "relu", torch.relu, _relu_backward, torch.nn.ReLU, torch.relu_, _relu_backward_h
    ),
    "leaky_relu": ActivationFn(
        "leaky_relu",
        _leaky,
        _leaky_backward,
        lambda: torch.nn.LeakyReLU(LEAKY_SLOPE),
        _leaky_,
        _leaky_backward_h,
    ),
    "sigmoid": ActivationFn(
        "sigmoid",
        torch.sigmoid,
        _sigmoid_backward,
        torch.nn.Sigmoid,
        torch.sigmoid_,
        _sigmoid_backward_h,
    ),
    "tanh": ActivationFn(
        "tanh", torch.tanh, _tanh_backward, torch.nn.Tanh, torch.tanh_, _tanh_backward_h
    ),
    "identity": ActivationFn(
        "identity", _identity, _identity_backward, torch.nn.Identity, _identity, _identity_h
    ),
    "gelu": ActivationFn("gelu", _gelu, _gelu_backward, torch.nn.GELU),
    "elu": ActivationFn("elu", _elu, _elu_backward, torch.nn.ELU, _elu_, _elu_backward_h),
    "silu": ActivationFn("silu", torch.nn.functional.silu, _silu_backward, torch.nn.SiLU),
    "softplus": ActivationFn(
        "softplus",
        _softplus,
        _softplus_backward,
        lambda: torch.nn.Softplus(1.0, SOFTPLUS_THRESHOLD),
    ),
}


def inplace(name: str) -> bool:
    """Whether the activation has the in-place pair (``forward_``, ``backward_h``)."""
    act = get_activation(name)
    return act.forward_ is not None and act.backward_h is not None


def get_activation(name: str) -> ActivationFn:
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; allowed: {sorted(ACTIVATIONS)}") from None
