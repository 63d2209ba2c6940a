"""Soak: many clients submit many small jobs while one fault is injected; every request is
accounted for at the end.

    .venv/bin/python bench/soak.py                      # 1,000 jobs, 20 clients, ~5 min, serve-kill
    .venv/bin/python bench/soak.py --jobs 60 --clients 8 --duration 25 --fault dispatcher-kill

It boots its own deployment in a temporary folder (``gradq serve`` on SQLite; ``gradq api`` +
``gradq dispatcher`` for ``dispatcher-kill``; a private PostgreSQL cluster for
``postgres-restart``; an ``mlflow server`` for ``mlflow-down``), spreads the submissions over
``--duration`` seconds and injects ``--fault`` halfway. Each submission carries an
Idempotency-Key; a share is invalid (must be a 4xx), a share is cancelled at a random moment,
a share is sent twice with the same key (must return the same job). A request answered 503 or
broken by the fault (no answer) is retried with its key, as a client would.

At the end: accepted = distinct jobs = terminal jobs, rejected = 4xx, duplicates (a key that
made two jobs, or more jobs listed than accepted) = 0, lost (accepted, not terminal or not
listed) = 0, failed (a valid job the fault made fail) = 0, 5xx other than the outage's 503 = 0;
throughput and latency percentiles.
Exit status 1 when any of these does not hold.
"""

from __future__ import annotations

import sys
from pathlib import Path

# The checkout's gradq, whether or not it is installed, and the test harnesses it drives.
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
for helpers in ("tests/acceptance", "tests/integration/deploy", "tests/chaos"):
    sys.path.insert(1, str(ROOT / helpers))

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
from chaos_harness import chaos_env, kill_ours, private_postgres, private_postgres_missing
from deploy_stack import Stack
from gradq_service import GRADQ

FAULTS = ("none", "serve-kill", "dispatcher-kill", "postgres-restart", "mlflow-down")
TERMINAL = ("succeeded", "failed", "cancelled")
INVALID = [  # one section of a valid spec replaced by a wrong one
    {"optimizer": {"epochs": 0}},
    {"model": {"hidden": [8, -1]}},
    {"dataset": "no-such-data"},
    {"optimizer": {"lr": "fast"}},
]


@dataclass
class Tally:
    requests: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    no_answer: int = 0  # transport errors (the fault broke the connection), then retried
    latencies: list[float] = field(default_factory=list)  # seconds, answered requests
    accepted: dict[str, str] = field(default_factory=dict)  # key -> job id
    rejected: int = 0
    rejected_without_field: int = 0
    duplicates: int = 0  # a replayed key that came back with another job
    replays: int = 0
    cancelled: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)


def small_job(i: int, rng: random.Random) -> dict[str, Any]:
    return {
        "name": f"soak-{i}", "dataset": "iris", "seed": i,
        "model": {"hidden": [rng.choice([4, 8, 16])]},
        "optimizer": {"epochs": rng.randint(2, 5), "batch_size": 16, "lr": 0.05},
        "regularization": {"early_stopping": {"enabled": False}},
    }  # fmt: skip


def broken(spec: dict[str, Any], change: dict[str, Any]) -> dict[str, Any]:
    out = dict(spec)
    for key, value in change.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


