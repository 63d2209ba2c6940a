"""The soak in short: ``bench/soak.py`` with 60 jobs from 8 clients over ~25 s while the whole
``gradq serve`` is SIGKILLed and restarted (the full run, 1,000 jobs over ~5 min, is a
benchmark run by hand: see bench/RESULTS.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from chaos_harness import record

pytestmark = pytest.mark.timeout(420)

ROOT = Path(__file__).resolve().parents[2]


def test_short_soak_with_serve_killed_accounts_for_every_request(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "soak.py"), "--jobs", "60", "--clients", "8",
         "--duration", "25", "--fault", "serve-kill", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    assert out.exists(), done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    record({  # the soak's own counts (bench/soak.py), recorded before they are checked
        "fault": "short soak: 60 jobs, 8 clients, gradq serve SIGKILL + restart",
        "in_flight": report["in_flight_at_fault"], "accepted": report["accepted"],
        "lost": report["lost"], "duplicated": report["duplicates"],
        "http_5xx": report["http_5xx"], "recover_s": report["recover_s"],
        "checked": f"{report['requests']} requests accounted for; "
                   f"p99 {report['latency_p99_ms']} ms",
    })  # fmt: skip
    assert report["lost"] == 0 and report["duplicates"] == 0, report
    assert report["http_5xx"] == 0 and report["rejected_without_field"] == 0, report
    assert report["accepted"] == report["terminal"] > 0, report
    assert report["rejected_4xx"] > 0 and report["replays"] > 0, report  # the mix was sent
    assert report["accepted"] + report["rejected_4xx"] == 60, report  # every submission answered
    assert report["by_status"].get("failed", 0) == 0, report
    assert done.returncode == 0, done.stdout[-3000:]
