"""``gradq rerun JOB --set PATH=VALUE`` and ``gradq jobs``' filters, driven with typer's
runner against the real app (its TestClient in place of the command's HTTP client)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from api.cli import app
from api.cli.commands import spec_patch
from api.cli.http import ApiClient
from tests.unit.api.conftest import IRIS
from tests.unit.api.test_api_rerun_and_search import finished


class Through:
    """What the command's client is asked, sent to the app's TestClient."""

    def __init__(self, client: TestClient) -> None:
        self.client = client
        self.asked: list[tuple[str, str, dict[str, Any]]] = []

    def send(self, method: str, path: str, **kwargs: Any) -> Any:
        self.asked.append((method, path, kwargs))
        return self.client.request(method, path, **kwargs)


@pytest.fixture
def through(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> Through:
    fake = Through(client)
    monkeypatch.setattr(ApiClient, "send", lambda _, *a, **kw: fake.send(*a, **kw))
    return fake


def test_set_options_make_a_merge_patch_of_yaml_values() -> None:
    patch = spec_patch(
        ["optimizer.epochs=200", "optimizer.name=adam", "model.hidden=[32, 16]",
         "tags.team=vision", "register_as=null", "optimizer.schedule.kind=cosine"]
    )  # fmt: skip
    assert patch == {
        "optimizer": {"epochs": 200, "name": "adam", "schedule": {"kind": "cosine"}},
        "model": {"hidden": [32, 16]},
        "tags": {"team": "vision"},
        "register_as": None,
    }


def test_rerun_queues_the_patched_spec(client: TestClient, through: Through) -> None:
    origin = client.post("/v1/jobs", json=IRIS).json()
    result = CliRunner().invoke(
        app, ["rerun", origin["id"], "--set", "optimizer.epochs=200", "--set", "seed=7"]
    )
    assert result.exit_code == 0, result.output
    new_id = result.stdout.strip()
    new = client.get(f"/v1/jobs/{new_id}").json()
    assert new["origin_job_id"] == origin["id"]
    assert (new["spec"]["optimizer"]["epochs"], new["spec"]["seed"]) == (200, 7)
    assert new["spec"]["model"] == origin["spec"]["model"]


def test_rerun_with_a_bad_set_names_it_and_queues_nothing(
    client: TestClient, through: Through
) -> None:
    origin = client.post("/v1/jobs", json=IRIS).json()
    result = CliRunner().invoke(app, ["rerun", origin["id"], "--set", "optimizer.epochs"])
    assert result.exit_code == 2 and "--set 'optimizer.epochs': give PATH=VALUE" in result.output
    refused = CliRunner().invoke(app, ["rerun", origin["id"], "--set", "optimizer.epochs=-1"])
    assert refused.exit_code == 1 and "optimizer.epochs" in refused.output
    assert len(client.get("/v1/jobs").json()["items"]) == 1


def test_jobs_filters_and_sorts_by_a_metric(
    client: TestClient, through: Through, tmp_path: Path
) -> None:
    vision = {**IRIS, "name": "foo-a", "tags": {"team": "vision"}}
    low = finished(tmp_path, vision, "default", 0.61)
    high = finished(tmp_path, vision, "default", 0.97)
    other = finished(tmp_path, {**vision, "name": "bar"}, "default", 0.99)
    args = ["jobs", "--tag", "team:vision", "--status", "succeeded", "--name", "foo",
            "--sort", "-test_accuracy"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert result.output.index(high) < result.output.index(low)
    assert other not in result.output and "0.97" in result.output
    [(_, path, kwargs)] = through.asked
    assert path == "/v1/jobs"
    assert kwargs["params"] == {
        "status": "succeeded", "name_prefix": "foo", "tag": ["team:vision"],
        "sort": "-test_accuracy", "limit": 20,
    }  # fmt: skip
    bad = CliRunner().invoke(app, ["jobs", "--metric", "accuracy!0.9"])
    assert bad.exit_code == 1 and "metric" in bad.output
