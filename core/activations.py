"""Activation functions φ and their derivatives φ′, element-wise, for forward and backward passes.

Each activation gives ``forward(z)`` and ``backward(z, h, g)`` = φ′(z) ⊙ g, the chain-rule step
through the activation for an upstream gradient ``g``. ``backward`` receives both the
pre-activation ``z`` and the activation ``h = φ(z)`` so that each derivative uses whichever is
cheaper (σ′ = h(1 − h), tanh′ = 1 − h², relu′ = [z > 0]).

The built-in activations also give the in-place pair the training loop uses
(``core.backprop.Backprop``): ``forward_(z)`` overwrites z with φ(z), and ``backward_h(h, g)``
overwrites g with φ′ ⊙ g computed from h alone. Every φ here allows that: relu′ and leaky_relu′
are [h > 0]-based because h > 0 exactly when z > 0 (also at z = 0, where both take the
subgradient 0 resp. the slope, as autograd does), σ′ and tanh′ are functions of h.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

LEAKY_SLOPE = 0.01  # slope of leaky_relu for z < 0
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
}


def get_activation(name: str) -> ActivationFn:
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; allowed: {sorted(ACTIVATIONS)}") from None
