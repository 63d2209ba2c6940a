"""GRADQ_MAX_JOB_MEMORY: a job whose estimated memory is over it is refused with a 422 that
names the field behind most of it; the setting takes bytes or a size."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from api.settings import Settings
from core.memory import GiB, MiB, estimate, size
from core.spec import parse_spec

# a million rows through a 4096-wide layer in batches of 131,072: its activations dominate
BIG = {"dataset": {"name": "moons", "n_samples": 1_000_000}, "model": {"hidden": [4096]},
       "optimizer": {"epochs": 1, "batch_size": 131_072}}  # fmt: skip
IRIS = {"dataset": "iris", "model": {"hidden": [8]}, "optimizer": {"epochs": 3}}


def test_a_job_over_the_memory_limit_is_a_422_naming_the_field(
    make_client: Callable[..., TestClient],
) -> None:
    needs = estimate(parse_spec(BIG)).total
    assert needs > 4 * GiB  # over the default limit
    client = make_client()
    r = client.post("/v1/jobs", json=BIG)
    assert r.status_code == 422
    error = r.json()["error"]
    assert (error["code"], error["field"]) == ("invalid_spec", "optimizer.batch_size")
    assert error["message"] == (
        f"this job needs about {size(needs)} of memory (activations of a batch of 131,072 rows"
        " × 4,098 units); the limit is 4 GiB (GRADQ_MAX_JOB_MEMORY)"
    )
    assert client.post("/v1/jobs", json=IRIS).status_code == 201
    roomy = make_client(max_job_memory=needs)  # the same job, under a larger limit
    assert roomy.post("/v1/jobs", json=BIG).status_code == 201


def test_a_smaller_limit_refuses_a_smaller_job(make_client: Callable[..., TestClient]) -> None:
    job = {"dataset": {"name": "blobs", "n_samples": 100_000, "n_features": 100}}
    needs = estimate(parse_spec(job)).total
    client = make_client(max_job_memory=needs - 1)
    r = client.post("/v1/jobs", json=job)
    assert (r.status_code, r.json()["error"]["field"]) == (422, "dataset.n_samples")
    assert r.json()["error"]["message"].endswith(f"the limit is {size(needs - 1)} "
                                                 "(GRADQ_MAX_JOB_MEMORY)")  # fmt: skip


def test_the_smallest_limit_allowed_admits_a_small_job() -> None:
    """GRADQ_MAX_JOB_MEMORY may be as low as 256 MiB: above what every job counts."""
    from core import memory

    floor = Settings.model_fields["max_job_memory"].metadata[0].ge
    assert memory.ATTEMPT_BYTES + memory.HEAP_SLACK < floor == 256 * MiB
    assert estimate(parse_spec(IRIS)).total < floor


def test_the_limit_is_read_as_bytes_or_a_size(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GRADQ_MAX_JOB_MEMORY", raising=False)
    assert Settings().max_job_memory == Settings().limits.max_job_memory == 4 * GiB
    for value, expected in [("2GiB", 2 * GiB), ("1.5 GiB", 3 * GiB // 2), ("536870912", 512 * MiB)]:
        monkeypatch.setenv("GRADQ_MAX_JOB_MEMORY", value)
        assert Settings().limits.max_job_memory == expected
    with pytest.raises(ValidationError) as info:
        Settings(max_job_memory="100MiB")
    assert info.value.errors()[0]["loc"] == ("max_job_memory",)


# A fresh interpreter serves submits over the limit and under it, then lists what it loaded.
LIGHT_SUBMIT = """
import sys, tempfile
from fastapi.testclient import TestClient
from api.main import create_app
from api.settings import Settings
from db.migrate import upgrade

folder = tempfile.mkdtemp()
upgrade(f"sqlite:///{folder}/gradq.db")
settings = Settings(database_url=f"sqlite:///{folder}/gradq.db",
                    mlflow_tracking_uri=f"sqlite:///{folder}/mlflow.db",
                    allowed_hosts="testserver")
with TestClient(create_app(settings)) as client:
    codes = [client.post("/v1/jobs", json=job).status_code for job in JOBS]
print(codes, sorted({m.split(".")[0] for m in sys.modules} & {"torch", "sklearn", "scipy"}))
"""


def test_the_admission_estimate_loads_no_training_stack_into_the_api() -> None:
    """core.memory is arithmetic: the API process that checks every submit against the limit
    never imports torch or scikit-learn (they would put hundreds of thousands of objects
    under its garbage collector and cost every request)."""
    import subprocess
    import sys

    script = f"JOBS = {[BIG, IRIS]!r}\n" + LIGHT_SUBMIT
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[-2] == "[422, 201] []"
