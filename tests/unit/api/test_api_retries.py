"""A retried job as the API answers it (a real SQLite queue): queued, its retries counted,
why it waits and until when; a retry of a permanent class refused naming its place."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from core.spec import parse_spec
from db.session import make_engine
from db.store import JobStore

RETRY = {"max": 2, "on": ["tracking_failed"], "backoff_seconds": 60}
IRIS = {"dataset": "iris", "model": {"hidden": [8]}, "optimizer": {"epochs": 3}}


def test_a_retried_job_is_queued_with_its_retry_and_why(client: TestClient, tmp_path: Path) -> None:
    store = JobStore(make_engine(f"sqlite:///{tmp_path}/gradq.db"))
    job = store.submit(spec=parse_spec({**IRIS, "retry": RETRY}))
    store.claim(owner="w", lease_seconds=30)
    error = {"type": "tracking_failed", "message": "the model could not be written"}
    store.finish(job_id=job.id, attempt=1, status="failed", error=error, reason="tracking_failed")
    shown = client.get(f"/v1/jobs/{job.id}").json()
    assert (shown["status"], shown["retries"], shown["attempt"]) == ("queued", 1, 1)
    assert shown["pending_reason"].startswith("retry 1 of 2 after tracking_failed")
    assert "not before" in shown["pending_reason"]
    events = client.get(f"/v1/jobs/{job.id}/events").json()
    assert [(e["from_status"], e["to_status"]) for e in events][-2:] == [
        ("running", "failed"), ("failed", "queued")
    ]  # fmt: skip


def test_a_retry_of_a_permanent_class_is_refused_naming_it(client: TestClient) -> None:
    r = client.post(
        "/v1/jobs",
        json={**IRIS, "retry": {"max": 2, "on": ["tracking_failed", "gradcheck_failed"]}},
    )
    assert r.status_code == 422
    assert [e["field"] for e in r.json()["errors"]] == ["retry.on[1]"]
    assert "never retried" in r.json()["errors"][0]["message"]
