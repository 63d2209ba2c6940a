"""What every chaos test needs: a private PostgreSQL cluster it may stop and start, small
jobs, waiting through a fault, and the audit of a job after it (events, fencing, MLflow).

The audit is the suite's definition of "nothing lost, nothing run twice"; it counts what
was lost and what was duplicated (the reliability table's columns) and the test asserts both
are 0 after recording its row:

- every job accepted (201) is terminal and ``succeeded`` (no fault here may fail a job);
- its events hold the attempts one after the other: attempt n+1 is claimed only after
  attempt n's hold ended (``running → queued``), attempt numbers rise by one, and a stale
  attempt's write is refused by the store (fencing);
- it has exactly one MLflow run, and each learning-curve step 1..epochs is in it exactly
  once (no gap, no duplicate, across resumed attempts).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
from deploy_stack import Stack, alive, descendants, free_port, processes
from gradq_service import GRADQ, service_env
from mlflow import MlflowClient

TERMINAL = ("succeeded", "failed", "cancelled")
LOSS = "loss/train"  # the training loss's key in a job's MLflow run, one point per epoch
PG_BIN = Path(os.environ.get("GRADQ_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
FAST = {  # short leases and polling: a lost attempt is noticed in seconds
    "GRADQ_LEASE_SECONDS": "4",
    "GRADQ_HEARTBEAT_SECONDS": "0.5",
}


def chaos_env(folder: Path, **extra: str) -> dict[str, str]:
    """``gradq_service.service_env`` (SQLite, MLflow SQLite, 2 CPUs) with short leases."""
    return {**service_env(folder), **FAST, **extra}


def iris(name: str, epochs: int = 6, **extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": name, "dataset": "iris", "model": {"hidden": [8]},
        "optimizer": {"epochs": epochs, "batch_size": 16, "lr": 0.05},
        "regularization": {"early_stopping": {"enabled": False}},
    }  # fmt: skip
    spec.update(extra)
    return spec


def digits(name: str, epochs: int) -> dict[str, Any]:
    """Long enough to be interrupted mid-training: ~0.06 s an epoch on an idle core, 0.1-0.3 s
    on a busy one (270 steps of [256, 256]). Sized for the engine's speed: with [64] and batch
    8 a faster engine finished the jobs before the fault could reach them."""
    return {
        "name": name, "dataset": "digits", "model": {"hidden": [256, 256]},
        "optimizer": {"epochs": epochs, "batch_size": 4, "lr": 0.005},
        "regularization": {"early_stopping": {"enabled": False}},
        "checkpoint_every": 1,
    }  # fmt: skip


def wait_until(
    what: str, check: Callable[[], Any], timeout: float, *, context: Callable[[], str] = str
) -> Any:
    """Poll ``check`` until it returns something truthy; transport errors count as "not yet"."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (httpx.TransportError, psycopg.OperationalError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(0.25)
    raise AssertionError(
        f"timed out after {timeout:g} s waiting for {what} ({last!r})\n{context()}"
    )


def jobs(http: httpx.Client, ids: list[str]) -> dict[str, dict[str, Any]]:
    out = {}
    for job_id in ids:
        r = http.get(f"/v1/jobs/{job_id}")
        assert r.status_code == 200, r.text
        out[job_id] = r.json()
    return out


def all_terminal(http: httpx.Client, ids: list[str]) -> dict[str, dict[str, Any]] | None:
    now = jobs(http, ids)
    return now if all(j["status"] in TERMINAL for j in now.values()) else None


# --- the audit ---------------------------------------------------------------------------------


@dataclass
class Audit:
    """What :func:`audit` measured. ``lost``: job id → its status ("missing": not found);
    ``duplicated``: one line per duplication found (a second MLflow run of a job, a
    learning-curve step logged more than once, an attempt claimed while another held the
    job); ``problems``: anything else the audit requires that was not so."""

    final: dict[str, dict[str, Any]] = field(default_factory=dict)
    lost: dict[str, str] = field(default_factory=dict)
    duplicated: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        """The row's columns: ``{"lost": n, "duplicated": n}``."""
        return {"lost": len(self.lost), "duplicated": len(self.duplicated)}

    def assert_clean(self) -> None:
        """Nothing lost, nothing duplicated, nothing else wrong (call it after ``record``)."""
        assert not (self.lost or self.duplicated or self.problems), self.report()

    def report(self) -> str:
        return "\n".join([
            f"lost: {len(self.lost)}", *(f"  job {job_id}: {why}" for job_id, why in
                                         self.lost.items()),
            f"duplicated: {len(self.duplicated)}",
            *(f"  {d}" for d in self.duplicated), f"other problems: {len(self.problems)}",
            *(f"  {p}" for p in self.problems),
        ])  # fmt: skip


