"""The trained network as a model users can call on raw features.

``export_model(result)`` wraps the MLP with the standardisation fitted on the training part
and with the output mapping of the loss, so that it takes raw feature rows (n, d) as the data
set has them and returns class probabilities (n, K) for a classifier or predictions (n, 1) in
the target's own units for a regressor.

``export_predictors(result, last=…)`` writes the same model's weights and preprocessing for
``core.predictor``, the numpy forward pass that serves predictions without torch;
``checkpoint_predictor`` does it for a checkpoint's parameters while training goes on.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from core.losses import probabilities
from core.model import MLP
from core.predictor import Predictor, dump_predictors

if TYPE_CHECKING:
    from core.data import Dataset
    from core.train import TrainResult


class ExportedModel(torch.nn.Module):
    mean: torch.Tensor
    scale: torch.Tensor

    def __init__(
        self,
        mlp: MLP,
        *,
        mean: torch.Tensor,
        scale: torch.Tensor,
        loss: str,
        task: str,
        target_shift: float = 0.0,
        target_scale: float = 1.0,
        classes: list[str] | None = None,
    ) -> None:
        super().__init__()
        self.mlp = mlp
        self.register_buffer("mean", mean.clone())
        self.register_buffer("scale", scale.clone())
        self.loss = loss
        self.task = task
        self.target_shift = target_shift
        self.target_scale = target_scale
        self.classes = list(classes or [])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.mean.dtype)
        out = self.mlp((x - self.mean) / self.scale)
        if self.task == "regression":
            return out * self.target_scale + self.target_shift
        return probabilities(self.loss, out)


def export_model(result: TrainResult) -> ExportedModel:
    """A copy of the result's model, on the CPU in eval mode, taking raw features."""
    mlp = copy.deepcopy(result.model).to("cpu").eval().requires_grad_(False)
    dtype = mlp.weights[0].dtype
    data = result.data
    return ExportedModel(
        mlp,
        mean=torch.as_tensor(data.mean, dtype=dtype),
        scale=torch.as_tensor(data.scale, dtype=dtype),
        loss=result.loss,
        task=data.task,
        target_shift=result.target_shift,
        target_scale=result.target_scale,
        classes=data.classes,
    ).eval()


def predictor(result: TrainResult, params: Sequence[torch.Tensor] | None = None) -> Predictor:
    """The result's model (or the same network with ``params``: W1, b1, …, as a checkpoint
    holds them) as a :class:`core.predictor.Predictor`, in the model's dtype: what
    :func:`export_model` computes (tests/unit/core/test_predictor.py)."""
    tensors = list(result.model.parameters()) if params is None else list(params)
    return checkpoint_predictor(
        tensors, result.data, activation=result.model.activation, loss=result.loss,
        target=(result.target_shift, result.target_scale),
    )  # fmt: skip


def checkpoint_predictor(
    params: Sequence[torch.Tensor],
    data: Dataset,
    *,
    activation: str,
    loss: str,
    target: tuple[float, float] | None = None,
) -> Predictor:
    """The network of a checkpoint's ``params`` (W1, b1, …) trained on ``data``, as a
    :class:`core.predictor.Predictor` in the parameters' dtype, without a result (a
    checkpoint taken while training goes on). ``target``: a regressor's (shift, scale);
    None: as training sets them from the data (``core.train.target_scaling``)."""
    from core.train import target_scaling

    dtype = params[0].dtype
    shift, scale = target_scaling(data) if target is None else target

    def array(t: torch.Tensor | np.ndarray) -> np.ndarray:
        return torch.as_tensor(t).detach().to("cpu", dtype).numpy().copy()

    return Predictor(
        weights=[array(t) for t in params[0::2]],
        biases=[array(t) for t in params[1::2]],
        activation=activation,
        loss=loss,
        task=data.task,
        mean=array(data.mean),
        scale=array(data.scale),
        feature_names=list(data.feature_names),
        classes=list(data.classes),
        target_shift=float(shift),
        target_scale=float(scale),
    )


def export_predictors(result: TrainResult, *, last: Sequence[torch.Tensor] | None = None) -> bytes:
    """The predictors file of a finished job: ``best``, the result's model (the best epoch's
    weights where early stopping restored them), and ``last``, the weights of the last
    epoch trained (``last``; the model's own when not given)."""
    best = predictor(result)
    final = best if last is None else predictor(result, last)
    return dump_predictors({"best": best, "last": final})
