"""Losses on the network output ``F`` (n, k) and *encoded* targets ``T`` (n, k).

Targets are encoded once per data set so that each loss and its gradient are a few tensor ops:

============== ============================ ======================= ==============================
loss           T                            mean loss               δ⁽ᴸ⁾ = ∂(mean loss)/∂F
============== ============================ ======================= ==============================
squared        one-hot (classes) or y (n,1) mean Σₖ (Tₖ − Fₖ)²      2(F − T)/n
logistic       y ∈ {−1, +1}, shape (n, 1)   mean log(1 + e^(−yF))   −y·σ(−yF)/n
cross_entropy  one-hot (n, K)               mean −Σₖ Tₖ log softmaxₖ (softmax(F) − T)/n
============== ============================ ======================= ==============================

The last row is why the output layer has no activation: softmax paired with cross-entropy
(like the identity paired with the squared loss) makes the output error signal simply
"prediction minus target".

Cross-entropy near saturation. When the softmax is confident and right (P_k = 1 − 5.6e-7 for
the true class k), P_k − 1 is a difference of two numbers near 1: P_k itself is only
representable to 1.1e-16, so ``softmax(F) − T`` has an absolute error of ~1e-16 in an entry of
~1e-7 — a relative error of ~1e-10 that backprop carries into every gradient. Both sides of
the gradient check therefore use forms that are exact to a few ε *relative*:

- ``loss_delta`` (and the manual pass) computes the true class's entry as −Σ_{j≠k} P_j (which
  equals P_k − 1), by subtracting each row's sum Σ_j (P_j − T_j) — exactly representable
  and tiny — from the true class's entry;
- ``loss_value`` writes −log softmax_k(F) as softplus(u), u = logsumexp_{j≠k}(F_j − F_k):
  the same function as logsumexp(F) − F_k, whose autograd gradient is σ(u)·softmax_{j≠k} for
  the other classes and −σ(u) for the true one, each a product of accurately computed factors.

Both need one-hot targets, which is what ``encode_targets`` gives cross-entropy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as nnf

LOSSES = ("squared", "logistic", "cross_entropy")


def output_width(loss: str, task: str, n_classes: int) -> int:
    """Units of the output layer for this loss and task."""
    if task == "regression":
        return 1
    if loss == "logistic":
        if n_classes != 2:
            raise ValueError(f"the logistic loss needs 2 classes, got {n_classes}")
        return 1
    return n_classes


def encode_targets(loss: str, task: str, y: torch.Tensor, width: int) -> torch.Tensor:
    """Class indices (int64, shape (n,)) or regression values (n,) → ``T`` of shape (n, width),
    in the dtype the network computes in (float64 unless ``y`` is already floating)."""
    dtype = y.dtype if y.is_floating_point() else torch.float64
    if task == "regression":
        return y.reshape(-1, 1).to(dtype)
    if loss == "logistic":
        # the lecture's labels: class 0 → −1, class 1 → +1
        return (2.0 * y.to(dtype) - 1.0).reshape(-1, 1)
    return nnf.one_hot(y.long(), width).to(dtype)


def loss_value(loss: str, F: torch.Tensor, T: torch.Tensor) -> torch.Tensor:
    """Mean loss over the batch (a 0-d tensor), differentiable by autograd. ``F`` may carry
    leading dimensions (B, n, k), one batch per network: the result is then (B,)."""
    if loss == "squared":
        return (F - T).pow(2).sum(dim=-1).mean(dim=-1)
    if loss == "logistic":
        # log(1 + e^(−yF)) exactly: softplus switches to the identity beyond 20, an
        # approximation (≈ 2e-9 relative) that a float64 gradient check would see
        margin = -T * F
        return torch.logaddexp(torch.zeros_like(margin), margin).mean(dim=(-2, -1))
    if loss == "cross_entropy":
        # softplus(logsumexp_{j≠k}(F_j − F_k)), see the module's docstring
        others = (F - (T * F).sum(dim=-1, keepdim=True)).masked_fill(T.bool(), float("-inf"))
        u = torch.logsumexp(others, dim=-1)
        return torch.logaddexp(torch.zeros_like(u), u).mean(dim=-1)
    raise ValueError(f"unknown loss {loss!r}; allowed: {LOSSES}")


def loss_per_row(loss: str, F: torch.Tensor, T: torch.Tensor) -> torch.Tensor:
    """Each sample's loss, shape (n,): ``loss_value`` is their mean (evaluation takes the means
    of several blocks of rows from one evaluation)."""
    if loss == "squared":
        return (F - T).pow(2).sum(dim=-1)
    if loss == "logistic":
        margin = -T * F
        return torch.logaddexp(torch.zeros_like(margin), margin).sum(dim=-1)
    if loss == "cross_entropy":
        return torch.logsumexp(F, dim=-1) - (T * F).sum(dim=-1)
    raise ValueError(f"unknown loss {loss!r}; allowed: {LOSSES}")


def loss_delta(loss: str, F: torch.Tensor, T: torch.Tensor) -> torch.Tensor:
    """δ⁽ᴸ⁾ = ∂(mean loss)/∂F, shape (n, k): the output layer's error signal, by hand."""
    n = F.shape[0]
    if loss == "squared":
        return (F - T).mul_(2.0 / n)
    if loss == "logistic":
        return torch.sigmoid(-T * F).mul_(T).mul_(-1.0 / n)
    if loss == "cross_entropy":
        return exact_true_class_(torch.softmax(F, dim=1).sub_(T), T).mul_(1.0 / n)
    raise ValueError(f"unknown loss {loss!r}; allowed: {LOSSES}")


def exact_true_class_(
    D: torch.Tensor, T: torch.Tensor, row_sums: torch.Tensor | None = None
) -> torch.Tensor:
    """``D`` = softmax(F) − T (one-hot ``T``), in place: the true class's entry becomes
    −Σ_{j≠k} P_j, exact to a few ε relative (see the module's docstring). It subtracts the
    row's sum Σ_j D_j = Σ_{j≠k} P_j + (P_k − 1), zero but for the rounding of P_k − 1, from
    that entry. ``row_sums``: an (n, 1) buffer to use."""
    if row_sums is None:
        s = D.sum(dim=1, keepdim=True)
    else:
        s = torch.sum(D, dim=1, keepdim=True, out=row_sums)
    return D.addcmul_(T, s, value=-1.0)


def predict(loss: str, task: str, F: torch.Tensor) -> torch.Tensor:
    """Class indices (classification) or values (regression, shape (n,)) from outputs F."""
    if task == "regression":
        return F[:, 0]
    if loss == "logistic":
        return (F[:, 0] > 0).long()
    return F.argmax(dim=1)


def probabilities(loss: str, F: torch.Tensor) -> torch.Tensor:
    """Class probabilities (n, K) from outputs F, for a classifier."""
    if loss == "logistic":
        p1 = torch.sigmoid(F[:, 0])
        return torch.stack([1.0 - p1, p1], dim=1)
    if loss == "squared":
        return F  # a squared-loss classifier outputs scores, not probabilities
    return torch.softmax(F, dim=1)
