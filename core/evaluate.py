"""Metrics of a model on a data part, and per-layer diagnostics, without gradients."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from core.losses import loss_value, predict
from core.model import MLP


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
) -> dict[str, float]:
    """{"loss", "accuracy"} for classification, {"loss", "rmse", "r2"} for regression; targets
    ``y`` standardised by ``y_scale``, which converts the RMSE back to the target's units."""
    F = model(X)
    out = {"loss": float(loss_value(loss, F, T))}
    pred = predict(loss, task, F)
    if task == "classification":
        out["accuracy"] = float((pred == y).to(torch.float64).mean())
    else:
        err = pred.to(torch.float64) - y.to(torch.float64)
        mse = float((err * err).mean())
        var = float(y.to(torch.float64).var(unbiased=False))
        out["rmse"] = mse**0.5 * y_scale
        out["r2"] = 1.0 - mse / var if var > 0 else 0.0
    return out


@torch.no_grad()
def layer_diagnostics(
    model: MLP, X: torch.Tensor, weights_before: Sequence[torch.Tensor]
) -> list[dict[str, float]]:
    """Per layer: ``dead_fraction`` (hidden units whose φ′ is below 1e-3 on every row of X:
    dead ReLUs, saturated sigmoids; 0 for the output layer), ``update_ratio``
    (‖W_now − W_before‖ / ‖W_before‖) and ``weight_norm``."""
    act = model._act
    h = X
    out: list[dict[str, float]] = []
    last = len(model.layers) - 1
    for i, layer in enumerate(model.linears):
        z = layer(h)
        dead = 0.0
        if i < last:
            phi = act.forward(z)
            slope = act.backward(z, phi, torch.ones_like(z)).abs()
            dead = float((slope < 1e-3).all(dim=0).to(torch.float64).mean())
            h = phi
        w = layer.weight
        before = weights_before[i]
        norm_before = float(torch.linalg.vector_norm(before))
        out.append(
            {
                "dead_fraction": dead,
                "update_ratio": float(torch.linalg.vector_norm(w - before))
                / max(norm_before, 1e-12),
                "weight_norm": float(torch.linalg.vector_norm(w)),
            }
        )
    return out
