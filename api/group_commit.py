"""Group commit for submits: concurrent ``POST /v1/jobs`` share one database transaction.

One writer thread runs :meth:`db.store.JobStore.submit_many`; while it commits a group, the
submits that arrive meanwhile wait in a list and become the next group. So under load each
commit carries many jobs (one BEGIN/COMMIT, one count of the queue per priority), and a lone
submit still goes at once: nothing waits for a timer. Each request is answered when the
transaction holding its job has committed, never before: the job is durable when it is
answered, exactly as with one transaction per submit.

A group that fails as a whole (a value the database refuses, the database away) is retried
one submit at a time, so each request gets its own answer, never a neighbour's error. Its
commit may have gone through unseen (the connection dropped during COMMIT), so each job gets
its id before the group's first try, and a retry answers with the job stored under that id
instead of inserting it again: a submit without an ``Idempotency-Key`` is stored once too.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from concurrent.futures import ThreadPoolExecutor

from db.errors import StoreError
from db.store import JobStore
from db.submits import SubmitRequest
from db.views import Submitted

MAX_GROUP = 128


class GroupCommit:
    """Queue submits from the event loop; one thread writes them in groups."""

    def __init__(
        self, store: JobStore, *, max_queued: int | None, max_group: int = MAX_GROUP
    ) -> None:
        self._store, self._max_queued, self._max_group = store, max_queued, max_group
        self._waiting: list[tuple[SubmitRequest, asyncio.Future[Submitted | StoreError]]] = []
        self._writer: asyncio.Task[None] | None = None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="gradq-submit")

    async def submit(self, request: SubmitRequest) -> Submitted:
        """The job, once committed; raises the :class:`StoreError` that refused it (or the
        database's error)."""
        future: asyncio.Future[Submitted | StoreError] = asyncio.get_running_loop().create_future()
        if request.job_id is None:  # named now: a retry finds it if a lost commit stored it
            request = dataclasses.replace(request, job_id=str(uuid.uuid4()))
        self._waiting.append((request, future))
        if self._writer is None:
            self._writer = asyncio.create_task(self._write())
        answer = await future
        if isinstance(answer, StoreError):
            raise answer
        return answer

    async def _write(self) -> None:
        loop = asyncio.get_running_loop()
        group: list[tuple[SubmitRequest, asyncio.Future[Submitted | StoreError]]] = []
        try:
            while self._waiting:
                group = self._waiting[: self._max_group]
                del self._waiting[: self._max_group]
                answers = await self._commit(loop, [request for request, _ in group])
                for (_, future), answer in zip(group, answers, strict=True):
                    if future.done():  # the client went away; its job is committed anyway
                        continue
                    if isinstance(answer, Submitted | StoreError):
                        future.set_result(answer)
                    else:
                        future.set_exception(answer)
                group = []
        finally:
            self._writer = None
            for _, future in group + self._waiting:  # only when this task was cancelled
                future.cancel()

    async def _commit(
        self, loop: asyncio.AbstractEventLoop, requests: list[SubmitRequest]
    ) -> list[Submitted | StoreError | Exception]:
        """The group's answers; a group that fails as a whole is committed one by one, each
        answered by its job when the group's commit stored it after all."""
        try:
            return list(await loop.run_in_executor(self._thread, self._many, requests))
        except Exception as exc:
            if len(requests) == 1:
                return [exc]
        again = [dataclasses.replace(request, may_exist=True) for request in requests]
        return [(await self._commit(loop, [request]))[0] for request in again]

    def _many(self, requests: list[SubmitRequest]) -> list[Submitted | StoreError]:
        return self._store.submit_many(requests, max_queued=self._max_queued)

    def close(self) -> None:
        with contextlib.suppress(RuntimeError):
            self._thread.shutdown(wait=True)
