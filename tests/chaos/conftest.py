"""The chaos suite: real processes (``gradq serve``, ``gradq api``, ``gradq dispatcher``, an
``mlflow server``, a private PostgreSQL cluster) broken on purpose while jobs run.

Run it alone with ``pytest -m chaos`` (that also selects the worker- and node-loss tests of
tests/integration). Helpers come from tests/acceptance/gradq_service.py (a service as a
subprocess) and tests/integration/deploy/deploy_stack.py (process groups, clean stops).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

TESTS = Path(__file__).resolve().parents[1]
for helper_dir in (TESTS / "acceptance", TESTS / "integration" / "deploy", TESTS / "chaos"):
    if str(helper_dir) not in sys.path:
        sys.path.insert(0, str(helper_dir))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).parent == here:
            item.add_marker(pytest.mark.chaos)
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Any]:
    """The processes a chaos test starts (logs in ``tmp_path``, a short Ray temp dir of its
    own); all SIGKILLed at the end (they are being broken anyway: no graceful stop to wait
    for), then whatever of its Ray is left, found by that temp dir."""
    from chaos_harness import kill_ours
    from deploy_stack import Stack

    ray_temp = Path(tempfile.mkdtemp(prefix="gqc", dir="/tmp"))  # short: Unix socket paths
    stack = Stack(folder=tmp_path, ray_temp=ray_temp)
    try:
        yield stack
    finally:
        for process in stack.processes.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                process.wait(timeout=10)
        kill_ours(str(ray_temp))
        shutil.rmtree(ray_temp, ignore_errors=True)
