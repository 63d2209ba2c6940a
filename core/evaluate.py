"""Metrics of a model on data parts, and per-layer diagnostics, without gradients."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence

import torch

from core.losses import loss_per_row, predict
from core.model import MLP, forward

# |z| beyond which σ′(z) resp. tanh′(z) is below 1e-3: a unit saturated on every row is dead
_SATURATION = {"sigmoid": 6.9, "tanh": 4.15}


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
    parts, layers = evaluate_parts(
        model,
        X,
        y,
        T,
        [X.shape[0]],
        loss=loss,
        task=task,
        y_scale=y_scale,
        weights_before=weights_before,
    )
    return parts[0], layers


@torch.no_grad()
def evaluate_parts(
    model: MLP,
    X: torch.Tensor,
    y: torch.Tensor,
    T: torch.Tensor,
    sizes: Sequence[int],
    *,
    loss: str,
    task: str,
    y_scale: float = 1.0,
    weights_before: Sequence[torch.Tensor] | None = None,
) -> tuple[list[dict[str, float]], list[dict[str, float]]]:
    """``evaluate`` for consecutive blocks of rows (``sizes``, e.g. the training rows, then
    the validation rows), from one forward pass over all of them and one transfer of the
    numbers; the dead fractions are those of the first block. An empty block gets ``{}``."""
    bounds = [0]
    for k in sizes:
        bounds.append(bounds[-1] + k)
    if bounds[-1] != X.shape[0]:
        raise ValueError(f"sizes add up to {bounds[-1]}, but X has {X.shape[0]} rows")
    first = slice(0, bounds[1])
    dead: list[torch.Tensor] = []

    def dead_units(layer: int, z: torch.Tensor) -> None:
        dead.append(_dead_fraction(model.activation, z[first]))

    F = forward(
        model.weights,
        model.biases,
        X,
        activation=model.activation,
        on_hidden=None if weights_before is None else dead_units,
    )
    numbers = _block_numbers(loss, task, F, y, T, bounds)  # gathered, then read in one transfer
    numbers.extend(dead)
    if weights_before is not None:
        weights = [w.detach() for w in model.weights]
        diffs = torch._foreach_sub(weights, list(weights_before))
        numbers.extend(torch._foreach_norm([*weights_before, *diffs, *weights]))
    # stack promotes float32 and float64 numbers alike to float64, exactly
    values = iter(torch.stack(numbers).tolist() if numbers else [])
    parts = _block_metrics(values, bounds, task, y_scale)
    if weights_before is None:
        return parts, []
    return parts, _layer_diagnostics(values, len(dead), len(model.layers))


def _block_numbers(
    loss: str,
    task: str,
    F: torch.Tensor,
    y: torch.Tensor,
    T: torch.Tensor,
    bounds: Sequence[int],
) -> list[torch.Tensor]:
    """Per non-empty block of rows: the mean loss and the accuracy, or the mean loss, the
    mean squared error and the targets' variance (regression), as 0-d tensors."""
    rows = loss_per_row(loss, F, T)
    pred = predict(loss, task, F)
    if task == "classification":
        per_row = [rows, (pred == y).to(torch.float64)]
    else:
        err = pred.to(torch.float64) - y.to(torch.float64)
        per_row = [rows, err * err]
    numbers: list[torch.Tensor] = []
    for a, b in itertools.pairwise(bounds):
        if b > a:
            numbers.extend(v[a:b].mean() for v in per_row)
            if task == "regression":
                numbers.append(y[a:b].to(torch.float64).var(unbiased=False))
    return numbers


def _block_metrics(
    values: Iterator[float], bounds: Sequence[int], task: str, y_scale: float
) -> list[dict[str, float]]:
    """Each block's metrics from ``_block_numbers``' values; ``{}`` for an empty block."""
    parts: list[dict[str, float]] = []
    for a, b in itertools.pairwise(bounds):
        if b == a:
            parts.append({})
        elif task == "classification":
            parts.append({"loss": next(values), "accuracy": next(values)})
        else:
            m: dict[str, float] = {"loss": next(values)}
            mse, var = next(values), next(values)
            m["rmse"] = mse**0.5 * y_scale
            m["r2"] = 1.0 - mse / var if var > 0 else 0.0
            parts.append(m)
    return parts


def _layer_diagnostics(values: Iterator[float], hidden: int, L: int) -> list[dict[str, float]]:
    """Per layer, from the values: ``hidden`` dead fractions, then the norms of the weights
    before, of their change and of the weights now, L each."""
    dead = [next(values) for _ in range(hidden)]
    norms = [next(values) for _ in range(3 * L)]
    return [
        {
            "dead_fraction": dead[i] if i < hidden else 0.0,
            "update_ratio": norms[L + i] / max(norms[i], 1e-12),
            "weight_norm": norms[2 * L + i],
        }
        for i in range(L)
    ]


def _dead_fraction(activation: str, z: torch.Tensor) -> torch.Tensor:
    if z.shape[0] == 0:
        return torch.zeros((), dtype=torch.float64, device=z.device)
    if activation == "relu":
        dead = z.amax(dim=0) <= 0.0
    elif activation in _SATURATION:
        dead = z.abs().amin(dim=0) > _SATURATION[activation]
    else:  # identity and leaky_relu: φ′ ≥ 0.01 everywhere
        return torch.zeros((), dtype=torch.float64, device=z.device)
    return dead.to(torch.float64).mean()
