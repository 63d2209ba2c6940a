"""The learning-curve PNG (``workers.tracking_plot``): what a user sees in the run's plots."""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image

from core.callbacks import EpochRecord
from workers.tracking_plot import HEIGHT, WIDTH, learning_curve_png

BLUE, ORANGE = (31, 119, 180), (255, 127, 14)


def record(epoch: int, train: dict[str, float], val: dict[str, float]) -> EpochRecord:
    return EpochRecord(epoch, 10 * epoch, 0.1, 0.01, 1e4, 1.0, train, val)


def pixels(png: bytes) -> np.ndarray:
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    image = Image.open(io.BytesIO(png))
    assert image.size == (WIDTH, HEIGHT)
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def near(img: np.ndarray, color: tuple[int, int, int]) -> int:
    """Pixels within a small distance of ``color`` (lines are anti-aliased at their edges)."""
    return int((np.abs(img - np.array(color)).sum(axis=2) < 30).sum())


def test_a_one_epoch_curve_shows_its_points_and_values() -> None:
    img = pixels(
        learning_curve_png(
            [record(1, {"loss": 0.3, "accuracy": 0.9}, {"loss": 0.4, "accuracy": 0.85})]
        )
    )
    # a dot per series and its value beside it: twice the legend samples' pixels, or more
    assert near(img, BLUE) > 150 and near(img, ORANGE) > 200


def test_a_long_classification_curve_draws_loss_and_accuracy() -> None:
    history = [
        record(
            e,
            {"loss": 2.0 / e, "accuracy": 1 - 0.5 / e},
            {"loss": 2.2 / e, "accuracy": 1 - 0.6 / e},
        )
        for e in range(1, 201)
    ]
    img = pixels(learning_curve_png(history))
    assert near(img, BLUE) > 1000 and near(img, ORANGE) > 1000


def test_a_regression_curve_with_gaps_and_no_positive_loss_scale() -> None:
    """R² on the second axis; a NaN validation loss breaks the line; a zero loss rules out the
    log scale (the plot is still drawn)."""
    history = [
        record(
            e,
            {"loss": 0.0 if e == 3 else 1.0 / e, "r2": 0.1 * e},
            {"loss": math.nan if e == 4 else 1.1 / e, "r2": 0.09 * e},
        )
        for e in range(1, 9)
    ]
    img = pixels(learning_curve_png(history))
    assert near(img, BLUE) > 300 and near(img, ORANGE) > 300


def test_an_empty_history_is_empty_axes() -> None:
    img = pixels(learning_curve_png([]))
    assert near(img, BLUE) == 0 and near(img, ORANGE) == 0
