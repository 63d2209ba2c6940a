"""Property-based requests from /openapi.json against the running API (``gradq api``, no
dispatcher: fuzzed jobs queue and never run): no 5xx, every response as documented.

schemathesis generates the cases (``operation.as_strategy()``) and validates them; its
pytest plugin is not used because it does not run on pytest 9 (it sets ``Item._nodeid``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from gradq_service import Service, running, service_env
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

pytestmark = pytest.mark.slow

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
EXAMPLES_PER_OPERATION = 25


@pytest.fixture(scope="module")
def api(folder: Path) -> Iterator[Service]:
    env = service_env(folder, GRADQ_MAX_QUEUED_PER_TENANT="100000")
    with running(["api"], folder, env, ready="/healthz") as service:
        yield service


def operations(api: Service) -> list[Any]:
    schema = schemathesis.openapi.from_url(f"{api.url}/openapi.json")
    # The SSE stream is left out: it ends only with its job, and these jobs never run.
    schema = schema.exclude(path_regex=r"/events$")
    return [result.ok() for result in schema.get_all_operations()]


def test_the_schema_has_every_resource(api: Service) -> None:
    paths = {op.path for op in operations(api)}
    assert {"/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/cancel", "/v1/datasets",
            "/v1/gradcheck", "/healthz", "/readyz", "/metrics"} <= paths  # fmt: skip


def test_every_operation_answers_as_documented(api: Service) -> None:
    failures: list[str] = []
    for operation in operations(api):

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def check(case: schemathesis.Case) -> None:
            case.call_and_validate(base_url=api.url, checks=CHECKS, timeout=60)

        try:
            check()
        except Exception as exc:
            failures.append(f"{operation.method.upper()} {operation.path}: {exc}")
    assert not failures, "\n\n".join(failures)
