"""A trained model's forward pass in numpy, for predictions where torch is not loaded.

A :class:`Predictor` holds what :class:`core.export.ExportedModel` computes with: the weights
and biases of each layer, the activation, the standardisation fitted on the training part,
the loss's output mapping and, for a regressor, the target's shift and scale. Its
:meth:`Predictor.outputs` takes raw feature rows (n, d) and returns what the exported model
returns: class probabilities (n, K) for a classifier (scores for a squared-loss one), values
(n, 1) in the target's units for a regressor, computed in the weights' dtype with the same
activations (``core.activations``).

A job's predictors are stored as one ``.npz`` file (:func:`dump_predictors`): the arrays by
name and the rest as JSON in a byte array; it is read back with ``allow_pickle=False``
(:func:`load_predictor`), so reading it runs no pickled code. This module imports numpy only.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

FORMAT = 1
LEAKY_SLOPE = 0.01  # core.activations.LEAKY_SLOPE
SOFTPLUS_THRESHOLD = 20.0  # core.activations.SOFTPLUS_THRESHOLD
_erf = np.frompyfunc(math.erf, 1, 1)


class PredictorError(ValueError):
    """A predictors file that cannot be read, or that lacks the weights asked for."""


def _sigmoid(z: np.ndarray) -> np.ndarray:
    out = np.empty_like(z)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    e = np.exp(z[~pos])
    out[~pos] = e / (1.0 + e)
    return out


def _gelu(z: np.ndarray) -> np.ndarray:
    erf = np.asarray(_erf(z.astype(np.float64) / math.sqrt(2.0)), dtype=np.float64)
    cdf = 0.5 * (1.0 + erf)
    return (z * cdf).astype(z.dtype)


def _softplus(z: np.ndarray) -> np.ndarray:
    return np.where(z > SOFTPLUS_THRESHOLD, z, np.log1p(np.exp(np.minimum(z, SOFTPLUS_THRESHOLD))))


ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "relu": lambda z: np.maximum(z, 0),
    "leaky_relu": lambda z: np.where(z > 0, z, z * z.dtype.type(LEAKY_SLOPE)),
    "sigmoid": _sigmoid,
    "tanh": np.tanh,
    "identity": lambda z: z,
    "gelu": _gelu,
    "elu": lambda z: np.where(z > 0, z, np.expm1(np.minimum(z, 0))),
    "silu": lambda z: z * _sigmoid(z),
    "softplus": _softplus,
}


@dataclass(frozen=True, eq=False)
class Predictor:
    """One set of weights with the preprocessing and output mapping of its job."""

    weights: list[np.ndarray]  # W⁽ˡ⁾ (out, in)
    biases: list[np.ndarray]  # b⁽ˡ⁾ (out,)
    activation: str
    loss: str
    task: str  # classification | regression
    mean: np.ndarray  # (d,) of the training part's raw features
    scale: np.ndarray
    feature_names: list[str]
    classes: list[str]  # a classifier's labels, as the data named them; [] for a regressor
    target_shift: float = 0.0
    target_scale: float = 1.0

    @property
    def n_features(self) -> int:
        return int(self.weights[0].shape[1])

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (*self.weights, *self.biases, self.mean, self.scale))

    def outputs(self, X: np.ndarray) -> np.ndarray:
        """Raw features (n, d) → probabilities (n, K) or values (n, 1), as ExportedModel."""
        dtype = self.weights[0].dtype
        h = (np.asarray(X).astype(dtype) - self.mean) / self.scale
        act = ACTIVATIONS[self.activation]
        last = len(self.weights) - 1
        for W, b in zip(self.weights[:last], self.biases[:last], strict=True):
            h = act(h @ W.T + b)
        out = h @ self.weights[last].T + self.biases[last]
        if self.task == "regression":
            return out * dtype.type(self.target_scale) + dtype.type(self.target_shift)
        if self.loss == "logistic":
            p1 = _sigmoid(out[:, 0])
            return np.stack([1.0 - p1, p1], axis=1)
        if self.loss == "squared":
            return out  # a squared-loss classifier outputs scores, not probabilities
        e = np.exp(out - out.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    def predict(self, X: np.ndarray) -> dict[str, Any]:
        """``predictions`` (a class label per row, or a value), and for a classifier
        ``probabilities`` (a list per row, in the order of ``classes``) and ``classes``."""
        out = self.outputs(X)
        if self.task == "regression":
            return {"predictions": out[:, 0].astype(float).tolist()}
        index = out.argmax(axis=1)
        return {
            "predictions": [self.classes[i] for i in index.tolist()],
            "probabilities": out.astype(float).tolist(),
            "classes": list(self.classes),
        }


_SHARED = ("activation", "loss", "task", "feature_names", "classes", "target_shift",
           "target_scale")  # fmt: skip


def dump_predictors(predictors: Mapping[str, Predictor]) -> bytes:
    """One ``.npz`` holding each named predictor's weights (``best``, ``last``); their
    preprocessing, which a job's predictors share, is stored once (from the first)."""
    first = next(iter(predictors.values()))
    meta: dict[str, Any] = {"format": FORMAT, **{k: getattr(first, k) for k in _SHARED}}
    meta["sets"] = {name: len(p.weights) for name, p in predictors.items()}
    arrays: dict[str, np.ndarray] = {
        "meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
        "mean": first.mean,
        "scale": first.scale,
    }
    for name, p in predictors.items():
        for i, (W, b) in enumerate(zip(p.weights, p.biases, strict=True)):
            arrays[f"{name}.W{i}"], arrays[f"{name}.b{i}"] = W, b
    buf = io.BytesIO()
    np.savez(buf, allow_pickle=False, **arrays)
    return buf.getvalue()


def load_predictor(data: bytes, name: str) -> Predictor:
    """The predictor ``name`` of a file :func:`dump_predictors` wrote (no pickle is read)."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        meta = json.loads(arrays["meta"].tobytes())
    except Exception as exc:  # zipfile, numpy and json raise many kinds for a corrupt file
        raise PredictorError(f"not a gradq predictors file: {exc}") from None
    if meta.get("format") != FORMAT:
        raise PredictorError("not a gradq predictors file (unknown format)")
    if name not in meta["sets"]:
        raise PredictorError(f"no weights {name!r}; the file has {sorted(meta['sets'])}")
    layers = range(meta["sets"][name])
    return Predictor(
        weights=[arrays[f"{name}.W{i}"] for i in layers],
        biases=[arrays[f"{name}.b{i}"] for i in layers],
        mean=arrays["mean"],
        scale=arrays["scale"],
        **{k: meta[k] for k in _SHARED},
    )
