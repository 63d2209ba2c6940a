"""The buffered, failure-tolerant writer behind ``JobTracker.callback()``.

Training reports every epoch; MLflow costs milliseconds per call. ``RunBuffer`` keeps metric
points in memory and sends them with one ``log_batch`` (up to 1000 points a call) when
``flush_interval_s`` has passed since the last flush, at a checkpoint upload, and on
``flush()``. Guarantees:

- no MLflow error reaches the training loop: a failed call logs a warning, keeps what was not
  sent and is retried at the next flush; the buffer is bounded (oldest points dropped and
  counted in ``dropped``);
- a checkpoint is uploaded only after the metrics buffered before it were sent, so every epoch
  up to the last uploaded checkpoint is in MLflow: a resumed attempt neither leaves a gap nor
  (with ``skip_through``) logs an epoch twice;
- retries resend the same ``Metric`` objects (same timestamps), which the SQL store
  de-duplicates.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from mlflow.entities import Metric
from mlflow.utils.validation import MAX_METRICS_PER_BATCH

from core.callbacks import Callback, EpochRecord
from core.checkpoint import Checkpoint

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from core.gradcheck import GradcheckReport

log = logging.getLogger(__name__)

MAX_BUFFERED_POINTS = 100_000
MAX_PENDING_REPORTS = 1_000
LAST_CHECKPOINT = "checkpoints/last"
BEST_CHECKPOINT = "checkpoints/best"
CHECKPOINT_FILE = "checkpoint.pt"


class RunBuffer:
    """Buffered metrics, gradient-check reports and checkpoints of one run (thread-safe)."""

    def __init__(
        self,
        client: MlflowClient,
        run_id: str,
        *,
        flush_interval_s: float,
        checkpoint_interval_s: float,
        max_points: int = MAX_BUFFERED_POINTS,
    ) -> None:
        self.client, self.run_id = client, run_id
        self.flush_interval_s = flush_interval_s
        self.checkpoint_interval_s = checkpoint_interval_s
        self.points: deque[Metric] = deque(maxlen=max_points)
        self.reports: dict[int, str] = {}  # step → report JSON not yet uploaded
        self.pending: dict[str, Checkpoint] = {}  # artifact dir → snapshot not yet uploaded
        self.dropped = 0  # points dropped because the buffer was full
        self.failures = 0  # MLflow calls that raised
        self.skip_epochs_through = 0  # epochs already in the run (a resumed attempt)
        self.skip_gradchecks_through = -1  # gradcheck steps already in the run
        self._last_flush = time.monotonic()
        self._last_upload: dict[str, float] = {}
        self._lock = threading.RLock()

    # --- what the callback feeds in -------------------------------------------------------

    def add_epoch(self, record: EpochRecord) -> None:
        if record.epoch <= self.skip_epochs_through:
            return
        self._add(record.metrics(), step=record.epoch)
        self._maybe_flush()

    def add_gradcheck(self, report: GradcheckReport) -> None:
        if report.step <= self.skip_gradchecks_through:
            return
        values = {
            "gradcheck_max_rel_error": report.max_rel_error,
            "gradcheck_max_fd_rel_error": report.max_fd_rel_error,
        }
        self._add(values, step=report.step)
        with self._lock:
            if len(self.reports) >= MAX_PENDING_REPORTS:
                self.reports.pop(min(self.reports))
            self.reports[report.step] = report.to_json()
        self._maybe_flush()

    def add_checkpoint(self, checkpoint: Checkpoint) -> None:
        """Keep a snapshot (the loop's tensors are live); serialise and upload it when due.
        A snapshot copies tensors only: the cost of ``to_bytes`` is paid per upload, not per
        epoch."""
        snapshot = _snapshot(checkpoint)
        with self._lock:
            self.pending[LAST_CHECKPOINT] = snapshot
            if checkpoint.best_epoch is not None and checkpoint.best_epoch == checkpoint.epoch:
                self.pending[BEST_CHECKPOINT] = snapshot
            due = [d for d in self.pending if self._upload_due(d)]
            if due and self._send_metrics():
                self._send_reports()
                for directory in due:
                    self._send_checkpoint(directory)
        self._maybe_flush()

    # --- sending ---------------------------------------------------------------------------

    def flush(self) -> bool:
        """Send every buffered point, pending report and pending checkpoint. True when all
        went through; False when something stays buffered for the next flush (never raises
        for an MLflow error)."""
        with self._lock:
            ok = self._send_metrics()
            ok = self._send_reports() and ok
            if ok:  # checkpoints only behind their metrics: see the module docstring
                for directory in list(self.pending):
                    ok = self._send_checkpoint(directory) and ok
            return ok and not self.pending

    def _add(self, values: dict[str, float], *, step: int) -> None:
        now = int(time.time() * 1000)
        with self._lock:
            room = (self.points.maxlen or 0) - len(self.points)
            overflow = len(values) - room
            if overflow > 0:
                if self.dropped == 0:
                    log.warning("run %s: metric buffer full, dropping oldest points", self.run_id)
                self.dropped += overflow
            self.points.extend(Metric(k, float(v), now, step) for k, v in values.items())

    def _maybe_flush(self) -> None:
        if time.monotonic() - self._last_flush >= self.flush_interval_s:
            self.flush()

    def _send_metrics(self) -> bool:
        self._last_flush = time.monotonic()
        while self.points:
            chunk = [self.points[i] for i in range(min(MAX_METRICS_PER_BATCH, len(self.points)))]
            if not self._call("log_batch", self.client.log_batch, self.run_id, metrics=chunk):
                return False
            for _ in chunk:
                self.points.popleft()
        return True

    def _send_reports(self) -> bool:
        for step in sorted(self.reports):
            name = f"gradcheck/step_{step:08d}.json"
            if not self._call(
                "log_text", self.client.log_text, self.run_id, self.reports[step], name
            ):
                return False
            del self.reports[step]
        return True

    def _upload_due(self, directory: str) -> bool:
        last = self._last_upload.get(directory)
        return last is None or time.monotonic() - last >= self.checkpoint_interval_s

    def _send_checkpoint(self, directory: str) -> bool:
        data = self.pending[directory].to_bytes()
        with tempfile.TemporaryDirectory(prefix="gradq-ckpt-") as tmp:
            path = os.path.join(tmp, CHECKPOINT_FILE)
            with open(path, "wb") as f:
                f.write(data)
            sent = self._call(
                "log_artifact", self.client.log_artifact, self.run_id, path, directory
            )
        if sent:
            self._last_upload[directory] = time.monotonic()
            del self.pending[directory]
        return sent

    def _call(self, what: str, fn: Callable[..., object], *args: object, **kwargs: object) -> bool:
        try:
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


def _snapshot(checkpoint: Checkpoint) -> Checkpoint:
    """A copy that training cannot change: tensors cloned on their device, the rest shared
    (the loop builds the history list anew for each checkpoint and never mutates the spec)."""

    def own(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        return [t.detach().clone() for t in tensors]

    return dataclasses.replace(
        checkpoint,
        params=own(checkpoint.params),
        momentum=own(checkpoint.momentum),
        batch_rng=checkpoint.batch_rng.clone(),
        dropout_rng=checkpoint.dropout_rng.clone(),
        best_params=None if checkpoint.best_params is None else own(checkpoint.best_params),
    )


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
