"""Loading a data set a spec names, splitting it and standardising its features.

Everything here is deterministic in ``seed`` and reads nothing from the network: real data sets
are the ones scikit-learn ships inside its package, synthetic ones are generated, and files are
read from a local path (``csv``) or the path a worker fetched an upload to (``upload``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from sklearn import datasets as skd
from sklearn.model_selection import train_test_split

from core.csvdata import DataError, Table, read_csv_table
from core.sizes import DEFAULT_SAMPLES, part_sizes
from core.spec import BUILTIN_DATASETS, DatasetSpec, Task, dataset_shape

__all__ = ["DataError", "Dataset", "Table", "load_dataset", "read_csv_table"]

DEFAULT_NOISE = 0.1


@dataclass(frozen=True, eq=False)
class Dataset:
    """A split, standardised data set. ``X_*`` are float64 (n_part, n_features), standardised
    with the training part's ``mean`` and ``scale`` (both (n_features,)); ``y_*`` are int64
    class indices 0..K-1 into ``classes`` (classification) or float64 (n_part,) (regression,
    ``classes == []``). The validation and test parts may have 0 rows."""

    task: Literal["classification", "regression"]
    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    feature_names: list[str]
    classes: list[str]
    mean: np.ndarray
    scale: np.ndarray

    @property
    def n_features(self) -> int:
        return int(self.X_train.shape[1])

    @property
    def n_classes(self) -> int:
        """K for classification, 0 for regression."""
        return len(self.classes) if self.task == "classification" else 0

    @property
    def n_outputs(self) -> int:
        """Width of a model's output: K for classification, 1 for regression."""
        return self.n_classes if self.task == "classification" else 1

    def raw(self, X: np.ndarray) -> np.ndarray:
        """Undo the standardisation: standardised (..., n_features) → raw features, float64."""
        X = np.asarray(X, dtype=np.float64)
        if X.shape[-1:] != (self.n_features,):
            raise ValueError(f"expected (..., {self.n_features}) features, got shape {X.shape}")
        return X * self.scale + self.mean


def load_dataset(spec: DatasetSpec, *, seed: int, path: str | Path | None = None) -> Dataset:
    """Load, split (test part first, then validation, stratified for classification) and
    standardise the data set ``spec`` names. ``path``: the local file of an ``upload`` (which
    the caller fetched), or a replacement for ``spec.path`` of a ``csv``. ``spec.seed``, when
    set, takes the place of ``seed`` (a sweep's trials share one split whatever their seeds)."""
    seed = seed if spec.seed is None else spec.seed
    table = _load_table(spec, seed, path)
    train, val, test = _split(
        table.y, table.task, seed, spec.validation_fraction, spec.test_fraction
    )
    X = table.X.astype(np.float64, copy=False)
    mean, scale = _standardiser(X[train])
    return Dataset(
        task=table.task,
        X_train=(X[train] - mean) / scale,
        y_train=table.y[train],
        X_val=(X[val] - mean) / scale,
        y_val=table.y[val],
        X_test=(X[test] - mean) / scale,
        y_test=table.y[test],
        feature_names=list(table.feature_names),
        classes=list(table.classes),
        mean=mean,
        scale=scale,
    )


def _load_table(spec: DatasetSpec, seed: int, path: str | Path | None) -> Table:
    if spec.name in ("csv", "upload"):
        return _load_file(spec, path)
    if spec.name in BUILTIN_DATASETS:
        return _builtin(spec.name)
    n = spec.n_samples or DEFAULT_SAMPLES
    noise = DEFAULT_NOISE if spec.noise is None else spec.noise
    shape = dataset_shape(spec)
    X, y = _SYNTHETIC[spec.name](n, noise, shape.n_features or 1, shape.n_classes or 0, seed)
    names = [f"x{i + 1}" for i in range(X.shape[1])] if spec.name != "sine" else ["x"]
    if shape.task == "regression":
        return Table(X, y.astype(np.float64), names, [], "regression")
    classes = [str(k) for k in range(shape.n_classes or 0)]
    return Table(X, y.astype(np.int64), names, classes, "classification")


def _load_file(spec: DatasetSpec, path: str | Path | None) -> Table:
    if spec.target is None:  # DatasetSpec requires it for csv and upload
        raise DataError.at("dataset.target", f"required for a {spec.name} data set")
    source = path if path is not None else spec.path
    if source is None:
        raise ValueError("an upload data set is loaded from the local file the caller fetched")
    try:
        # an upload is the user's own file: its cells may be quoted back in errors
        return read_csv_table(
            source, target=spec.target, task=spec.task, echo=spec.name == "upload"
        )
    except DataError as exc:
        if spec.name != "upload":
            raise
        # an upload's file is the one its id names, not a path the user wrote
        fields = [
            e.model_copy(update={"field": "dataset.id"}) if e.field == "dataset.path" else e
            for e in exc.errors
        ]
        raise DataError(fields) from None


