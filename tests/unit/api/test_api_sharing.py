"""Sharing the service between tenants (issue 16, finding 4 and 11): per-tenant priority caps
set by settings or API keys, the floor on `resources.cpus`, `/metrics` for operator keys
only, and the dispatcher ``gradq serve`` builds from the settings."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from typer.testing import CliRunner

from api.cli.keys import keys_app
from api.cli.serve import _dispatcher
from api.settings import Settings
from db.keys import KeyStore
from db.session import make_engine
from tests.unit.api.conftest import IRIS


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_a_priority_above_the_default_cap_is_refused(client_capped: TestClient) -> None:
    r = client_capped.post("/v1/jobs", json={**IRIS, "priority": 1000})
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["field"] == "priority"
    assert error["message"] == "at most 10 for tenant default (its cap), not 1000"
    r = client_capped.post("/v1/jobs", json={**IRIS, "priority": 10})
    assert (r.status_code, r.json()["priority"]) == (201, 10)


def test_a_keys_priority_cap_applies_to_its_tenant_only(
    make_client: Callable[..., TestClient], tmp_path: Path
) -> None:
    keys = KeyStore(make_engine(f"sqlite:///{tmp_path}/gradq.db"))
    _, capped = keys.create(tenant="a", max_priority=5)
    _, free = keys.create(tenant="b")
    client = make_client(auth="keys")
    r = client.post("/v1/jobs", json={**IRIS, "priority": 6}, headers=bearer(capped))
    assert (r.status_code, r.json()["error"]["field"]) == (422, "priority")
    assert "at most 5 for tenant a" in r.json()["error"]["message"]
    r = client.post("/v1/jobs", json={**IRIS, "priority": 1000}, headers=bearer(free))
    assert (r.status_code, r.json()["priority"]) == (201, 1000)


def test_a_share_of_a_cpu_below_the_floor_is_refused(client: TestClient) -> None:
    r = client.post("/v1/jobs", json={**IRIS, "resources": {"cpus": 0.001}})
    assert r.status_code == 422
    assert (r.json()["error"]["field"], r.json()["error"]["message"]) == (
        "resources.cpus", "at least 0.25 CPUs a job")  # fmt: skip


def test_metrics_need_an_operators_key(
    make_client: Callable[..., TestClient], tmp_path: Path
) -> None:
    keys = KeyStore(make_engine(f"sqlite:///{tmp_path}/gradq.db"))
    _, tenant = keys.create(tenant="a")
    _, operator = keys.create(tenant="ops", role="operator")
    client = make_client(auth="keys")
    r = client.get("/metrics", headers=bearer(tenant))
    assert (r.status_code, r.json()["error"]["code"]) == (403, "forbidden")
    assert "operator" in r.json()["error"]["message"]
    assert client.get("/metrics").status_code == 401
    r = client.get("/metrics", headers=bearer(operator))
    assert r.status_code == 200 and "gradq_queue_depth 0" in r.text


def test_without_keys_metrics_stay_open(client: TestClient) -> None:
    r = client.get("/metrics")
    assert r.status_code == 200 and "gradq_jobs{" in r.text


def test_serve_builds_the_dispatcher_with_the_sharing_settings(
    make_settings: Callable[..., object],
) -> None:
    settings = make_settings(
        backfill_seconds=7,
        tenant_max_running=3,
        worker_db_connections=4,
        pack_size=5,
        pack_size_gpu=6,
    )
    d = _dispatcher(settings)  # type: ignore[arg-type]
    assert (d.config.backfill_seconds, d.config.max_running_per_tenant) == (7, 3)
    assert (d.config.pack_size, d.config.pack_size_gpu) == (5, 6)
    assert d.config.worker.db_connections == 4
    assert d.keys is not None  # the stored keys' caps apply, with GRADQ_AUTH=keys or not


def test_keys_create_sets_role_and_caps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path}/keys.db"
    monkeypatch.setenv("GRADQ_DATABASE_URL", url)
    runner = CliRunner()
    made = runner.invoke(keys_app, ["create", "--tenant", "ops", "--role", "operator",
                                    "--max-running", "2", "--max-priority", "7"])  # fmt: skip
    assert made.exit_code == 0, made.output
    [view] = KeyStore(make_engine(url)).list(tenant="ops")
    assert (view.role, view.max_running, view.max_priority) == ("operator", 2, 7)
    listed = runner.invoke(keys_app, ["list"], env={"COLUMNS": "160"})  # wide: role, caps
    assert "operator" in listed.output and "running 2, priority 7" in listed.output
    for option, value in (("--role", "root"), ("--max-running", "0"), ("--max-priority", "2000")):
        bad = runner.invoke(keys_app, ["create", "--tenant", "x", option, value])
        assert bad.exit_code == 2 and option in bad.output, (option, bad.output)
    assert [k.tenant for k in KeyStore(make_engine(url)).list()] == ["ops"]


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("backfill_seconds", -1, "greater than or equal to 0"),
        ("tenant_max_running", 0, "greater than or equal to 1"),
        ("tenant_max_priority", 1001, "less than or equal to 1000"),
        ("key_cache_seconds", 301, "less than or equal to 300"),
        ("worker_db_connections", 1, "greater than or equal to 2"),
    ],
)
def test_bad_sharing_settings_name_the_field(field: str, value: object, words: str) -> None:
    with pytest.raises(ValidationError) as info:
        Settings(**{field: value})  # type: ignore[arg-type]
    [error] = info.value.errors()
    assert error["loc"] == (field,) and words in error["msg"]


def test_the_sharing_settings_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("BACKFILL_SECONDS", "TENANT_MAX_RUNNING", "TENANT_MAX_PRIORITY",
                 "KEY_CACHE_SECONDS", "WORKER_DB_CONNECTIONS"):  # fmt: skip
        monkeypatch.delenv(f"GRADQ_{name}", raising=False)
    s = Settings()
    assert (s.backfill_seconds, s.tenant_max_running, s.tenant_max_priority) == (30, None, None)
    assert (s.key_cache_seconds, s.worker_db_connections) == (5, 2)
