"""The MLP: ``torch.nn.Linear`` layers in order, activation φ between them, none after the last.

Dropout is *inverted*: in training a hidden unit is kept with probability p = 1 − dropout and
its activation is divided by p, so its expected value equals the unit's value without dropout.
The lecture keeps units unscaled in training and multiplies the weights by p at test time;
both give the next layer the same expected input, but the inverted form leaves the test-time
network untouched, so a trained model is used exactly as it is stored.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import cast

import torch
import torch.nn.functional as nnf

from core.activations import get_activation
from core.spec import ModelSpec


class MLP(torch.nn.Module):
    """f(x) = W⁽ᴸ⁾ φ(… φ(W⁽¹⁾x + b⁽¹⁾) …) + b⁽ᴸ⁾ on rows: input (n, d) → output (n, k).

    ``layers[l]`` holds W⁽ˡ⁺¹⁾ with shape (out, in) and b⁽ˡ⁺¹⁾ with shape (out,), so
    ``list(model.parameters())`` is [W⁽¹⁾, b⁽¹⁾, …, W⁽ᴸ⁾, b⁽ᴸ⁾].
    """

    def __init__(self, widths: Sequence[int], activation: str, dropout: float = 0.0) -> None:
        super().__init__()
        if len(widths) < 2:
            raise ValueError("an MLP needs at least an input and an output width")
        self.widths = list(widths)
        self.activation = activation
        self.dropout = dropout
        self._act = get_activation(activation)
        self.layers = torch.nn.ModuleList(
            torch.nn.Linear(a, b) for a, b in zip(self.widths[:-1], self.widths[1:], strict=False)
        )

    @property
    def hidden_widths(self) -> list[int]:
        return self.widths[1:-1]

    @property
    def linears(self) -> list[torch.nn.Linear]:
        return [cast(torch.nn.Linear, layer) for layer in self.layers]

    @property
    def weights(self) -> list[torch.Tensor]:
        """[W⁽¹⁾, …, W⁽ᴸ⁾], the live parameters."""
        return [layer.weight for layer in self.linears]

    @property
    def biases(self) -> list[torch.Tensor]:
        return [layer.bias for layer in self.linears]

    def forward(self, x: torch.Tensor, masks: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        """``masks[l]`` (n, width of hidden layer l+1), entries 0 or 1/p, multiplies that
        layer's activations. Without masks, dropout is sampled in training mode from torch's
        global generator; in eval mode there is none."""
        h = x
        last = len(self.layers) - 1
        for i, layer in enumerate(self.linears):
            z = nnf.linear(h, layer.weight, layer.bias)  # the module call's hooks cost more
            if i == last:
                return z
            h = self._act.forward(z)
            if masks is not None:
                h = h * masks[i]
            elif self.training and self.dropout > 0.0:
                h = torch.nn.functional.dropout(h, self.dropout, training=True)
        raise AssertionError("unreachable")


def build_mlp(
    spec: ModelSpec,
    in_features: int,
    out_features: int,
    *,
    dropout: float = 0.0,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> MLP:
    """The spec's MLP with initialised weights (``generator`` makes them reproducible)."""
    model = MLP([in_features, *spec.hidden, out_features], spec.activation, dropout)
    init_weights(model, spec.init, generator=generator)
    return model.to(dtype)


def init_weights(model: MLP, scheme: str, *, generator: torch.Generator | None = None) -> None:
    """he: N(0, 2/fan_in); xavier: N(0, 2/(fan_in + fan_out)); normal: N(0, 0.05²). Biases 0."""
    with torch.no_grad():
        for layer in model.linears:
            fan_out, fan_in = layer.weight.shape
            if scheme == "he":
                std = math.sqrt(2.0 / fan_in)
            elif scheme == "xavier":
                std = math.sqrt(2.0 / (fan_in + fan_out))
            elif scheme == "normal":
                std = 0.05
            else:
                raise ValueError(f"unknown init {scheme!r}; allowed: he, xavier, normal")
            layer.weight.normal_(0.0, std, generator=generator)
            layer.bias.zero_()


def sample_masks(
    model: MLP,
    batch: int,
    *,
    generator: torch.Generator | None,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> list[torch.Tensor] | None:
    """One inverted-dropout mask per hidden layer, (batch, width): 0 with probability
    ``model.dropout``, else 1/p. ``None`` when the model has no dropout."""
    if model.dropout <= 0.0:
        return None
    keep = 1.0 - model.dropout
    ref = model.weights[0]
    return [
        torch.empty(batch, w, device=device or ref.device, dtype=dtype or ref.dtype)
        .bernoulli_(keep, generator=generator)
        .div_(keep)
        for w in model.hidden_widths
    ]
