"""The ``gradq`` command as a newcomer meets it, against ``gradq --home DIR serve`` (its state
in DIR only): short job ids, ``show``, ``metrics`` (a chart, CSV), ``logs``, ``jobs --name``,
YAML bodies, the help's text, the MLflow UI's port, the warning of a new store."""

from __future__ import annotations

import csv
import io
import itertools
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from gradq_service import GRADQ, Service, running, service_env

pytestmark = pytest.mark.slow

SMALL = {"name": "first-iris", "dataset": "iris", "model": {"hidden": [8]},
         "optimizer": {"epochs": 6, "lr": 0.05}}  # fmt: skip
DIVERGES = {"name": "first-diverges", "dataset": "iris", "model": {"hidden": [8]},
            "optimizer": {"epochs": 3, "lr": 1.0e6}}  # fmt: skip
MLFLOW_PORT = 5123


def home_env(folder: Path) -> dict[str, str]:
    """The service's environment without a database URL or tracking URI: ``--home`` decides."""
    env = service_env(folder)
    del env["GRADQ_DATABASE_URL"], env["GRADQ_MLFLOW_TRACKING_URI"]
    return env


@pytest.fixture(scope="module")
def service(folder: Path) -> Iterator[Service]:
    home = folder / "state"
    command = ["--home", str(home), "serve", "--no-mlflow-ui", "--mlflow-port", str(MLFLOW_PORT)]
    with running(command, folder, home_env(folder)) as s:
        yield s


@pytest.fixture(scope="module")
def watched(service: Service) -> dict[str, Any]:
    job_file = service.folder / "first.yaml"
    job_file.write_text(yaml.safe_dump(SMALL))
    done = service.gradq("submit", str(job_file), "--watch")
    assert done.returncode == 0, done.stderr + done.stdout + service.log_tail()
    job_id = done.stdout.splitlines()[0].strip()
    with service.client() as http:
        return {"out": done.stdout, "job": http.get(f"/v1/jobs/{job_id}").json()}


def test_the_state_is_in_home_and_the_warning_says_so(service: Service) -> None:
    home = service.folder / "state"
    assert (home / "gradq.db").exists() and (home / "mlflow.db").exists()
    assert not (service.folder / "gradq-data").exists()
    log = service.log.read_text()
    assert f"warning: no gradq store at {home / 'gradq.db'}: creating a new, empty one" in log
    assert "GRADQ_HOME" in log
    assert "Started a local Ray instance" in log  # and without the notices no one can act on:
    assert "Token authentication is enabled" not in log
    assert "DeprecationWarning" not in log


def test_keys_in_home_warn_once_and_name_the_default_tenant(folder: Path) -> None:
    home = folder / "keys-home"

    def gradq(*args: str, columns: int = 100) -> subprocess.CompletedProcess[str]:
        env = {**home_env(folder), "COLUMNS": str(columns)}
        return subprocess.run([GRADQ, "--home", str(home), *args], env=env, cwd=folder,
                              capture_output=True, text=True, timeout=120)  # fmt: skip

    first = gradq("keys", "create", "--tenant", "alice")
    assert first.returncode == 0, first.stderr
    assert "warning: no gradq store at" in first.stderr
    assert "jobs submitted before GRADQ_AUTH=keys belong to tenant 'default'" in first.stderr
    assert "gradq keys create --tenant default" in first.stderr
    again = gradq("keys", "create", "--tenant", "default")
    assert again.returncode == 0 and "warning" not in again.stderr, again.stderr
    assert "belong to tenant" not in again.stderr  # it is the key for them
    assert gradq("keys", "create", "--tenant", "a-long-tenant-name").returncode == 0
    listed = gradq("keys", "list", columns=80)
    assert {"alice", "default", "a-long-tenant-name"} <= set(listed.stdout.split()), listed.stdout
    assert "revoked" not in listed.stdout  # a column only when a key is


def test_the_watch_summary_says_how_it_ended_and_the_best_epoch(watched: dict[str, Any]) -> None:
    result = watched["job"]["result"]
    line = (f"first-iris: {result['stopped']} after {result['epochs']} epochs, "
            f"best epoch {result['best_epoch']}\n")  # fmt: skip
    assert line in watched["out"]
    assert result["gradchecks"].startswith("gradient checks: ")
    assert result["gradchecks"] in watched["out"]


def test_show_summarises_and_takes_a_short_id(service: Service, watched: dict[str, Any]) -> None:
    job = watched["job"]
    shown = service.gradq("show", job["id"][:8], columns=100)
    assert shown.returncode == 0, shown.stderr
    lines = dict(line.split(None, 1) for line in shown.stdout.splitlines() if line[:1] != " ")
    assert lines["job"] == f"{job['id']}  first-iris"
    assert lines["status"].startswith("succeeded (attempt 1 of")
    assert lines["result"].startswith(f"{job['result']['stopped']} after 6 epochs")
    assert lines["MLflow"].startswith(f"http://127.0.0.1:{MLFLOW_PORT}/#/experiments/")
    assert lines["curves"] == f"gradq metrics {job['id'][:8]}"
    assert "Traceback" not in shown.stderr
    whole = service.gradq("show", job["id"][:8], "--json")
    assert yaml.safe_load(whole.stdout)["spec"]["model"]["hidden"] == [8]


