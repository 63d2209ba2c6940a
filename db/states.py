"""The job state machine: the statuses and the ONE table of allowed transitions.

Every change of a job's status goes through :func:`db.store.move`: it names one old and
one new status, checks that pair against this table (:func:`require`) and puts
``status = old`` in the UPDATE's WHERE, so a row moves only from the status its caller named
and only along an edge of the table.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum


class JobStatus(StrEnum):
    """Where a job is in its life. The value is what the database stores."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    PRUNED = "pruned"  # a sweep's trial stopped early by its rung (``db.sweeps``)


TERMINAL: frozenset[JobStatus] = frozenset(
    {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.PRUNED}
)
"""Statuses a job is done in: no reader ever sees a job leave one. ``failed → queued`` (a
retry) is made only inside the transaction that wrote ``running → failed``
(:meth:`db.store.JobStore.finish`), so a committed ``failed`` is final: a job being retried is
seen queued, never failed, and a watcher that stops at a terminal status stops for good."""

INITIAL = JobStatus.QUEUED
"""The status of a newly submitted job (its first event reads None → queued)."""

TRANSITIONS: Mapping[JobStatus, frozenset[JobStatus]] = {
    # claimed for an attempt; cancelled before it ran; failed without running (no node can run it)
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.CANCELLED, JobStatus.FAILED}),
    # finished by its attempt (pruned: a sweep's trial below its rung's cut); or its lease
    # expired: cancelled (a cancel was requested), failed (no attempts left) or back to the
    # queue (attempts left)
    JobStatus.RUNNING: frozenset(
        {
            JobStatus.SUCCEEDED,
            JobStatus.FAILED,
            JobStatus.CANCELLED,
            JobStatus.PRUNED,
            JobStatus.QUEUED,
        }
    ),
    JobStatus.SUCCEEDED: frozenset(),
    # a retry: the attempt failed for a transient class its spec's ``retry.on`` lists, with
    # retries left. Only in the same transaction as the running → failed it follows
    # (``JobStore.finish``): no reader sees that failed (see TERMINAL)
    JobStatus.FAILED: frozenset({JobStatus.QUEUED}),
    JobStatus.CANCELLED: frozenset(),
    JobStatus.PRUNED: frozenset(),
}
"""old status → the statuses it may move to. The only definition of legal moves."""


class StopReason(StrEnum):
    """Why a running attempt is asked to stop (:meth:`db.store.JobStore.request_stop`): a
    cancel (a user's, or a cancelled sweep's), or a sweep's trial pruned by its rung."""

    CANCEL = "cancel"
    PRUNED = "pruned"


def can_transition(old: JobStatus | str, new: JobStatus | str) -> bool:
    """True when the table allows ``old → new``."""
    return JobStatus(new) in TRANSITIONS[JobStatus(old)]


def sources(new: JobStatus | str) -> frozenset[JobStatus]:
    """Every status from which ``new`` may be reached: the table read backwards."""
    target = JobStatus(new)
    return frozenset(old for old, targets in TRANSITIONS.items() if target in targets)


def require(old: JobStatus, new: JobStatus) -> tuple[JobStatus, JobStatus]:
    """Return ``(old, new)`` when the table allows it, else raise ``ValueError``.

    :func:`db.store.move` calls it before each UPDATE, so a transition the table does
    not hold can never be written.
    """
    if not can_transition(old, new):
        raise ValueError(f"transition {old.value} → {new.value} is not in the table")
    return old, new
