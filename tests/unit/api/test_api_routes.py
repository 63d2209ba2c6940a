"""The job routes in-process, on a real SQLite store, with no dispatcher (jobs stay queued)."""

from __future__ import annotations

import gc
from collections.abc import Callable
from pathlib import Path

from fastapi.testclient import TestClient

from api.main import YOUNG_COLLECTION_THRESHOLD, create_app
from api.settings import Settings
from core.spec import parse_spec
from db.keys import KeyStore
from db.session import make_engine
from db.store import JobStore

IRIS = {"dataset": "iris", "model": {"hidden": [8]}, "optimizer": {"epochs": 3}}


def test_submit_then_replay_then_conflict(client: TestClient) -> None:
    first = client.post("/v1/jobs", json=IRIS, headers={"Idempotency-Key": "k1"})
    assert first.status_code == 201
    job = first.json()
    assert (job["status"], job["queue_position"], job["attempt"]) == ("queued", 0, 0)
    assert job["links"]["self"] == f"/v1/jobs/{job['id']}"
    again = client.post("/v1/jobs", json=IRIS, headers={"Idempotency-Key": "k1"})
    assert (again.status_code, again.json()["id"]) == (200, job["id"])
    other = client.post("/v1/jobs", json={"dataset": "wine"}, headers={"Idempotency-Key": "k1"})
    assert other.status_code == 409
    assert other.json()["error"]["code"] == "idempotency_conflict"


def test_a_bad_spec_names_core_field_paths(client: TestClient) -> None:
    r = client.post("/v1/jobs", json={"dataset": "iris", "model": {"hidden": [4, 0]}})
    assert r.status_code == 422
    assert r.json()["error"]["field"] == "model.hidden[1]"
    r = client.post("/v1/jobs", json=["not", "a", "mapping"])
    assert (r.status_code, r.json()["error"]["field"]) == (422, "(root)")
    r = client.post("/v1/jobs", content=b"")
    assert (r.status_code, r.json()["error"]["code"]) == (400, "malformed_json")


def test_limits_from_settings(make_client: Callable[..., TestClient]) -> None:
    client = make_client(max_epochs=5, max_parameters=1000, max_queued_per_tenant=2)
    r = client.post("/v1/jobs", json={"dataset": "iris", "optimizer": {"epochs": 6}})
    assert r.json()["error"]["field"] == "optimizer.epochs"
    r = client.post("/v1/jobs", json={"dataset": "digits", "model": {"hidden": [100]}})
    assert r.json()["error"]["field"] == "model.hidden"
    assert "parameters exceed the limit of 1,000" in r.json()["error"]["message"]
    for _ in range(2):
        assert client.post("/v1/jobs", json=IRIS).status_code == 201
    r = client.post("/v1/jobs", json=IRIS)
    assert (r.status_code, r.json()["error"]["code"]) == (429, "too_many_queued")


def test_list_filters_and_pages_newest_first(client: TestClient) -> None:
    ids = [
        client.post("/v1/jobs", json={**IRIS, "name": f"n{i % 2}"}).json()["id"] for i in range(5)
    ]
    seen, cursor = [], None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = client.get("/v1/jobs", params=params).json()
        seen += [j["id"] for j in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1]
    named = client.get("/v1/jobs", params={"name": "n1"}).json()["items"]
    assert [j["id"] for j in named] == [ids[3], ids[1]]
    assert client.get("/v1/jobs", params={"status": "running"}).json()["items"] == []
    r = client.get("/v1/jobs", params={"cursor": "garbage"})
    assert (r.status_code, r.json()["error"]["field"]) == (422, "cursor")


def test_cancel_is_idempotent_and_a_finished_job_is_409(client: TestClient, tmp_path: Path) -> None:
    job_id = client.post("/v1/jobs", json=IRIS).json()["id"]
    for _ in range(2):
        r = client.post(f"/v1/jobs/{job_id}/cancel")
        assert (r.status_code, r.json()["status"]) == (202, "cancelled")
    events = client.get(f"/v1/jobs/{job_id}/events").json()
    assert [(e["from_status"], e["to_status"]) for e in events] == [
        (None, "queued"),
        ("queued", "cancelled"),
    ]
    store = JobStore(make_engine(f"sqlite:///{tmp_path}/gradq.db"))
    done = store.submit(spec=parse_spec(IRIS)).id
    (claimed,) = store.claim(owner="t", lease_seconds=30, ids=[done])
    store.finish(job_id=done, attempt=claimed.attempt, status="succeeded", result={"metrics": {}})
    r = client.post(f"/v1/jobs/{done}/cancel")
    assert r.status_code == 409
    assert r.json()["error"]["code"] == "job_succeeded"
    assert "is succeeded" in r.json()["error"]["message"]


