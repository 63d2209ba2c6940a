"""Metrics of a model on data parts, and per-layer diagnostics, without gradients.

The forward pass runs over bounded chunks of rows (``core.sizes.EVAL_CHUNK_BYTES`` of
activations in the widest layer): evaluating a million rows takes the memory of a few thousand.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from core.losses import loss_per_row, predict
from core.model import MLP, forward
from core.sizes import rows_per_chunk

# |z| beyond which σ′(z) resp. tanh′(z) is below 1e-3: a unit saturated on every row is dead
SATURATION = {"sigmoid": 6.9, "tanh": 4.15}


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
    chunk_rows: int | None = None,
) -> tuple[dict[str, float], list[dict[str, float]]]:
    """Metrics, and per-layer diagnostics when ``weights_before`` is given, in one pass over
    the rows (in chunks of ``chunk_rows``, see ``evaluate_parts``).

    Metrics: {"loss", "accuracy", "macro_precision", "macro_recall", "macro_f1"} for
    classification (the macro averages over the classes that occur among the targets or the
    predictions, a class's score 0 where it is undefined: scikit-learn's
    ``precision_recall_fscore_support(average="macro", zero_division=0)``), {"loss", "rmse",
    "r2", "mae"} for regression (targets ``y`` standardised by ``y_scale``, which converts
    the RMSE and the MAE back to their units).
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
        chunk_rows=chunk_rows,
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
    chunk_rows: int | None = None,
) -> tuple[list[dict[str, float]], list[dict[str, float]]]:
    """``evaluate`` for consecutive blocks of rows (``sizes``, e.g. the training rows, then
    the validation rows), with one transfer of the numbers; the dead fractions are those of
    the first block. An empty block gets ``{}``.

    The forward pass runs over ``chunk_rows`` rows at a time (default: ``rows_per_chunk``),
    so that its activations take a bounded amount of memory however many rows there are.
    Each row's loss and hit (or squared error) is kept, (n,) each, and each block's means are
    taken over them as over one pass's; the dead units come from the running maximum (or
    minimum of |z|) over the chunks: the numbers are those of one pass over all rows."""
    bounds = [0]
    for k in sizes:
        bounds.append(bounds[-1] + k)
    n = X.shape[0]
    if bounds[-1] != n:
        raise ValueError(f"sizes add up to {bounds[-1]}, but X has {n} rows")
    step = chunk_rows or rows_per_chunk(model.widths, X.element_size())
    dead = _DeadUnits(model.activation, len(model.hidden_widths), rows=bounds[1])
    losses = torch.empty(n, dtype=X.dtype, device=X.device)
    hits = torch.empty(n, dtype=torch.float64, device=X.device)  # 1/0, or squared errors
    classes = max(model.widths[-1], 2)
    # predicted classes, or absolute errors (regression)
    preds = torch.empty(n, dtype=torch.int64 if task == "classification" else torch.float64,
                        device=X.device)  # fmt: skip
    for a in range(0, n, step):
        b = min(a + step, n)
        F = forward(
            model.weights,
            model.biases,
            X[a:b],
            activation=model.activation,
            on_hidden=None if weights_before is None else dead.observer(a),
        )
        losses[a:b], hits[a:b], preds[a:b] = _row_values(loss, task, F, y[a:b], T[a:b])
    numbers = block_numbers(task, losses, hits, preds, y, bounds, classes)  # one transfer
    if weights_before is not None:
        numbers.extend(dead.fractions(X.device))
        weights = [w.detach() for w in model.weights]
        diffs = torch._foreach_sub(weights, list(weights_before))
        numbers.extend(torch._foreach_norm([*weights_before, *diffs, *weights]))
    # stack promotes float32 and float64 numbers alike to float64, exactly
    values = iter(torch.stack(numbers).tolist() if numbers else [])
    parts = block_metrics(values, bounds, task, y_scale)
    if weights_before is None:
        return parts, []
    return parts, layer_diagnostics(values, dead.layers, len(model.layers))


