"""A dispatcher on a fresh SQLite queue and MLflow store, looping in a thread of the test's
process (connected to the Ray this process has started or joined), and a wait on a job."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from db.migrate import upgrade
from db.session import make_engine
from db.store import JobStore
from db.views import JobView
from workers.dispatcher import Dispatcher, DispatcherConfig
from workers.task import WorkerConfig


@contextlib.contextmanager
def running(
    folder: Path, worker: dict[str, Any] | None = None, db_url: str | None = None, **config: Any
) -> Iterator[tuple[JobStore, Dispatcher]]:
    """The store and the dispatcher (``config``: more of its ``DispatcherConfig``; ``worker``:
    of its ``WorkerConfig``, its tracking URI too; ``db_url``: another queue than a SQLite
    file in ``folder``), stopped on exit, its attempts still in flight force-cancelled."""
    import ray

    db_url = db_url or f"sqlite:///{folder}/gradq.db"
    upgrade(db_url)
    store = JobStore(make_engine(db_url))
    worker = WorkerConfig(**{
        "database_url": db_url, "tracking_uri": f"sqlite:///{folder}/mlflow.db",
        "artifact_root": str(folder / "artifacts"), "lease_seconds": 10.0,
        "heartbeat_seconds": 0.5, **(worker or {}),
    })  # fmt: skip
    dispatcher = Dispatcher(DispatcherConfig(worker=worker, poll_seconds=0.1, **config), store)
    dispatcher.connect()
    stop = threading.Event()
    thread = threading.Thread(target=dispatcher.run, args=(stop,), daemon=True)
    thread.start()
    try:
        yield store, dispatcher
    finally:
        stop.set()
        thread.join(timeout=30)
        for attempt in dispatcher.inflight.values():
            ray.cancel(attempt.ref, force=True)


def wait(
    store: JobStore, job_id: str, until: Callable[[JobView], bool], timeout: float = 120
) -> JobView:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = store.get(job_id=job_id)
        if until(job):
            return job
        time.sleep(0.05)
    raise AssertionError(f"timed out; job is {store.get(job_id=job_id)}")
