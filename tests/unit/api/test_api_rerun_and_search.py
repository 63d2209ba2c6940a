"""Reruns (a merge patch of a job's spec, the new job linked to its origin), the checks of a
warm start's origin (``init_from``), tags, and the job list's query parameters."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from core.spec import parse_spec
from db.keys import KeyStore
from db.session import make_engine
from db.store import JobStore
from tests.unit.api.conftest import IRIS


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def finished(tmp_path: Path, spec: dict[str, Any], tenant: str, accuracy: float) -> str:
    """A job of ``tenant`` that ran and succeeded with this test accuracy; its id."""
    engine = make_engine(f"sqlite:///{tmp_path}/gradq.db")
    try:
        store = JobStore(engine)
        job_id = store.submit(spec=parse_spec(spec), tenant=tenant).id
        (claimed,) = store.claim(owner="w", lease_seconds=300, ids=[job_id])
        store.set_run(job_id=job_id, attempt=claimed.attempt, mlflow_run_id="r" + job_id[:8])
        result = {"metrics": {"test_accuracy": accuracy}}
        store.finish(job_id=job_id, attempt=claimed.attempt, status="succeeded", result=result)
        return job_id
    finally:
        engine.dispose()


def test_a_rerun_queues_the_patched_spec_linked_to_its_origin(client: TestClient) -> None:
    origin = client.post("/v1/jobs", json={**IRIS, "tags": {"team": "vision"}}).json()
    patch = {"optimizer": {"epochs": 7}, "tags": {"purpose": "longer"}, "model": None}
    r = client.post(f"/v1/jobs/{origin['id']}/rerun", json=patch)
    assert r.status_code == 201, r.text
    new = r.json()
    assert new["id"] != origin["id"] and new["origin_job_id"] == origin["id"]
    assert new["spec"]["optimizer"]["epochs"] == 7
    assert new["spec"]["optimizer"]["lr"] == origin["spec"]["optimizer"]["lr"]
    assert new["tags"] == {"team": "vision", "purpose": "longer"}
    assert new["spec"]["model"]["hidden"] == [64]  # null: the default again
    shown = client.get(f"/v1/jobs/{new['id']}").json()
    assert (shown["origin_job_id"], shown["spec"]) == (origin["id"], new["spec"])
    assert client.get(f"/v1/jobs/{origin['id']}").json()["origin_job_id"] is None
    plain = client.post(f"/v1/jobs/{origin['id']}/rerun").json()  # no body: the same spec
    assert plain["spec"] == origin["spec"] and plain["origin_job_id"] == origin["id"]


def test_a_sweeps_trial_reruns_as_a_job_of_its_own(client: TestClient, tmp_path: Path) -> None:
    trial = {"sweep_id": "s1", "number": 0, "metric": "val_loss", "mode": "min"}
    engine = make_engine(f"sqlite:///{tmp_path}/gradq.db")
    try:
        origin = JobStore(engine).submit(spec=parse_spec({**IRIS, "trial": trial})).id
    finally:
        engine.dispose()
    r = client.post(f"/v1/jobs/{origin}/rerun", json={"seed": 5})
    assert r.status_code == 201, r.text
    assert r.json()["spec"]["trial"] is None and r.json()["spec"]["seed"] == 5


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"optimizer": {"epochs": 0}}, "optimizer.epochs"),
        ({"model": {"hidden": [4, 0]}}, "model.hidden[1]"),
        ({"tags": {"bad key": "x"}}, "tags"),
        ({"trial": {"sweep_id": "s", "number": 0, "metric": "m", "mode": "max"}}, "trial"),
        ([1, 2], "(root)"),
    ],
)
def test_a_patched_spec_is_validated_as_a_submit(
    client: TestClient, patch: Any, field: str
) -> None:
    origin = client.post("/v1/jobs", json=IRIS).json()
    r = client.post(f"/v1/jobs/{origin['id']}/rerun", json=patch)
    assert (r.status_code, r.json()["error"]["field"]) == (422, field), r.text
    page = client.get("/v1/jobs").json()["items"]
    assert [j["id"] for j in page] == [origin["id"]]  # nothing queued


def test_another_tenants_job_is_neither_rerun_nor_a_warm_starts_origin(
    make_client: Callable[..., TestClient], tmp_path: Path
) -> None:
    keys = KeyStore(make_engine(f"sqlite:///{tmp_path}/gradq.db"))
    _, a = keys.create(tenant="a")
    _, b = keys.create(tenant="b")
    client = make_client(auth="keys")
    theirs = finished(tmp_path, IRIS, "b", 0.9)
    r = client.post(f"/v1/jobs/{theirs}/rerun", headers=bearer(a))
    assert r.status_code == 404, r.text
    missing = client.post("/v1/jobs/nope/rerun", headers=bearer(a))
    assert (
        missing.status_code == 404 and missing.json()["error"]["code"] == r.json()["error"]["code"]
    )
    warm = {**IRIS, "init_from": {"job": theirs, "checkpoint": "best"}}
    refused = client.post("/v1/jobs", json=warm, headers=bearer(a))
    assert refused.status_code == 422
    assert refused.json()["error"] == {
        "code": "invalid_spec",
        "message": f"no job {theirs!r} (see GET /v1/jobs)",
        "field": "init_from.job",
    }
    ok = client.post("/v1/jobs", json=warm, headers=bearer(b))
    assert ok.status_code == 201, ok.text
    assert ok.json()["spec"]["init_from"] == {"job": theirs, "checkpoint": "best"}


def test_a_warm_start_needs_a_succeeded_origin_of_the_same_architecture(
    client: TestClient, tmp_path: Path
) -> None:
    queued = client.post("/v1/jobs", json=IRIS).json()["id"]
    r = client.post("/v1/jobs", json={**IRIS, "init_from": {"job": queued}})
    assert r.json()["error"]["field"] == "init_from.job"
    assert "is queued: only a succeeded job's weights" in r.json()["error"]["message"]
    done = finished(tmp_path, IRIS, "default", 0.9)
    wider = {**IRIS, "model": {"hidden": [16]}, "init_from": {"job": done}}
    r = client.post("/v1/jobs", json=wider)
    assert r.json()["error"]["field"] == "init_from.job"
    assert "its hidden differ" in r.json()["error"]["message"]
    squared = {**IRIS, "loss": "squared", "init_from": {"job": done}}
    assert "its loss differ" in client.post("/v1/jobs", json=squared).json()["error"]["message"]
    wine = {**IRIS, "dataset": "wine", "init_from": {"job": done}}
    assert "its dataset differ" in client.post("/v1/jobs", json=wine).json()["error"]["message"]
    longer = {**IRIS, "optimizer": {"epochs": 9, "lr": 0.5}, "init_from": {"job": done}}
    assert client.post("/v1/jobs", json=longer).status_code == 201


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("tag=team", "tag"),
        ("tag=team:vi sion", "tag"),
        ("metric=test_accuracy~0.9", "metric"),
        ("metric=test_accuracy>=high", "metric"),
        ("metric=>=0.9", "metric"),
        ("sort=-test-accuracy", "sort"),
        ("sort=created_at", "sort"),
        ("created_after=yesterday", "created_after"),
        ("created_before=0001-01-01T00:00:00%2B05:00", "created_before"),
        ("cursor=bm90IGEgY3Vyc29y", "cursor"),
        ("&".join(f"tag=k{i}:v" for i in range(21)), "tag"),  # more values than a job's tags
        ("&".join(f"metric=m{i}>0" for i in range(21)), "metric"),
    ],
)
def test_bad_filter_syntax_is_a_422_naming_the_parameter(
    client: TestClient, query: str, field: str
) -> None:
    r = client.get(f"/v1/jobs?{query}")
    assert (r.status_code, r.json()["error"]["field"]) == (422, field), r.text


def test_the_list_filters_by_tag_and_metric_and_sorts_by_it(
    client: TestClient, tmp_path: Path
) -> None:
    vision = {**IRIS, "tags": {"team": "vision"}}
    low = finished(tmp_path, vision, "default", 0.7)
    high = finished(tmp_path, vision, "default", 0.95)
    mid = finished(tmp_path, vision, "default", 0.92)
    finished(tmp_path, {**IRIS, "tags": {"team": "nlp"}}, "default", 0.99)
    q = "tag=team:vision&metric=test_accuracy>=0.9&sort=-test_accuracy&limit=1"
    first = client.get(f"/v1/jobs?{q}").json()
    second = client.get(f"/v1/jobs?{q}&cursor={first['next_cursor']}").json()
    assert [j["id"] for j in first["items"] + second["items"]] == [high, mid]
    assert second["next_cursor"] is None and first["items"][0]["tags"] == {"team": "vision"}
    ascending = client.get("/v1/jobs?tag=team:vision&sort=test_accuracy").json()["items"]
    assert [j["id"] for j in ascending] == [low, mid, high]


def test_sweeps_list_filters_by_tag(client: TestClient) -> None:
    def sweep(tags: dict[str, str]) -> str:
        spec = {"base": IRIS, "space": {"optimizer.lr": {"choice": [0.01, 0.1]}}, "tags": tags}
        r = client.post("/v1/sweeps", json=spec)
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    tagged = sweep({"team": "vision", "purpose": "baseline"})
    sweep({"team": "vision"})
    r = client.get("/v1/sweeps?tag=team:vision&tag=purpose:baseline")
    assert [s["id"] for s in r.json()["items"]] == [tagged]
    bad = client.get("/v1/sweeps?tag=novalue")
    assert (bad.status_code, bad.json()["error"]["field"]) == (422, "tag")