@torch.no_grad()
def confusion(
    model: MLP, X: torch.Tensor, y: torch.Tensor, *, loss: str, chunk_rows: int | None = None
) -> dict[str, list[Any]]:
    """A classifier's confusion matrix on (X, y) (``matrix[i][j]``: rows of class i
    predicted j) and each class's ``precision``, ``recall``, ``f1`` and ``support``, as
    lists (JSON-able), the forward pass in chunks of rows like ``evaluate_parts``."""
    classes = max(model.widths[-1], 2)
    step = chunk_rows or rows_per_chunk(model.widths, X.element_size())
    cm = torch.zeros(classes, classes, dtype=torch.int64, device=X.device)
    for a in range(0, X.shape[0], step):
        F = forward(model.weights, model.biases, X[a : a + step], activation=model.activation)
        cm += confusion_matrix(y[a : a + step], predict(loss, "classification", F), classes)
    precision, recall, f1, _ = class_scores(cm)
    return {
        "matrix": cm.tolist(),
        "precision": precision.tolist(),
        "recall": recall.tolist(),
        "f1": f1.tolist(),
        "support": cm.sum(dim=1).tolist(),
    }


def _row_values(
    loss: str, task: str, F: torch.Tensor, y: torch.Tensor, T: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each row's loss, whether it is classified right (1.0 or 0.0, float64) and its
    predicted class, or its squared and absolute errors (regression, float64)."""
    pred = predict(loss, task, F)
    if task == "classification":
        return loss_per_row(loss, F, T), (pred == y).to(torch.float64), pred
    err = pred.to(torch.float64) - y.to(torch.float64)
    return loss_per_row(loss, F, T), err * err, err.abs()


def confusion_matrix(y: torch.Tensor, pred: torch.Tensor, classes: int) -> torch.Tensor:
    """(classes, classes) counts, int64: row i, column j = rows of class i predicted j;
    with ``pred`` of shape (K, rows), a pack's K members' predictions of the same rows, one
    (K, classes, classes) count in one ``bincount``."""
    idx = y.long() * classes + pred.long()
    if pred.dim() == 1:
        return torch.bincount(idx, minlength=classes * classes).view(classes, classes)
    members = pred.shape[0]
    offsets = torch.arange(members, device=pred.device).unsqueeze(1) * (classes * classes)
    counts = torch.bincount((idx + offsets).reshape(-1), minlength=members * classes * classes)
    return counts.view(members, classes, classes)


def class_scores(cm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per class of a confusion matrix (or of each of a stack of them, (..., classes,
    classes)): precision, recall, F1 (float64, 0 where undefined) and whether the class
    occurs among the targets or the predictions."""
    cm = cm.to(torch.float64)
    tp, predicted, actual = cm.diagonal(dim1=-2, dim2=-1), cm.sum(dim=-2), cm.sum(dim=-1)
    precision = torch.where(predicted > 0, tp / predicted.clamp_min(1.0), 0.0)
    recall = torch.where(actual > 0, tp / actual.clamp_min(1.0), 0.0)
    both = predicted + actual  # 2·tp / (2·tp + fp + fn) = 2PR / (P + R)
    f1 = torch.where(both > 0, 2.0 * tp / both.clamp_min(1.0), 0.0)
    return precision, recall, f1, both > 0


def block_numbers(
    task: str,
    losses: torch.Tensor,
    hits: torch.Tensor,
    preds: torch.Tensor,
    y: torch.Tensor,
    bounds: Sequence[int],
    classes: int,
) -> list[torch.Tensor]:
    """Per non-empty block of rows: the mean loss, the accuracy and the macro precision,
    recall and F1, or the mean loss, the mean squared error, the targets' variance and the
    mean absolute error (regression), as 0-d tensors. With ``losses``, ``hits`` and
    ``preds`` of shape (K, rows), a pack's K members on the same rows: each number is a (K,)
    tensor, every member's in the same operations (one confusion count for all), each member's
    value the one it gets alone."""
    one = losses.dim() == 1
    if one:
        losses, hits, preds = losses.unsqueeze(0), hits.unsqueeze(0), preds.unsqueeze(0)
    members = losses.shape[0]
    numbers: list[torch.Tensor] = []
    for a, b in itertools.pairwise(bounds):
        if b > a:
            numbers.extend((losses[:, a:b].mean(dim=1), hits[:, a:b].mean(dim=1)))
            if task == "regression":
                numbers.append(y[a:b].to(torch.float64).var(unbiased=False).expand(members))
                numbers.append(preds[:, a:b].mean(dim=1))
            else:
                cm = confusion_matrix(y[a:b], preds[:, a:b], classes)
                p, r, f1, present = class_scores(cm)
                k = present.sum(dim=-1).clamp_min(1)
                numbers.extend((p.sum(dim=-1) / k, r.sum(dim=-1) / k, f1.sum(dim=-1) / k))
    return [n[0] for n in numbers] if one else numbers


class _DeadUnits:
    """The dead units of each hidden layer over the first ``rows`` rows, from chunks of
    rows: per unit the largest pre-activation (ReLU: dead when ≤ 0) or the smallest |z|
    (sigmoid, tanh: dead when beyond their saturation), folded over the chunks. Identity and
    leaky ReLU units are never dead (φ′ ≥ 0.01 everywhere)."""

    def __init__(self, activation: str, layers: int, *, rows: int) -> None:
        self.activation, self.layers, self.rows = activation, layers, rows
        self.extremes: list[torch.Tensor | None] = [None] * layers

    def observer(self, start: int) -> Callable[[int, torch.Tensor], None] | None:
        """``forward``'s ``on_hidden`` for the chunk whose first row is row ``start``; None
        when the chunk has no row of the first block or the activation has no dead units."""
        if start >= self.rows or self.activation not in ("relu", *SATURATION):
            return None
        relu = self.activation == "relu"

        def fold(layer: int, z: torch.Tensor) -> None:
            z = z[: self.rows - start]
            ext = z.amax(dim=0) if relu else z.abs().amin(dim=0)
            seen = self.extremes[layer]
            if seen is not None:
                ext = torch.maximum(seen, ext) if relu else torch.minimum(seen, ext)
            self.extremes[layer] = ext

        return fold

    def fractions(self, device: torch.device) -> list[torch.Tensor]:
        """Per hidden layer, the fraction of its units that are dead (0-d, float64)."""
        out = []
        for ext in self.extremes:
            if ext is None:  # no rows, or units that cannot die
                out.append(torch.zeros((), dtype=torch.float64, device=device))
            elif self.activation == "relu":
                out.append((ext <= 0.0).to(torch.float64).mean())
            else:
                out.append((ext > SATURATION[self.activation]).to(torch.float64).mean())
        return out


def block_metrics(
    values: Iterator[float], bounds: Sequence[int], task: str, y_scale: float
) -> list[dict[str, float]]:
    """Each block's metrics from ``block_numbers``' values; ``{}`` for an empty block."""
    parts: list[dict[str, float]] = []
    for a, b in itertools.pairwise(bounds):
        if b == a:
            parts.append({})
        elif task == "classification":
            names = ("loss", "accuracy", "macro_precision", "macro_recall", "macro_f1")
            parts.append({name: next(values) for name in names})
        else:
            m: dict[str, float] = {"loss": next(values)}
            mse, var = next(values), next(values)
            m["rmse"] = mse**0.5 * y_scale
            m["r2"] = 1.0 - mse / var if var > 0 else 0.0
            m["mae"] = next(values) * y_scale
            parts.append(m)
    return parts


def layer_diagnostics(values: Iterator[float], hidden: int, L: int) -> list[dict[str, float]]:
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
