"""How long a job spends in MLflow: ``Clock``, shared by ``JobTracker`` and its ``RunBuffer``.

``critical_s`` is what the job's own thread waited for (``start()``, ``finish()``, a flush
it ran itself); ``background_s`` is what the buffer's sender thread did while training went
on. ``bench/service.py`` reports both over the attempt's wall time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


class Clock:
    """Seconds spent in MLflow work (calls, and building what they send), split into the part
    a job's own thread waited for (``critical_s``) and the part done by a background sender
    (``background_s``). Nested measurements count once. Cheap: two ``perf_counter`` calls."""

    def __init__(self) -> None:
        self.critical_s = 0.0
        self.background_s = 0.0
        self.waited_s = 0.0  # of critical_s: waiting for a background send to end
        self._local = threading.local()
        self._lock = threading.Lock()

    @property
    def total_s(self) -> float:
        """MLflow work on any thread; the critical path's waits for a background send are
        not counted twice."""
        return self.critical_s + self.background_s - self.waited_s

    def add_wait(self, seconds: float) -> None:
        """The calling thread waited for a background send: counted when it is not itself
        a sender and waited inside a measurement (so that the wait is in ``critical_s``)."""
        measuring = getattr(self._local, "depth", 0) > 0
        if measuring and not getattr(self._local, "background", False):
            with self._lock:
                self.waited_s += seconds

    def mark_background(self) -> None:
        """Declare the calling thread a background sender."""
        self._local.background = True

    @contextmanager
    def measure(self) -> Iterator[None]:
        depth = getattr(self._local, "depth", 0)
        self._local.depth = depth + 1
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self._local.depth = depth
            if depth == 0:
                seconds = time.perf_counter() - t0
                with self._lock:
                    if getattr(self._local, "background", False):
                        self.background_s += seconds
                    else:
                        self.critical_s += seconds
