"""The job list's filters and metric order, pushed down into SQL, on 1,000 jobs, on both
backends: every page walked with the cursors gives exactly the jobs Python's own filter and
sort of the same rows give, in that order (none repeated, none skipped)."""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, insert

from db.errors import InvalidCursor
from db.filters import MetricBound, MetricSort, parse_bound, parse_sort, parse_tag
from db.models import JOBS
from db.store import JobStore

START = datetime(2026, 11, 1, tzinfo=UTC)
TEAMS = ("vision", "nlp", "audio")
STATUSES = ("succeeded", "succeeded", "failed", "queued", "cancelled")


def make_rows(n: int, tenant: str, rng: random.Random) -> list[dict[str, Any]]:
    """``n`` jobs of ``tenant``: three share each creation time (ties for the order's
    second key); a succeeded job has a test accuracy rounded to 2 digits (ties for the first
    key), except one in 7 with no metrics at all."""
    rows = []
    for i in range(n):
        status = STATUSES[i % len(STATUSES)]
        tags = {"team": TEAMS[i % 3], "purpose": "baseline" if i % 4 else "tuned"}
        if i % 11 == 0:
            tags = {}
        metrics = None
        if status == "succeeded" and i % 7:
            metrics = {"test_accuracy": round(rng.random(), 2), "test_loss": rng.random()}
        at = START + timedelta(seconds=i // 3)
        rows.append(
            dict(id=str(uuid.uuid4()), tenant=tenant, name=f"exp{i % 10}-{i}",
                 spec={"dataset": {"name": "iris"}, "tags": tags}, status=status, priority=0,
                 attempt=1, max_attempts=3, cancel_requested=False,
                 result=None if metrics is None else {"metrics": metrics, "epochs": 3},
                 created_at=at, updated_at=at)
        )  # fmt: skip
    return rows


def insert_rows(engine: Engine, rows: Sequence[dict[str, Any]]) -> None:
    """One multi-row INSERT per 500 jobs, in one transaction."""
    with engine.begin() as conn:
        for i in range(0, len(rows), 500):
            conn.execute(insert(JOBS), list(rows[i : i + 500]))


@pytest.fixture
def jobs(engine: Engine) -> list[dict[str, Any]]:
    rng = random.Random(7)
    rows = make_rows(950, "t1", rng)
    insert_rows(engine, rows + make_rows(50, "t2", rng))
    return rows


def walk(store: JobStore, limit: int, **filters: Any) -> list[str]:
    """Every page of the tenant t1's list with these filters: the ids in order."""
    ids: list[str] = []
    cursor = None
    while True:
        page, cursor = store.list(tenant="t1", limit=limit, cursor=cursor, **filters)
        ids += [j.id for j in page]
        if cursor is None:
            return ids


def metric(row: dict[str, Any], name: str) -> float | None:
    return (row["result"] or {}).get("metrics", {}).get(name)


def meets(row: dict[str, Any], name: str, test: Callable[[float], bool]) -> bool:
    value = metric(row, name)
    return value is not None and test(value)


def expected(
    rows: list[dict[str, Any]],
    keep: Callable[[dict[str, Any]], bool],
    sort: MetricSort | None = None,
) -> list[str]:
    """The ids the list must give, filtered and ordered in Python."""
    kept = sorted((r for r in rows if keep(r)), key=lambda r: (r["created_at"], r["id"]))
    kept.reverse()  # newest first, the largest id first among equal times
    if sort is not None:  # stable: ties keep the newest-first order
        with_metric = [r for r in kept if metric(r, sort.metric) is not None]
        without = [r for r in kept if metric(r, sort.metric) is None]
        with_metric.sort(key=lambda r: metric(r, sort.metric), reverse=sort.descending)
        kept = with_metric + without
    return [r["id"] for r in kept]


def test_tag_threshold_and_metric_order_walk_every_page_once(
    store: JobStore, jobs: list[dict[str, Any]]
) -> None:
    tags = [parse_tag("team:vision"), parse_tag("purpose:baseline")]
    bounds = [parse_bound("test_accuracy>=0.5")]
    order = parse_sort("-test_accuracy")
    want = expected(
        jobs,
        lambda r: (
            r["spec"]["tags"].get("team") == "vision"
            and r["spec"]["tags"].get("purpose") == "baseline"
            and meets(r, "test_accuracy", lambda v: v >= 0.5)
        ),
        order,
    )
    assert len(want) > 30  # several pages, with ties in the metric
    got = walk(store, 7, tags=tags, bounds=bounds, sort=order)
    assert got == want
    page, _ = store.list(tenant="t1", limit=3, tags=tags, bounds=bounds, sort=order)
    values = [j.result["metrics"]["test_accuracy"] for j in page if j.result]
    assert values == sorted(values, reverse=True) and values[0] >= 0.5


def test_metric_order_puts_jobs_without_it_last_across_pages(
    store: JobStore, jobs: list[dict[str, Any]]
) -> None:
    """Ascending, over every job of the tenant: the pages cross from the jobs with the
    metric to those without it (NULL), then walk those newest first."""
    order = MetricSort("test_loss", descending=False)
    want = expected(jobs, lambda r: True, order)
    got = walk(store, 64, sort=order)
    assert got == want
    assert len(got) == 950 and len(set(got)) == 950  # t2's 50 jobs are never listed


@pytest.mark.parametrize(
    ("filters", "keep"),
    [
        ({"status": "failed"}, lambda r: r["status"] == "failed"),
        ({"name_prefix": "exp3-"}, lambda r: r["name"].startswith("exp3-")),
        ({"name_prefix": "EXP3-"}, lambda r: False),  # case-sensitive on both backends
        ({"name_prefix": "exp_"}, lambda r: False),  # _ is no wildcard
        (
            {"created_after": START + timedelta(seconds=100),
             "created_before": START + timedelta(seconds=200)},
            lambda r: START + timedelta(seconds=100) < r["created_at"]
            < START + timedelta(seconds=200),
        ),
        (
            {"tags": [("team", "nlp")], "status": "succeeded",
             "bounds": [MetricBound("test_accuracy", "<", 0.3)]},
            lambda r: r["spec"]["tags"].get("team") == "nlp" and r["status"] == "succeeded"
            and meets(r, "test_accuracy", lambda v: v < 0.3),
        ),
        ({"tags": [("team", "nlp"), ("team", "vision")]}, lambda r: False),  # AND
    ],
)  # fmt: skip
def test_each_filter_matches_python(
    store: JobStore, jobs: list[dict[str, Any]], filters: dict[str, Any], keep: Any
) -> None:
    want = expected(jobs, keep)
    assert walk(store, 50, **filters) == want


def test_a_cursor_of_another_order_is_refused(store: JobStore, jobs: list[dict[str, Any]]) -> None:
    _, newest_cursor = store.list(tenant="t1", limit=5)
    by_metric = MetricSort("test_accuracy", descending=True)
    _, metric_cursor = store.list(tenant="t1", limit=5, sort=by_metric)
    assert newest_cursor is not None and metric_cursor is not None
    with pytest.raises(InvalidCursor):
        store.list(tenant="t1", cursor=newest_cursor, sort=by_metric)
    with pytest.raises(InvalidCursor):
        store.list(tenant="t1", cursor=metric_cursor)
    with pytest.raises(InvalidCursor):
        store.list(tenant="t1", cursor=metric_cursor, sort=MetricSort("test_loss", True))
