"""The buffered, failure-tolerant writer behind ``JobTracker.callback()``.

Training reports every epoch; MLflow costs milliseconds per call. ``RunBuffer`` keeps metric
points in memory and sends them with one ``log_batch`` (up to 1000 points a call) when
``flush_interval_s`` has passed since the last flush, when a checkpoint upload is due
(``checkpoint_interval_s`` after the last one), and on ``flush()``. Sends that training
triggers run on a background sender thread (started on demand, gone after
``SENDER_IDLE_S`` idle): the training loop only appends to in-memory buffers and never waits
for MLflow; ``flush()`` sends synchronously. Guarantees:

- no MLflow error reaches the training loop: a failed call logs a warning, keeps what was not
  sent and is retried at the next flush; the buffers are bounded (oldest points dropped and
  counted in ``dropped``; at most ``MAX_PENDING_REPORTS`` reports; one pending checkpoint per
  artifact folder, the newest);
- a checkpoint is uploaded only after the metrics buffered before it were sent, so every epoch
  up to the last uploaded checkpoint is in MLflow: a resumed attempt neither leaves a gap nor
  (with ``skip_through``) logs an epoch twice;
- retries resend the same ``Metric`` objects (same timestamps), which the SQL store
  de-duplicates.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from mlflow.entities import DatasetInput, Metric, Param, RunTag
from mlflow.utils.validation import (
    MAX_ENTITIES_PER_BATCH,
    MAX_METRICS_PER_BATCH,
    MAX_PARAMS_TAGS_PER_BATCH,
)

from core.callbacks import Callback, EpochRecord
from core.checkpoint import Checkpoint
from workers.tracking.artifacts import RunArtifacts
from workers.tracking.clock import Clock
from workers.tracking.names import mlflow_key, mlflow_metrics
from workers.tracking.read import PREDICTORS_FILE

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from core.gradcheck import GradcheckReport

log = logging.getLogger(__name__)

MAX_BUFFERED_POINTS = 100_000
MAX_PENDING_REPORTS = 1_000
SENDER_IDLE_S = 30.0  # a sender thread with nothing to do for this long ends
LAST_CHECKPOINT = "checkpoints/last"
BEST_CHECKPOINT = "checkpoints/best"
CHECKPOINT_FILE = "checkpoint.pt"


class RunBuffer:
    """Buffered metrics, gradient-check reports and checkpoints of one run (thread-safe).

    With ``alive``, each MLflow call is made only while ``alive()`` is True: an attempt whose
    lease ran out sends nothing more into the run its successor resumes.

    ``background=False`` sends on the caller's thread instead (as a due flush is reached);
    ``sender``: a :class:`SharedSender` whose one thread sends for this buffer and the
    others sharing it (a pack's runs), instead of a thread of its own."""

    def __init__(
        self,
        client: MlflowClient,
        run_id: str,
        *,
        flush_interval_s: float,
        checkpoint_interval_s: float,
        max_points: int = MAX_BUFFERED_POINTS,
        clock: Clock | None = None,
        background: bool = True,
        artifacts: RunArtifacts | None = None,
        alive: Callable[[], bool] | None = None,
        sender: SharedSender | None = None,
        epoch_metrics: frozenset[str] | None = None,
    ) -> None:
        self.client, self.run_id = client, run_id
        self.sender = sender
        self.epoch_metrics = epoch_metrics  # the per-epoch metrics sent; None: all
        self.alive = alive  # False once the attempt lost the run: nothing more is sent
        self.artifacts = artifacts or RunArtifacts(client, run_id)
        self.clock = clock or Clock()
        self.flush_interval_s = flush_interval_s
        self.checkpoint_interval_s = checkpoint_interval_s
        self.background = background
        self.points: deque[Metric] = deque(maxlen=max_points)
        self.params: list[Param] = []  # sent with the next metrics (the run's first send)
        self.tags: list[RunTag] = []  # likewise (the run's last send)
        self.inputs: list[DatasetInput] = []  # sent before the next batch of metrics
        self.reports: dict[int, str] = {}  # step → report JSON not yet uploaded
        self.pending: dict[str, Checkpoint] = {}  # artifact dir → snapshot not yet uploaded
        self.dropped = 0  # points dropped because the buffer was full
        self.failures = 0  # MLflow calls that raised
        self.skip_epochs_through = 0  # epochs already in the run (a resumed attempt)
        self.skip_gradchecks_through = -1  # gradcheck steps already in the run
        self.latest: Checkpoint | None = None  # the last checkpoint taken, sent or not
        # a checkpoint's params → its predictors file, uploaded beside it (once the data is known)
        self.predictors: Callable[[list[torch.Tensor]], bytes] | None = None
        self._last_flush = time.monotonic()
        self._last_upload: dict[str, float] = {}  # set when an upload starts
        self._lock = threading.Lock()  # the buffers; never held across an MLflow call
        self._send_lock = threading.Lock()  # one sender at a time, in order
        self._kick = threading.Event()
        self._sender: threading.Thread | None = None

    # --- what the callback feeds in (cheap: no MLflow call on this thread) -----------------

    def add_params(self, params: list[Param]) -> None:
        """Params to send with the next batch of metrics (at the latest at ``flush()``)."""
        with self._lock:
            self.params.extend(params)

    def add_inputs(self, datasets: list[DatasetInput]) -> None:
        """The run's dataset inputs, sent before the metrics of the next send."""
        with self._lock:
            self.inputs.extend(datasets)

    def add_final(self, metrics: list[Metric], tags: list[RunTag]) -> None:
        """The run's last metrics and tags, sent with what is still buffered at the next
        ``flush()``: a finishing run's last epochs, its final metrics and tags in one call."""
        with self._lock:
            self.points.extend(metrics)
            self.tags.extend(tags)

    def add_epoch(self, record: EpochRecord) -> None:
        if record.epoch <= self.skip_epochs_through:
            return
        values = record.metrics()
        if self.epoch_metrics is not None:
            values = {k: v for k, v in values.items() if k in self.epoch_metrics}
        self._add(mlflow_metrics(values), step=record.epoch)
        self._maybe_flush()

    def add_gradcheck(self, report: GradcheckReport) -> None:
        if report.step <= self.skip_gradchecks_through:
            return
        values = {
            mlflow_key("gradcheck_max_rel_error"): report.max_rel_error,
            mlflow_key("gradcheck_max_fd_rel_error"): report.max_fd_rel_error,
        }
        self._add(values, step=report.step)
        text = report.to_json()
        with self._lock:
            if len(self.reports) >= MAX_PENDING_REPORTS:
                self.reports.pop(min(self.reports))
            self.reports[report.step] = text
        self._maybe_flush()

    def add_checkpoint(self, checkpoint: Checkpoint) -> None:
        """Keep a snapshot (the loop's tensors are live); it is serialised and uploaded by the
        sender when due: the cost of ``to_bytes`` is paid per upload, not per epoch."""
        snapshot = _snapshot(checkpoint)
        with self._lock:
            self.latest = snapshot
            self.pending[LAST_CHECKPOINT] = snapshot
            if checkpoint.best_epoch is not None and checkpoint.best_epoch == checkpoint.epoch:
                self.pending[BEST_CHECKPOINT] = snapshot
            due = any(self._upload_due(d) for d in self.pending)
        if _last_epoch(checkpoint):  # training ends now: finish()'s flush sends it, with the
            return  # last points and the final metrics (a short job: one log_batch, not two)
        if due:
            self._request()
        else:
            self._maybe_flush()

    # --- sending ---------------------------------------------------------------------------

    def flush(self) -> bool:
        """Send every buffered point, pending report and pending checkpoint, on this thread.
        True when all went through; False when something stays buffered for the next flush
        (never raises for an MLflow error)."""
        ok = self._send(every_checkpoint=True)
        with self._lock:
            return ok and not (self.pending or self.params or self.tags or self.inputs)

    def close(self) -> None:
        """Stop the sender thread (what is still buffered stays, for ``flush()``)."""
        if self.sender is not None:
            self.sender.forget(self)
        with self._lock:
            sender, self._sender = self._sender, None
        if sender is not None:
            self._kick.set()
            sender.join(timeout=30)

    def _maybe_flush(self) -> None:
        if time.monotonic() - self._last_flush >= self.flush_interval_s:
            self._request()

    def _request(self) -> None:
        """A send is due: wake the sender thread (or send here without one)."""
        if not self.background:
            self._send(every_checkpoint=False)
            return
        self._last_flush = time.monotonic()  # not due again until the next interval
        if self.sender is not None:
            self.sender.request(self)
            return
        with self._lock:
            self._kick.set()
            if self._sender is None or not self._sender.is_alive():
                self._sender = threading.Thread(
                    target=self._sender_loop, name=f"mlflow-{self.run_id[:8]}", daemon=True
                )
                self._sender.start()

    def _sender_loop(self) -> None:
        self.clock.mark_background()
        me = threading.current_thread()
        while True:
            woken = self._kick.wait(SENDER_IDLE_S)
            with self._lock:
                if self._sender is not me or not woken:  # closed, replaced or idle: end
                    if self._sender is me:
                        self._sender = None
                    return
                self._kick.clear()
            self._send(every_checkpoint=False)

    def _send(self, *, every_checkpoint: bool) -> bool:
        """Metrics, then reports, then checkpoints: only the checkpoints taken before the
        metrics were sent, so none is in MLflow ahead of its epochs."""
        t0 = time.perf_counter()
        with self._send_lock:
            self.clock.add_wait(time.perf_counter() - t0)
            now = time.monotonic()
            with self._lock:
                uploads = {
                    d: c for d, c in self.pending.items() if every_checkpoint or self._upload_due(d)
                }
                self._last_upload.update({d: now for d in uploads})  # not due while in flight
            self._last_flush = now
            ok = self._send_inputs() and self._send_metrics() and self._send_reports()
            serialised: dict[int, bytes] = {}  # last and best are often one snapshot
            for directory, snapshot in uploads.items():
                sent = ok and self._send_checkpoint(directory, snapshot, serialised)
                ok = ok and sent
                if not sent:  # due again at the next send
                    with self._lock:
                        self._last_upload.pop(directory, None)
            return ok

    def _add(self, values: dict[str, float], *, step: int) -> None:
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, step) for k, v in values.items()]
        with self._lock:
            room = (self.points.maxlen or 0) - len(self.points)
            overflow = len(metrics) - room
            if overflow > 0:
                if self.dropped == 0:
                    log.warning("run %s: metric buffer full, dropping oldest points", self.run_id)
                self.dropped += overflow
            self.points.extend(metrics)

    def _send_inputs(self) -> bool:
        with self._lock:
            inputs = list(self.inputs)
        if not inputs:
            return True
        if not self._call("log_inputs", self.client.log_inputs, self.run_id, datasets=inputs):
            return False
        with self._lock:
            del self.inputs[: len(inputs)]
        return True

    def _send_metrics(self) -> bool:
        """The points buffered now (not those training adds meanwhile: the next send's), the
        pending params with the first of them."""
        with self._lock:
            left = len(self.points)
            params, tags = list(self.params), list(self.tags)
        while params or tags:  # MLflow: at most 100 params and tags, 1000 entities a batch
            batch = params[:MAX_PARAMS_TAGS_PER_BATCH]
            tag_batch = tags[: MAX_PARAMS_TAGS_PER_BATCH - len(batch)]
            with self._lock:
                room = min(
                    left,
                    MAX_ENTITIES_PER_BATCH - len(batch) - len(tag_batch),
                    MAX_METRICS_PER_BATCH,
                )
                chunk = list(itertools.islice(self.points, room))
            if not self._call(
                "log_batch",
                self.client.log_batch,
                self.run_id,
                metrics=chunk,
                params=batch,
                tags=tag_batch,
            ):
                return False
            params, tags = params[len(batch) :], tags[len(tag_batch) :]
            with self._lock:
                del self.params[: len(batch)]
                del self.tags[: len(tag_batch)]
            self._drop_sent(chunk)
            left -= len(chunk)
        while left > 0:
            with self._lock:
                chunk = list(itertools.islice(self.points, min(left, MAX_METRICS_PER_BATCH)))
            if not chunk:
                return True
            if not self._call("log_batch", self.client.log_batch, self.run_id, metrics=chunk):
                return False
            left -= len(chunk)
            self._drop_sent(chunk)
        return True

    def _drop_sent(self, chunk: list[Metric]) -> None:
        sent = {id(m) for m in chunk}  # points added (or dropped) meanwhile stay right
        with self._lock:
            while self.points and id(self.points[0]) in sent:
                self.points.popleft()

    def _send_reports(self) -> bool:
        with self._lock:
            reports = sorted(self.reports.items())
        for step, text in reports:
            name = f"gradcheck/step_{step:08d}.json"
            if not self._call("log_text", self.artifacts.log_bytes, text.encode(), name):
                return False
            with self._lock:
                self.reports.pop(step, None)
        return True

    def _upload_due(self, directory: str) -> bool:
        last = self._last_upload.get(directory)
        return last is None or time.monotonic() - last >= self.checkpoint_interval_s

    def _send_checkpoint(
        self, directory: str, snapshot: Checkpoint, serialised: dict[int, bytes]
    ) -> bool:
        data = serialised.get(id(snapshot))
        if data is None:
            with self.clock.measure():
                data = serialised[id(snapshot)] = snapshot.to_bytes()
        sent = self._call(
            "log_artifact", self.artifacts.log_bytes, data, f"{directory}/{CHECKPOINT_FILE}"
        )
        describe = self.predictors
        if sent and describe is not None:  # written inside the call: a failure is kept, retried
            sent = self._call(
                "log_artifact",
                lambda: self.artifacts.log_bytes(
                    describe(snapshot.params), f"{directory}/{PREDICTORS_FILE}"
                ),
            )
        if sent:
            with self._lock:
                if self.pending.get(directory) is snapshot:
                    del self.pending[directory]
        return sent

    def _call(self, what: str, fn: Callable[..., object], *args: object, **kwargs: object) -> bool:
        if self.alive is not None and not self.alive():  # another attempt owns the run
            return False
        try:
            with self.clock.measure():
                fn(*args, **kwargs)
        except Exception as exc:  # any MLflow/HTTP/DB failure: keep the data, retry later
            self.failures += 1
            log.warning(
                "run %s: MLflow %s failed (%s: %s); kept %d points for the next flush",
                self.run_id,
                what,
                type(exc).__name__,
                exc,
                len(self.points),
            )
            return False
        return True


