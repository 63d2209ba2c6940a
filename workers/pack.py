"""A pack: several jobs (a sweep's compatible trials) trained as one batched computation in one
Ray task, each still a job of its own.

``run_pack(config, jobs, board)`` lives each member's attempt as a job alone lives it
(``workers.task.AttemptLife``: its lease and fencing, its stop signal, its MLflow run, its
checkpoint to resume from, its rung reports, its final write), and trains them together with
``core.packed.train_packed``. What the pack shares:

- **the heartbeat**: one thread renews every member's lease in ONE statement per beat
  (``JobStore.heartbeat_many``), each row fenced by its own attempt; a member whose row is
  refused has lost its job (its lease), and only it stops;
- **the data set**: loaded once, its tensors encoded once;
- **the worker process and its start**: one Ray task, one import, one database pool;
- **MLflow's sender**: one background thread sends every member's buffered metrics and
  checkpoints (``workers.tracking.buffer.SharedSender``; MLflow logs a batch per run).

A member leaves the pack when it completes, stops early, is pruned by its rung, is cancelled,
diverges or fails: its attempt ends right there (the MLflow run finished, the final write),
on the pack's ending thread, while the others go on training — a pruned trial's slot is free
for the sweep's next trial at once. Members often end together (the same epochs), before the
sweep's controller has told any of them: under ``log_models: best`` a member that ends
succeeded logs its model only when it also beats every member that ended before it with its
model logged (``AttemptLife.pack_best``), as it would had the controller told them first.
A pack whose worker dies leaves each unfinished member's job running with nobody renewing
it: the dispatcher settles each (``JobStore.release``), and each is claimed again and
resumes from its own checkpoint, alone or in another pack.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from core.packed import train_packed
from core.sweep import better
from core.train import TrainResult
from db.datasets import DatasetStore
from db.errors import StoreUnavailable
from db.store import JobStore
from db.views import ClaimedJob
from workers.task import AttemptLife, WorkerConfig, _data, _engine, node_name, recorded_warnings
from workers.tracking.artifacts import import_model_logging
from workers.tracking.buffer import SharedSender

log = logging.getLogger("gradq.pack")


class PackBeats:
    """The heartbeats of a pack's members: ``beat`` renews every member still in the pack in
    one statement and tells each member's ``Lease`` what came back (renewed, with a stop
    asked or not; or refused); a thread beats every ``heartbeat_seconds``."""

    def __init__(self, store: JobStore, lives: Sequence[AttemptLife], config: WorkerConfig):
        self.store, self.config = store, config
        self.lives = {life.job.id: life for life in lives}
        self.node = node_name()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="pack-lease", daemon=True)

    def start(self) -> None:
        self.beat()
        self._thread.start()

    def left(self, life: AttemptLife) -> None:
        """The member's attempt has ended: its lease is renewed no more."""
        with self._lock:
            self.lives.pop(life.job.id, None)

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def beat(self) -> None:
        with self._lock:
            lives = [life for life in self.lives.values() if not life.lease.lost.is_set()]
        if not lives:
            return
        began = time.monotonic()
        beats = [(life.job.id, life.job.attempt, dict(life.lease.progress)) for life in lives]
        try:
            answer = self.store.heartbeat_many(
                beats=beats,
                lease_seconds=self.config.lease_seconds,
                node=self.node,
            )
        except StoreUnavailable as exc:  # the database is away: retry until the deadlines
            log.warning("pack of %s: heartbeat failed (%s), retrying", len(lives), exc)
            answer = None
        except Exception:  # unexpected: keep training, the next beat tries again
            log.exception("pack of %s: heartbeat failed, retrying", len(lives))
            answer = None
        with self._lock:  # a member that ended meanwhile was refused for that: not lost
            lives = [life for life in lives if life.job.id in self.lives]
        for life in lives:
            if answer is None:
                pass
            elif life.job.id in answer:
                life.lease.renewed(began, answer[life.job.id])
            else:
                life.lease.refused("its row refused the pack's heartbeat")
            life.lease.alive()

    def _loop(self) -> None:
        while not self._stop.wait(self.config.heartbeat_seconds):
            self.beat()


