"""The lecture's forward propagation and matrix-form backpropagation, by hand, without autograd.

Rows are samples. For a batch X of shape (n, d₀) and layers l = 1 … L with W⁽ˡ⁾ (dₗ, dₗ₋₁):

forward     Z⁽ˡ⁾ = H⁽ˡ⁻¹⁾ W⁽ˡ⁾ᵀ + b⁽ˡ⁾            (n, dₗ)      H⁽⁰⁾ = X
            H⁽ˡ⁾ = φ(Z⁽ˡ⁾) ⊙ M⁽ˡ⁾                 (n, dₗ)      M: dropout mask (0 or 1/p), or 1
            F    = H⁽ᴸ⁻¹⁾ W⁽ᴸ⁾ᵀ + b⁽ᴸ⁾            (n, d_L)     no activation at the output

backward    Δ⁽ᴸ⁾ = ∂ℓ̄/∂F                          (n, d_L)     ℓ̄ = mean loss over the batch
            Δ⁽ˡ⁾ = φ′(Z⁽ˡ⁾) ⊙ M⁽ˡ⁾ ⊙ (Δ⁽ˡ⁺¹⁾ W⁽ˡ⁺¹⁾)  (n, dₗ)
            ∇W⁽ˡ⁾ = Δ⁽ˡ⁾ᵀ H⁽ˡ⁻¹⁾ + 2λW⁽ˡ⁾        (dₗ, dₗ₋₁)
            ∇b⁽ˡ⁾ = Σₙ Δ⁽ˡ⁾                       (dₗ,)

Row i of Δ⁽ˡ⁾ is the lecture's error signal δ⁽ˡ⁾ for sample i: how much the mean loss would
change per unit change of that sample's pre-activation z⁽ˡ⁾. The 1/n of the mean is already in
Δ⁽ᴸ⁾, so the sums over the batch above are the gradient of the mean loss.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as nnf

from core.activations import get_activation
from core.losses import encode_targets, loss_delta
from core.model import MLP


def manual_gradients(
    model: MLP,
    X: torch.Tensor,
    y: torch.Tensor,
    *,
    loss: str,
    weight_decay: float = 0.0,
    dropout_masks: Sequence[torch.Tensor] | None = None,
) -> list[torch.Tensor]:
    """Gradient of (mean loss over the batch + λ·Σ‖W‖²), aligned with ``model.parameters()``.

    ``X`` (n, d₀); ``y`` class indices (n,) int64 for classification, values (n,) float for
    regression (the task is regression when ``y`` is floating point). ``dropout_masks``: one
    (n, dₗ) mask per hidden layer, as the forward pass used them.
    """
    task = "regression" if y.is_floating_point() else "classification"
    width = model.widths[-1]
    T = encode_targets(loss, task, y, width).to(X.dtype)
    weights = model.weights
    biases = model.biases
    with torch.no_grad():
        grads = backprop(
            weights,
            biases,
            X,
            T,
            activation=model.activation,
            loss=loss,
            weight_decay=weight_decay,
            masks=dropout_masks,
        )
    out: list[torch.Tensor] = []
    for gw, gb in grads:
        out.extend((gw, gb))
    return out


def backprop(
    weights: Sequence[torch.Tensor],
    biases: Sequence[torch.Tensor],
    X: torch.Tensor,
    T: torch.Tensor,
    *,
    activation: str,
    loss: str,
    weight_decay: float = 0.0,
    masks: Sequence[torch.Tensor] | None = None,
    out: Sequence[torch.Tensor] | None = None,
    weights_t: Sequence[torch.Tensor] | None = None,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(∇W⁽ˡ⁾, ∇b⁽ˡ⁾) for l = 1 … L, from encoded targets ``T`` (see ``core.losses``).

    The training loop calls this directly (targets are encoded once per data set) with
    ``out`` = [∇W⁽¹⁾, ∇b⁽¹⁾, …] buffers to fill in place; it then adds the weight decay itself
    (one operation on its flat gradient), so ``weight_decay`` must be 0 with ``out``, and
    ``weights_t`` = [W⁽ˡ⁾ᵀ] views made once, which follow the weights' in-place updates.
    """
    if out is not None and weight_decay:
        raise ValueError("with out=, the caller adds the weight decay")
    act = get_activation(activation)
    L = len(weights)
    # forward: keep Z⁽ˡ⁾ and H⁽ˡ⁾ for the backward pass
    hs = [X]  # H⁽ˡ⁾, what the next layer sees (masked)
    zs: list[torch.Tensor] = []  # Z⁽ˡ⁾
    phis: list[torch.Tensor] = []  # φ(Z⁽ˡ⁾), unmasked: σ′ and tanh′ are cheapest from it
    for l in range(L - 1):
        z = (
            torch.addmm(biases[l], hs[-1], weights_t[l])
            if weights_t is not None
            else nnf.linear(hs[-1], weights[l], biases[l])
        )
        phi = act.forward(z)
        zs.append(z)
        phis.append(phi)
        hs.append(phi * masks[l] if masks is not None else phi)
    F = (
        torch.addmm(biases[-1], hs[-1], weights_t[-1])
        if weights_t is not None
        else nnf.linear(hs[-1], weights[-1], biases[-1])
    )

    # backward: Δ⁽ᴸ⁾ from the loss, then one new factor per layer
    delta = loss_delta(loss, F, T)
    grads: list[tuple[torch.Tensor, torch.Tensor]] = []  # filled from the output layer down
    for l in range(L - 1, -1, -1):
        if out is not None:
            gw = torch.mm(delta.t(), hs[l], out=out[2 * l])
            gb = torch.sum(delta, dim=0, out=out[2 * l + 1])
        else:
            gw = delta.t().mm(hs[l])
            if weight_decay:
                gw.add_(weights[l], alpha=2.0 * weight_decay)
            gb = delta.sum(dim=0)
        grads.append((gw, gb))
        if l > 0:
            g = delta.mm(weights[l])  # (Δ⁽ˡ⁺¹⁾ W⁽ˡ⁺¹⁾) in the lecture's numbering
            if masks is not None:
                g = g * masks[l - 1]
            delta = act.backward(zs[l - 1], phis[l - 1], g)
    grads.reverse()
    return grads


def forward(
    weights: Sequence[torch.Tensor],
    biases: Sequence[torch.Tensor],
    X: torch.Tensor,
    *,
    activation: str,
    masks: Sequence[torch.Tensor] | None = None,
) -> torch.Tensor:
    """The lecture's forward propagation: the output F (n, d_L) for inputs X (n, d₀)."""
    act = get_activation(activation)
    h = X
    for l in range(len(weights) - 1):
        h = act.forward(torch.addmm(biases[l], h, weights[l].t()))
        if masks is not None:
            h = h * masks[l]
    return torch.addmm(biases[-1], h, weights[-1].t())
