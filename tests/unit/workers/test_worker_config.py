"""A worker's defaults are the service's: one definition in core.defaults."""

from __future__ import annotations

from core import defaults
from workers.task import WorkerConfig


def test_worker_config_defaults_are_core_defaults() -> None:
    config = WorkerConfig(database_url=defaults.DATABASE_URL,
                          tracking_uri=defaults.MLFLOW_TRACKING_URI)  # fmt: skip
    assert (config.lease_seconds, config.heartbeat_seconds) == (
        defaults.LEASE_SECONDS, defaults.HEARTBEAT_SECONDS)  # fmt: skip
