"""What a job list (``GET /v1/jobs``) and a sweep list filter and sort by, as SQL: tags, a
name prefix, creation times, thresholds on a final metric, and an order by a final metric.

The query strings are parsed here (:func:`parse_tag`, :func:`parse_bound`, :func:`parse_sort`);
each refusal is a :class:`ValueError` whose message says what is allowed.

A tag is read from the spec (``spec.tags.KEY``), a final metric from the result
(``result.metrics.NAME``), both through SQLAlchemy's JSON paths, which render as
``JSON_EXTRACT`` on SQLite and ``#>>`` on PostgreSQL.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Table, and_, case, func, or_

from core.spec import TAG_KEY, TAG_VALUE
from db.models import JOBS

METRIC = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,99}")
BOUND = re.compile(r"(?P<metric>[^<>=!]*)(?P<op><=|>=|<|>|=)(?P<value>.*)")
OPERATORS = ("<=", ">=", "<", ">", "=")
DEFAULT_SORT = "-created_at"


@dataclass(frozen=True)
class MetricBound:
    """A threshold on a final metric: ``metric op value`` (e.g. ``test_accuracy >= 0.9``).
    A job without that metric does not meet it."""

    metric: str
    op: str
    value: float


@dataclass(frozen=True)
class MetricSort:
    """An order by a final metric, highest first when ``descending``; the jobs without it
    come last, then newest first."""

    metric: str
    descending: bool


def parse_tag(text: str) -> tuple[str, str]:
    """``KEY:VALUE`` (``team:vision``) as (key, value)."""
    key, colon, value = text.partition(":")
    if not colon:
        raise ValueError(f"{text[:100]!r} is not KEY:VALUE (e.g. team:vision)")
    if not TAG_KEY.fullmatch(key):
        raise ValueError(f"{key[:100]!r} is not a tag key (1-64 letters, digits, _ . -)")
    if not TAG_VALUE.fullmatch(value):
        raise ValueError(f"{value[:100]!r} is not a tag value (1-100 letters, digits, _.:/@+=-)")
    return key, value


def parse_bound(text: str) -> MetricBound:
    """``METRIC OP NUMBER`` with OP one of ``<= >= < > =`` (``test_accuracy>=0.9``)."""
    found = BOUND.fullmatch(text.replace(" ", ""))
    if found is None:
        raise ValueError(
            f"{text[:100]!r} is not METRIC OP NUMBER with OP one of {' '.join(OPERATORS)} "
            "(e.g. test_accuracy>=0.9)"
        )
    metric, op, raw = found["metric"], found["op"], found["value"]
    _check_metric(metric)
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{raw[:100]!r} is not a number (in {text[:100]!r})") from None
    if not math.isfinite(value):
        raise ValueError(f"{raw!r} is not a finite number")
    return MetricBound(metric, op, value)


def parse_sort(text: str) -> MetricSort | None:
    """``-created_at`` (newest first: the default, None), or a final metric, ``-NAME`` for
    the highest first and ``NAME`` for the lowest first (``-test_accuracy``)."""
    if text == DEFAULT_SORT:
        return None
    descending = text.startswith("-")
    metric = text.removeprefix("-")
    if metric == "created_at":
        raise ValueError("created_at sorts newest first only: -created_at")
    _check_metric(metric)
    return MetricSort(metric, descending)


def _check_metric(metric: str) -> None:
    if not METRIC.fullmatch(metric):
        raise ValueError(
            f"{metric[:100]!r} is not a metric name (letters, digits and _, e.g. test_accuracy)"
        )


def tag_terms(table: Table, tags: Sequence[tuple[str, str]]) -> list[ColumnElement[bool]]:
    """WHERE terms: rows of ``table`` whose spec has every one of these tags (AND)."""
    return [table.c.spec[("tags", key)].as_string() == value for key, value in tags]


def metric_value(metric: str) -> ColumnElement[Any]:
    """A job's final ``metric`` (``result.metrics.NAME``) as a float; NULL without it."""
    return JOBS.c.result[("metrics", metric)].as_float()


def bound_term(bound: MetricBound) -> ColumnElement[bool]:
    """WHERE term of a threshold (NULL, so false, for a job without the metric)."""
    v, x = metric_value(bound.metric), bound.value
    terms = {"<=": v <= x, ">=": v >= x, "<": v < x, ">": v > x, "=": v == x}
    return terms[bound.op]


def name_prefix_term(table: Table, prefix: str) -> ColumnElement[bool]:
    """WHERE term: names starting with ``prefix``, case-sensitive on both backends (SQLite's
    LIKE is not) and with no character taken as a wildcard."""
    return func.substr(table.c.name, 1, len(prefix)) == prefix


def sorted_by(sort: MetricSort) -> list[ColumnElement[Any]]:
    """ORDER BY terms of a metric order: jobs with the metric first, by it, then newest
    first (created_at, id: a total order, so pages neither repeat nor skip a job)."""
    v = metric_value(sort.metric)
    return [
        case((v.is_(None), 1), else_=0),
        v.desc() if sort.descending else v.asc(),
        JOBS.c.created_at.desc(),
        JOBS.c.id.desc(),
    ]


def after_in_order(sort: MetricSort, value: float | None, at: Any, job_id: str) -> Any:
    """WHERE term: the jobs after (``value``, ``at``, ``job_id``) in :func:`sorted_by`."""
    v = metric_value(sort.metric)
    older = or_(JOBS.c.created_at < at, and_(JOBS.c.created_at == at, JOBS.c.id < job_id))
    if value is None:
        return and_(v.is_(None), older)
    beyond = v < value if sort.descending else v > value
    return or_(beyond, and_(v == value, older), v.is_(None))
