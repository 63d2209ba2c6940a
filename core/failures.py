"""The classes of a failed attempt (the ``type`` of a job's error) and which of them a job's
``retry`` may name.

A transient class is the service's trouble, not the job's: another attempt may well succeed.
A permanent one comes from the job itself (its data, its spec, its training) and would fail
the same way again, so it is never retried, whatever the spec lists.
"""

from __future__ import annotations

TRANSIENT: dict[str, str] = {
    "tracking_unavailable": "MLflow could not be reached when the attempt opened its run",
    "tracking_failed": "the model and artifacts could not be written to MLflow at the end",
    "database_unavailable": "the database went away during the attempt",
}
"""Failure classes a job's ``retry.on`` may list, with what each one means."""

PERMANENT: dict[str, str] = {
    "invalid": "the spec or the data is invalid",
    "dataset_changed": "the uploaded data set's bytes changed",
    "diverged": "the training diverged",
    "gradcheck_failed": "the gradient check failed",
    "unschedulable": "no node can run the job (its memory or CPUs over every node's)",
    "lost": "its attempts were lost (see max_attempts, which requeues them)",
}
"""Failure classes that are never retried, with why: ``retry.on`` refuses them."""


def retriable(error_type: object, listed: list[str] | tuple[str, ...]) -> bool:
    """Whether a failure of class ``error_type`` is retried under a ``retry.on`` of
    ``listed``: a transient class that the spec lists."""
    return isinstance(error_type, str) and error_type in TRANSIENT and error_type in listed