def audit(http: httpx.Client, tracking_uri: str, accepted: dict[str, int]) -> Audit:
    """Count, for every accepted job (id → epochs), what was lost (not ended ``succeeded``, or
    not found) and what was duplicated (a second MLflow run tagged with its id, a
    ``loss/train`` step logged more than once, attempts overlapping in its events). Asserts
    nothing: the test records the counts, then calls :meth:`Audit.assert_clean`."""
    result = Audit()
    client = MlflowClient(tracking_uri=tracking_uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    for job_id, epochs in accepted.items():
        r = http.get(f"/v1/jobs/{job_id}")
        if r.status_code == 404:
            result.lost[job_id] = "missing"
            continue
        if r.status_code != 200:
            result.problems.append(f"job {job_id}: GET answered {r.status_code}: {r.text[:300]}")
            continue
        job = result.final[job_id] = r.json()
        if job["status"] != "succeeded":
            result.lost[job_id] = f"{job['status']}: {job.get('error')}"
        r = http.get(f"/v1/jobs/{job_id}/events")
        if r.status_code == 200:
            _audit_attempts(result, job, r.json())
        else:
            result.problems.append(f"job {job_id}: events answered {r.status_code}: {r.text[:300]}")
        _audit_run(result, client, experiments, job, epochs)
    return result


def _audit_attempts(result: Audit, job: dict[str, Any], events: list[dict[str, Any]]) -> None:
    """The events hold one attempt at a time, numbered 1, 2, …, and end terminal; as many
    attempts were claimed as the job says."""
    job_id = job["id"]
    trail = " ".join(f"{e['attempt']}:{e['from_status']}->{e['to_status']}" for e in events)
    holder: int | None = None
    claimed = 0
    for e in events:
        if e["to_status"] == "running":
            if holder is not None:
                result.duplicated.append(
                    f"job {job_id}: attempt {e['attempt']} claimed while attempt {holder} held "
                    f"it ({trail})"
                )
            if e["attempt"] != claimed + 1:
                result.problems.append(f"job {job_id}: attempts out of order ({trail})")
            holder = claimed = e["attempt"]
        elif e["from_status"] == "running":
            if e["attempt"] != holder:
                result.problems.append(
                    f"job {job_id}: attempt {e['attempt']} ended while {holder} held it ({trail})"
                )
            holder = None
    if holder is not None or not events or events[-1]["to_status"] not in TERMINAL:
        result.problems.append(f"job {job_id}: its events do not end terminal ({trail})")
    if claimed != job["attempt"]:
        result.problems.append(f"job {job_id}: {claimed} claims, attempt {job['attempt']}")


def _audit_run(
    result: Audit, client: MlflowClient, experiments: list[str], job: dict[str, Any], epochs: int
) -> None:
    """One MLflow run tagged with the job's id, its own; ``loss/train`` at each step
    1..epochs exactly once (raw history, not de-duplicated) and the run FINISHED."""
    job_id, run_id = job["id"], job["mlflow_run_id"]
    runs = client.search_runs(experiments, f"tags.`gradq.job_id` = '{job_id}'")
    ids = [r.info.run_id for r in runs]
    if len(ids) > 1:
        result.duplicated.append(f"job {job_id}: {len(ids)} MLflow runs tagged with its id: {ids}")
    if run_id not in ids:
        result.problems.append(f"job {job_id}: its run {run_id} is not among its runs {ids}")
        return
    steps = Counter(p.step for p in client.get_metric_history(run_id, LOSS))
    result.duplicated += [
        f"job {job_id}: {LOSS} step {step} logged {n} times"
        for step, n in sorted(steps.items())
        if n > 1
    ]
    if job["status"] != "succeeded":
        return  # lost already: its run is not expected to be complete
    status = next(r.info.status for r in runs if r.info.run_id == run_id)
    if status != "FINISHED":
        result.problems.append(f"job {job_id}: its run {run_id} is {status}")
    if sorted(steps) != list(range(1, epochs + 1)):
        result.problems.append(f"job {job_id}: {LOSS} steps {sorted(steps)}, not 1..{epochs}")


def not_ready(response: httpx.Response) -> bool:
    """A 503 from ``/readyz``: its documented "not ready yet" while a service boots."""
    return response.status_code == 503 and response.request.url.path == "/readyz"


@dataclass
class ServerErrors:
    """An httpx response hook that counts the 5xx answers a test's clients get, but those the
    test provokes on purpose (``expected``; by default a 503 from ``/readyz``)."""

    expected: Callable[[httpx.Response], bool] = not_ready
    seen: list[str] = field(default_factory=list)

    def __call__(self, response: httpx.Response) -> None:
        if response.status_code >= 500 and not self.expected(response):
            request = response.request
            self.seen.append(f"{response.status_code} {request.method} {request.url.path}")

    @property
    def count(self) -> int:
        return len(self.seen)

    def client(self, url: str, **kwargs: Any) -> httpx.Client:
        """An ``httpx.Client`` on ``url`` (timeout 30 s) whose answers are counted."""
        kwargs.setdefault("timeout", 30)
        return httpx.Client(base_url=url, event_hooks={"response": [self]}, **kwargs)

    def assert_none(self) -> None:
        assert not self.seen, f"{self.count} 5xx answers: {self.seen[:20]}"


def record(row: dict[str, Any]) -> None:
    """One line of the reliability table, printed (``-s``) and appended as JSON to
    ``$GRADQ_CHAOS_REPORT`` when set (bench/RESULTS.md is written from it)."""
    line = json.dumps(row, sort_keys=True)
    print(f"chaos: {line}")
    target = os.environ.get("GRADQ_CHAOS_REPORT")
    if target:
        with open(target, "a") as f:
            f.write(line + "\n")


def serve(stack: Stack, name: str, env: dict[str, str], errors: ServerErrors) -> httpx.Client:
    """``gradq serve`` on a free port (read from its log), ready, on 127.0.0.1 only."""
    url = f"http://127.0.0.1:{stack.start_server(name, [GRADQ, 'serve', '--no-mlflow-ui'], env)}"
    wait_until("gradq serve", lambda: httpx.get(f"{url}/readyz", timeout=10).is_success, 180,
               context=stack.logs)  # fmt: skip
    stack.assert_loopback_only()
    return errors.client(url)


def kill_serve(stack: Stack, name: str, attempts: list[int]) -> None:
    """SIGKILL the ``gradq serve`` started as ``name`` with everything it runs, and the
    attempts' worker processes (``attempts``: their pids, from the jobs' progress), all at
    once; return when they are all gone. Ray's daemons and its worker processes run in
    sessions of their own, outside the process group; killed only after it, an attempt with
    its lease still valid could finish its job meanwhile (seen on a fast host)."""
    process = stack.processes[name]
    family = [process.pid, *descendants(process.pid)]
    for pid in {*attempts, *family}:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    stack.stopped.add(name)
    kill_ours(str(stack.ray_temp))  # anything of the old Ray left
    wait_until("the old processes to be gone",
               lambda: not any(alive(p) for p in family + attempts), 60)  # fmt: skip


def kill_ours(marker: str) -> None:
    """SIGKILL every process whose command line holds ``marker`` (a temp dir of this test)."""
    for pid, (_, cmd) in processes().items():
        if marker in cmd and pid != os.getpid():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, 9)


