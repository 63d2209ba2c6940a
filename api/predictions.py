"""What ``POST /v1/jobs/{id}/predict`` reads and keeps: the rows of a request as a matrix of
raw features (JSON rows, JSON columns and rows, or a CSV file), each problem a 422 naming
where it is, and the loaded predictors in a bounded least-recently-used cache."""

from __future__ import annotations

import csv
import io
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import numpy as np

from api.errors import ApiError
from core.predictor import Predictor


class PredictorCache:
    """At most ``size`` predictors, by key (a job and its weights): a hit moves the key to
    the back, a miss loads it (outside the lock) and drops the least recently used beyond
    ``size``."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[Hashable, Predictor] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def get(self, key: Hashable, load: Callable[[], Predictor]) -> Predictor:
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
                return found
        loaded = load()
        with self._lock:
            self._items[key] = loaded
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return loaded


def is_predict_path(path: str) -> bool:
    """``/v1/jobs/<id>/predict``: the route whose body limit is GRADQ_PREDICT_MAX_BYTES and
    which also takes a multipart CSV file."""
    parts = path.rstrip("/").split("/")
    return len(parts) == 5 and parts[:3] == ["", "v1", "jobs"] and parts[4] == "predict"


def _invalid(field: str, message: str) -> ApiError:
    return ApiError(422, "invalid", message, field=field)


def _features(predictor: Predictor) -> str:
    names = predictor.feature_names
    shown = ", ".join(repr(n) for n in names[:20])
    return shown + (f", … ({len(names)} in all)" if len(names) > 20 else "")


def check_count(n: int, limit: int, field: str) -> None:
    """A 413 naming ``field`` when ``n`` rows are over ``limit``; a 422 for none."""
    if n > limit:
        raise ApiError(
            413,
            "too_many_rows",
            f"{n:,} rows are over the limit of {limit:,} rows a request "
            "(GRADQ_PREDICT_MAX_ROWS); send them in several requests",
            field=field,
        )
    if n == 0:
        raise _invalid(field, "no rows: send at least one row of features")


def column_order(columns: Sequence[str], predictor: Predictor, field: str) -> list[int]:
    """For each of the model's features, its position in ``columns``; a 422 naming an
    unknown or repeated column (``field[i]``), or the features missing (``field``)."""
    wanted = predictor.feature_names
    at: dict[str, int] = {}
    for i, name in enumerate(columns):
        if name not in wanted:
            raise _invalid(
                f"{field}[{i}]",
                f"unknown column {name!r}: the model's features are {_features(predictor)}",
            )
        if name in at:
            raise _invalid(f"{field}[{i}]", f"column {name!r} is given twice")
        at[name] = i
    missing = [n for n in wanted if n not in at]
    if missing:
        listed = ", ".join(repr(n) for n in missing[:20])
        raise _invalid(field, f"missing column{'s' if len(missing) > 1 else ''} {listed}")
    return [at[n] for n in wanted]


def _number(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _invalid(field, f"not a number: {str(value)[:50]!r}")
    try:
        number = float(value)
    except OverflowError:  # an integer beyond a float's range
        number = math.inf
    if not math.isfinite(number):
        raise _invalid(field, f"not a finite number: {str(value)[:50]}")
    return number


def json_rows(body: Any, predictor: Predictor, max_rows: int) -> np.ndarray:
    """``{"rows": [[…], …]}`` (each row the model's features in its order) or
    ``{"columns": [names], "rows": [[…], …]}`` (each row in the order of ``columns``) as a
    float64 matrix (n, d) in the model's order."""
    if not isinstance(body, dict):
        raise _invalid("body", 'expected an object {"rows": [[...], ...]}')
    unknown = sorted(set(body) - {"rows", "columns"})
    if unknown:
        raise _invalid(unknown[0], f"unknown field {unknown[0]!r}: expected rows and columns")
    rows = body.get("rows")
    if not isinstance(rows, list):
        raise _invalid("rows", "required: a list of rows, each a list of numbers")
    check_count(len(rows), max_rows, "rows")
    columns = body.get("columns")
    order = None
    if columns is not None:
        if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
            raise _invalid("columns", "expected a list of column names")
        order = column_order(columns, predictor, "columns")
    width = predictor.n_features if columns is None else len(columns)
    out = np.empty((len(rows), width))
    for r, row in enumerate(rows):
        if not isinstance(row, list):
            raise _invalid(f"rows[{r}]", "expected a list of numbers")
        if len(row) != width:
            raise _invalid(f"rows[{r}]", _width_message(len(row), width, predictor, columns))
        out[r] = [_number(v, f"rows[{r}][{c}]") for c, v in enumerate(row)]
    return out if order is None else out[:, order]


def _width_message(n: int, width: int, predictor: Predictor, columns: Any) -> str:
    if columns is not None:
        return f"has {n} values; columns names {width}"
    return f"has {n} values; the model takes {width} features ({_features(predictor)})"


def csv_rows(data: bytes, predictor: Predictor, max_rows: int) -> np.ndarray:
    """A CSV file (a header row naming the model's features, in any order, then one row of
    numbers each) as a float64 matrix (n, d) in the model's order. Rows are numbered as a
    spreadsheet shows them (the header is row 1); blank lines are skipped."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise _invalid("file", "the file is not UTF-8 text") from None
    try:
        lines = [
            (number, cells)
            for number, cells in enumerate(csv.reader(io.StringIO(text), skipinitialspace=True), 1)
            if any(c.strip() for c in cells)
        ]
    except csv.Error as exc:
        raise _invalid("file", f"not valid CSV ({exc})") from None
    if not lines:
        raise _invalid("file", "the file is empty: expected a header row and rows of features")
    header = [c.strip() for c in lines[0][1]]
    try:
        order = column_order(header, predictor, "columns")
    except ApiError as exc:
        raise _invalid("file", f"header row: {exc.message}") from None
    check_count(len(lines) - 1, max_rows, "file")
    out = np.empty((len(lines) - 1, len(header)))
    for r, (number, cells) in enumerate(lines[1:]):
        if len(cells) != len(header):
            raise _invalid(
                "file", f"row {number} has {len(cells)} cells, the header has {len(header)}"
            )
        for c, cell in enumerate(cells):
            try:
                value = float(cell)
            except ValueError:
                value = math.nan
            if not math.isfinite(value):
                raise _invalid(
                    "file", f"row {number}, column {header[c]!r}: {cell[:50]!r} is not a number"
                )
            out[r, c] = value
    return out[:, order]
