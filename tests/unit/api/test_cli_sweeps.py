"""The ``gradq`` sweep commands (issue 17): ``sweep submit [--watch]``, ``sweeps``, ``sweep
show``, ``sweep cancel``, driven with typer's runner against a fake of the sweeps' HTTP
contract served on a local port, asserting what the user reads; and the example sweep."""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml
from typer.testing import CliRunner, Result

from api.cli import app
from core.spec import parse_spec

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "digits-sweep.yaml"
SWEEP_ID = "5b0f4a1e-0000-4000-8000-00000000a001"
JOB = "7c3d9e2a-0000-4000-8000-0000000000{:02d}"  # trial i's job id
KEY = "gq_test_key"
SPEC = {
    "name": "digits-lr",
    "base": {"dataset": "digits", "optimizer": {"epochs": 10}},
    "space": {"optimizer.lr": {"loguniform": [0.001, 0.3]},
              "model.hidden": {"choice": [[64], [128, 128]]}},
    "search": {"method": "random", "trials": 4, "parallel": 2, "seed": 0},
    "objective": {"metric": "val_accuracy", "mode": "max"},
    "early_stopping": {"kind": "asha", "min_epochs": 2, "reduction_factor": 3},
}  # fmt: skip


def trial(
    i: int, status: str, lr: float, hidden: list[int], objective: float | None, epoch: int | None
) -> dict:
    return {"id": JOB.format(i), "trial": i, "status": status, "objective": objective,
            "params": {"optimizer.lr": lr, "model.hidden": hidden}, "epoch": epoch,
            "mlflow_run_id": f"run{i}"}  # fmt: skip


def snapshot(
    status: str, trials: list[dict], error: str | None = None, notes: list | None = None
) -> dict[str, Any]:
    """The sweep as GET /v1/sweeps/{id} answers it, with ``trials`` made so far."""
    counts = dict.fromkeys(("queued", "running", "succeeded", "failed", "cancelled", "pruned"), 0)
    for t in trials:
        counts[t["status"]] += 1
    done = [t for t in trials if t["objective"] is not None and t["status"] == "succeeded"]
    best = max(done, key=lambda t: t["objective"], default=None)
    return {
        "id": SWEEP_ID, "name": SPEC["name"], "status": status, "spec": SPEC, "counts": counts,
        "trials": len(trials), "total_trials": SPEC["search"]["trials"], "error": error,
        "notes": notes or [], "cancel_requested": False, "mlflow_run_id": "parent-run",
        "best": best and {"job_id": best["id"], "trial": best["trial"],
                          "params": best["params"], "objective": best["objective"]},
        "history": [], "created_at": "2026-12-01T07:00:00.123456Z",
        "started_at": "2026-12-01T07:00:01Z",
        "finished_at": None if status in ("queued", "running") else "2026-12-01T07:01:00Z",
        "_trials": trials,  # the fake's own: what GET …/trials answers (left out there)
    }  # fmt: skip


RUNNING = snapshot("running", [
    trial(0, "succeeded", 0.0123, [64], 0.9583, 10),
    trial(1, "running", 0.2500, [128, 128], None, 4),
    trial(2, "queued", 0.0011, [64], None, None),
])  # fmt: skip
SUCCEEDED = snapshot("succeeded", [
    trial(0, "succeeded", 0.0123, [64], 0.9583, 10),
    trial(1, "pruned", 0.2500, [128, 128], 0.4125, 2),
    trial(2, "succeeded", 0.0456, [128, 128], 0.9861, 10),
    trial(3, "failed", 0.0011, [64], None, 3),
], notes=[{"trial": 4, "params": {"optimizer.lr": 2.0},
           "message": "invalid spec: optimizer.lr: at most 1"}])  # fmt: skip
FAILED = snapshot("failed", [
    trial(0, "failed", 0.0123, [64], None, 1),
    trial(1, "failed", 0.2500, [128, 128], None, 1),
], error="every trial failed")  # fmt: skip


