"""The stop signal: "stop this attempt, because <reason>" (a cancel, a sweep's prune) reaches
a running attempt within a dispatcher tick, not a heartbeat later.

The path:

1. A stop is asked in the database (:meth:`db.store.JobStore.request_stop`; a cancel too).
2. Each dispatcher reads the stop requests of the jobs it claimed in ONE query per
   ``stop_check_seconds`` (:meth:`db.store.JobStore.stop_requests`: the running jobs with
   ``cancel_requested``), and pushes each new one to its :class:`StopBoard`.
3. The board is one Ray actor per dispatcher (no CPU, asyncio). Each attempt, as it starts,
   calls its ``wait`` (:func:`listen`); the call stays pending on the board until a stop for
   that attempt is pushed, and its answer is the reason. The attempt does not poll and holds
   no thread for it: a callback on the call's ``ObjectRef`` (``future()``) hands the reason to
   the attempt's :class:`workers.task.Lease`, and the training loop stops between two steps
   (``Lease.should_stop``).
4. The attempt's final write says why it stopped (the reason, the path, the step).

Why the dispatcher reads and pushes, rather than each attempt polling its own row: a poll
costs the database ``running attempts / interval`` queries a second, each one a round trip
on a connection the attempt holds (100 attempts polling every 0.2 s: 500 queries a second),
so the wish for a fast stop would load the database in proportion to the work running. Here
the database sees one query per dispatcher per interval whatever runs, and it returns only
the stopping jobs (``db.queries.STOPPING``); an attempt costs two actor calls, one as it
starts and one as it ends (``forget``, by the dispatcher). ``ray.cancel(ref, force=False)`` is
no substitute: it raises ``KeyboardInterrupt`` at whatever line the task is on, an MLflow or
database write included.

The heartbeat still carries a stop (``JobStore.heartbeat`` says one was asked, and the attempt
then reads its reason): an attempt run without a board learns of it a heartbeat later, as does
one whose board is lost.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

log = logging.getLogger("gradq.stops")

# The most calls the board serves at once: each running attempt's pending ``wait`` is one.
BOARD_CONCURRENCY = 100_000


class StopBoard:
    """A dispatcher's stops, by attempt ``(job id, attempt)``: the body of a Ray actor
    (:func:`start_board`). Every method is a coroutine, so all run on the actor's one event
    loop."""

    def __init__(self) -> None:
        self._events: dict[tuple[str, int], asyncio.Event] = {}
        self._reasons: dict[tuple[str, int], str] = {}

    def _event(self, key: tuple[str, int]) -> asyncio.Event:
        if key not in self._events:
            self._events[key] = asyncio.Event()
        return self._events[key]

    async def wait(self, job_id: str, attempt: int) -> str | None:
        """Returns once the attempt is stopped (its reason) or forgotten (None)."""
        key = (job_id, attempt)
        await self._event(key).wait()
        return self._reasons.get(key)

    async def stop(self, job_id: str, attempt: int, reason: str) -> None:
        """Stop the attempt for ``reason``: its pending ``wait`` (or its next) answers it."""
        key = (job_id, attempt)
        self._reasons.setdefault(key, reason)
        self._event(key).set()

    async def forget(self, job_id: str, attempt: int) -> None:
        """The attempt has ended: drop what is kept of it (a pending ``wait`` answers None)."""
        key = (job_id, attempt)
        self._reasons.pop(key, None)
        event = self._events.pop(key, None)
        if event is not None:
            event.set()

    async def attempts(self) -> int:
        """How many attempts the board keeps something of."""
        return len(self._events)


def start_board() -> Any:
    """A new board on the connected Ray: an actor of no CPU, owned by this process (it ends
    with it)."""
    import ray

    actor: Any = ray.remote(StopBoard)
    return actor.options(num_cpus=0, max_concurrency=BOARD_CONCURRENCY, max_restarts=0).remote()


def listen(board: Any, job_id: str, attempt: int, on_stop: Callable[[str], None]) -> None:
    """In the attempt: call ``on_stop(reason)`` when the board stops this attempt (from a
    thread of Ray's). Without a board, or when the board cannot be reached, nothing: the
    heartbeat carries the stop."""
    if board is None:
        return
    try:
        future = board.wait.remote(job_id, attempt).future()
    except Exception as exc:  # the actor is gone: the heartbeat carries the stop
        log.warning("job %s: no stop signal (%s); a stop comes with the heartbeat", job_id, exc)
        return
    future.add_done_callback(lambda done: _heard(done, job_id, on_stop))


def _heard(done: Future[Any], job_id: str, on_stop: Callable[[str], None]) -> None:
    try:
        reason = done.result()
    except Exception as exc:  # the board died: the heartbeat carries the stop
        log.warning("job %s: the stop signal was lost (%s); a stop comes with the heartbeat",
                    job_id, exc)  # fmt: skip
        return
    if reason is not None:
        on_stop(reason)
