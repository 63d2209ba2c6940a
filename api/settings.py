"""The service's settings: one ``Settings`` object, environment prefix ``GRADQ_``.

Read once at start (``Settings()``) and passed down; nothing reads the environment later.
The embedded default needs none of them: SQLite and MLflow's SQLite store under
``./gradq-data/``, a local Ray, no API keys, bound to 127.0.0.1. Defaults that other rooms
share (database, MLflow, lease, the API's address) are those of :mod:`core.defaults`.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

from pydantic import ByteSize, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from core import defaults
from core.spec import SpecLimits
from db.session import check_url

MiB = 1024 * 1024
GiB = 1024 * MiB


class Settings(BaseSettings):
    """Every knob of the service. Invalid values are refused at start with the field named."""

    model_config = SettingsConfigDict(env_prefix="GRADQ_", extra="ignore", frozen=True)

    database_url: str = defaults.DATABASE_URL
    mlflow_tracking_uri: str = defaults.MLFLOW_TRACKING_URI
    mlflow_artifact_root: str | None = Field(
        None, description="default: mlartifacts/ next to a SQLite tracking store"
    )
    mlflow_ui_url: str = defaults.MLFLOW_UI_URL
    ray_address: str | None = Field(None, description="None: the dispatcher starts a local Ray")
    ray_num_cpus: int | None = Field(None, ge=1, le=4096, description="local Ray only")
    auth: Literal["none", "keys"] = "none"
    # A first API key chosen by the operator (a deployment's secret): stored (its hash) at start
    bootstrap_api_key: SecretStr | None = None
    bootstrap_tenant: str = Field("default", min_length=1, max_length=100)
    host: str = defaults.API_HOST
    # 0: any free port, bound at start and named in uvicorn's "running on" line of the log
    port: int = Field(defaults.API_PORT, ge=0, le=65535)
    max_body_bytes: int = Field(1 * MiB, ge=1024)
    max_upload_bytes: int = Field(50 * MiB, ge=1024)
    max_parameters: int = Field(10_000_000, ge=1)
    max_epochs: int = Field(10_000, ge=1, le=100_000)
    max_hidden_layers: int = Field(64, ge=1, le=64)
    # The most memory one job may need, as core.memory estimates it from the spec (bytes, or
    # a size such as "4GiB"): a bigger job is refused at submission (422, naming the field
    # behind most of it), and each attempt reserves its estimate as Ray's "memory" resource.
    # 4 GiB: `gradq serve` on a 2-core, 24 GiB machine runs two jobs at once, 8 GiB together,
    # beside the processes' own footprint (an idle Ray worker's is in bench/RESULTS.md,
    # Memory), which leaves half of the machine free. At least 256 MiB: above what
    # core.memory counts for every job (ATTEMPT_BYTES and HEAP_SLACK).
    max_job_memory: ByteSize = Field(ByteSize(4 * GiB), ge=256 * MiB)
    max_queued_per_tenant: int = Field(1000, ge=1)
    gradcheck_max_parameters: int = Field(200_000, ge=1)
    gradcheck_max_rows: int = Field(5000, ge=10, description="synthetic rows generated to check")
    # POST /v1/gradcheck runs in the API process, one check at a time: a check whose memory
    # (core.memory.gradcheck_estimate) is over gradcheck_max_memory (bytes or a size) is
    # refused (422 naming the field); at most gradcheck_queue more wait for the one running
    # (beyond: 429 with Retry-After); a check whose client goes away is stopped
    gradcheck_max_memory: ByteSize = Field(ByteSize(512 * MiB), ge=16 * MiB)
    gradcheck_queue: int = Field(4, ge=0, le=10_000)
    lease_seconds: float = Field(defaults.LEASE_SECONDS, gt=0)
    heartbeat_seconds: float = Field(defaults.HEARTBEAT_SECONDS, gt=0)
    unsatisfiable: Literal["fail", "wait"] = "fail"
    # one log line per HTTP request (uvicorn's access log): off by default, as formatting a
    # line per request is a noticeable part of the server's CPU per submit (bench/RESULTS.md,
    # API); every job's changes are in its events whether it is on or not
    access_log: bool = False
    # --- sharing the cluster between tenants (README, "Sharing the cluster") ---------------
    # how long a queued job that fits a node but not the room free now lets smaller jobs
    # behind it start in the room it leaves, before that room is held for it (0: at once)
    backfill_seconds: float = Field(30.0, ge=0)
    # each tenant's caps unless its API keys set their own (`gradq keys create --max-running
    # N --max-priority P`; a tenant gets the strictest its active keys set): the most jobs
    # running at once (its other jobs wait) and the highest priority a submit may ask for
    # (above it: 422 naming `priority`); None: no cap
    tenant_max_running: int | None = Field(None, ge=1)
    tenant_max_priority: int | None = Field(None, ge=-1000, le=1000)
    # how long the API remembers a valid API key (and its tenant's caps): a revoked key is
    # refused at most this long after; unknown keys are remembered at most 1 s (0: no cache)
    key_cache_seconds: float = Field(5.0, ge=0, le=300)
    # database connections each Ray worker process keeps at most (README: the connection
    # budget against PostgreSQL's max_connections)
    worker_db_connections: int = Field(2, ge=2, le=20)

    @field_validator("bootstrap_api_key")
    @classmethod
    def _strong_key(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and len(v.get_secret_value()) < 24:
            raise ValueError("an API key needs at least 24 characters")
        return v

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, v: str) -> str:
        return check_url(v)

    @field_validator("mlflow_tracking_uri")
    @classmethod
    def _tracking_uri(cls, v: str) -> str:
        scheme = urlparse(v).scheme
        if scheme not in ("sqlite", "postgresql", "mysql", "http", "https", "file", "databricks"):
            raise ValueError(f"an MLflow tracking URI (sqlite:///…, http://…), not {v!r}")
        return v

    @field_validator("mlflow_ui_url")
    @classmethod
    def _ui_url(cls, v: str) -> str:
        if urlparse(v).scheme not in ("http", "https"):
            raise ValueError(f"an http(s) URL, not {v!r}")
        return v.rstrip("/")

    @field_validator("ray_address")
    @classmethod
    def _ray_address(cls, v: str | None) -> str | None:
        return v or None  # an empty GRADQ_RAY_ADDRESS means local

    @model_validator(mode="after")
    def _combination(self) -> Settings:
        if self.heartbeat_seconds >= self.lease_seconds:
            raise ValueError(
                f"heartbeat_seconds ({self.heartbeat_seconds:g}) must be shorter than "
                f"lease_seconds ({self.lease_seconds:g})"
            )
        return self

    # --- derived values ---------------------------------------------------------------------

    @property
    def limits(self) -> SpecLimits:
        return SpecLimits(
            max_parameters=self.max_parameters,
            max_epochs=self.max_epochs,
            max_hidden_layers=self.max_hidden_layers,
            max_job_memory=int(self.max_job_memory),
        )

    @property
    def artifact_root(self) -> str | None:
        """Where job and data-set artifacts go: the setting, else ``mlartifacts/`` next to a
        SQLite tracking store's file; None for a server (it decides)."""
        if self.mlflow_artifact_root:
            return self.mlflow_artifact_root
        if self.mlflow_tracking_uri.startswith("sqlite:///"):
            db = self.mlflow_tracking_uri.removeprefix("sqlite:///").split("?")[0]
            if db and db != ":memory:":
                return str(Path(db).parent / "mlartifacts")
        return None

    def bind_refusal(self, *, insecure: bool) -> str | None:
        """Why the service must not start on ``host`` (None: it may): without API keys it
        binds only a loopback address, unless ``insecure`` is given explicitly."""
        if self.auth == "keys" or insecure or is_loopback(self.host):
            return None
        return (
            f"refusing to bind {self.host} without API keys: anyone who reaches it could run "
            "jobs. Set GRADQ_AUTH=keys (and create keys with `gradq keys create`), bind "
            "127.0.0.1, or pass --insecure"
        )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
