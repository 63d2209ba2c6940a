"""The transition table and the pure helpers of db/ (no database)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy.dialects import postgresql, sqlite

from db.errors import (
    IdempotencyConflict,
    InvalidCursor,
    InvalidTransition,
    JobNotFound,
    StaleAttempt,
    StoreError,
)
from db.models import UTCDateTime
from db.queries import _decode_cursor, _encode_cursor
from db.states import TERMINAL, TRANSITIONS, JobStatus, can_transition, require, sources

Q, R, S, F, C, P = (
    JobStatus(s) for s in ("queued", "running", "succeeded", "failed", "cancelled", "pruned")
)


def test_the_table_holds_exactly_the_designed_moves() -> None:
    allowed = {(old, new) for old, targets in TRANSITIONS.items() for new in targets}
    # pruned: a sweep's trial stopped by its rung, from its running attempt only
    # failed → queued: a retry, made in the transaction of its running → failed only
    assert allowed == {
        (Q, R), (Q, C), (Q, F), (R, S), (R, F), (R, C), (R, P), (R, Q), (F, Q)
    }  # fmt: skip
    assert set(TRANSITIONS) == set(JobStatus)


def test_terminal_statuses_have_no_way_out_but_a_failure_retried() -> None:
    assert {S, F, C, P} == TERMINAL
    for status in TERMINAL - {F}:
        assert TRANSITIONS[status] == frozenset()
        assert not any(can_transition(status, other) for other in JobStatus)
    assert TRANSITIONS[F] == {Q}
    assert not can_transition(F, R) and not can_transition(F, S)


def test_sources_invert_the_table() -> None:
    assert sources(R) == {Q}
    assert sources(Q) == {R, F}
    assert sources(C) == {Q, R}
    assert sources(F) == {Q, R}
    assert sources(S) == {R}
    assert sources(P) == {R}


def test_require_refuses_moves_outside_the_table() -> None:
    assert require(Q, R) == (Q, R)
    with pytest.raises(ValueError, match="succeeded → running"):
        require(S, R)
    with pytest.raises(ValueError):
        require(Q, S)  # a job must run before it succeeds


def test_status_values_are_the_stored_strings() -> None:
    assert [s.value for s in JobStatus] == [
        "queued", "running", "succeeded", "failed", "cancelled", "pruned"
    ]  # fmt: skip
    assert JobStatus("running") is R and R == "running"


def test_errors_name_what_was_wrong() -> None:
    for err in (
        JobNotFound("j1"),
        InvalidTransition("j1", "succeeded", "cancelled"),
        StaleAttempt("j1", 1, 2, "running"),
        IdempotencyConflict("k", "j1"),
        InvalidCursor("zz"),
    ):
        assert isinstance(err, StoreError)
    assert "j1" in str(InvalidTransition("j1", "succeeded", "cancelled"))
    assert "succeeded" in str(InvalidTransition("j1", "succeeded", "cancelled"))
    stale = StaleAttempt("j1", 1, 2, "running")
    assert (stale.attempt, stale.current_attempt, stale.current_status) == (1, 2, "running")
    assert "attempt 1" in str(stale) and "current attempt 2" in str(stale)
    conflict = IdempotencyConflict("key-1", "j9")
    assert conflict.existing_job_id == "j9" and "key-1" in str(conflict)


def test_cursor_round_trips_and_rejects_garbage() -> None:
    at = datetime(2026, 11, 28, 12, 0, 0, 123456, tzinfo=UTC)
    assert _decode_cursor(_encode_cursor(at, "abc")) == (at, "abc")
    with pytest.raises(InvalidCursor):
        _decode_cursor("not a cursor")


@pytest.mark.parametrize("dialect", [sqlite.dialect(), postgresql.dialect()])
def test_utc_datetime_stores_utc_and_reads_aware(dialect: object) -> None:
    col = UTCDateTime()
    paris = timezone(timedelta(hours=1))
    bound = col.process_bind_param(datetime(2026, 1, 1, 13, 0, tzinfo=paris), dialect)  # type: ignore[arg-type]
    assert bound is not None and bound.replace(tzinfo=None) == datetime(2026, 1, 1, 12, 0)
    read = col.process_result_value(datetime(2026, 1, 1, 12, 0), dialect)  # type: ignore[arg-type]
    assert read == datetime(2026, 1, 1, 12, 0, tzinfo=UTC) and read.tzinfo is UTC