# --- a private PostgreSQL cluster ---------------------------------------------------------


@dataclass
class PrivatePostgres:
    """A throw-away cluster of this test session on 127.0.0.1:<port> (trust auth), so that
    stopping it breaks no one else's tests. Runs as the ``postgres`` user when we are root
    (initdb refuses root)."""

    data: Path
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def database(self) -> str:
        """A fresh database in the cluster; its SQLAlchemy URL."""
        name = f"gradq_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self._libpq("postgres"), autocommit=True) as admin:
            admin.execute(f"CREATE DATABASE {name}")
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"

    def _libpq(self, db: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}"

    def pg_ctl(self, *args: str) -> None:
        _as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), *args])

    def start(self, *, tries: int = 10) -> None:
        """Start on ``self.port``; while another process holds that port (taken after it was
        found free, or not yet let go), wait a second and try again."""
        for attempt in range(tries):
            seen = self.log.stat().st_size if self.log.exists() else 0
            try:
                self.pg_ctl("-w", "-t", "60", "-o", f"-p {self.port} -k {self.data}", "start")
                return
            except RuntimeError:
                if attempt + 1 == tries or not self.port_taken(since=seen):
                    raise
            time.sleep(1.0)

    def port_taken(self, *, since: int = 0) -> bool:
        """Whether the server's log says, after byte ``since``, that its port was taken."""
        with self.log.open("rb") as f:
            f.seek(since)
            return b"Address already in use" in f.read()

    def stop(self, mode: str = "fast") -> None:
        self.pg_ctl("-w", "-t", "60", "-m", mode, "stop")

    def answers(self) -> bool:
        try:
            psycopg.connect(self._libpq("postgres"), connect_timeout=2).close()
        except psycopg.OperationalError:
            return False
        return True


def _as_postgres(command: list[str]) -> None:
    if os.geteuid() == 0:
        command = ["runuser", "-u", "postgres", "--", *command]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {done.stdout}\n{done.stderr}")


def private_postgres_missing() -> str | None:
    """Why no private cluster can be made here (None: it can)."""
    for tool in ("initdb", "pg_ctl"):
        if not (PG_BIN / tool).exists():
            return f"no {PG_BIN / tool} (set GRADQ_TEST_PG_BIN to PostgreSQL's bin folder)"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without runuser: initdb refuses root"
    return None


@contextlib.contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    root = Path(tempfile.mkdtemp(prefix="gqpg"))
    data, log = root / "data", root / "postgres.log"
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    try:
        _as_postgres([str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres",
                      "--auth=trust", "-E", "UTF8", "--no-sync"])  # fmt: skip
        with (data / "postgresql.conf").open("a") as conf:
            conf.write("listen_addresses = '127.0.0.1'\nfsync = off\nmax_connections = 200\n")
        for attempt in range(5):  # a port found free may be taken before the server binds it
            cluster = PrivatePostgres(data=data, port=free_port(), log=log)
            try:
                cluster.start(tries=1)
                break
            except RuntimeError:
                if attempt == 4 or not cluster.port_taken():
                    raise
        try:
            yield cluster
        finally:
            with contextlib.suppress(Exception):
                cluster.stop("immediate")
    finally:
        shutil.rmtree(root, ignore_errors=True)
