"""Reading a CSV table (a header row, numeric feature columns and one target column).

Rows are numbered as a spreadsheet shows them: the header is row 1, the first data row row 2,
blank lines count as rows but are skipped. Every problem is a :class:`DataError` whose field is
``dataset.path`` (the file), ``dataset.target`` (the target column) or ``dataset.task``.

Errors quote the file's cells and column names only when the caller sent its bytes (an
upload): a file read from a path is named by row and column numbers alone, so that a
message never shows a line of a file its reader could not see otherwise.
"""

from __future__ import annotations

import csv
import io
import math
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np

from core.spec import FieldError, InvalidSpec, Task
from core.uploads import ColumnProfile

MIN_ROWS = 10
MAX_ROWS = 1_000_000
MAX_CLASSES = 1_000  # the most classes a spec may ask for (DatasetSpec.n_classes)
AUTO_MAX_CLASSES = 50  # an integer target with more distinct values is auto-detected as regression

csv.field_size_limit(1 << 24)


class DataError(InvalidSpec):
    """A problem with the data a spec names: ``errors[0].field`` is the spec field to blame
    (``dataset.path``, ``dataset.target``, ``dataset.task`` ...); for a CSV cell the message
    names the row (1-based, the header is row 1) and the column."""

    @classmethod
    def at(cls, field: str, message: str) -> DataError:
        return cls([FieldError(field=field, message=message)])


@dataclass(frozen=True, eq=False)
class Table:
    """A parsed CSV: ``X`` float64 (n_rows, n_features); ``y`` int64 class indices into
    ``classes`` (classification) or float64 (n_rows,) (regression, ``classes == []``)."""

    X: np.ndarray
    y: np.ndarray
    feature_names: list[str]
    classes: list[str]
    task: Task


def read_csv_table(
    source: str | Path | bytes, *, target: str, task: Task | None = None, echo: bool | None = None
) -> Table:
    """Parse a CSV with a header row; ``source`` is a file path (``str`` or ``Path``) or the
    file's bytes (UTF-8, a BOM is allowed). ``task`` None picks it from the target column:
    classification when it is non-numeric, or integer-valued with at most 50 distinct values
    and fewer distinct values than half the rows; regression otherwise. ``echo``: whether
    errors quote cells and column names (default: for bytes only)."""
    quote = isinstance(source, bytes) if echo is None else echo
    if isinstance(source, bytes):
        return _parse(
            io.TextIOWrapper(io.BytesIO(source), encoding="utf-8-sig", newline=""),
            target,
            task,
            quote,
        )
    try:
        with open(source, encoding="utf-8-sig", newline="") as f:
            return _parse(f, target, task, quote)
    except OSError as exc:
        raise DataError.at("dataset.path", f"cannot read {str(source)!r}: {exc.strerror}") from None


def _rows(f: TextIO) -> Iterator[tuple[int, list[str]]]:
    """(row number, cells) of each non-blank row; the header is row 1."""
    reader = csv.reader(f, skipinitialspace=True)
    number = 0
    try:
        for cells in reader:
            number += 1
            if cells and any(c.strip() for c in cells):
                yield number, cells
    except UnicodeDecodeError:
        raise DataError.at(
            "dataset.path", f"row {number + 1}: the file is not UTF-8 text"
        ) from None
    except csv.Error as exc:
        raise DataError.at("dataset.path", f"row {number + 1}: not valid CSV ({exc})") from None


def _parse(f: TextIO, target: str, task: Task | None, echo: bool) -> Table:
    rows = _rows(f)
    header_row = next(rows, None)
    if header_row is None:
        raise DataError.at("dataset.path", "the file is empty: expected a header row and data rows")
    names = [c.strip() for c in header_row[1]]
    _check_header(names, target, echo)
    # how a message names each column: quoted, or by its number (1-based)
    cols = [repr(n) if echo else str(i + 1) for i, n in enumerate(names)]
    t = names.index(target)
    features = [i for i in range(len(names)) if i != t]
    feature_names = [names[i] for i in features]
    X = array("d")  # row-major features, 8 bytes a cell
    labels: list[str] = []
    row_numbers: list[int] = []
    for number, cells in rows:
        if len(labels) >= MAX_ROWS:
            raise DataError.at("dataset.path", f"more than {MAX_ROWS:,} data rows")
        if len(cells) != len(names):
            raise DataError.at(
                "dataset.path",
                f"row {number} has {len(cells)} cells, the header has {len(names)} columns",
            )
        X.extend([_number(cells[i], number, cols[i], echo) for i in features])
        label = cells[t].strip()
        if not label:
            raise DataError.at("dataset.path", f"row {number}, column {target!r}: empty cell")
        labels.append(label)
        row_numbers.append(number)
    if not labels:
        raise DataError.at("dataset.path", "the file has a header but no data rows")
    if len(labels) < MIN_ROWS:
        raise DataError.at(
            "dataset.path", f"needs at least {MIN_ROWS} data rows, found {len(labels)}"
        )
    X_arr = np.frombuffer(X, dtype=np.float64).reshape(len(labels), len(features))
    y, classes, task = _target(labels, row_numbers, target, task, echo)
    return Table(X=X_arr, y=y, feature_names=feature_names, classes=classes, task=task)


