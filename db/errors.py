"""Domain errors of the job store. ``api/`` maps them to HTTP in one place.

The database driver's own errors (SQLAlchemy's) are read here too: :func:`driver_error` says
which of them mean the database is away (:class:`StoreUnavailable`) or refused a value
(:class:`ValueRefused`). The transactions of :mod:`db.session` raise those in the driver
error's place, so that no caller needs to know SQLAlchemy's exceptions.
"""

from __future__ import annotations

from sqlalchemy.exc import DataError, DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

# The driver's exceptions that ``driver_error`` reads.
DRIVER_ERRORS: tuple[type[Exception], ...] = (DBAPIError, PoolTimeout)


class StoreError(Exception):
    """Base of every error :mod:`db` raises on purpose."""


class JobNotFound(StoreError):
    """No job with this id (or not visible to this tenant)."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(f"job {job_id} not found")


class DatasetNotFound(StoreError):
    """No data set with this id (or not visible to this tenant)."""

    def __init__(self, dataset_id: str) -> None:
        self.dataset_id = dataset_id
        super().__init__(f"dataset {dataset_id} not found")


class InvalidTransition(StoreError):
    """The job's current status does not allow the requested change."""

    def __init__(self, job_id: str, from_status: str, to_status: str) -> None:
        self.job_id = job_id
        self.from_status = from_status
        self.to_status = to_status
        super().__init__(f"job {job_id}: cannot go from {from_status} to {to_status}")


class StaleAttempt(StoreError):
    """A write from an attempt that no longer owns the job (fencing refused it)."""

    def __init__(
        self, job_id: str, attempt: int, current_attempt: int, current_status: str
    ) -> None:
        self.job_id = job_id
        self.attempt = attempt
        self.current_attempt = current_attempt
        self.current_status = current_status
        super().__init__(
            f"job {job_id}: attempt {attempt} is stale "
            f"(current attempt {current_attempt}, status {current_status})"
        )


class IdempotencyConflict(StoreError):
    """The idempotency key was already used by this tenant for a different spec."""

    def __init__(self, key: str, existing_job_id: str) -> None:
        self.key = key
        self.existing_job_id = existing_job_id
        super().__init__(
            f"idempotency key {key!r} already used for job {existing_job_id} with a different spec"
        )


class QueueFull(StoreError):
    """The tenant already has ``limit`` queued jobs (``queued`` is counted up to the limit)."""

    def __init__(self, tenant: str, queued: int, limit: int) -> None:
        self.tenant = tenant
        self.queued = queued
        self.limit = limit
        super().__init__(f"tenant {tenant!r} has {queued} queued jobs, the limit is {limit}")


class InvalidCursor(StoreError):
    """A pagination cursor that this store did not produce."""

    def __init__(self, cursor: str) -> None:
        self.cursor = cursor
        super().__init__(f"invalid cursor {cursor!r}")


class StoreUnavailable(StoreError):
    """The database is unavailable: a refused or dropped connection, no free connection in
    the pool in time. Nothing was decided; the same call may succeed shortly."""


class ValueRefused(StoreError):
    """A value the database cannot store (e.g. a NUL character in text)."""


def driver_error(exc: BaseException) -> StoreError | None:
    """The store's error that a driver exception means, or None for one that means nothing
    known (a bug, to be reported as such)."""
    if isinstance(exc, DataError):
        return ValueRefused(str(exc))
    if isinstance(exc, OperationalError | InterfaceError | PoolTimeout):
        return StoreUnavailable(str(exc))
    return None