_LOADERS: dict[str, Callable[..., Any]] = {
    "iris": skd.load_iris,
    "wine": skd.load_wine,
    "breast_cancer": skd.load_breast_cancer,
    "digits": skd.load_digits,
    "diabetes": skd.load_diabetes,
}


def _builtin(name: str) -> Table:
    """One of scikit-learn's bundled data sets (read from the installed package)."""
    bunch = _LOADERS[name]()
    X = np.asarray(bunch.data, dtype=np.float64)
    names = [str(f) for f in bunch.feature_names]
    if name == "diabetes":
        return Table(X, np.asarray(bunch.target, dtype=np.float64), names, [], "regression")
    classes = [str(c) for c in bunch.target_names]
    return Table(X, np.asarray(bunch.target, dtype=np.int64), names, classes, "classification")


# ---------------------------------------------------------------------------------------------
# Synthetic data sets: (n, noise, n_features, n_classes, seed) -> X (n, n_features), y (n,)

Arrays = tuple[np.ndarray, np.ndarray]


def _moons(n: int, noise: float, d: int, k: int, seed: int) -> Arrays:
    X, y = skd.make_moons(n_samples=n, noise=noise, random_state=seed)
    return X, y


def _circles(n: int, noise: float, d: int, k: int, seed: int) -> Arrays:
    X, y = skd.make_circles(n_samples=n, noise=noise, factor=0.5, random_state=seed)
    return X, y


def _blobs(n: int, noise: float, d: int, k: int, seed: int) -> Arrays:
    """Gaussian clusters with standard deviation ``noise`` around ``k`` random centres."""
    X, y = skd.make_blobs(
        n_samples=n, n_features=d, centers=k, cluster_std=noise, random_state=seed
    )
    return X, y


def _xor(n: int, noise: float, d: int, k: int, seed: int) -> Arrays:
    """Uniform in [-1, 1]²; class 1 where x1 and x2 have the same sign; inputs get N(0, noise²)."""
    rng = np.random.default_rng(seed)
    X = rng.uniform(-1.0, 1.0, size=(n, 2))
    y = (np.sign(X[:, 0]) * np.sign(X[:, 1]) > 0).astype(np.int64)
    return X + rng.normal(0.0, noise, size=X.shape), y


def _spirals(n: int, noise: float, d: int, k: int, seed: int) -> Arrays:
    """``k`` interleaved arms: radius t ∈ [0, 1], angle 3πt + 2πc/k, inputs get N(0, noise²)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n, dtype=np.int64) % k
    t = rng.uniform(0.0, 1.0, size=n)
    angle = 3.0 * np.pi * t + 2.0 * np.pi * y / k
    X = np.stack([t * np.cos(angle), t * np.sin(angle)], axis=1)
    return X + rng.normal(0.0, noise, size=X.shape), y


def _sine(n: int, noise: float, d: int, k: int, seed: int) -> Arrays:
    """x uniform in [-3, 3], shape (n, 1); y = sin(x) + N(0, noise²), shape (n,)."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-3.0, 3.0, size=(n, 1))
    return x, np.sin(x[:, 0]) + rng.normal(0.0, noise, size=n)


_SYNTHETIC: dict[str, Callable[[int, float, int, int, int], Arrays]] = {
    "moons": _moons,
    "circles": _circles,
    "blobs": _blobs,
    "xor": _xor,
    "spirals": _spirals,
    "sine": _sine,
}


# ---------------------------------------------------------------------------------------------
# Split and standardisation


def _split(
    y: np.ndarray, task: Task, seed: int, val_fraction: float, test_fraction: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row indices of the train, validation and test parts: the test part first, then the
    validation part from the rest, both fractions of the whole. Classification splits are
    stratified, except (silently unstratified) when a class has fewer than 2 rows or a part
    is too small to hold one row of every class."""
    n = len(y)
    _, n_val, n_test = part_sizes(n, val_fraction, test_fraction)
    rest = np.arange(n)
    test = val = np.arange(0)
    if n_test:
        rest, test = _take(rest, y, n_test, task, seed)
    if n_val:
        rest, val = _take(rest, y, n_val, task, seed)
    return rest, val, test


def _take(
    idx: np.ndarray, y: np.ndarray, size: int, task: Task, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split the indices ``idx`` into (kept, taken) with ``size`` taken rows."""
    stratify = None
    if task == "classification":
        counts = np.bincount(y[idx])
        counts = counts[counts > 0]
        if counts.min() >= 2 and size >= len(counts) and len(idx) - size >= len(counts):
            stratify = y[idx]
    kept, taken = train_test_split(idx, test_size=size, random_state=seed, stratify=stratify)
    return np.asarray(kept), np.asarray(taken)


def _standardiser(X_train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and scale (n_features,) of the training rows; the scale is 1 where the standard
    deviation is 0 (or rounding noise around a constant column)."""
    mean = X_train.mean(axis=0)
    std = X_train.std(axis=0)
    constant = std <= 1e-12 * np.maximum(np.abs(mean), np.finfo(np.float64).tiny)
    return mean, np.where(constant, 1.0, std)