class Client(threading.Thread):
    def __init__(self, url: str, plan: list[tuple[float, int]], tally: Tally, args: Any,
                 start: float, seed: int) -> None:  # fmt: skip
        super().__init__(daemon=True)
        self.url, self.plan, self.tally, self.args, self.t0 = url, plan, tally, args, start
        self.rng = random.Random(seed)

    def request(self, http: httpx.Client, method: str, path: str, **kw: Any) -> httpx.Response:
        """Send until answered with something other than 503 (the client's retry policy)."""
        deadline = time.monotonic() + self.args.retry_for
        while True:
            t = time.perf_counter()
            try:
                r = http.request(method, path, **kw)
            except httpx.TransportError:
                with self.tally.lock:
                    self.tally.no_answer += 1
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
                continue
            with self.tally.lock:
                self.tally.requests += 1
                self.tally.statuses[r.status_code] += 1
                self.tally.latencies.append(time.perf_counter() - t)
            if r.status_code != 503 or time.monotonic() > deadline:
                return r
            time.sleep(0.5)

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as http:
            for at, i in self.plan:
                delay = self.t0 + at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                self.one(http, i)

    def one(self, http: httpx.Client, i: int) -> None:
        spec = small_job(i, self.rng)
        invalid = self.rng.random() < self.args.invalid_share
        if invalid:
            spec = broken(spec, self.rng.choice(INVALID))
        key = f"soak-{i}-{uuid.uuid4().hex[:8]}"
        headers = {"Idempotency-Key": key}
        r = self.request(http, "POST", "/v1/jobs", json=spec, headers=headers)
        if r.status_code >= 400:
            body = _json(r)
            with self.tally.lock:
                if 400 <= r.status_code < 500:
                    self.tally.rejected += 1
                    if r.status_code == 422 and not (body.get("error") or {}).get("field"):
                        self.tally.rejected_without_field += 1
            return
        job_id = r.json()["id"]
        with self.tally.lock:
            self.tally.accepted[key] = job_id
        if self.rng.random() < self.args.retry_share:  # the answer "got lost": send it again
            again = self.request(http, "POST", "/v1/jobs", json=spec, headers=headers)
            with self.tally.lock:
                self.tally.replays += 1
                if again.status_code not in (200, 201) or again.json()["id"] != job_id:
                    self.tally.duplicates += 1
        if self.rng.random() < self.args.cancel_share:
            time.sleep(self.rng.uniform(0, 3))
            c = self.request(http, "POST", f"/v1/jobs/{job_id}/cancel")
            if c.status_code == 202:
                with self.tally.lock:
                    self.tally.cancelled.add(job_id)


def _json(r: httpx.Response) -> Any:
    try:
        return r.json()
    except ValueError:
        return {}


# --- the deployment and its faults ----------------------------------------------------------


