"""Closing the MLflow runs of attempts that died, off the dispatcher's loop.

When a lost attempt's job ends ``failed`` or ``cancelled``, its MLflow run (left RUNNING by
the worker that died) is closed to match. MLflow's client retries a call for minutes while
its server is away; made from the dispatcher's loop, such a call would stop every claim,
reap and cancel meanwhile. ``RunCloser`` makes the calls on a thread of its own, and retries
one that fails later (after ``retry_seconds``, doubling up to ``max_retry_seconds``) for as
long as the dispatcher runs: the close is idempotent (``close_run`` leaves a run that is no
longer active as it is).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from workers.tracking import close_run

log = logging.getLogger("gradq.dispatcher")

Close = Callable[..., None]  # close_run's keywords: tracking_uri, run_id, status, reason


@dataclass(order=True)
class _Pending:
    due: float
    seq: int
    job_id: str = field(compare=False)
    run_id: str = field(compare=False)
    status: str = field(compare=False)
    reason: str = field(compare=False)
    tries: int = field(default=0, compare=False)


class RunCloser:
    """Closes runs on a daemon thread (started with the first ``submit``), in order, each
    failure retried later; ``submit`` never waits on MLflow."""

    def __init__(
        self,
        tracking_uri: str,
        *,
        close: Close = close_run,
        retry_seconds: float = 5.0,
        max_retry_seconds: float = 300.0,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.close = close
        self.retry_seconds, self.max_retry_seconds = retry_seconds, max_retry_seconds
        self.closed = 0  # runs closed (or found closed already)
        self.failures = 0  # calls that raised, each retried
        self._heap: list[_Pending] = []
        self._seq = itertools.count()
        self._busy = 0  # closes being made now
        self._cond = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None

    def submit(self, *, job_id: str, run_id: str, status: str, reason: str) -> None:
        with self._cond:
            if self._stop:
                log.warning(
                    "job %s: MLflow run %s left open (the dispatcher stopped)", job_id, run_id
                )
                return
            heapq.heappush(
                self._heap,
                _Pending(time.monotonic(), next(self._seq), job_id, run_id, status, reason),
            )
            if self._thread is None:
                thread = threading.Thread(target=self._loop, name="gradq-run-closer", daemon=True)
                thread.start()
                self._thread = thread
            self._cond.notify_all()  # the closer thread, whoever else waits on the condition

    @property
    def pending(self) -> int:
        """Runs not closed yet (waiting, being closed, or waiting for a retry)."""
        with self._cond:
            return len(self._heap) + self._busy

    def wait_idle(self, timeout: float) -> bool:
        """Wait until nothing is pending; False when ``timeout`` passed first."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._heap or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def stop(self, drain_seconds: float = 0.0) -> None:
        """Give what is pending up to ``drain_seconds`` to close, then end the thread after the
        close in progress; what is still pending is logged and left (the runs stay RUNNING,
        their jobs' status is already final)."""
        if drain_seconds > 0:
            with self._cond:  # what waits for a retry is tried once more, now
                now = time.monotonic()
                for item in self._heap:
                    item.due = min(item.due, now)
                heapq.heapify(self._heap)
                self._cond.notify_all()
            self.wait_idle(drain_seconds)
        with self._cond:
            self._stop = True
            left = [(p.job_id, p.run_id) for p in self._heap]
            self._cond.notify_all()
        if left:
            log.warning("%d MLflow runs left open at stop: %s", len(left), left)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stop and (not self._heap or self._heap[0].due > time.monotonic()):
                    self._cond.wait(self._heap[0].due - time.monotonic() if self._heap else None)
                if self._stop:
                    return
                item = heapq.heappop(self._heap)
                self._busy += 1
            ok = False
            try:
                ok = self._close(item)
            finally:
                with self._cond:
                    self._busy -= 1
                    self._settle(item, ok)

    def _settle(self, item: _Pending, ok: bool) -> None:
        """Count a close, or put it back for a retry (the condition held)."""
        if ok:
            self.closed += 1
        else:
            self.failures += 1
            item.tries += 1
            delay = min(self.retry_seconds * 2 ** (item.tries - 1), self.max_retry_seconds)
            item.due, item.seq = time.monotonic() + delay, next(self._seq)
            heapq.heappush(self._heap, item)
        self._cond.notify_all()

    def _close(self, item: _Pending) -> bool:
        try:
            self.close(
                tracking_uri=self.tracking_uri,
                run_id=item.run_id,
                status=item.status,
                reason=item.reason,
            )
        except BaseException as exc:  # whatever it is, the thread goes on with the others
            if getattr(exc, "error_code", None) == "RESOURCE_DOES_NOT_EXIST":
                log.warning("job %s: MLflow run %s no longer exists", item.job_id, item.run_id)
                return True  # deleted in MLflow: nothing left to close
            log.warning(
                "job %s: could not close MLflow run %s (try %d, again later): %s",
                item.job_id,
                item.run_id,
                item.tries + 1,
                exc,
            )
            return False
        return True
