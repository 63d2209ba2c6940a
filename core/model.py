"""The MLP: ``torch.nn.Linear`` layers in order, activation φ between them, none after the last.

Dropout is *inverted*: in training a hidden unit is kept with probability p = 1 − dropout and
its activation is divided by p, so its expected value equals the unit's value without dropout.
The lecture keeps units unscaled in training and multiplies the weights by p at test time;
both give the next layer the same expected input, but the inverted form leaves the test-time
network untouched, so a trained model is used exactly as it is stored.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import cast

import torch
import torch.nn.functional as nnf

from core.activations import ActivationFn, get_activation
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
        global generator; in eval mode there is none. The pass is :func:`forward`."""
        return forward(
            self.weights,
            self.biases,
            x,
            activation=self._act,
            masks=masks,
            dropout=self.dropout if self.training else 0.0,
        )


def forward(
    weights: Sequence[torch.Tensor],
    biases: Sequence[torch.Tensor],
    X: torch.Tensor,
    *,
    activation: str | ActivationFn,
    masks: Sequence[torch.Tensor] | None = None,
    dropout: float = 0.0,
    hidden: int | None = None,
    on_hidden: Callable[[int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """The lecture's forward propagation on rows: the output F (n, d_L) for inputs X (n, d₀),

        Z⁽ˡ⁾ = H⁽ˡ⁻¹⁾ W⁽ˡ⁾ᵀ + b⁽ˡ⁾,  H⁽ˡ⁾ = φ(Z⁽ˡ⁾) ⊙ M⁽ˡ⁾  (H⁽⁰⁾ = X),  F = Z⁽ᴸ⁾.

    gradq's one forward pass: the model, the evaluation and the gradient validator run it
    (the manual engine's buffered pass, ``core.backprop.Backprop``, is tested to agree).

    ``masks``: one (n, dₗ) dropout mask M⁽ˡ⁾ per hidden layer, entries 0 or 1/p; without
    masks, ``dropout`` > 0 samples inverted dropout from torch's global generator.
    ``hidden=k`` stops after k hidden layers and returns H⁽ᵏ⁾, what layer k+1 receives.
    ``on_hidden(l, Z⁽ˡ⁺¹⁾)`` is called with each hidden layer's pre-activation before φ.
    """
    act = get_activation(activation) if isinstance(activation, str) else activation
    last = len(weights) - 1
    h = X
    for l in range(last if hidden is None else hidden):
        z = nnf.linear(h, weights[l], biases[l])  # addmm(b, H, Wᵀ); the module call costs more
        if on_hidden is not None:
            on_hidden(l, z)
        h = act.forward(z)
        if masks is not None:
            h = h * masks[l]
        elif dropout > 0.0:
            h = nnf.dropout(h, dropout, training=True)
    return h if hidden is not None else nnf.linear(h, weights[last], biases[last])


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
