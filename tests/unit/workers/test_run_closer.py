"""RunCloser: the dispatcher's closes of lost attempts' MLflow runs, off its loop.

A fake close function stands for MLflow here (a call that blocks, or fails a given number of
times); tests/integration/workers/test_lost_runs_closed.py runs the real one against a real store."""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any

from workers.run_closer import RunCloser


class FakeClose:
    """Records each call; blocks while ``gate`` is clear; raises for a run while it has
    failures left."""

    def __init__(self, failures: dict[str, int] | None = None) -> None:
        self.calls: list[tuple[str, float]] = []  # (run id, when)
        self.kwargs: list[dict[str, Any]] = []
        self.failures = dict(failures or {})
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def __call__(self, **kwargs: Any) -> None:
        self.entered.set()
        self.gate.wait()
        run_id = kwargs["run_id"]
        self.calls.append((run_id, time.monotonic()))
        self.kwargs.append(kwargs)
        if self.failures.get(run_id, 0) > 0:
            self.failures[run_id] -= 1
            raise ConnectionError(f"MLflow is away ({run_id})")


def first_failure(closer: RunCloser) -> None:
    """Wait until the closer's first try has failed (it then waits for its retry)."""
    deadline = time.monotonic() + 5
    while closer.failures == 0 and time.monotonic() < deadline:
        time.sleep(0.01)


def test_submit_returns_while_a_close_hangs_and_the_closes_run_in_order() -> None:
    close = FakeClose()
    close.gate.clear()  # MLflow hangs (its client retrying)
    closer = RunCloser("sqlite:///unused.db", close=close)
    closer.submit(job_id="j1", run_id="r1", status="failed", reason="lost")
    assert close.entered.wait(5)
    closer.submit(job_id="j2", run_id="r2", status="cancelled", reason="lost")
    closer.submit(job_id="j3", run_id="r3", status="failed", reason="lost")
    assert close.calls == [] and closer.pending == 3  # submit did not wait for the first
    close.gate.set()
    assert closer.wait_idle(5)
    assert [run for run, _ in close.calls] == ["r1", "r2", "r3"]
    assert close.kwargs[1] == {
        "tracking_uri": "sqlite:///unused.db", "run_id": "r2", "status": "cancelled",
        "reason": "lost",
    }  # fmt: skip
    assert (closer.closed, closer.failures, closer.pending) == (3, 0, 0)
    closer.stop()


def test_a_failing_close_is_retried_with_growing_delays_until_it_succeeds() -> None:
    close = FakeClose(failures={"r1": 3})
    closer = RunCloser(
        "sqlite:///unused.db", close=close, retry_seconds=0.05, max_retry_seconds=0.1
    )
    close.gate.clear()  # both queued before the first try, however slow this thread is
    closer.submit(job_id="j1", run_id="r1", status="failed", reason="lost")
    closer.submit(job_id="j2", run_id="r2", status="failed", reason="lost")
    close.gate.set()
    assert closer.wait_idle(10)
    runs = [run for run, _ in close.calls]
    assert runs.count("r1") == 4 and runs.count("r2") == 1, runs
    assert runs[:2] == ["r1", "r2"]  # a failing close does not hold the others back
    times = [t for run, t in close.calls if run == "r1"]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # 0.05 s, then doubled to the 0.1 s cap
    assert gaps[0] >= 0.05 and gaps[1] >= 0.1 and gaps[2] >= 0.1, gaps
    assert (closer.closed, closer.failures, closer.pending) == (2, 3, 0)
    closer.stop()


def test_stop_ends_the_thread_and_leaves_what_is_pending() -> None:
    close = FakeClose(failures={"r1": 1_000})
    closer = RunCloser("sqlite:///unused.db", close=close, retry_seconds=60)
    closer.submit(job_id="j1", run_id="r1", status="failed", reason="lost")
    first_failure(closer)
    assert closer.failures == 1 and closer.pending == 1  # waiting a minute for its retry
    assert not closer.wait_idle(0.05)
    closer.stop()
    assert closer._thread is not None
    closer._thread.join(5)
    assert not closer._thread.is_alive()
    assert closer.pending == 1 and len(close.calls) == 1


def test_stop_gives_pending_closes_time_to_finish() -> None:
    close = FakeClose()
    close.gate.clear()
    closer = RunCloser("sqlite:///unused.db", close=close)
    closer.submit(job_id="j1", run_id="r1", status="failed", reason="lost")
    closer.submit(job_id="j2", run_id="r2", status="failed", reason="lost")
    assert close.entered.wait(5)
    threading.Timer(0.2, close.gate.set).start()  # MLflow answers again while stop() waits
    closer.stop(drain_seconds=10)
    assert [run for run, _ in close.calls] == ["r1", "r2"] and closer.pending == 0


class Missing(Exception):
    error_code = "RESOURCE_DOES_NOT_EXIST"  # what MLflow raises for a run id it does not know


def test_a_run_mlflow_does_not_know_counts_as_closed_and_odd_errors_do_not_end_the_thread() -> None:
    calls: list[str] = []

    def close(**kwargs: Any) -> None:
        calls.append(kwargs["run_id"])
        if kwargs["run_id"] == "gone":
            raise Missing("Run with id=gone not found")
        if kwargs["run_id"] == "odd" and calls.count("odd") == 1:
            raise SystemExit("not an Exception")

    closer = RunCloser("sqlite:///unused.db", close=close, retry_seconds=0.01)
    for run in ("gone", "odd", "ok"):
        closer.submit(job_id=f"j-{run}", run_id=run, status="failed", reason="lost")
    assert closer.wait_idle(10)
    assert calls == ["gone", "odd", "ok", "odd"]  # "gone" not retried; "odd" retried
    assert (closer.closed, closer.failures) == (3, 1)
    closer.stop()


def test_a_submit_after_stop_is_refused_not_kept() -> None:
    close = FakeClose()
    closer = RunCloser("sqlite:///unused.db", close=close)
    closer.stop()
    closer.submit(job_id="j1", run_id="r1", status="failed", reason="lost")
    assert closer.pending == 0 and closer._thread is None and close.calls == []


def test_stop_tries_a_waiting_retry_at_once() -> None:
    close = FakeClose(failures={"r1": 1})
    closer = RunCloser("sqlite:///unused.db", close=close, retry_seconds=600)
    closer.submit(job_id="j1", run_id="r1", status="failed", reason="lost")
    first_failure(closer)
    closer.stop(drain_seconds=10)  # not ten minutes: the retry is made now, and succeeds
    assert [run for run, _ in close.calls] == ["r1", "r1"] and closer.pending == 0
