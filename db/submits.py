"""What a group of submits decides, apart from its SQL: the rows of its new jobs, the answer
to a replayed idempotency key, the tenant's quota, and the queue positions of the new jobs.

:meth:`db.store.JobStore.submit_many` reads what a :class:`Group` needs (:mod:`db.queries`),
inserts the rows it makes (:mod:`db.store`) and hands back its answers.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from core.spec import JobSpec
from db.errors import IdempotencyConflict, QueueFull, StoreError
from db.models import JOBS
from db.queries import claim_key
from db.states import INITIAL
from db.views import JobView, Submitted

Key = tuple[str, str]  # (tenant, idempotency key)
_COLUMNS = tuple(JOBS.c.keys())
Answer = Submitted | StoreError


@dataclass(frozen=True)
class SubmitRequest:
    """One submit of a group (:meth:`db.store.JobStore.submit_many`). ``job_id`` is the id
    its new job gets (a fresh uuid4 when None); with ``may_exist`` an earlier try of this
    submit may have stored that job (its commit's outcome unknown): the job with that id is
    then its answer, as created, and nothing is inserted again."""

    spec: JobSpec
    tenant: str = "default"
    idempotency_key: str | None = None
    job_id: str | None = None
    may_exist: bool = False
    origin_job_id: str | None = None  # a rerun's: the job it was made from

    @property
    def key(self) -> Key | None:
        return None if self.idempotency_key is None else (self.tenant, self.idempotency_key)


class Group:
    """The answers to a group of submits, in order, from what the database held before the
    group's insert: ``existing``, the jobs that held its keys; ``queued``, each tenant's
    queued jobs (counted against ``max_queued``, None for no quota). Replays are answered
    with the existing job and are not refused by the quota; ``stored``, the jobs an earlier
    try of a request stored (by id, :attr:`SubmitRequest.may_exist`), answer it as created;
    the group's new jobs are :attr:`rows`, all stamped ``now``."""

    def __init__(
        self,
        requests: Sequence[SubmitRequest],
        existing: Mapping[Key, Mapping[str, Any]],
        queued: Mapping[str, int],
        max_queued: int | None,
        now: datetime,
        stored: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        self._requests = requests
        self._existing = dict(existing)
        self._answers: list[Answer | None] = [None] * len(requests)
        self.rows: list[dict[str, Any]] = []
        self._row_of: list[int] = []  # the request of each row
        self._repeats: list[int] = []  # the requests repeating a key new in this group
        counted, new_keys = dict(queued), set()
        for i, r in enumerate(requests):
            if stored and r.job_id is not None and r.job_id in stored:
                self._answers[i] = Submitted(JobView.from_row(stored[r.job_id], created=True), None)
            elif r.key in self._existing:
                self._answers[i] = _replayed(self._existing[r.key], r)
            elif r.key in new_keys:
                self._repeats.append(i)
            elif max_queued is not None and counted[r.tenant] >= max_queued:
                self._answers[i] = QueueFull(r.tenant, counted[r.tenant], max_queued)
            else:
                if max_queued is not None:
                    counted[r.tenant] += 1
                if r.key is not None:
                    new_keys.add(r.key)
                self.rows.append(new_job(r, now))
                self._row_of.append(i)

    def taken(self, inserted: set[str]) -> list[Key]:
        """The keys of rows not inserted: another process inserted each after ``existing``
        was read (possible on PostgreSQL)."""
        return [
            key
            for row, i in zip(self.rows, self._row_of, strict=True)
            if row["id"] not in inserted and (key := self._requests[i].key) is not None
        ]

    def inserted(self, inserted: set[str], taken: Mapping[Key, Mapping[str, Any]]) -> None:
        """Answer the requests of the rows: the new job (``inserted`` ids), or a replay of the
        job that took its key (``taken``); then the repeats of a key new in the group."""
        for row, i in zip(self.rows, self._row_of, strict=True):
            r = self._requests[i]
            if row["id"] in inserted:
                self._answers[i] = Submitted(JobView.from_row(row, created=True), None)
                if r.key is not None:
                    self._existing[r.key] = row
                continue
            if r.key is None:
                raise RuntimeError(f"job id {row['id']} collided")  # a uuid4 collision
            if r.key not in taken:
                raise RuntimeError(f"idempotency key {r.idempotency_key!r} taken but not found")
            self._existing[r.key] = taken[r.key]
            self._answers[i] = _replayed(taken[r.key], r)
        for i in self._repeats:
            r = self._requests[i]
            assert r.key is not None
            self._answers[i] = _replayed(self._existing[r.key], r)

    def answers(
        self, before: Mapping[int, int] | None, position: Callable[[JobView], int | None]
    ) -> list[Answer]:
        """Every request's answer with its queue position: a new job's from ``before`` (per
        priority, the queued jobs a claim takes before a job of that priority submitted now)
        and the group's own new jobs ahead of it in the claim order; a replay's, or a job an
        earlier try stored, from ``position``, counted after the group's inserts. None
        without ``before``."""
        answers = [a for a in self._answers if a is not None]
        assert len(answers) == len(self._answers), "every request is answered"
        if before is None:
            return answers
        ids = {row["id"] for row in self.rows}
        new = [
            a.job for a in answers if isinstance(a, Submitted) and a.job.created and a.job.id in ids
        ]
        rank = {job.id: n for n, job in enumerate(sorted(new, key=claim_key))}
        out: list[Answer] = []
        for answer in answers:
            if isinstance(answer, Submitted):
                job = answer.job
                ahead = (
                    before[job.priority] + rank[job.id]
                    if job.created and job.id in rank
                    else position(job)
                )
                answer = Submitted(job, ahead)
            out.append(answer)
        return out


def new_job(r: SubmitRequest, now: datetime) -> dict[str, Any]:
    """A new job's row: every column (``JobView.from_row`` reads them all), queued."""
    row: dict[str, Any] = dict.fromkeys(_COLUMNS)
    row.update(
        id=r.job_id or str(uuid.uuid4()),
        tenant=r.tenant,
        name=r.spec.name,
        spec=r.spec.model_dump(mode="json"),
        status=INITIAL.value,
        priority=r.spec.priority,
        attempt=0,
        max_attempts=r.spec.max_attempts,
        cancel_requested=False,
        idempotency_key=r.idempotency_key,
        origin_job_id=r.origin_job_id,
        created_at=now,
        updated_at=now,
    )
    return row


def _replayed(existing: Mapping[str, Any], r: SubmitRequest) -> Answer:
    """The answer to a replayed key: the existing job (its position is filled in later), or
    :class:`IdempotencyConflict` when it was submitted with another spec."""
    assert r.idempotency_key is not None
    try:
        same = JobSpec.model_validate(existing["spec"]).hash_fields() == r.spec.hash_fields()
    except ValueError:
        same = False
    if not same:
        return IdempotencyConflict(r.idempotency_key, existing["id"])
    return Submitted(JobView.from_row(existing, created=False), None)
