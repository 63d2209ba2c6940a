"""Activation functions φ and their derivatives φ′, element-wise, for forward and backward passes.

Each activation gives ``forward(z)`` and ``backward(z, h, g)`` = φ′(z) ⊙ g, the chain-rule step
through the activation for an upstream gradient ``g``. ``backward`` receives both the
pre-activation ``z`` and the activation ``h = φ(z)`` so that each derivative uses whichever is
cheaper (σ′ = h(1 − h), tanh′ = 1 − h², relu′ = [z > 0]).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

LEAKY_SLOPE = 0.01  # slope of leaky_relu for z < 0
# ATen's own backward kernels, bound once (an overload skips the per-call overload lookup)
_THRESHOLD_BACKWARD = torch.ops.aten.threshold_backward.default
_LEAKY_BACKWARD = torch.ops.aten.leaky_relu_backward.default


@dataclass(frozen=True)
class ActivationFn:
    name: str
    forward: Callable[[torch.Tensor], torch.Tensor]
    backward: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
    module: Callable[[], torch.nn.Module]


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


ACTIVATIONS: dict[str, ActivationFn] = {
    "relu": ActivationFn("relu", torch.relu, _relu_backward, torch.nn.ReLU),
    "leaky_relu": ActivationFn(
        "leaky_relu",
        lambda z: torch.nn.functional.leaky_relu(z, LEAKY_SLOPE),
        _leaky_backward,
        lambda: torch.nn.LeakyReLU(LEAKY_SLOPE),
    ),
    "sigmoid": ActivationFn("sigmoid", torch.sigmoid, _sigmoid_backward, torch.nn.Sigmoid),
    "tanh": ActivationFn("tanh", torch.tanh, _tanh_backward, torch.nn.Tanh),
    "identity": ActivationFn("identity", lambda z: z, _identity_backward, torch.nn.Identity),
}


def get_activation(name: str) -> ActivationFn:
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; allowed: {sorted(ACTIVATIONS)}") from None