def test_unknown_ids_are_404(client: TestClient) -> None:
    for path in ("/v1/jobs/nope", "/v1/jobs/nope/events", "/v1/jobs/nope/metrics",
                 "/v1/datasets/nope"):  # fmt: skip
        r = client.get(path)
        assert (r.status_code, r.json()["error"]["code"]) == (404, "not_found"), path
    assert client.post("/v1/jobs/nope/cancel").status_code == 404


def test_metrics_are_empty_before_a_run_exists(client: TestClient) -> None:
    job_id = client.post("/v1/jobs", json=IRIS).json()["id"]
    assert client.get(f"/v1/jobs/{job_id}/metrics").json() == {
        "job_id": job_id,
        "mlflow_run_id": None,
        "metrics": {},
    }


def test_an_upload_id_that_does_not_exist(client: TestClient) -> None:
    spec = {"dataset": {"name": "upload", "id": "missing", "target": "y"}}
    r = client.post("/v1/jobs", json=spec)
    assert (r.status_code, r.json()["error"]["field"]) == (422, "dataset.id")


def test_keys_tenants_and_401(make_client: Callable[..., TestClient], tmp_path: Path) -> None:
    keys = KeyStore(make_engine(f"sqlite:///{tmp_path}/gradq.db"))
    _, key_a = keys.create(tenant="a")
    key_b_id, key_b = keys.create(tenant="b")
    # no key cache: a revocation counts at once (with one: test_api_key_cache.py)
    client = make_client(auth="keys", key_cache_seconds=0)
    a = {"Authorization": f"Bearer {key_a}"}
    b = {"Authorization": f"Bearer {key_b}"}
    r = client.get("/v1/jobs")
    assert (r.status_code, r.json()["error"]["field"]) == (401, "Authorization")
    assert r.headers["www-authenticate"] == "Bearer"
    job_id = client.post("/v1/jobs", json=IRIS, headers=a).json()["id"]
    assert client.get(f"/v1/jobs/{job_id}", headers=a).json()["tenant"] == "a"
    assert client.get(f"/v1/jobs/{job_id}", headers=b).status_code == 404
    assert client.get("/v1/jobs", headers=b).json()["items"] == []
    csv_spec = {"dataset": {"name": "csv", "path": "/etc/passwd", "target": "x"}}
    r = client.post("/v1/jobs", json=csv_spec, headers=a)
    assert (r.status_code, r.json()["error"]["field"]) == (422, "dataset.name")
    keys.revoke(key_id=key_b_id)
    r = client.get("/v1/jobs", headers=b)
    assert (r.status_code, r.json()["error"]["message"]) == (401, "unknown or revoked API key")
    assert client.get("/healthz").status_code == 200


def test_a_database_that_is_away_is_a_503(make_client: Callable[..., TestClient]) -> None:
    client = make_client(database_url="postgresql+psycopg://nobody@127.0.0.1:9/none")
    r = client.get("/v1/jobs")
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "database_unavailable"
    assert "Traceback" not in r.text


def test_startup_freezes_what_it_loaded(make_client: Callable[..., TestClient]) -> None:
    """Objects alive when the app has started are moved out of the collector's reach, so
    that full collections do not walk the imports' half a million objects during requests
    (bench/RESULTS.md, API: they were the whole p99 tail)."""
    kept = [[n] for n in range(2_000)]  # alive across startup, tracked by the collector
    before = gc.get_freeze_count()
    client = make_client()
    assert gc.get_freeze_count() >= before + len(kept)
    assert client.get("/healthz").json()["status"] == "ok"


def test_the_running_app_collects_the_young_generation_less_often(
    make_settings: Callable[..., Settings],
) -> None:
    """While the app runs, the young generation is collected only past
    ``YOUNG_COLLECTION_THRESHOLD`` net new objects; at shutdown the thresholds it found
    are back."""
    before = gc.get_threshold()
    assert before[0] < YOUNG_COLLECTION_THRESHOLD
    with TestClient(create_app(make_settings())) as client:
        assert gc.get_threshold() == (YOUNG_COLLECTION_THRESHOLD, *before[1:])
        assert client.post("/v1/jobs", json=IRIS).status_code == 201
    assert gc.get_threshold() == before
