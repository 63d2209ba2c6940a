"""The service's settings: one ``Settings`` object, environment prefix ``GRADQ_``.

Read once at start (``Settings()``) and passed down; nothing reads the environment later.
The embedded default needs none of them: SQLite and MLflow's SQLite store under
``./gradq-data/``, a local Ray, no API keys, bound to 127.0.0.1. Defaults that other rooms
share (database, MLflow, lease, the API's address) are those of :mod:`core.defaults`.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlparse

from pydantic import ByteSize, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from core import defaults
from core.spec import SpecLimits
from db.session import check_url

MiB = 1024 * 1024
GiB = 1024 * MiB


class Settings(BaseSettings):
    """Every knob of the service. Invalid values are refused at start with the field named."""

    model_config = SettingsConfigDict(env_prefix="GRADQ_", extra="ignore", frozen=True)

    # The folder of the service's state (its database, MLflow's store and artifacts), which
    # every command shares (`gradq --home DIR …`): unset, ./gradq-data/ of the working
    # directory. A database URL or tracking URI set on its own wins. Not the folder of the
    # CSV inputs (csv_root).
    home: Path | None = None
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
    # the most trials one sweep may make (a grid's points, or search.trials)
    max_sweep_trials: int = Field(10_000, ge=1)
    gradcheck_max_parameters: int = Field(defaults.GRADCHECK_MAX_PARAMETERS, ge=1)
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
    # packs (README, "A sweep"): the most trials of one shape trained as one Ray task, on
    # CPUs and on a GPU; 1: every trial alone
    pack_size: int = Field(32, ge=1, le=4096)
    pack_size_gpu: int = Field(512, ge=1, le=65_536)

    # --- retention (README, "Deleting jobs and retention"): `gradq gc` frees the artifact
    # bytes of the jobs finished more than retention_days ago (None: nothing expires),
    # keeping their last and best checkpoints ("checkpoints") or nothing ("nothing")
    retention_days: int | None = Field(None, ge=1, le=36_500)
    retention_keep: Literal["checkpoints", "nothing"] = "checkpoints"

    # --- what a web page in a user's browser can reach (README.md, Browsers) -----------------
    # Names (a Host header without its port) the API answers to besides the loopback names
    # (localhost, 127.0.0.1, ::1) and `host`: a reverse proxy's public name, say. Comma
    # separated; "*" answers any (no defence against DNS rebinding). Another Host is refused
    # with 400 (api/browser.py).
    allowed_hosts: Annotated[tuple[str, ...], NoDecode] = ()
    # The folder whose files a `csv` data set may name over HTTP (a relative path is taken
    # inside it; `..` and symbolic links may not lead out of it). Unset: every csv path is
    # refused over HTTP (422 at dataset.path); `gradq train` and `gradq gradcheck` read any
    # path locally, as ever.
    csv_root: Path | None = None
    # Live event streams (GET /v1/jobs/{id}/events with Accept: text/event-stream) one
    # tenant may hold open at once; each polls the database. One more is refused with 429.
    max_streams_per_tenant: int = Field(10, ge=1, le=10_000)
    # POST /v1/jobs/{id}/predict: the most rows and body bytes one request may send, and how
    # many jobs' weights the API process keeps loaded (least recently used dropped first)
    predict_max_rows: int = Field(10_000, ge=1)
    predict_max_bytes: int = Field(8 * MiB, ge=1024)
    predict_cache_models: int = Field(32, ge=1, le=10_000)

    # --- webhooks (README.md, Webhooks; api/webhooks.py) -------------------------------------
    # URLs whose host resolves to a loopback, private or link-local address are refused (at
    # registration, 422 naming `url`, and before each attempt) unless this is set
    webhooks_allow_private: bool = False
    # whether this API process runs a deliverer (several may: each delivery is leased)
    webhooks_deliver: bool = True
    # the retry schedule: min(cap, base * 2**(attempt - 1)) s, times a jitter in [0.5, 1);
    # the defaults retry for 1.5 to 3 days (the jitter decides) before a delivery is given up
    webhooks_backoff_seconds: float = Field(5.0, gt=0)
    webhooks_backoff_cap_seconds: float = Field(3600.0, gt=0)
    webhooks_max_attempts: int = Field(80, ge=1, le=10_000)
    webhooks_timeout_seconds: float = Field(10.0, gt=0, le=300)
    webhooks_poll_seconds: float = Field(1.0, gt=0, le=60)
    webhooks_concurrency: int = Field(4, ge=1, le=64)
    webhooks_max_per_tenant: int = Field(20, ge=1, le=1000)

    @model_validator(mode="before")
    @classmethod
    def _in_home(cls, data: object) -> object:
        if not isinstance(data, dict) or not data.get("home"):
            return data
        home = Path(str(data["home"])).expanduser().resolve()
        out = {**data, "home": home}
        out.setdefault("database_url", f"sqlite:///{home / 'gradq.db'}")
        out.setdefault("mlflow_tracking_uri", f"sqlite:///{home / 'mlflow.db'}")
        return out

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

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _host_names(cls, v: object) -> object:
        if isinstance(v, str):
            v = [name for name in v.split(",")]
        if not isinstance(v, list | tuple):
            return v
        names = []
        for raw in v:
            name = str(raw).strip().lower()
            if not name:
                continue
            if name != "*" and not _HOST_NAME.fullmatch(name):
                raise ValueError(
                    f"a host name or address without scheme, port or path (gradq.example.com,"
                    f" 10.0.0.5, ::1), or *, not {raw!r}"
                )
            names.append(name.strip("[]"))
        return tuple(names)

    @field_validator("csv_root", mode="before")
    @classmethod
    def _csv_root_unset(cls, v: object) -> object:
        return None if isinstance(v, str) and not v.strip() else v  # "" is unset, not "."

    @field_validator("csv_root")
    @classmethod
    def _csv_root(cls, v: Path | None) -> Path | None:
        if v is None:
            return None
        if not v.is_dir():
            raise ValueError(f"a folder that exists, not {str(v)!r}")
        return v.resolve()

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

    def new_store(self) -> Path | None:
        """The SQLite file of the database when it does not exist yet (a command that opens
        it creates a new, empty store there), else None."""
        if not self.database_url.startswith("sqlite:///"):
            return None
        path = self.database_url.removeprefix("sqlite:///").split("?")[0]
        if not path or path == ":memory:" or Path(path).exists():
            return None
        return Path(path).resolve()

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

    def host_allowed(self, header: str) -> bool:
        """Whether a request whose ``Host`` is ``header`` is answered (``allowed_hosts``)."""
        if "*" in self.allowed_hosts:
            return True
        name = host_name(header)
        if name in LOOPBACK_NAMES or name in self.allowed_hosts:
            return True
        bind = self.host.strip("[]").lower()
        return name == bind and bind not in _WILDCARD_BINDS

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


LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
_HOST_NAME = re.compile(r"\[?[a-z0-9_.:-]+\]?")
_WILDCARD_BINDS = ("0.0.0.0", "::", "")


def host_name(header: str) -> str:
    """The name of a ``Host`` header, lower case, without its port or IPv6 brackets."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    if header.count(":") == 1:
        return header.split(":", 1)[0]
    return header


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