def test_an_ambiguous_prefix_lists_the_candidates(service: Service) -> None:
    by_first: dict[str, list[str]] = {}
    with service.client() as http:
        while not any(len(ids) > 1 for ids in by_first.values()):  # 17 jobs at most
            job = http.post("/v1/jobs", json={**SMALL, "name": "prefix"}).json()
            http.post(f"/v1/jobs/{job['id']}/cancel")
            by_first.setdefault(job["id"][0], []).append(job["id"])
    first, ids = next((k, v) for k, v in by_first.items() if len(v) > 1)
    done = service.gradq("show", first)
    assert done.returncode == 1
    assert f"{first} is ambiguous:" in done.stderr
    assert all(i in done.stderr for i in ids), done.stderr
    assert "Traceback" not in done.stderr
    missing = service.gradq("logs", "ffffffff-f")
    assert missing.returncode == 1
    assert "no job of yours has an id starting with ffffffff-f" in missing.stderr


def test_metrics_chart_and_csv(service: Service, watched: dict[str, Any]) -> None:
    short = watched["job"]["id"][:8]
    charted = service.gradq("metrics", short, columns=90)
    assert charted.returncode == 0, charted.stderr
    out = charted.stdout
    assert out.startswith("accuracy\n") and "\nloss\n" in out
    assert "* loss/train  o loss/val" in out
    assert "step 1" in out and out.count("|") >= 24  # two charts of 12 rows each
    table = service.gradq("metrics", short, "--csv")
    rows = list(csv.DictReader(io.StringIO(table.stdout)))
    epochs = [r for r in rows if r["loss/train"]]
    assert [int(r["step"]) for r in epochs] == list(range(1, 7))
    assert all(0 <= float(r["accuracy/val"]) <= 1 for r in epochs)
    only = service.gradq("metrics", short, "--csv", "--metric", "loss")
    assert only.stdout.splitlines()[0] == "step,loss/train,loss/val"
    bad = service.gradq("metrics", short, "--metric", "los")
    assert bad.returncode == 1 and "no metric los; the job has:" in bad.stderr


def test_logs_say_how_a_job_ended(service: Service, watched: dict[str, Any]) -> None:
    ok = service.gradq("logs", watched["job"]["id"][:8])
    assert ok.returncode == 0, ok.stderr
    assert "queued → running" in ok.stdout
    last = ok.stdout.splitlines()[-1]  # the final event says how it ended
    assert "running → succeeded" in last
    assert f"{watched['job']['result']['stopped']} after 6 epochs" in last
    assert f"; {watched['job']['result']['gradchecks']}" in last
    with service.client() as http:
        bad = http.post("/v1/jobs", json=DIVERGES).json()
    failed = service.wait_job(bad["id"], ("failed", "succeeded"))
    assert failed["status"] == "failed", failed
    logs = service.gradq("logs", bad["id"][:8])
    last = logs.stdout.splitlines()[-1]
    assert "running → failed" in last
    assert f"{failed['error']['type']}: {failed['error']['message']}" in last


def test_jobs_by_name_prefix_and_an_empty_list(service: Service, watched: dict[str, Any]) -> None:
    listed = service.gradq("jobs", "--name", "first-", columns=120)
    assert listed.returncode == 0
    assert watched["job"]["id"] in listed.stdout
    assert "prefix" not in listed.stdout
    none = service.gradq("jobs", "--name", "nothing-like-this")
    assert (none.returncode, none.stdout) == (0, "no jobs matching\n")


def test_a_yaml_body_is_a_spec(service: Service) -> None:
    body = yaml.safe_dump({**SMALL, "name": "yaml-body"}).encode()
    with service.client() as http:
        r = http.post("/v1/jobs", content=body, headers={"Content-Type": "application/yaml"})
        assert (r.status_code, r.json()["name"]) == (201, "yaml-body"), r.text
        http.post(f"/v1/jobs/{r.json()['id']}/cancel")
        bad = yaml.safe_dump({**SMALL, "model": {"hidden": [8, 0]}}).encode()
        r = http.post("/v1/jobs", content=bad, headers={"Content-Type": "application/yaml"})
        assert (r.status_code, r.json()["error"]["field"]) == (422, "model.hidden[1]")
        r = http.post("/v1/jobs", content=b"a: [1,\n", headers={"Content-Type": "text/yaml"})
        error = r.json()["error"]
        assert (r.status_code, error["code"]) == (400, "malformed_yaml")
        assert "line 2" in error["message"]


def test_the_help_reads_whole(service: Service) -> None:
    """A command's description goes on to its next line only where the next word does not
    fit (it broke where its docstring's lines did), and flags show no value type."""
    top = service.gradq("--help", columns=80).stdout
    panel = top.split("Commands")[1].splitlines()[1:-1]
    cells = [line.strip("│").rstrip() for line in panel]
    start = len(cells[0]) - len(cells[0].lstrip()) + len(cells[0].split()[0])
    start += len(cells[0][start:]) - len(cells[0][start:].lstrip())
    width = len(panel[0]) - 2 - start - 1  # the description column, less its padding
    for here, after in itertools.pairwise(cells):
        if after[:start].strip() == "":  # `after` continues `here`'s description
            assert len(here[start:]) + 1 + len(after.split()[0]) > width, (here, after)
    assert "<bool>" not in top
    serve = service.gradq("serve", "--help", columns=100).stdout
    assert "--mlflow-port" in serve and "<bool>" not in serve
    assert "--no-mlflow-ui " in serve


def test_cancel_takes_a_short_id(service: Service) -> None:
    long = {**SMALL, "name": "first-long", "optimizer": {"epochs": 5000},
            "regularization": {"early_stopping": {"enabled": False}}}  # fmt: skip
    with service.client() as http:
        job = http.post("/v1/jobs", json=long).json()
    service.wait_job(job["id"], ("running",))
    done = service.gradq("cancel", job["id"][:8])
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{job['id']} first-long cancelled\n"  # it waited for the stop
    with service.client() as http:
        assert http.get(f"/v1/jobs/{job['id']}").json()["status"] == "cancelled"
