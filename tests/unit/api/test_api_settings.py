"""Settings: defaults, the GRADQ_ environment, validators, the bind rule."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from api.settings import Settings, is_loopback
from core import defaults


def test_defaults_are_the_embedded_service(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DATABASE_URL", "AUTH", "HOST", "PORT", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(f"GRADQ_{name}", raising=False)
    s = Settings()
    assert s.database_url == "sqlite:///./gradq-data/gradq.db"
    assert s.mlflow_tracking_uri == "sqlite:///./gradq-data/mlflow.db"
    assert s.artifact_root == "gradq-data/mlartifacts"
    assert (s.auth, s.host, s.port, s.ray_address) == ("none", "127.0.0.1", 8000, None)


def test_defaults_are_the_shared_ones_of_core_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each default other rooms also use has one definition (core.defaults): the settings,
    `gradq db`, the artifact folder of `gradq serve` and the client commands' URL agree
    with it."""
    from api.cli.http import ApiClient
    from db.cli import resolve_url

    for name in ("DATABASE_URL", "MLFLOW_TRACKING_URI", "MLFLOW_ARTIFACT_ROOT",
                 "MLFLOW_UI_URL", "LEASE_SECONDS", "HEARTBEAT_SECONDS", "HOST", "PORT",
                 "URL"):  # fmt: skip
        monkeypatch.delenv(f"GRADQ_{name}", raising=False)
    s = Settings()
    assert (s.host, s.port) == (defaults.API_HOST, defaults.API_PORT)
    with ApiClient() as client:  # where `gradq submit` and the others look for the API
        assert client.url == f"http://{s.host}:{s.port}" == defaults.API_URL
    assert (s.database_url, s.mlflow_tracking_uri, s.mlflow_ui_url) == (
        defaults.DATABASE_URL, defaults.MLFLOW_TRACKING_URI, defaults.MLFLOW_UI_URL)  # fmt: skip
    assert (s.lease_seconds, s.heartbeat_seconds) == (
        defaults.LEASE_SECONDS, defaults.HEARTBEAT_SECONDS)  # fmt: skip
    assert s.artifact_root is not None
    assert Path(s.artifact_root).resolve() == Path(defaults.MLFLOW_ARTIFACT_ROOT).resolve()
    assert resolve_url(None) == defaults.DATABASE_URL


def test_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRADQ_AUTH", "keys")
    monkeypatch.setenv("GRADQ_MAX_EPOCHS", "77")
    monkeypatch.setenv("GRADQ_RAY_ADDRESS", "")
    monkeypatch.setenv("GRADQ_RAY_NUM_CPUS", "2")
    s = Settings()
    assert (s.auth, s.max_epochs, s.ray_address, s.ray_num_cpus) == ("keys", 77, None, 2)
    assert s.limits.max_epochs == 77


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("auth", "maybe", "none"),
        ("port", -1, "greater than or equal to 0"),
        ("database_url", "mysql://x/y", "sqlite or postgresql"),
        ("database_url", "not a url", "not a database URL"),
        ("mlflow_tracking_uri", "ftp://x", "tracking URI"),
        ("mlflow_ui_url", "localhost:5000", "http(s) URL"),
        ("unsatisfiable", "retry", "fail"),
        ("max_hidden_layers", 65, "less than or equal to 64"),
    ],
)
def test_invalid_values_name_the_field(field: str, value: object, words: str) -> None:
    with pytest.raises(ValidationError) as info:
        Settings(**{field: value})  # type: ignore[arg-type]
    errors = info.value.errors()
    assert errors[0]["loc"] == (field,)
    assert words in errors[0]["msg"]


def test_heartbeat_must_be_shorter_than_the_lease() -> None:
    with pytest.raises(ValidationError, match=r"heartbeat_seconds .* shorter than lease_seconds"):
        Settings(lease_seconds=5, heartbeat_seconds=5)


def test_a_public_address_without_keys_is_refused_unless_insecure() -> None:
    public = Settings(host="0.0.0.0")
    refusal = public.bind_refusal(insecure=False)
    assert refusal is not None and "GRADQ_AUTH=keys" in refusal
    assert public.bind_refusal(insecure=True) is None
    assert Settings(host="0.0.0.0", auth="keys").bind_refusal(insecure=False) is None
    assert Settings(host="127.0.0.1").bind_refusal(insecure=False) is None


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("localhost", True), ("::1", True), ("0.0.0.0", False), ("h", False)],
)
def test_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_artifact_root_follows_the_tracking_store() -> None:
    s = Settings(mlflow_tracking_uri="sqlite:////data/t/mlflow.db")
    assert s.artifact_root == "/data/t/mlartifacts"
    assert Settings(mlflow_tracking_uri="http://mlflow:5000").artifact_root is None
    assert Settings(mlflow_artifact_root="s3://b/a").artifact_root == "s3://b/a"


def test_home_holds_the_state_unless_a_url_is_set(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """GRADQ_HOME (`gradq --home DIR`) puts the database, MLflow's store and its artifacts
    in DIR; a database URL or tracking URI set on its own wins; `gradq db` agrees."""
    from db.cli import resolve_url

    for name in ("DATABASE_URL", "MLFLOW_TRACKING_URI", "MLFLOW_ARTIFACT_ROOT"):
        monkeypatch.delenv(f"GRADQ_{name}", raising=False)
    monkeypatch.setenv("GRADQ_HOME", str(tmp_path / "h"))
    s = Settings()
    home = (tmp_path / "h").resolve()
    assert s.database_url == f"sqlite:///{home / 'gradq.db'}" == resolve_url(None)
    assert s.mlflow_tracking_uri == f"sqlite:///{home / 'mlflow.db'}"
    assert s.artifact_root == str(home / "mlartifacts")
    assert s.new_store() == home / "gradq.db"
    (home).mkdir()
    (home / "gradq.db").write_bytes(b"")
    assert Settings().new_store() is None
    monkeypatch.setenv("GRADQ_DATABASE_URL", f"sqlite:///{tmp_path / 'elsewhere.db'}")
    s = Settings()
    assert s.database_url == f"sqlite:///{tmp_path / 'elsewhere.db'}" == resolve_url(None)
    assert s.mlflow_tracking_uri == f"sqlite:///{home / 'mlflow.db'}"
    assert Settings(database_url="postgresql+psycopg://u@h/db").new_store() is None