class FakeService:
    """The sweeps' routes of the contract, answering from ``script``: each GET of the sweep
    takes the next snapshot (the last one stays). Records every request."""

    def __init__(self) -> None:
        self.script: list[dict[str, Any]] = [copy.deepcopy(RUNNING)]
        self.listing: list[dict[str, Any]] = []
        self.requests: list[tuple[str, str, dict[str, list[str]], Any, str | None]] = []
        self.unavailable = 0  # answer this many next requests with ``away``
        self.away = 503
        self.current = self.script[0]

    def answer(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> Any:
        if self.unavailable:
            self.unavailable -= 1
            return self.away, {"error": {"code": "unavailable", "field": None,
                                         "message": "the database is not reachable; try again shortly"}}  # fmt: skip
        if (method, path) == ("POST", "/v1/sweeps"):
            unknown = [
                p for p in body.get("space", {}) if p not in ("optimizer.lr", "model.hidden")
            ]
            if unknown:
                errors = [{"field": f'space["{p}"]',
                           "message": "not a field of a job spec; one of [optimizer.lr, model.hidden]"}
                          for p in unknown]  # fmt: skip
                first = errors[0]
                return 422, {"error": {"code": "invalid_spec", "message": first["message"],
                                       "field": first["field"]}, "errors": errors}  # fmt: skip
            return 201, self.public(self.current)
        if (method, path) == ("GET", "/v1/sweeps"):
            items = [s for s in self.listing if s["status"] in query.get("status", [s["status"]])]
            limit = int(query.get("limit", ["50"])[0])
            return 200, {"items": [self.public(s) for s in items[:limit]], "next_cursor": None}
        if not path.startswith(f"/v1/sweeps/{SWEEP_ID}"):
            return 404, {"error": {"code": "not_found", "message": "no such sweep", "field": None}}
        rest = path.removeprefix(f"/v1/sweeps/{SWEEP_ID}")
        if (method, rest) == ("GET", ""):
            self.current = self.script.pop(0) if len(self.script) > 1 else self.script[0]
            return 200, self.public(self.current)
        if (method, rest) == ("GET", "/trials"):
            items = list(self.current["_trials"])
            if query.get("sort") == ["objective"]:  # the best first (mode max), no objective last
                items.sort(key=lambda t: (t["objective"] is None, -(t["objective"] or 0)))
            limit = int(query.get("limit", ["50"])[0])
            return 200, {"items": items[:limit], "next_cursor": None}
        if (method, rest) == ("POST", "/cancel"):
            return 200, self.public({**self.current, "status": "cancelled"})
        return 404, {"error": {"code": "not_found", "message": "no such path", "field": None}}

    @staticmethod
    def public(sweep: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in sweep.items() if not k.startswith("_")}

    def paths(self, method: str) -> list[str]:
        return [path for m, path, *_ in self.requests if m == method]


@pytest.fixture
def service() -> Iterator[tuple[FakeService, str]]:
    fake = FakeService()

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            url = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            query = parse_qs(url.query)
            auth = self.headers.get("Authorization")
            fake.requests.append((self.command, url.path, query, body, auth))
            status, answer = fake.answer(self.command, url.path, query, body)
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _serve

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    yield fake, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(autouse=True)
def no_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    """The watch polls without pausing between polls."""
    import api.cli.sweeps

    monkeypatch.setattr(api.cli.sweeps, "WATCH_POLL_SECONDS", 0)


def gradq(url: str, *args: str, columns: int = 160) -> Result:
    return CliRunner().invoke(
        app, [*args, "--url", url, "--key", KEY], env={"COLUMNS": str(columns)}
    )


@pytest.fixture
def sweep_file(tmp_path: Path) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(SPEC))
    return path


def test_submit_posts_the_yaml_and_prints_the_id(
    service: tuple[FakeService, str], sweep_file: Path
) -> None:
    fake, url = service
    result = gradq(url, "sweep", "submit", str(sweep_file))
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{SWEEP_ID}\n"
    [(method, path, _, body, auth)] = fake.requests
    assert (method, path, body, auth) == ("POST", "/v1/sweeps", SPEC, f"Bearer {KEY}")


def test_a_refused_space_prints_each_problem_with_its_path(
    service: tuple[FakeService, str], tmp_path: Path
) -> None:
    _, url = service
    bad = tmp_path / "bad.yaml"
    space = {**SPEC["space"], "optimizer.lrr": {"uniform": [0, 1]}, "model.widths": {"int": [1, 9]}}
    bad.write_text(yaml.safe_dump({**SPEC, "space": space}))
    result = gradq(url, "sweep", "submit", str(bad))
    assert result.exit_code == 1
    for path in ('space["optimizer.lrr"]', 'space["model.widths"]'):
        line = f"{path}: not a field of a job spec; one of [optimizer.lr, model.hidden]"
        assert line in result.stderr, result.stderr  # the brackets of the message kept


