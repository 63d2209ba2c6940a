"""The dispatcher's handling of an attempt it sees die, with the store and the closer faked
(the real store and a real Ray: tests/integration/workers/test_dispatch.py and
tests/integration/db/test_db_lifecycle.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from db.errors import StoreUnavailable
from db.states import JobStatus
from workers.dispatcher import Dispatcher, DispatcherConfig, death
from workers.task import WorkerConfig


@dataclass
class FakeStore:
    outcome: JobStatus | type[Exception] | None
    released: list[tuple[str, int, str]] = field(default_factory=list)

    def release(self, *, job_id: str, attempt: int, why: str) -> JobStatus | None:
        self.released.append((job_id, attempt, why))
        if isinstance(self.outcome, type):
            raise self.outcome("the database is away")
        return self.outcome

    def get(self, *, job_id: str) -> Any:
        return type("View", (), {"mlflow_run_id": f"run-of-{job_id}"})()


@dataclass
class FakeCloser:
    closed: list[dict[str, str]] = field(default_factory=list)

    def submit(self, **run: str) -> None:
        self.closed.append(run)


def dispatcher(store: FakeStore) -> tuple[Dispatcher, FakeCloser]:
    config = DispatcherConfig(worker=WorkerConfig(database_url="sqlite://", tracking_uri="x"))
    d = Dispatcher(config, store)  # type: ignore[arg-type]
    d.closer = closer = FakeCloser()  # type: ignore[assignment]
    return d, closer


class WorkerCrashedError(Exception):
    """Ray's exception of that name, as the dispatcher sees it (type name and message)."""


def test_death_names_the_exception_type_and_its_first_line() -> None:
    crash = WorkerCrashedError("The worker died unexpectedly.\nCheck the logs.")
    assert death(crash) == "WorkerCrashedError: The worker died unexpectedly."
    assert death(WorkerCrashedError()) == "WorkerCrashedError"
    assert len(death(WorkerCrashedError("x" * 1000))) == len("WorkerCrashedError: ") + 160


@pytest.mark.parametrize(
    ("outcome", "closed"),
    [
        (JobStatus.QUEUED, False),  # requeued: its next attempt goes on with the run
        (JobStatus.FAILED, True),  # its last attempt: no attempt is left to close the run
        (JobStatus.CANCELLED, True),
        (None, False),  # the attempt no longer held the job: nothing of it to settle
    ],
)
def test_a_dead_attempt_is_released_and_an_ended_job_has_its_run_closed(
    outcome: JobStatus | None, closed: bool
) -> None:
    store = FakeStore(outcome)
    d, closer = dispatcher(store)
    d._settle_dead("job-1", 2, WorkerCrashedError("The worker died unexpectedly."))
    assert store.released == [("job-1", 2, "WorkerCrashedError: The worker died unexpectedly.")]
    expected = [{"job_id": "job-1", "run_id": "run-of-job-1", "status": str(outcome.value),
                 "reason": "the worker running it was lost"}] if closed and outcome else []  # fmt: skip
    assert closer.closed == expected


def test_with_the_database_away_the_dead_attempt_is_left_to_its_lease() -> None:
    store = FakeStore(StoreUnavailable)
    d, closer = dispatcher(store)
    d._settle_dead("job-1", 1, WorkerCrashedError("gone"))  # does not raise: the loop goes on
    assert store.released == [("job-1", 1, "WorkerCrashedError: gone")]
    assert closer.closed == []