def run_pack(config: WorkerConfig, jobs: Sequence[ClaimedJob], board: Any = None) -> list[str]:
    """Run the attempts of ``jobs`` (compatible: ``core.packed.pack_key``) as one pack to
    their ends; returns each one's status written, in order ("stale" when fenced out)."""
    logging.basicConfig(level=logging.INFO)
    # the pack's thread, its heartbeat thread and its ending thread share the worker
    # process's ``db_connections`` (each statement holds one briefly)
    engine = _engine(config)
    import_model_logging()  # before the heartbeats: see its docstring
    sender = SharedSender()  # one thread sends every member's MLflow buffer
    lives = [AttemptLife(config, engine, job, board, beats=False, sender=sender) for job in jobs]
    for life in lives:
        life.pack = len(lives)
    beats = PackBeats(JobStore(engine), lives, config)
    ending = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pack-end")
    ends: dict[int, Future[str]] = {}
    logged = PackBest()

    def end(k: int) -> None:
        """Member k's attempt ends now, on the ending thread (the pack goes on)."""
        if k not in ends:
            ends[k] = ending.submit(_end, beats, lives[k], logged)

    try:
        beats.start()
        begun: list[int] = []
        for k, life in enumerate(lives):
            try:
                if life.begin():
                    begun.append(k)
                    continue
            except Exception as exc:
                life.failed(exc)
            end(k)
        if begun:
            first = lives[begun[0]]
            data = _data(first.spec, DatasetStore(engine), config.tracking_uri)
            for k in begun:
                tracker = lives[k].tracker
                assert tracker is not None
                tracker.log_dataset(data)

            warned: list[str] = []  # the pack's training's warnings, as they come

            def on_result(i: int, result: TrainResult | Exception) -> None:
                k = begun[i]
                # a member's warnings: the pack's until it ended (its training was the pack's)
                lives[k].warnings.extend(w for w in warned if w not in lives[k].warnings)
                if isinstance(result, Exception):
                    lives[k].failed(result)
                else:
                    lives[k].trained(result)
                end(k)

            with recorded_warnings(warned):
                train_packed(
                    [lives[k].spec for k in begun],
                    callbacks=[lives[k].callbacks() for k in begun],
                    resume_from=[lives[k].resume for k in begun],
                    data=data,
                    on_result=on_result,
                )
    except Exception as exc:  # the pack's own failure (its data set): each member not ended
        log.error("pack of %s failed", len(lives), exc_info=exc)
        for k, life in enumerate(lives):
            if k not in ends:
                life.failed(exc)
    finally:
        for k in range(len(lives)):
            end(k)
        ending.shutdown(wait=True)
        beats.close()
        sender.close()
        engine.dispose()  # an idle worker process holds no connection until its next attempt
    return [ends[k].result() for k in range(len(lives))]


class PackBest:
    """The best objective of the pack's members that ended succeeded with their model logged
    (their ends run one at a time, on the ending thread)."""

    def __init__(self) -> None:
        self.value: float | None = None

    def saw(self, life: AttemptLife, status: str) -> None:
        trial, result, tracker = life.spec.trial, life.result, life.tracker
        if status != "succeeded" or trial is None or result is None or tracker is None:
            return
        if tracker.model_uri is None:
            return
        value = result.metrics.get(trial.metric)
        if value is None or not math.isfinite(value):
            return
        if self.value is None or better(float(value), self.value, trial.mode):
            self.value = float(value)


def _end(beats: PackBeats, life: AttemptLife, logged: PackBest) -> str:
    try:
        life.pack_best = logged.value
        status = life.end()
        logged.saw(life, status)
        return status
    except Exception:
        log.exception("job %s: its attempt's end failed", life.job.id)
        return "stale"
    finally:
        beats.left(life)