def test_a_single_refused_path_is_printed_too(
    service: tuple[FakeService, str], tmp_path: Path
) -> None:
    _, url = service
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**SPEC, "space": {"optimizer.lrr": {"uniform": [0, 1]}}}))
    result = gradq(url, "sweep", "submit", str(bad))
    assert result.exit_code == 1
    assert 'space["optimizer.lrr"]: not a field of a job spec' in result.stderr, result.stderr


def test_a_yaml_error_names_the_file_line_and_problem(
    service: tuple[FakeService, str], tmp_path: Path
) -> None:
    fake, url = service
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: x\nspace:\n  optimizer.lr: {loguniform: [0.001, 0.3]\nsearch: {}\n")
    result = gradq(url, "sweep", "submit", str(broken))
    assert result.exit_code == 2
    message = " ".join(result.stderr.split())  # as one line, whatever the terminal folded
    assert f"{broken}:4:1:" in message, message  # where the flow mapping was left open
    assert "expected ',' or '}'" in message
    assert fake.requests == []


def test_a_yaml_that_is_not_a_mapping_is_refused_naming_the_file(
    service: tuple[FakeService, str], tmp_path: Path
) -> None:
    fake, url = service
    listed = tmp_path / "list.yaml"
    listed.write_text("- name: x\n")
    result = gradq(url, "sweep", "submit", str(listed))
    assert result.exit_code == 2
    assert f"{listed}: a sweep is a mapping" in " ".join(result.stderr.split())
    assert fake.requests == []
    missing = gradq(url, "sweep", "submit", str(tmp_path / "nope.yaml"))
    assert missing.exit_code == 2 and "nope.yaml" in missing.stderr


def test_watch_shows_the_best_trial_and_ends_succeeded_with_0(
    service: tuple[FakeService, str], sweep_file: Path
) -> None:
    fake, url = service
    fake.script = [copy.deepcopy(RUNNING), copy.deepcopy(SUCCEEDED)]
    result = gradq(url, "sweep", "submit", str(sweep_file), "--watch")
    assert result.exit_code == 0, result.output
    out = result.output
    # the final view: counts by trial status, the best with its parameters, the top trials
    assert "succeeded 2" in out and "pruned 1" in out and "failed 1" in out, out
    best = "best: trial 2 val_accuracy 0.9861 (max)"
    assert best in out, out
    assert "optimizer.lr=0.0456 model.hidden=[128,128]" in out
    rows = [line for line in out.splitlines() if line.startswith("│")]
    trials = [row.split("│")[1].strip() for row in rows]
    assert trials[:3] == ["2", "0", "1"], out  # sorted by the objective, best first
    assert [c.strip() for c in rows[2].split("│")[1:5]] == ["1", "pruned", "2", "0.4125"]
    # one line to end it, on stdout after the id, and on a line of its own after the table
    assert f"┘\nsweep {SWEEP_ID} succeeded: " in out, out
    lines = result.stdout.splitlines()
    assert lines[0] == SWEEP_ID
    assert lines[-1].startswith(f"sweep {SWEEP_ID} succeeded: 4 trials"), result.stdout
    assert "best trial 2 val_accuracy 0.9861" in lines[-1]
    gets = fake.paths("GET")
    assert gets.count(f"/v1/sweeps/{SWEEP_ID}") == 2  # stopped at the terminal status
    trial_reads = [q for m, p, q, *_ in fake.requests if p.endswith("/trials")]
    assert all((q["sort"], q["limit"]) == (["objective"], ["10"]) for q in trial_reads)


def test_watch_of_a_failed_sweep_exits_1_with_its_error(
    service: tuple[FakeService, str], sweep_file: Path
) -> None:
    fake, url = service
    fake.script = [copy.deepcopy(RUNNING), copy.deepcopy(FAILED)]
    result = gradq(url, "sweep", "submit", str(sweep_file), "--watch")
    assert result.exit_code == 1, result.output
    last = result.stdout.splitlines()[-1]
    assert last.startswith(f"sweep {SWEEP_ID} failed: 2 trials"), result.stdout
    assert "every trial failed" in last
    assert "best: none yet" in result.output


@pytest.mark.parametrize("status", [502, 503, 504])
def test_watch_rides_out_a_service_that_is_briefly_away(
    service: tuple[FakeService, str], sweep_file: Path, status: int
) -> None:
    fake, url = service
    fake.away = status
    fake.script = [copy.deepcopy(RUNNING), copy.deepcopy(SUCCEEDED)]

    submit = fake.answer

    def away_after_submit(method: str, path: str, *args: Any) -> Any:
        answer = submit(method, path, *args)
        if method == "POST":
            fake.unavailable = 2  # the next two reads get 503s
        return answer

    fake.answer = away_after_submit  # type: ignore[method-assign]
    result = gradq(url, "sweep", "submit", str(sweep_file), "--watch")
    assert result.exit_code == 0, result.output
    assert result.output.count("database is not reachable") == 1  # said once, not fatal
    assert result.stdout.splitlines()[-1].startswith(f"sweep {SWEEP_ID} succeeded")


def test_watch_ends_with_1_when_the_service_refuses_a_read(
    service: tuple[FakeService, str], sweep_file: Path
) -> None:
    fake, url = service
    submit = fake.answer

    def gone_after_submit(method: str, path: str, *args: Any) -> Any:
        if method == "GET":
            return 404, {"error": {"code": "not_found", "message": "no such sweep", "field": None}}
        return submit(method, path, *args)

    fake.answer = gone_after_submit  # type: ignore[method-assign]
    result = gradq(url, "sweep", "submit", str(sweep_file), "--watch")
    assert result.exit_code == 1, result.output
    assert "HTTP 404 not_found: no such sweep" in result.stderr
    assert len(fake.paths("GET")) == 1


def test_ctrl_c_leaves_the_sweep_running_and_says_so(
    service: tuple[FakeService, str], sweep_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import api.cli.sweeps

    def interrupted(_: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(api.cli.sweeps, "time", SimpleNamespace(sleep=interrupted))
    fake, url = service
    result = gradq(url, "sweep", "submit", str(sweep_file), "--watch")
    assert result.exit_code == 130, result.output
    message = " ".join(result.stderr.split())
    assert f"sweep {SWEEP_ID} keeps running" in message, message
    assert f"gradq sweep cancel {SWEEP_ID}" in message
    assert fake.paths("POST") == ["/v1/sweeps"]  # no cancel sent


def test_sweeps_lists_status_trials_and_best(service: tuple[FakeService, str]) -> None:
    fake, url = service
    other = {**copy.deepcopy(FAILED), "id": "5b0f4a1e-0000-4000-8000-00000000a002",
             "name": "digits-wd", "best": None, "total_trials": 6}  # fmt: skip
    other["spec"] = {**SPEC, "search": {"method": "grid"}}  # grid: the service counts them
    fake.listing = [copy.deepcopy(SUCCEEDED), other]
    result = gradq(url, "sweeps")
    assert result.exit_code == 0, result.output
    rows = [[c.strip() for c in line.split("│")[1:-1]]
            for line in result.output.splitlines() if line.startswith("│")]  # fmt: skip
    assert rows == [
        [SWEEP_ID, "digits-lr", "succeeded", "4/4", "0.9861", "2026-12-01 07:00:00"],
        [other["id"], "digits-wd", "failed", "2/6", "-", "2026-12-01 07:00:00"],
    ], result.output
    narrow = gradq(url, "sweeps", columns=100)
    cells = [[c.strip() for c in line.split("│")[1:-1]]
             for line in narrow.output.splitlines() if line.startswith("│")]  # fmt: skip
    assert cells[0] == [SWEEP_ID, "digits-lr", "succeeded", "4/4", "0.9861"], narrow.output
    filtered = gradq(url, "sweeps", "--status", "failed", "--limit", "5")
    assert filtered.exit_code == 0
    assert SWEEP_ID not in filtered.output and other["id"] in filtered.output
    assert fake.requests[-1][2] == {"status": ["failed"], "limit": ["5"]}


def test_show_prints_fields_counts_best_and_the_trials_by_objective(
    service: tuple[FakeService, str],
) -> None:
    fake, url = service
    fake.script = [copy.deepcopy(SUCCEEDED)]
    result = gradq(url, "sweep", "show", SWEEP_ID)
    assert result.exit_code == 0, result.output
    out = result.output
    assert f"sweep {SWEEP_ID} digits-lr succeeded" in out
    assert "search: random, 4 trials made of 4, 2 at once" in out
    assert "objective: val_accuracy (max)" in out
    assert "queued 0 · running 0 · succeeded 2 · pruned 1 · failed 1 · cancelled 0" in out
    assert f"best: trial 2 val_accuracy 0.9861 (max)\n  job {JOB.format(2)}\n" in out
    assert "optimizer.lr=0.0456 model.hidden=[128,128]" in out
    assert "note: trial 4: invalid spec: optimizer.lr: at most 1" in out
    assert "MLflow run: parent-run" in out
    rows = [[c.strip() for c in line.split("│")[1:-1]]
            for line in out.splitlines() if line.startswith("│")]  # fmt: skip
    assert [r[:5] for r in rows] == [
        [JOB.format(2), "2", "succeeded", "10", "0.9861"],
        [JOB.format(0), "0", "succeeded", "10", "0.9583"],
        [JOB.format(1), "1", "pruned", "2", "0.4125"],
        [JOB.format(3), "3", "failed", "3", "-"],
    ], out
    assert rows[0][5] == "lr=0.0456 hidden=[128,128]"


def test_show_in_80_columns_keeps_each_trials_parameters_whole(
    service: tuple[FakeService, str],
) -> None:
    fake, url = service
    fake.script = [copy.deepcopy(SUCCEEDED)]
    result = gradq(url, "sweep", "show", SWEEP_ID, columns=80)
    assert result.exit_code == 0, result.output
    assert max(len(line) for line in result.output.splitlines()) <= 80, result.output
    rows = [[c.strip() for c in line.split("│")[1:-1]]
            for line in result.output.splitlines() if line.startswith("│")]  # fmt: skip
    assert rows[0] == ["2", "succeeded", "10", "0.9861", "lr=0.0456 hidden=[128,128]"], rows
    assert f"job {JOB.format(2)}" in result.output  # the best's job id, whole


def test_show_json_has_the_sweep_and_its_trials_by_objective(
    service: tuple[FakeService, str],
) -> None:
    fake, url = service
    fake.script = [copy.deepcopy(SUCCEEDED)]
    result = gradq(url, "sweep", "show", SWEEP_ID, "--json")
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert shown["sweep"] == FakeService.public(SUCCEEDED)
    assert [t["trial"] for t in shown["trials"]] == [2, 0, 1, 3]


def test_show_of_an_unknown_sweep_says_not_found(service: tuple[FakeService, str]) -> None:
    _, url = service
    result = gradq(url, "sweep", "show", "nope")
    assert result.exit_code == 1
    assert "HTTP 404 not_found: no such sweep" in result.stderr


def test_cancel_prints_the_sweeps_new_status(service: tuple[FakeService, str]) -> None:
    fake, url = service
    fake.current = snapshot("queued", [])
    result = gradq(url, "sweep", "cancel", SWEEP_ID)
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{SWEEP_ID} cancelled\n"
    assert fake.paths("POST") == [f"/v1/sweeps/{SWEEP_ID}/cancel"]
    fake.answer = lambda *_: (202, {**FakeService.public(RUNNING), "cancel_requested": True})  # type: ignore[method-assign]
    result = gradq(url, "sweep", "cancel", SWEEP_ID)
    assert result.stdout == f"{SWEEP_ID} running (cancel requested: its trials stopping)\n"


def test_show_of_a_sweep_without_trials_says_so(service: tuple[FakeService, str]) -> None:
    fake, url = service
    fake.script = [snapshot("queued", [])]
    result = gradq(url, "sweep", "show", SWEEP_ID)
    assert result.exit_code == 0, result.output
    assert "search: random, 0 trials made of 4, 2 at once" in result.output
    assert result.output.endswith("best: none yet\nMLflow run: parent-run\nno trials yet\n")


def test_the_example_sweep_is_small_and_its_trials_are_job_specs() -> None:
    """examples/digits-sweep.yaml: its base with a value of each dimension parses as a job
    spec, and it stays small (random or tpe, 12 to 32 trials, 10 to 20 epochs, 4 at once)."""
    sweep = yaml.safe_load(EXAMPLE.read_text())
    assert set(sweep) == {"name", "base", "space", "search", "objective", "early_stopping"}
    assert sweep["search"]["method"] in ("random", "tpe")
    assert 12 <= sweep["search"]["trials"] <= 32 and sweep["search"]["parallel"] == 4
    assert 10 <= sweep["base"]["optimizer"]["epochs"] <= 20
    assert sweep["objective"] == {"metric": "val_accuracy", "mode": "max"}
    for path, dimension in sweep["space"].items():
        [(kind, values)] = dimension.items()
        assert kind in ("uniform", "loguniform", "int", "choice")
        for value in values:  # the bounds, or each choice
            spec = copy.deepcopy(sweep["base"])
            *parents, leaf = path.split(".")
            node = spec
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
            parse_spec(spec)  # raises InvalidSpec naming the field