class Deployment:
    def __init__(self, fault: str, folder: Path, stack: Stack, pg: Any) -> None:
        self.fault, self.folder, self.stack, self.pg = fault, folder, stack, pg
        self.port = 0  # a free one at the first start; restarts keep it (clients know it)
        self.url = ""
        extra: dict[str, str] = {"RAY_TMPDIR": str(stack.ray_temp), "GRADQ_LEASE_SECONDS": "5",
                                 "GRADQ_HEARTBEAT_SECONDS": "1",
                                 "GRADQ_MAX_QUEUED_PER_TENANT": "100000"}  # fmt: skip
        if pg is not None:
            extra["GRADQ_DATABASE_URL"] = pg.database()
        self.mlflow_port = 0  # the same: its URI is in the service's settings
        self.env = chaos_env(folder, **extra)
        self.generation = 0
        self.recovered_s: float | None = None

    def start(self) -> None:
        if self.fault == "mlflow-down":
            self.start_mlflow()
            self.env["GRADQ_MLFLOW_TRACKING_URI"] = f"http://127.0.0.1:{self.mlflow_port}"
        if self.fault == "dispatcher-kill":
            self.stack.start("dispatcher", [GRADQ, "dispatcher"], self.env)
            self.wait("the dispatcher", lambda: "running (Ray" in self.stack.log("dispatcher"))
            self.port = self.stack.start_server("api", [GRADQ, "api"], self.env, self.port)
        else:
            self.start_serve()
        self.url = f"http://127.0.0.1:{self.port}"
        self.wait("the API", lambda: httpx.get(f"{self.url}/readyz", timeout=5).is_success)
        self.stack.assert_loopback_only()

    def start_serve(self) -> None:
        name = f"serve-{self.generation}"
        command = [GRADQ, "serve", "--no-mlflow-ui"]
        self.port = self.stack.start_server(name, command, self.env, self.port)

    def start_mlflow(self) -> None:
        bin_dir = Path(GRADQ).parent
        self.mlflow_port = self.stack.start_server(f"mlflow-{self.generation}", [
            str(bin_dir / "mlflow"), "server", "--backend-store-uri",
            f"sqlite:///{self.folder}/mlflow-server.db", "--serve-artifacts",
            "--artifacts-destination", str(self.folder / "mlartifacts"), "--host", "127.0.0.1",
            "--workers", "1",
        ], self.env, self.mlflow_port)  # fmt: skip
        health = f"http://127.0.0.1:{self.mlflow_port}/health"
        self.wait("MLflow", lambda: httpx.get(health, timeout=2).status_code == 200)

    def wait(self, what: str, check: Any, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                if check():
                    return
            time.sleep(0.3)
        raise SystemExit(f"{what} did not come up in {timeout:g} s:\n{self.stack.logs()}")

    def inject(self, outage_s: float) -> None:
        t0 = time.monotonic()
        self.generation += 1
        if self.fault == "serve-kill":
            p = self.stack.processes[f"serve-{self.generation - 1}"]
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=30)
            self.stack.stopped.add(f"serve-{self.generation - 1}")
            kill_ours(str(self.stack.ray_temp))
            self.start_serve()
            self.wait("the API again", lambda: httpx.get(f"{self.url}/readyz",
                                                         timeout=5).is_success)  # fmt: skip
        elif self.fault == "dispatcher-kill":
            name = "dispatcher" if self.generation == 1 else f"dispatcher-{self.generation - 1}"
            p = self.stack.processes[name]
            os.kill(p.pid, signal.SIGKILL)
            p.wait(timeout=30)
            self.stack.stopped.add(name)
            kill_ours(str(self.stack.ray_temp))
            new = f"dispatcher-{self.generation}"
            self.stack.start(new, [GRADQ, "dispatcher"], self.env)
            self.wait("the dispatcher again", lambda: "running (Ray" in self.stack.log(new))
        elif self.fault == "postgres-restart":
            self.pg.stop("fast")
            time.sleep(outage_s)
            self.pg.start()
            self.wait("the API on PostgreSQL again", lambda: httpx.get(
                f"{self.url}/v1/jobs?limit=1", timeout=5).status_code == 200)  # fmt: skip
        elif self.fault == "mlflow-down":
            self.stack.stop(f"mlflow-{self.generation - 1}", grace=0)
            time.sleep(outage_s)
            self.start_mlflow()
        self.recovered_s = time.monotonic() - t0


@contextlib.contextmanager
def deployment(fault: str) -> Iterator[Deployment]:
    folder = Path(tempfile.mkdtemp(prefix="gradq-soak-"))
    ray_temp = Path(tempfile.mkdtemp(prefix="gqk", dir="/tmp"))
    stack = Stack(folder=folder, ray_temp=ray_temp)
    try:
        with contextlib.ExitStack() as stack_ctx:
            pg = None
            if fault == "postgres-restart":
                missing = private_postgres_missing()
                if missing:
                    raise SystemExit(f"postgres-restart needs a private cluster: {missing}")
                pg = stack_ctx.enter_context(private_postgres())
            d = Deployment(fault, folder / "data", stack, pg)
            d.folder.mkdir()
            try:
                d.start()
                yield d
            finally:
                stack.stop_all()
                kill_ours(str(ray_temp))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(ray_temp, ignore_errors=True)


# --- the run and its accounting --------------------------------------------------------------


