"""The MLflow client of every other tracking module, and what they share with gradq's readers:
``make_client`` (SQLite stores in WAL mode), finding or creating an experiment, a run's
metric history and its link in the MLflow UI.

Light at import (no MLflow, no torch): the API imports it through ``workers.tracking.read``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)


def make_client(tracking_uri: str) -> MlflowClient:
    """A client of ``tracking_uri``; the folder of a ``sqlite:///`` file is created first and
    the file put in WAL mode (see ``_sqlite_wal``)."""
    from mlflow import MlflowClient

    parsed = urlparse(tracking_uri)
    if parsed.scheme == "sqlite" and tracking_uri.startswith("sqlite:///"):
        db = tracking_uri.removeprefix("sqlite:///").split("?")[0]
        if db and db != ":memory:":
            _sqlite_wal(str(Path(db).resolve()))
    return MlflowClient(tracking_uri=tracking_uri)


_wal_done: set[str] = set()


def _sqlite_wal(path: str) -> None:
    """Put an MLflow SQLite store in WAL journal mode, once per file and process (the mode
    is kept in the file). MLflow leaves SQLite's default rollback journal: every commit then
    syncs the disk three or four times, and a writer blocks every reader (the attempts of
    one node and the dispatcher all write to the file, and wait on SQLite's busy handler,
    which sleeps in steps of 1–100 ms). With WAL a commit is one append, and readers never
    wait. Each connection MLflow opens to the file then gets ``synchronous=NORMAL`` (see
    ``_sync_normal_on_connect``), as gradq's own SQLite database has: no disk sync per
    commit (a job commits to the store several times, and each sync is CPU spent in the
    kernel on the job's path; bench/RESULTS.md, Service), and no committed transaction lost
    when a process crashes; a power cut may lose the last ones, never corrupt the file."""
    if path in _wal_done:
        return
    import sqlite3

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    try:
        conn = sqlite3.connect(path, timeout=30)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
        finally:
            conn.close()
    except sqlite3.Error as exc:  # a read-only or odd file: MLflow works without it
        log.warning("MLflow store %s: could not switch to WAL mode: %s", path, exc)
        return
    _wal_done.add(path)
    _sync_normal_on_connect()


_listening = False


def _sync_normal_on_connect() -> None:
    """``PRAGMA synchronous=NORMAL`` on each new connection MLflow opens to a store that
    ``_sqlite_wal`` switched to WAL. MLflow makes its own engine, so this listens on every
    SQLAlchemy pool of the process and acts only on those files (a per-connection setting:
    SQLite does not keep it in the file)."""
    global _listening
    if _listening:
        return
    from sqlalchemy import event
    from sqlalchemy.pool import Pool

    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        import sqlite3

        if not isinstance(dbapi_connection, sqlite3.Connection):
            return
        rows = dbapi_connection.execute("PRAGMA database_list").fetchall()
        if any(row[1] == "main" and row[2] in _wal_done for row in rows):
            dbapi_connection.execute("PRAGMA synchronous=NORMAL")

    event.listen(Pool, "connect", on_connect)
    _listening = True


def find_or_create_experiment(
    client: MlflowClient, name: str, *, tracking_uri: str, artifact_root: str | None
) -> str:
    """The id of experiment ``name``, created (its artifacts under ``artifact_root`` for a
    local store) or restored when needed; one created meanwhile by another process is
    found."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        location = None
        if artifact_root and not is_remote(tracking_uri):
            location = folder_uri(artifact_root)
        try:
            return str(client.create_experiment(name, artifact_location=location))
        except MlflowException:  # created meanwhile by another worker or request
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if experiment.lifecycle_stage == "deleted":
        client.restore_experiment(experiment.experiment_id)
    return str(experiment.experiment_id)


def metric_history(*, tracking_uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    """(step, value) of one metric, sorted by step; for a step logged twice, the later one."""
    points = make_client(tracking_uri).get_metric_history(run_id, key)
    by_step = {m.step: m.value for m in sorted(points, key=lambda m: (m.step, m.timestamp))}
    return sorted(by_step.items())


# The run page's tab of charts: a job's link opens on its curves.
CURVES_TAB = "model-metrics"


def run_page(*, ui_base: str, experiment_id: str, run_id: str) -> str:
    """The run's page in the MLflow UI on its "Model metrics" tab, where the learning curves
    are: ``{ui_base}/#/experiments/{exp_id}/runs/{run_id}/model-metrics``, from ids already
    known (no call to MLflow)."""
    return f"{ui_base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}/{CURVES_TAB}"


def run_url(*, ui_base: str, tracking_uri: str, run_id: str) -> str:
    """The run's page in the MLflow UI (:func:`run_page`), its experiment asked of MLflow."""
    experiment_id = make_client(tracking_uri).get_run(run_id).info.experiment_id
    return run_page(ui_base=ui_base, experiment_id=str(experiment_id), run_id=run_id)


def unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says that MLflow is away rather than that it answered: the connection
    to the server failed or broke (refused, reset, or an answer cut off mid-body: requests'
    ``ConnectionError`` / ``ChunkedEncodingError``, urllib3's ``ProtocolError``,
    ``IncompleteRead``), raised as it is or wrapped, as MLflow's HTTP layer raises it, in an
    ``MlflowException`` with that error as its cause or context. An error MLflow answered
    with (``RESOURCE_DOES_NOT_EXIST``, …) is not. MLflow's own HTTP retries never cover an
    answer cut off mid-body: its client raises at once."""
    import http.client

    import requests
    import urllib3.exceptions

    broken = (
        requests.exceptions.ConnectionError,
        requests.exceptions.ChunkedEncodingError,
        urllib3.exceptions.ProtocolError,
        http.client.IncompleteRead,
        ConnectionError,
    )
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, broken):
            return True
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return False


def is_remote(tracking_uri: str) -> bool:
    return urlparse(tracking_uri).scheme in ("http", "https", "databricks")


def folder_uri(folder: str) -> str:
    """A folder as a URI: one with a scheme (``s3://``, ``file://``) as it is, a path made
    absolute as ``file://``."""
    if urlparse(folder).scheme and not Path(folder).drive:
        return folder
    return Path(folder).expanduser().resolve().as_uri()
