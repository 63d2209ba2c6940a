"""The chaos suite: real processes (``gradq serve``, ``gradq api``, ``gradq dispatcher``, an
``mlflow server``, a private PostgreSQL cluster) broken on purpose while jobs run.

Run it alone with ``pytest -m chaos`` (that also selects the worker- and node-loss tests of
tests/integration). Helpers come from tests/acceptance/gradq_service.py (a service as a
subprocess) and tests/integration/deploy/deploy_stack.py (process groups, clean stops).
"""

from __future__ import annotations

import sys
from pathlib import Path

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
