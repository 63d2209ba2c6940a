"""API keys and tenants (GRADQ_AUTH=keys) against ``gradq api``; keys made with
``gradq keys create`` / ``revoke``; a restart finds every job as it was; a public address
without keys is refused."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from gradq_service import GRADQ, Service, running, service_env, stop

pytestmark = pytest.mark.slow

SPEC = {"name": "mine", "dataset": "iris", "optimizer": {"epochs": 2}}


@pytest.fixture(scope="module")
def keys(folder: Path) -> dict[str, Any]:
    env = service_env(folder, GRADQ_AUTH="keys")

    def create(tenant: str) -> tuple[str, str]:
        done = subprocess.run(
            [GRADQ, "keys", "create", "--tenant", tenant], env=env, cwd=folder,
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        key_id = done.stderr.split("key ", 1)[1].split()[0]
        return key_id, done.stdout.strip()

    (_, a), (_, b), (revoked_id, revoked) = create("a"), create("b"), create("c")
    return {"env": env, "a": a, "b": b, "revoked_id": revoked_id, "revoked": revoked}


@pytest.fixture(scope="module")
def api(folder: Path, keys: dict[str, Any]) -> Iterator[Service]:
    auth = {"Authorization": f"Bearer {keys['a']}"}
    with running(["api"], folder, keys["env"], headers=auth) as service:
        yield service


def test_keys_are_printed_once_and_stored_hashed(api: Service, keys: dict[str, Any]) -> None:
    assert keys["a"].startswith("gq_") and keys["a"] != keys["b"]
    listed = api.gradq("keys", "list", columns=80)
    assert listed.returncode == 0 and keys["a"][:11] in listed.stdout
    assert keys["revoked_id"] in listed.stdout  # whole: `gradq keys revoke` takes it
    assert keys["a"] not in listed.stdout
    assert keys["a"].encode() not in (api.folder / "gradq.db").read_bytes()


def test_another_tenant_never_sees_a_job_or_data_set(api: Service, keys: dict[str, Any]) -> None:
    with api.client(keys["a"]) as a, api.client(keys["b"]) as b:
        job = a.post("/v1/jobs", json=SPEC).json()
        assert job["tenant"] == "a"
        csv = b"x,y\n" + b"".join(f"{i},{i % 2}\n".encode() for i in range(20))
        ds = a.post("/v1/datasets", files={"file": ("d.csv", csv)}, data={"target": "y"}).json()
        for method, path in [("GET", f"/v1/jobs/{job['id']}"), ("GET", f"/v1/jobs/{job['id']}/events"),
                             ("GET", f"/v1/jobs/{job['id']}/metrics"),
                             ("POST", f"/v1/jobs/{job['id']}/cancel"), ("GET", f"/v1/datasets/{ds['id']}")]:  # fmt: skip
            r = b.request(method, path)
            assert (r.status_code, r.json()["error"]["code"]) == (404, "not_found"), path
        assert b.get("/v1/jobs").json()["items"] == []
        assert b.get("/v1/datasets").json()["items"] == []
        spec = {"dataset": {"name": "upload", "id": ds["id"], "target": "y"}}
        r = b.post("/v1/jobs", json=spec)
        assert (r.status_code, r.json()["error"]["field"]) == (422, "dataset.id")
        assert [j["id"] for j in a.get("/v1/jobs").json()["items"]] == [job["id"]]
        assert a.get(f"/v1/jobs/{job['id']}").json()["status"] == "queued"


def test_every_endpoint_but_healthz_needs_a_valid_key(api: Service, keys: dict[str, Any]) -> None:
    revoke = api.gradq("keys", "revoke", keys["revoked_id"])
    assert revoke.returncode == 0, revoke.stderr
    paths = httpx.get(f"{api.url}/openapi.json").json()["paths"]
    operations = [
        (method.upper(), path.replace("{job_id}", "x").replace("{dataset_id}", "x"))
        for path, item in paths.items()
        for method in item
    ]
    assert len(operations) >= 12
    for headers in ({}, {"Authorization": f"Bearer {keys['revoked']}"},
                    {"Authorization": "Bearer gq_made_up"}, {"Authorization": "Basic eDp5"}):  # fmt: skip
        for method, path in operations:
            r = httpx.request(method, api.url + path, headers=headers, json={"dataset": "iris"})
            if path == "/healthz":
                assert r.status_code == 200
                continue
            assert r.status_code == 401, (method, path, headers, r.text)
            assert r.json()["error"]["field"] == "Authorization"
            assert r.headers["www-authenticate"] == "Bearer"


def test_the_cli_uses_the_key(api: Service, keys: dict[str, Any]) -> None:
    refused = api.gradq("jobs")
    assert refused.returncode == 1
    # in the command's terms, not HTTP's
    assert "pass --key or set GRADQ_API_KEY" in refused.stderr, refused.stderr
    assert "Bearer" not in refused.stderr and "Traceback" not in refused.stderr
    allowed = api.gradq("jobs", "--key", keys["a"], columns=80)
    assert allowed.returncode == 0 and "mine" in allowed.stdout
    with api.client(keys["a"]) as http:
        mine = [j["id"] for j in http.get("/v1/jobs").json()["items"]]
    assert mine and all(job_id in allowed.stdout for job_id in mine), allowed.stdout  # not cut
    wide = api.gradq("jobs", "--key", keys["a"], columns=140)
    assert "created" in wide.stdout and "created" not in allowed.stdout


def test_a_restart_finds_every_job_as_it_was(api: Service, keys: dict[str, Any]) -> None:
    with api.client() as http:
        before = http.get("/v1/jobs").json()["items"]
    assert stop(api.process) == 0  # a clean stop on SIGTERM
    restarted = running(["api"], api.folder, keys["env"], headers=api.headers)
    with restarted as again, again.client() as http:
        after = http.get("/v1/jobs").json()["items"]
    assert before and after == before


def test_a_public_address_without_keys_is_refused(folder: Path) -> None:
    env = service_env(folder)
    done = subprocess.run(
        [GRADQ, "serve", "--host", "0.0.0.0", "--no-mlflow-ui"], env=env, cwd=folder,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert "refusing to bind 0.0.0.0 without API keys" in done.stderr
