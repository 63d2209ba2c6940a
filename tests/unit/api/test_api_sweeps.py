"""``/v1/sweeps`` on a migrated SQLite file, no dispatcher: what a user submits, reads and
cancels, each bad space answered 422 with its path, and another tenant's sweep a 404."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from core.sweep import parse_sweep, trial_spec
from db.keys import KeyStore
from db.session import make_engine
from db.store import JobStore
from db.submits import SubmitRequest
from db.sweeps import SweepStore, trial_job_id

SWEEP: dict[str, Any] = {
    "name": "digits-lr-wd",
    "base": {"dataset": "digits", "model": {"hidden": [64, 64]}, "optimizer": {"epochs": 30}},
    "space": {
        "optimizer.lr": {"loguniform": [0.001, 0.3]},
        "regularization.weight_decay": {"loguniform": [1.0e-6, 1.0e-2]},
        "regularization.dropout": {"uniform": [0.0, 0.5]},
        "model.hidden": {"choice": [[64], [64, 64], [128, 128]]},
        "seed": {"choice": [0, 1]},
    },
    "search": {"method": "tpe", "trials": 64, "parallel": 8, "seed": 0, "max_failed": 8},
    "objective": {"metric": "val_accuracy", "mode": "max"},
    "early_stopping": {"kind": "asha", "min_epochs": 2, "reduction_factor": 3},
}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_a_sweep_is_queued_and_read_back(client: TestClient) -> None:
    r = client.post("/v1/sweeps", json=SWEEP)
    assert r.status_code == 201, r.text
    body = r.json()
    assert (body["status"], body["trials"], body["total_trials"], body["best"]) == (
        "queued", 0, 64, None)  # fmt: skip
    assert body["spec"]["space"] == SWEEP["space"]
    got = client.get(f"/v1/sweeps/{body['id']}").json()
    assert got["id"] == body["id"] and got["counts"]["queued"] == 0
    listed = client.get("/v1/sweeps").json()
    assert [s["id"] for s in listed["items"]] == [body["id"]]
    assert client.get(f"/v1/sweeps/{body['id']}/trials").json() == {
        "items": [], "next_cursor": None}  # fmt: skip


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"space": {"optimizer.lrr": {"uniform": [0.1, 0.2]}}}, 'space["optimizer.lrr"]',
         "not a field"),
        ({"space": {"optimizer.lr": {"uniform": [0.1, 2e9]}}}, 'space["optimizer.lr"]',
         "less than or equal"),
        ({"space": {"optimizer.momentum": {"choice": ["fast"]}}}, 'space["optimizer.momentum"]',
         "'fast'"),
        ({"space": {"optimizer.lr": {"grid": [0.1]}}}, 'space["optimizer.lr"]', "method grid"),
        ({"search": {"method": "grid", "trials": 2},
          "space": {"optimizer.lr": {"grid": [0.1, 0.2, 0.3]}}}, "search.trials", "3 points"),
        ({"search": {"method": "random", "trials": 20_000}}, "search.trials", "at most 10,000"),
        ({"objective": {"metric": "val_r2"}}, "objective.metric", "not a per-epoch metric"),
        ({"base": {"dataset": "digits", "optimizer": {"epochs": 0}}}, "base.optimizer.epochs",
         "greater than or equal"),
        ({"early_stopping": {"kind": "asha", "min_epochs": 40}}, "early_stopping.min_epochs",
         "before the last epoch"),
        ({"space": {}}, "space", "at least 1"),
    ],
)  # fmt: skip
def test_each_bad_sweep_is_a_422_naming_its_field(
    client: TestClient, change: dict[str, Any], field: str, words: str
) -> None:
    r = client.post("/v1/sweeps", json={**SWEEP, **change})
    assert r.status_code == 422, r.text
    problems = {p["field"]: p["message"] for p in r.json().get("errors") or [r.json()["error"]]}
    assert field in problems, problems
    assert words in problems[field], problems[field]
    assert client.get("/v1/sweeps").json()["items"] == []  # nothing stored


def test_the_trial_limit_is_the_services(make_client: Callable[..., TestClient]) -> None:
    client = make_client(max_sweep_trials=10)
    r = client.post("/v1/sweeps", json={**SWEEP, "search": {"method": "random", "trials": 11}})
    assert (r.status_code, r.json()["error"]["field"]) == (422, "search.trials")


def test_a_job_spec_cannot_claim_to_be_a_trial(client: TestClient) -> None:
    trial = {"sweep_id": "x", "number": 0, "metric": "val_loss", "mode": "min"}
    r = client.post("/v1/jobs", json={"dataset": "iris", "trial": trial})
    assert (r.status_code, r.json()["error"]["field"]) == (422, "trial")


def test_another_tenant_sees_nothing_of_a_sweep(
    make_client: Callable[..., TestClient], tmp_path: Path
) -> None:
    keys = KeyStore(make_engine(f"sqlite:///{tmp_path}/gradq.db"))
    _, mine = keys.create(tenant="a")
    _, theirs = keys.create(tenant="b", max_priority=5)
    client = make_client(auth="keys")
    sweep_id = client.post("/v1/sweeps", json=SWEEP, headers=bearer(mine)).json()["id"]
    for path in (f"/v1/sweeps/{sweep_id}", f"/v1/sweeps/{sweep_id}/trials"):
        assert client.get(path, headers=bearer(theirs)).status_code == 404
        assert client.get(path, headers=bearer(mine)).status_code == 200
    assert client.post(f"/v1/sweeps/{sweep_id}/cancel", headers=bearer(theirs)).status_code == 404
    assert client.get("/v1/sweeps", headers=bearer(theirs)).json()["items"] == []
    assert client.get("/v1/sweeps", headers=bearer(mine)).json()["items"][0]["id"] == sweep_id
    # the tenant's priority cap holds for a sweep's trials
    r = client.post(
        "/v1/sweeps", json={**SWEEP, "base": {**SWEEP["base"], "priority": 9}},
        headers=bearer(theirs),
    )  # fmt: skip
    assert (r.status_code, r.json()["error"]["field"]) == (422, "base.priority")


def test_cancel_of_a_sweep_no_controller_took_ends_it_at_once(client: TestClient) -> None:
    sweep_id = client.post("/v1/sweeps", json=SWEEP).json()["id"]
    r = client.post(f"/v1/sweeps/{sweep_id}/cancel")
    assert (r.status_code, r.json()["status"], r.json()["cancel_requested"]) == (
        202, "cancelled", True)  # fmt: skip
    assert client.post(f"/v1/sweeps/{sweep_id}/cancel").json()["status"] == "cancelled"


def test_trials_sort_by_objective_and_page(client: TestClient, tmp_path: Path) -> None:
    """Trials as a controller records them: the best first by the sweep's mode, those
    without an objective last, a page at a time; a running sweep's queued trials cancelled
    with it."""
    sweep_id = client.post("/v1/sweeps", json=SWEEP).json()["id"]
    engine = make_engine(f"sqlite:///{tmp_path}/gradq.db")
    sweeps, jobs = SweepStore(engine), JobStore(engine)
    assert sweeps.claim(owner="c", lease_seconds=60) == [sweep_id]
    sweeps.start(sweep_id=sweep_id, owner="c", mlflow_run_id=None, mlflow_experiment_id=None)
    sweep = parse_sweep(SWEEP)
    objectives = [0.5, 0.9, None, 0.7]
    for n, value in enumerate(objectives):
        params = {"optimizer.lr": 0.01 * (n + 1)}
        spec = trial_spec(sweep, sweep_id=sweep_id, number=n, params=params, parent_run_id=None)
        job_id = trial_job_id(sweep_id, n)
        jobs.submit_many([SubmitRequest(spec, job_id=job_id, may_exist=True)])
        sweeps.add_trials(sweep_id=sweep_id, owner="c", trials=[(n, job_id, params)])
        if value is not None:
            sweeps.tell(sweep_id=sweep_id, owner="c", number=n, objective=value)
    first = client.get(f"/v1/sweeps/{sweep_id}/trials?sort=objective&limit=2").json()
    assert [t["trial"] for t in first["items"]] == [1, 3]
    assert first["items"][0]["id"] == trial_job_id(sweep_id, 1)
    rest = client.get(
        f"/v1/sweeps/{sweep_id}/trials?sort=objective&limit=2&cursor={first['next_cursor']}"
    ).json()
    assert [t["trial"] for t in rest["items"]] == [0, 2] and rest["next_cursor"] is None
    assert [t["objective"] for t in rest["items"]] == [0.5, None]
    r = client.post(f"/v1/sweeps/{sweep_id}/cancel").json()
    assert r["status"] == "running" and r["cancel_requested"]  # its controller ends it
    assert r["counts"]["cancelled"] == 4  # every queued trial at once


@pytest.mark.parametrize("cursor", ["zz", "WyJ4Il0", "WzEsMl0", "Wy01XQ"])
def test_a_cursor_not_given_by_the_service_is_refused_not_a_500(
    client: TestClient, cursor: str
) -> None:
    """Not base64 JSON; ["x"]; [1, 2] (a page offset of 1 for trials, no time for sweeps);
    [-5]."""
    sweep_id = client.post("/v1/sweeps", json=SWEEP).json()["id"]
    r = client.get("/v1/sweeps", params={"cursor": cursor})
    assert (r.status_code, r.json()["error"]["code"]) == (422, "invalid_cursor"), r.text
    r = client.get(f"/v1/sweeps/{sweep_id}/trials", params={"cursor": cursor})
    if cursor == "WzEsMl0":
        assert r.status_code == 200
    else:
        assert (r.status_code, r.json()["error"]["code"]) == (422, "invalid_cursor"), r.text


def test_a_sweep_posted_as_yaml_is_the_same_sweep(client: TestClient) -> None:
    import yaml

    body = yaml.safe_dump(SWEEP).encode()
    r = client.post("/v1/sweeps", content=body, headers={"Content-Type": "application/yaml"})
    assert r.status_code == 201, r.text
    assert r.json()["spec"]["space"] == SWEEP["space"]
    bad = yaml.safe_dump({**SWEEP, "search": {"method": "nope"}}).encode()
    r = client.post("/v1/sweeps", content=bad, headers={"Content-Type": "application/yaml"})
    assert (r.status_code, r.json()["error"]["field"]) == (422, "search.method"), r.text
