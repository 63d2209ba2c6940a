"""Metrics of a model on a data part, and per-layer diagnostics, without gradients."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as nnf

from core.losses import loss_value, predict
from core.model import MLP

# |z| beyond which σ′(z) resp. tanh′(z) is below 1e-3: a unit saturated on every row is dead
_SATURATION = {"sigmoid": 6.9, "tanh": 4.15}


@torch.no_grad()
def evaluate(
    model: MLP,
    X: torch.Tensor,
    y: torch.Tensor,
    T: torch.Tensor,
    *,
    loss: str,
    task: str,
    y_scale: float = 1.0,
    weights_before: Sequence[torch.Tensor] | None = None,
) -> tuple[dict[str, float], list[dict[str, float]]]:
    """Metrics, and per-layer diagnostics when ``weights_before`` is given, in one pass.

    Metrics: {"loss", "accuracy"} for classification, {"loss", "rmse", "r2"} for regression
    (targets ``y`` standardised by ``y_scale``, which converts the RMSE back to their units).
    Diagnostics per layer: ``dead_fraction``, the hidden units whose φ′ is below 1e-3 on every
    row of X (ReLUs never positive, sigmoid/tanh units always saturated; 0 for the output
    layer), ``update_ratio`` ‖W − W_before‖/‖W_before‖ and ``weight_norm``.
    """
    act = model._act
    h = X
    dead: list[float] = []
    last = len(model.layers) - 1
    F = X
    for i, layer in enumerate(model.linears):
        z = nnf.linear(h, layer.weight, layer.bias)
        if i == last:
            F = z
            break
        if weights_before is not None:
            dead.append(_dead_fraction(model.activation, z))
        h = act.forward(z)
    metrics = {"loss": float(loss_value(loss, F, T))}
    pred = predict(loss, task, F)
    if task == "classification":
        metrics["accuracy"] = float((pred == y).to(torch.float64).mean())
    else:
        err = pred.to(torch.float64) - y.to(torch.float64)
        mse = float((err * err).mean())
        var = float(y.to(torch.float64).var(unbiased=False))
        metrics["rmse"] = mse**0.5 * y_scale
        metrics["r2"] = 1.0 - mse / var if var > 0 else 0.0
    if weights_before is None:
        return metrics, []
    layers = []
    for i, (w, before) in enumerate(zip(model.weights, weights_before, strict=True)):
        norm_before = float(torch.linalg.vector_norm(before))
        layers.append(
            {
                "dead_fraction": dead[i] if i < last else 0.0,
                "update_ratio": float(torch.linalg.vector_norm(w - before))
                / max(norm_before, 1e-12),
                "weight_norm": float(torch.linalg.vector_norm(w)),
            }
        )
    return metrics, layers


def _dead_fraction(activation: str, z: torch.Tensor) -> float:
    if z.shape[0] == 0:
        return 0.0
    if activation == "relu":
        dead = z.amax(dim=0) <= 0.0
    elif activation in _SATURATION:
        dead = z.abs().amin(dim=0) > _SATURATION[activation]
    else:  # identity and leaky_relu: φ′ ≥ 0.01 everywhere
        return 0.0
    return float(dead.to(torch.float64).mean())