def _last_epoch(checkpoint: Checkpoint) -> bool:
    """The checkpoint of the spec's last epoch (early stopping may end training sooner)."""
    epochs = checkpoint.spec.get("optimizer", {}).get("epochs")
    return isinstance(epochs, int) and checkpoint.epoch >= epochs


def _snapshot(checkpoint: Checkpoint) -> Checkpoint:
    """A copy that training cannot change: tensors cloned on their device, the history list
    copied (the loop appends each epoch's record to the list it hands every checkpoint; the
    records themselves are built once and never changed), the spec shared (never mutated)."""

    def own(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        return [t.detach().clone() for t in tensors]

    return dataclasses.replace(
        checkpoint,
        params=own(checkpoint.params),
        momentum=own(checkpoint.momentum),
        optimizer={k: t.detach().clone() for k, t in checkpoint.optimizer.items()},
        batch_rng=checkpoint.batch_rng.clone(),
        dropout_rng=checkpoint.dropout_rng.clone(),
        best_params=None if checkpoint.best_params is None else own(checkpoint.best_params),
        history=list(checkpoint.history),
    )


class SharedSender:
    """One background sender thread for several runs' buffers (the members of a pack: one
    thread, not one per member): a buffer whose send is due is queued here, and the thread
    sends the queued buffers in turn (each ``RunBuffer._send``, with its own guarantees).
    Started on demand, gone after ``SENDER_IDLE_S`` idle, like a buffer's own sender."""

    def __init__(self) -> None:
        self._due: deque[RunBuffer] = deque()
        self._lock = threading.Lock()
        self._kick = threading.Event()
        self._thread: threading.Thread | None = None
        self.sends = 0  # buffers sent, for tests
        self.threads = 0  # sender threads started, for tests

    def request(self, buffer: RunBuffer) -> None:
        """Queue ``buffer``'s send (once, however often it asks before it is sent)."""
        with self._lock:
            if buffer not in self._due:
                self._due.append(buffer)
            self._kick.set()
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="mlflow-pack", daemon=True)
                self.threads += 1
                self._thread.start()

    def forget(self, buffer: RunBuffer) -> None:
        """``buffer`` is closing: its queued send, if any, is dropped (``flush`` sends it)."""
        with self._lock:
            if buffer in self._due:
                self._due.remove(buffer)

    def close(self) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
            self._due.clear()
        if thread is not None:
            self._kick.set()
            thread.join(timeout=30)

    def _loop(self) -> None:
        me = threading.current_thread()
        while True:
            woken = self._kick.wait(SENDER_IDLE_S)
            with self._lock:
                if self._thread is not me or (not woken and not self._due):
                    if self._thread is me:
                        self._thread = None
                    return
                self._kick.clear()
                due, self._due = list(self._due), deque()
            for buffer in due:
                buffer.clock.mark_background()
                buffer._send(every_checkpoint=False)
                self.sends += 1


class TrackingCallback(Callback):
    """The core ``Callback`` that feeds a ``RunBuffer``; it never raises for MLflow errors."""

    def __init__(self, buffer: RunBuffer) -> None:
        self.buffer = buffer

    def on_epoch_end(self, record: EpochRecord) -> None:
        self.buffer.add_epoch(record)

    def on_gradcheck(self, report: GradcheckReport) -> None:
        self.buffer.add_gradcheck(report)

    def on_checkpoint(self, checkpoint: Checkpoint) -> None:
        self.buffer.add_checkpoint(checkpoint)
