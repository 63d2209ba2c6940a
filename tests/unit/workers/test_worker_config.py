"""A worker's defaults are the service's: one definition in core.defaults."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.pool import QueuePool

from core import defaults
from workers import task
from workers.task import WorkerConfig


def test_worker_config_defaults_are_core_defaults() -> None:
    config = WorkerConfig(database_url=defaults.DATABASE_URL,
                          tracking_uri=defaults.MLFLOW_TRACKING_URI)  # fmt: skip
    assert (config.lease_seconds, config.heartbeat_seconds) == (
        defaults.LEASE_SECONDS, defaults.HEARTBEAT_SECONDS)  # fmt: skip


def test_a_worker_process_holds_at_most_its_share_of_database_connections(tmp_path: Path) -> None:
    """Each Ray worker process keeps one engine per database; its pool is bounded by
    ``db_connections`` (the attempt's thread and its heartbeat thread) with no overflow, so
    the workers' total stays within the budget README gives (GRADQ_WORKER_DB_CONNECTIONS)."""
    url = f"sqlite:///{tmp_path}/gradq.db"
    config = WorkerConfig(database_url=url, tracking_uri="x", db_connections=3)
    engine = task._engine(config)
    assert isinstance(engine.pool, QueuePool)
    assert (engine.pool.size(), engine.pool._max_overflow) == (3, 0)
    assert task._engine(config) is engine  # one per process and database
    assert WorkerConfig(database_url=url, tracking_uri="x").db_connections == 2
    engine.dispose()
