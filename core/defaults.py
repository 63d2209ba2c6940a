"""The embedded service's default settings, defined once for every room.

Plain constants, nothing imported: ``api.settings`` (the ``GRADQ_`` settings), the ``gradq``
client commands (``api.cli.http``: where they find the API), ``db`` (its command line),
``workers`` (``WorkerConfig``, the tracking package) read their defaults here,
so a changed default cannot leave one room on the old value. ``core`` itself uses none of
them (it takes arguments); they live here because every room may import ``core`` and this
module costs no torch, MLflow, Ray or SQLAlchemy.
"""

from __future__ import annotations

from typing import Final

# The embedded default: everything under ./gradq-data/ of the working directory.
DATABASE_URL: Final = "sqlite:///./gradq-data/gradq.db"  # GRADQ_DATABASE_URL
MLFLOW_TRACKING_URI: Final = "sqlite:///./gradq-data/mlflow.db"  # GRADQ_MLFLOW_TRACKING_URI
# where artifacts go when neither GRADQ_MLFLOW_ARTIFACT_ROOT nor the tracking store says
MLFLOW_ARTIFACT_ROOT: Final = "./gradq-data/mlartifacts"
MLFLOW_UI_URL: Final = "http://127.0.0.1:5000"  # GRADQ_MLFLOW_UI_URL

# Where the API listens (GRADQ_HOST, GRADQ_PORT), and so where the client commands of
# `gradq` reach it when neither --url nor GRADQ_URL says otherwise.
API_HOST: Final = "127.0.0.1"
API_PORT: Final = 8000
API_URL: Final = f"http://{API_HOST}:{API_PORT}"

# A running attempt's lease, and how often it renews it (GRADQ_LEASE_SECONDS,
# GRADQ_HEARTBEAT_SECONDS); the heartbeat must be the shorter.
LEASE_SECONDS: Final = 30.0
HEARTBEAT_SECONDS: Final = 3.0

# A gradient check's size: over this many parameters the service refuses a check
# (GRADQ_GRADCHECK_MAX_PARAMETERS) and `gradq gradcheck` samples its finite differences;
# the finite-difference coordinates per tensor the service checks (and the local command,
# over that size).
GRADCHECK_MAX_PARAMETERS: Final = 200_000
GRADCHECK_FD_SAMPLES: Final = 32
