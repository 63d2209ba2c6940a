"""The learning-curve PNG (``workers.tracking.plot``): what a user sees in the run's plots."""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image

from core.callbacks import EpochRecord
from workers.tracking.plot import HEIGHT, WIDTH, learning_curve_png

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


def bluish(img: np.ndarray) -> np.ndarray:
    """Where a blue line is, anti-aliased edges included (orange, ink and grid are not)."""
    return np.asarray((img[:, :, 2] - img[:, :, 0]) > 40)


def test_a_regression_curve_with_gaps_and_no_positive_loss_scale() -> None:
    """R² on the second axis; a NaN validation loss breaks the line (nothing is drawn between
    the epochs on either side of it, the line is drawn on both sides); a zero loss rules out
    the log scale: the loss axis is linear, so losses in arithmetic progression at successive
    epochs lie on a straight line.

    40 epochs: no dots, only lines. The train loss falls from 1 to 0 by equal steps; the
    validation loss is 0.8 above it (NaN at epoch 20), 3 at the last epoch, so that the loss
    lines stay between the two R² lines (constant: at the bottom and the top of their axis)
    over the epochs looked at, 2..30, which are left of the legend."""
    n = 40

    def train_loss(e: int) -> float:
        return 1 - (e - 1) / (n - 1)

    def val_loss(e: int) -> float:
        return math.nan if e == 20 else 3.0 if e == n else train_loss(e) + 0.8

    history = [
        record(e, {"loss": train_loss(e), "r2": 0.6}, {"loss": val_loss(e), "r2": 0.5})
        for e in range(1, n + 1)
    ]
    img = pixels(learning_curve_png(history))
    assert near(img, BLUE) > 300 and near(img, ORANGE) > 300
    blue = bluish(img)
    ink = (255 - img[:, :, 0]) / (255 - BLUE[0])  # how much of a line a pixel is
    drawn = np.nonzero(blue.any(axis=0))[0]
    first, last = int(drawn[0]), int(drawn[-1])  # the lines' ends: epochs 1 and n

    def x(epoch: int) -> int:
        return round(first + (epoch - 1) * (last - first) / (n - 1))

    columns = list(range(x(2), x(30) + 1))
    train_y: list[float] = []  # the train line's height in each column (the lowest blue)
    val_rows: dict[int, np.ndarray] = {}  # the validation line's pixels (well above it)
    for c in columns:
        rows = np.nonzero(blue[:, c])[0]
        assert len(rows), f"no loss line in column {c}"
        low = rows[rows > rows.max() - 10]
        train_y.append(float(np.average(low, weights=ink[low, c])))
        val_rows[c] = rows[rows < rows.max() - 40]

    # no log scale: a straight line (on a log axis the train loss would curve, by ~12 px)
    residuals = np.array(train_y) - np.polyval(np.polyfit(columns, train_y, 1), columns)
    worst = float(np.abs(residuals).max())
    assert worst < 1.5, f"the train loss is off a straight line by {worst:.1f} px: not linear"

    # the NaN breaks the validation line: nothing between epochs 19 and 21 (the line ends at
    # each, a pixel wide), and the line, dashed, on both sides
    gap = [c for c in range(x(19) + 2, x(21) - 1) if len(val_rows[c])]
    assert gap == [], f"the validation line is drawn across the NaN in columns {gap}"
    for side in (range(x(15), x(19)), range(x(21) + 1, x(25) + 1)):
        drawn_share = np.mean([len(val_rows[c]) > 0 for c in side])
        assert drawn_share > 0.5, (side, drawn_share)


def test_an_empty_history_is_empty_axes() -> None:
    img = pixels(learning_curve_png([]))
    assert near(img, BLUE) == 0 and near(img, ORANGE) == 0


def test_the_confusion_matrix_shades_each_cell_by_its_share_of_its_true_class() -> None:
    from workers.tracking.plot import CONFUSION_CELL, confusion_png, confusion_table

    matrix = [[9, 1, 0], [0, 5, 5], [0, 0, 7]]
    image = Image.open(io.BytesIO(confusion_png(matrix)))
    img = np.asarray(image.convert("RGB"), dtype=np.int16)
    side = 48 + 3 * CONFUSION_CELL + 8
    assert image.size == (side, side)

    def cell(i: int, j: int) -> np.ndarray:  # a pixel inside the cell, off its text
        y = 48 + i * CONFUSION_CELL + CONFUSION_CELL - 4
        x = 48 + j * CONFUSION_CELL + CONFUSION_CELL - 4
        return img[y, x]

    assert tuple(cell(2, 2)) == BLUE  # all of class 2's rows: full colour
    assert tuple(cell(0, 2)) == (255, 255, 255)  # none: white
    half = cell(1, 1)
    assert all(b < h < 255 for b, h in zip(BLUE, half, strict=True))  # half: between
    table = confusion_table(
        {
            "matrix": matrix,
            "precision": [1.0, 5 / 6, 7 / 12],
            "recall": [0.9, 0.5, 1.0],
            "f1": [0.9, 0.6, 0.7],
            "support": [10, 10, 7],
        }
    )
    assert table["columns"][:4] == ["class", "predicted 0", "predicted 1", "predicted 2"]
    assert table["data"][1] == [1, 0, 5, 5, 5 / 6, 0.5, 0.6, 10]