def _check_header(names: list[str], target: str, echo: bool) -> None:
    for i, name in enumerate(names):
        if not name:
            raise DataError.at("dataset.path", f"row 1: column {i + 1} has no name")
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in seen:
            what = (
                f"duplicate column name {name!r}"
                if echo
                else (f"columns {seen[name] + 1} and {i + 1} have the same name")
            )
            raise DataError.at("dataset.path", f"row 1: {what}")
        seen[name] = i
    if target not in seen:
        if echo:
            available = ", ".join(repr(n) for n in names)
            raise DataError.at(
                "dataset.target", f"no column {target!r}; the columns are {available}"
            )
        raise DataError.at(
            "dataset.target",
            f"no column {target!r} among the file's {len(names)} columns (row 1, the header)",
        )
    if len(names) < 2:
        raise DataError.at("dataset.path", f"no feature columns besides the target {target!r}")


def _number(cell: str, row: int, column: str, echo: bool) -> float:
    """``column``: as a message names it (quoted, or its number)."""
    text = cell.strip()
    if not text:
        raise DataError.at("dataset.path", f"row {row}, column {column}: empty cell")
    shown = f"{text!r}" if echo else "the cell"
    try:
        value = float(text)
    except ValueError:
        raise DataError.at(
            "dataset.path", f"row {row}, column {column}: {shown} is not a number"
        ) from None
    if not math.isfinite(value):
        raise DataError.at(
            "dataset.path", f"row {row}, column {column}: {shown} is not a finite number"
        )
    return value


def _target(
    labels: list[str], rows: list[int], column: str, task: Task | None, echo: bool
) -> tuple[np.ndarray, list[str], Task]:
    """Class indices (int64) and labels, or float64 values, of the target column (n_rows,)."""
    values: list[float] = []
    first_text: tuple[int, str] | None = None
    for label, row in zip(labels, rows, strict=True):
        try:
            values.append(float(label))
        except ValueError:
            first_text = (row, label)
            break
    if first_text is None:
        for value, label, row in zip(values, labels, rows, strict=True):
            if not math.isfinite(value):
                shown = f"{label!r}" if echo else "the cell"
                raise DataError.at(
                    "dataset.path",
                    f"row {row}, column {column!r}: {shown} is not a finite number",
                )
    if first_text is not None:  # a text target: class labels
        row, label = first_text
        if task == "regression":
            shown = f"{label!r}" if echo else "the cell"
            raise DataError.at(
                "dataset.task",
                f"regression needs a numeric target; row {row}, column {column!r}: "
                f"{shown} is not a number",
            )
        return _classes(labels, sorted(set(labels)), column, echo)
    y = np.array(values, dtype=np.float64)
    integral = bool(np.all(y == np.round(y)))
    distinct = np.unique(y)
    if task is None:
        auto_cls = integral and len(distinct) <= AUTO_MAX_CLASSES and len(distinct) < len(y) / 2
        task = "classification" if auto_cls else "regression"
    if task == "regression":
        return y, [], "regression"
    if not integral:
        i = int(np.argmax(y != np.round(y)))
        shown = f"{labels[i]!r}" if echo else "the cell"
        raise DataError.at(
            "dataset.task",
            f"classification needs class labels, integers or text; row {rows[i]}, "
            f"column {column!r}: {shown} is not an integer",
        )
    names = [str(int(v)) for v in distinct]
    keys = [str(int(v)) for v in y]
    return _classes(keys, names, column, echo)


def _classes(
    keys: list[str], classes: list[str], column: str, echo: bool
) -> tuple[np.ndarray, list[str], Task]:
    if len(classes) < 2:
        which = f" {classes[0]!r}" if echo else ""
        raise DataError.at(
            "dataset.target",
            f"column {column!r} has a single class{which}; classification needs at least 2",
        )
    if len(classes) > MAX_CLASSES:
        raise DataError.at(
            "dataset.target",
            f"column {column!r} has {len(classes):,} distinct labels; "
            f"classification allows at most {MAX_CLASSES:,}",
        )
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index[k] for k in keys], dtype=np.int64), classes, "classification"


def column_profiles(table: Table, target: str) -> dict[str, ColumnProfile]:
    """Each column of ``table`` (read with ``target`` as its target) as a target would be:
    what :func:`core.uploads.upload_shape` needs to know an upload's shape for any of its
    columns without reading the file again."""
    profiles = {name: _numeric_profile(table.X[:, j]) for j, name in enumerate(table.feature_names)}
    if table.task == "regression":
        profiles[target] = _numeric_profile(table.y)
    else:
        text = not all(_is_number(c) for c in table.classes)
        profiles[target] = ColumnProfile(text, not text, len(table.classes))
    return profiles


def _numeric_profile(values: np.ndarray) -> ColumnProfile:
    integral = bool(np.all(values == np.round(values)))
    return ColumnProfile(False, integral, len(np.unique(values)) if integral else None)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
