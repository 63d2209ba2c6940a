"""Cancel benchmark: ``gradq cancel`` on a running job, as a user types it, until it returns
with the job cancelled.

    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 .venv/bin/python bench/cancel.py [--cancels 20]

A real ``gradq --home TMP serve --no-mlflow-ui --port 0`` (SQLite, MLflow's SQLite store, a
local Ray) in a temporary folder. ``--cancels`` times: the example job made long
(``examples/digits-long.yaml``, 5000 epochs: it ends only by its cancel) is submitted over
HTTP and, once it trains (its first progress), cancelled with the command
``gradq cancel ID`` (a subprocess, as typed), which waits for the job to stop and prints its
status. Per cancel, from the instant before the command starts:

* returned: until the command exited (it printed ``cancelled``);
* cancelled: until the job's ``finished_at`` (the database's clock is this machine's);
* signalled, stopped: until its attempt learnt of the stop, and until its training loop
  stopped between two steps (``progress.stop``: where the time between goes).

The anchor, in the same run: ``gradq --version``, the command's own start (Python, imports),
which every ``gradq cancel`` pays before its request. p50/p99 nearest-rank (of 20 the p99 is
the slowest). The target: the job cancelled within a second, on an idle machine.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
GRADQ = str(Path(sys.executable).with_name("gradq"))
LONG = ROOT / "examples" / "digits-long.yaml"
TARGET_S = 1.0


def nearest_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def start(folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRADQ_")}
    env.update(GRADQ_RAY_NUM_CPUS="2", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    log = folder / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [GRADQ, "--home", str(folder / "home"), "serve", "--no-mlflow-ui", "--port", "0"],
            env=env, cwd=folder, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        found = re.search(rb"Uvicorn running on http://127\.0\.0\.1:(\d+)", log.read_bytes())
        if found:
            url = f"http://127.0.0.1:{int(found.group(1))}"
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/readyz", timeout=10).is_success:
                    return process, url
        if process.poll() is not None:
            break
        time.sleep(0.5)
    raise SystemExit(f"gradq serve did not start:\n{log.read_text()[-3000:]}")


def stop(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=40)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)


def timed(command: list[str], env: dict[str, str]) -> tuple[float, str]:
    t0 = time.time()
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    took = time.time() - t0
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed: {done.stderr}")
    return took, done.stdout


def one_cancel(http: httpx.Client, env: dict[str, str]) -> dict[str, float]:
    job = http.post("/v1/jobs", json=yaml.safe_load(LONG.read_text())).json()
    deadline = time.monotonic() + 300
    while not (http.get(f"/v1/jobs/{job['id']}").json().get("progress") or {}).get("epoch"):
        if time.monotonic() > deadline:
            raise SystemExit(f"job {job['id']} never trained")
        time.sleep(0.1)
    t0 = time.time()
    returned, out = timed([GRADQ, "cancel", job["id"][:8]], env)
    final = http.get(f"/v1/jobs/{job['id']}").json()
    if final["status"] != "cancelled" or not out.rstrip().endswith("cancelled"):
        raise SystemExit(f"not cancelled: {out!r} {final['status']}")
    finished = datetime.fromisoformat(final["finished_at"]).timestamp()
    stop = (final.get("progress") or {}).get("stop") or {}
    return {
        "returned": returned,
        "cancelled": finished - t0,
        "signalled": stop.get("signalled_at", math.nan) - t0,
        "stopped": stop.get("stopped_at", math.nan) - t0,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cancels", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        process, url = start(Path(tmp))
        try:
            env = {**os.environ, "GRADQ_URL": url}
            anchor = [timed([GRADQ, "--version"], env)[0] for _ in range(5)]
            with httpx.Client(base_url=url, timeout=60) as http:
                runs = [one_cancel(http, env) for _ in range(args.cancels)]
        finally:
            stop(process)
    base = nearest_rank(anchor, 0.5)
    print(f"gradq cancel on a running job, {args.cancels} cancels; {platform.node()}, "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")  # fmt: skip
    print(f"anchor: gradq --version p50 {base:.3f} s (the command's start)")
    print("| from `gradq cancel` starting to | p50 | p99 | p50 / anchor | target |")
    print("|---|---|---|---|---|")
    rows = (
        ("signalled", ""),
        ("stopped", ""),
        ("returned", ""),
        ("cancelled", f"< {TARGET_S:g} s"),
    )
    for key, target in rows:
        values = [r[key] for r in runs]
        p50, p99 = nearest_rank(values, 0.5), nearest_rank(values, 0.99)
        met = "" if not target else (" met" if p50 < TARGET_S else " NOT met")
        print(f"| {key} | {p50:.3f} s | {p99:.3f} s | {p50 / base:.2f}× | {target}{met} |")
    summary: dict[str, Any] = {k: [round(r[k], 3) for r in runs] for k in runs[0]}
    print(summary)


if __name__ == "__main__":
    main()
