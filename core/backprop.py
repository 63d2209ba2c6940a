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

from core.activations import get_activation
from core.losses import encode_targets, exact_true_class_, loss_delta
from core.model import MLP
from core.model import forward as forward  # the forward pass, public here as it always was


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
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(∇W⁽ˡ⁾, ∇b⁽ˡ⁾) for l = 1 … L, from encoded targets ``T`` (see ``core.losses``), in new
    tensors: one :class:`Backprop` pass, plus the weight decay 2λW⁽ˡ⁾."""
    grads = [torch.empty_like(p) for pair in zip(weights, biases, strict=True) for p in pair]
    plan = Backprop(
        weights,
        biases,
        grads,
        activation=activation,
        loss=loss,
        batch=X.shape[0],
        masked=masks is not None,
    )
    plan(X, T, masks)
    if weight_decay:
        for gw, w in zip(grads[0::2], weights, strict=True):
            gw.add_(w, alpha=2.0 * weight_decay)
    return list(zip(grads[0::2], grads[1::2], strict=True))


class Backprop:
    """The forward and backward pass above for batches of one size, every intermediate
    buffer allocated once: the manual engine's training step, and what ``backprop`` runs.

    ``grads`` = [∇W⁽¹⁾, ∇b⁽¹⁾, …] buffers, each call overwrites them with the gradient of the
    mean loss of the batch (no weight decay). Each call also overwrites the buffers of the
    previous call: the pass keeps nothing between calls. The weights are read at each call
    (``Wᵀ`` views are made once and follow in-place updates of the weights).

    With a built-in activation the pass computes φ in place over Z⁽ˡ⁾ and φ′ from φ(Z⁽ˡ⁾)
    (see ``core.activations``); an activation without the in-place pair keeps Z⁽ˡ⁾ and φ(Z⁽ˡ⁾)
    apart and calls its ``forward`` and ``backward``. Without dropout and with a built-in
    activation, ``run`` is a straight pass over per-layer tuples made once (every Python
    operation in it is paid at every step); otherwise it is the general pass.

    ``X`` (and ``T``, ``masks``) must have ``batch`` rows. The forward half is the one forward
    pass, ``core.model.forward``, into buffers: after a call ``z[-1]`` holds its output F
    (tests/unit/core/test_model.py checks they agree exactly, in float64).
    """

    def __init__(
        self,
        weights: Sequence[torch.Tensor],
        biases: Sequence[torch.Tensor],
        grads: Sequence[torch.Tensor],
        *,
        activation: str,
        loss: str,
        batch: int,
        masked: bool,
    ) -> None:
        act = get_activation(activation)
        self.act = act
        self.inplace = act.forward_ is not None and act.backward_h is not None
        self.loss = loss
        self.weights = [w.detach() for w in weights]
        self.weights_t = [w.t() for w in self.weights]
        self.biases = [b.detach() for b in biases]
        self.grad_w = list(grads[0::2])
        self.grad_b = list(grads[1::2])
        self.L = len(self.weights)
        ref = self.weights[0]

        def buffer(width: int) -> torch.Tensor:
            return torch.empty(batch, width, dtype=ref.dtype, device=ref.device)

        widths = [w.shape[0] for w in self.weights]
        self.z = [buffer(k) for k in widths]  # Z⁽ˡ⁾ (φ(Z⁽ˡ⁾) in place for hidden layers); F last
        self.masked = [buffer(k) for k in widths[:-1]] if masked else None  # φ(Z⁽ˡ⁾) ⊙ M⁽ˡ⁾
        self.g = [buffer(k) for k in widths[:-1]]  # Δ⁽ˡ⁾ of the hidden layers
        self.run = self._general
        if self.inplace and not masked:
            self._build_straight(buffer(widths[-1]), 1.0 / batch)
            self.run = self._straight

    def __call__(
        self, X: torch.Tensor, T: torch.Tensor, masks: Sequence[torch.Tensor] | None = None
    ) -> None:
        """Overwrite ``grads`` with the gradient of the mean loss of the batch (X, T)."""
        self.run(X, T, masks)

    def _build_straight(self, delta_out: torch.Tensor, inv_n: float) -> None:
        L, z, W = self.L, self.z, self.weights
        self._forward_ = self.act.forward_
        self._backward_h = self.act.backward_h
        # hidden layer l: Z⁽ˡ⁾ = H⁽ˡ⁻¹⁾ W⁽ˡ⁾ᵀ + b⁽ˡ⁾ into z[l], then φ over it
        self._hidden = [(self.biases[l], self.weights_t[l], z[l]) for l in range(L - 1)]
        self._output = (self.biases[-1], self.weights_t[-1], z[-1])
        # Δ⁽ᴸ⁾ into delta_out (cross-entropy and squared: same operations as loss_delta)
        self._delta_out = delta_out
        self._row_sums = delta_out.new_empty(delta_out.shape[0], 1)
        self._inv_n = inv_n
        # from the output layer down:
        # (Δ⁽ˡ⁾, Δ⁽ˡ⁾ᵀ, H⁽ˡ⁻¹⁾ (None: X), ∇W⁽ˡ⁾, ∇b⁽ˡ⁾, W⁽ˡ⁾, the Δ⁽ˡ⁻¹⁾ buffer)
        deltas = [*self.g, delta_out]
        self._layers = [
            (
                deltas[l],
                deltas[l].t(),
                z[l - 1] if l else None,
                self.grad_w[l],
                self.grad_b[l],
                W[l] if l else None,
                deltas[l - 1] if l else None,
            )
            for l in range(L - 1, -1, -1)
        ]

    def _straight(
        self, X: torch.Tensor, T: torch.Tensor, masks: Sequence[torch.Tensor] | None = None
    ) -> None:
        assert masks is None, "built with masked=False"
        addmm, mm, total = torch.addmm, torch.mm, torch.sum
        forward_, backward_h = self._forward_, self._backward_h
        h = X
        for b, wt, z in self._hidden:
            h = forward_(addmm(b, h, wt, out=z))  # type: ignore[misc]
        b, wt, z = self._output
        d = self._delta_out
        if self.loss == "cross_entropy":
            torch.sub(torch.softmax(addmm(b, h, wt, out=z), 1), T, out=d)
            exact_true_class_(d, T, self._row_sums).mul_(self._inv_n)
        elif self.loss == "squared":
            torch.sub(addmm(b, h, wt, out=z), T, out=d).mul_(2.0 * self._inv_n)
        else:
            d.copy_(loss_delta(self.loss, addmm(b, h, wt, out=z), T))
        for delta, delta_t, h_in, gw, gb, w, below in self._layers:
            mm(delta_t, X if h_in is None else h_in, out=gw)
            total(delta, 0, out=gb)
            if w is not None:
                backward_h(h_in, mm(delta, w, out=below))  # type: ignore[misc, arg-type]

    def _general(
        self, X: torch.Tensor, T: torch.Tensor, masks: Sequence[torch.Tensor] | None = None
    ) -> None:
        addmm, mm = torch.addmm, torch.mm
        act, inplace = self.act, self.inplace
        W, Wt, b, z, g = self.weights, self.weights_t, self.biases, self.z, self.g
        L = self.L
        hs = [X]  # H⁽ˡ⁾, what the next layer sees (masked)
        phis: list[torch.Tensor] = []  # φ(Z⁽ˡ⁾), unmasked: σ′ and tanh′ are cheapest from it
        for l in range(L - 1):
            if inplace:
                phi = act.forward_(addmm(b[l], hs[l], Wt[l], out=z[l]))  # type: ignore[misc]
            else:
                phi = act.forward(addmm(b[l], hs[l], Wt[l], out=z[l]))
            phis.append(phi)
            if masks is not None:
                assert self.masked is not None, "built with masked=False"
                hs.append(torch.mul(phi, masks[l], out=self.masked[l]))
            else:
                hs.append(phi)
        F = addmm(b[-1], hs[-1], Wt[-1], out=z[-1])

        # backward: Δ⁽ᴸ⁾ from the loss, then one new factor per layer
        delta = loss_delta(self.loss, F, T)
        for l in range(L - 1, -1, -1):
            mm(delta.t(), hs[l], out=self.grad_w[l])
            torch.sum(delta, dim=0, out=self.grad_b[l])
            if l > 0:
                d = mm(delta, W[l], out=g[l - 1])  # (Δ⁽ˡ⁺¹⁾ W⁽ˡ⁺¹⁾) in the lecture's numbering
                if masks is not None:
                    d.mul_(masks[l - 1])
                if inplace:
                    delta = act.backward_h(phis[l - 1], d)  # type: ignore[misc]
                else:
                    delta = act.backward(z[l - 1], phis[l - 1], d)