def listed_jobs(http: httpx.Client) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 200} | ({"cursor": cursor} if cursor else {})
        page = http.get("/v1/jobs", params=params).json()
        out.update({j["id"]: j for j in page["items"]})
        cursor = page.get("next_cursor")
        if not cursor:
            return out


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def soak(args: Any) -> dict[str, Any]:
    rng = random.Random(args.seed)
    tally = Tally()
    with deployment(args.fault) as d:
        per_job = args.duration / args.jobs
        plan: list[list[tuple[float, int]]] = [[] for _ in range(args.clients)]
        for i in range(args.jobs):
            plan[i % args.clients].append((i * per_job, i))
        started = time.monotonic()
        clients = [Client(d.url, p, tally, args, started, rng.randrange(2**32)) for p in plan]
        for c in clients:
            c.start()
        fault_at = args.fault_at if args.fault_at is not None else args.duration / 2
        in_flight = 0
        if args.fault != "none":
            time.sleep(max(0.0, started + fault_at - time.monotonic()))
            with httpx.Client(base_url=d.url, timeout=60) as http:
                in_flight = sum(j["status"] not in TERMINAL for j in listed_jobs(http).values())
            d.inject(args.outage)
        for c in clients:
            c.join()
        submitted_s = time.monotonic() - started
        with httpx.Client(base_url=d.url, timeout=60) as http:
            ids = set(tally.accepted.values())
            deadline = time.monotonic() + args.drain_timeout
            while True:
                listed = listed_jobs(http)
                open_ = [i for i in ids if listed.get(i, {}).get("status") not in TERMINAL]
                if not open_ or time.monotonic() > deadline:
                    break
                time.sleep(1.0)
            elapsed = time.monotonic() - started
    statuses = Counter(listed.get(i, {}).get("status", "missing") for i in ids)
    failed = [
        {"id": i, "error": (listed[i].get("error") or {})} for i in ids
        if listed.get(i, {}).get("status") == "failed"
    ]  # fmt: skip
    server_5xx = sum(n for code, n in tally.statuses.items() if code >= 500 and code != 503)
    extra_jobs = len(set(listed) - ids)
    report = {
        "fault": args.fault, "in_flight_at_fault": in_flight, "jobs_planned": args.jobs,
        "clients": args.clients,
        "requests": tally.requests, "no_answer_retried": tally.no_answer,
        "http_statuses": dict(sorted(tally.statuses.items())),
        "accepted": len(ids), "terminal": sum(statuses[s] for s in TERMINAL),
        "by_status": dict(statuses), "rejected_4xx": tally.rejected,
        "rejected_without_field": tally.rejected_without_field,
        "replays": tally.replays, "cancel_requests_202": len(tally.cancelled),
        "duplicates": tally.duplicates + extra_jobs,
        "lost": len(ids) - sum(statuses[s] for s in TERMINAL),
        "http_5xx": server_5xx, "http_503_retried": tally.statuses.get(503, 0),
        "recover_s": None if d.recovered_s is None else round(d.recovered_s, 1),
        "submit_s": round(submitted_s, 1), "elapsed_s": round(elapsed, 1),
        "jobs_per_min": round(sum(statuses[s] for s in TERMINAL) / elapsed * 60, 1),
        "latency_p50_ms": round(1000 * percentile(tally.latencies, 0.50), 1),
        "latency_p99_ms": round(1000 * percentile(tally.latencies, 0.99), 1),
        "latency_max_ms": round(1000 * max(tally.latencies, default=float("nan")), 1),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "failed_jobs": [{"id": f["id"], "type": f["error"].get("type"),
                         "message": str(f["error"].get("message"))[:300]} for f in failed],
    }  # fmt: skip
    report["ok"] = (report["lost"] == 0 and report["duplicates"] == 0 and server_5xx == 0
                    and report["rejected_without_field"] == 0 and not failed
                    and report["accepted"] == report["terminal"])  # fmt: skip
    return report


def parse(argv: list[str] | None = None) -> Any:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=1000)
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--duration", type=float, default=300.0, help="seconds to spread submits over")
    p.add_argument("--fault", choices=FAULTS, default="serve-kill")
    p.add_argument("--fault-at", type=float, default=None, help="seconds in (default: half)")
    p.add_argument("--outage", type=float, default=10.0, help="postgres/mlflow: seconds down")
    p.add_argument("--invalid-share", type=float, default=0.1)
    p.add_argument("--cancel-share", type=float, default=0.1)
    p.add_argument("--retry-share", type=float, default=0.2)
    p.add_argument("--retry-for", type=float, default=180.0, help="a client's retry budget, s")
    p.add_argument("--drain-timeout", type=float, default=900.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="also write the report here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    report = soak(args)
    width = max(len(k) for k in report)
    for k, v in report.items():
        print(f"{k:<{width}}  {v}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
