"""Fault 6: bad input at volume against a running ``gradq serve``.

Hundreds of requests a user should never send: specs with one field set to a random JSON
value (hypothesis), malformed or hostile JSON, bodies over the limit (declared and streamed),
and CSV uploads with NaN, text, nothing, a header only, or a target that is not a column.
Each must be a 4xx in the one error shape, naming the field where there is one; the server
accepts a spec exactly when ``core.spec.parse_spec`` does; there is never a 5xx; and a valid
job still trains to the end afterwards.
"""

from __future__ import annotations

import copy
import json
import re
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from chaos_harness import TERMINAL, audit, iris, record, wait_until
from gradq_service import Service, running, service_env
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.spec import InvalidSpec, SpecLimits, parse_spec

pytestmark = pytest.mark.timeout(300)

LIMITS = {"GRADQ_MAX_PARAMETERS": "20000", "GRADQ_MAX_EPOCHS": "20",
          "GRADQ_MAX_BODY_BYTES": "65536", "GRADQ_MAX_UPLOAD_BYTES": "65536"}  # fmt: skip
SPEC_LIMITS = SpecLimits(max_parameters=20000, max_epochs=20, max_hidden_layers=64)
BASE = iris("fuzz", epochs=2)
PATHS = [
    (), ("name",), ("dataset",), ("dataset", "name"), ("dataset", "target"), ("dataset", "id"),
    ("model",), ("model", "hidden"), ("model", "activation"), ("optimizer",),
    ("optimizer", "epochs"), ("optimizer", "batch_size"), ("optimizer", "lr"),
    ("regularization",), ("regularization", "dropout"), ("regularization", "early_stopping"),
    ("seed",), ("resources",), ("resources", "cpus"), ("max_attempts",), ("gradcheck",),
    ("checkpoint_every",), ("loss",), ("no_such_field",),
]  # fmt: skip
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=30)
    | st.floats(allow_nan=False, allow_infinity=False) | st.sampled_from(
        ["relu", "tanh", "iris", "upload", "csv", "", "\x00", "NaN", "1e309", "-1"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                  max_size=4),
    max_leaves=8,
)  # fmt: skip


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    folder = tmp_path_factory.mktemp("gradq-bad-input")
    with running(["serve", "--no-mlflow-ui"], folder, {**service_env(folder), **LIMITS}) as s:
        yield s


@pytest.fixture(scope="module")
def http(service: Service) -> Iterator[httpx.Client]:
    with service.client() as client:
        yield client


def server_answers(http: httpx.Client) -> dict[str, int]:
    """The server's own count of its HTTP answers by status class ("2xx", …, "5xx"): every
    request counts, whoever sent it and whatever the test did with the answer."""
    r = http.get("/metrics")
    assert r.status_code == 200, r.text
    found = re.findall(r'^gradq_http_responses_total\{status="(\dxx)"\} (\d+)$', r.text, re.M)
    assert found, f"no gradq_http_responses_total in /metrics:\n{r.text}"
    return {name: int(n) for name, n in found}


@pytest.fixture(autouse=True)
def no_5xx(service: Service, http: httpx.Client) -> Iterator[None]:
    """Each test: the server answered no 5xx while it ran (its own count, in /metrics)."""
    before = server_answers(http)["5xx"]
    yield
    got = server_answers(http)["5xx"] - before
    assert got == 0, f"the server answered {got} 5xx during this test:\n{service.log_tail()}"


def check_refusal(
    r: httpx.Response, tally: Counter[int], *, needs_field: bool = True
) -> dict[str, Any]:
    """A 4xx in the error shape; a 422 names the field (or fields) that was wrong."""
    tally[r.status_code] += 1
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:500])
    body = r.json()
    assert body["error"]["code"] and body["error"]["message"], body
    assert "Traceback" not in r.text
    if needs_field and r.status_code == 422:
        assert body["error"]["field"] or body.get("errors"), body
    return dict(body)


def with_value(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    spec = copy.deepcopy(BASE)
    if not path:
        return value if isinstance(value, dict) else {"spec": value}
    node = spec
    for key in path[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[path[-1]] = value
    return spec


def random_specs(http: httpx.Client, tally: Counter[int]) -> None:
    """120 specs with one field set to random JSON: the server accepts exactly those that
    core's validation accepts, and refuses the others with a 4xx."""

    @settings(max_examples=120, suppress_health_check=list(HealthCheck), deadline=None)
    @given(path=st.sampled_from(PATHS), value=JSON)
    def one(path: tuple[str, ...], value: Any) -> None:
        spec = with_value(path, value)
        try:  # the server must agree with core's validation (an upload id must also exist)
            acceptable = parse_spec(spec, limits=SPEC_LIMITS).dataset.name != "upload"
        except InvalidSpec:
            acceptable = False
        r = http.post("/v1/jobs", json=spec)
        if r.status_code in (200, 201):
            tally[r.status_code] += 1
            assert acceptable, (spec, r.text)
            http.post(f"/v1/jobs/{r.json()['id']}/cancel")  # not the point here: do not train it
            return
        check_refusal(r, tally)
        assert r.status_code != 422 or not acceptable, (spec, r.text)

    one()


def test_random_specs_are_accepted_exactly_when_valid_and_never_a_5xx(http: httpx.Client) -> None:
    random_specs(http, Counter())


HOSTILE = [
    b"", b"{", b"}", b"null", b"[]", b'"iris"', b"42", b'{"dataset": }', b'{"dataset": "iris",}',
    b"\xff\xfe\x00garbage", b'{"dataset": "iris"}' * 3, b'{"dataset": NaN}',
    b'{"dataset": "iris", "optimizer": {"lr": Infinity}}', b"[" * 5000 + b"]" * 5000,
    b'{"a":' * 3000 + b"1" + b"}" * 3000, b'{"dataset": "\\ud800"}',
]  # fmt: skip
CONTENT_TYPES = ["application/json", "text/plain", None]


def hostile_bodies(http: httpx.Client, content_type: str | None, tally: Counter[int]) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    for body in HOSTILE:
        r = http.post("/v1/jobs", content=body, headers=headers)
        check_refusal(r, tally, needs_field=False)


@pytest.mark.parametrize("content_type", CONTENT_TYPES)
def test_malformed_and_hostile_bodies_are_4xx(http: httpx.Client, content_type: str | None) -> None:
    hostile_bodies(http, content_type, Counter())


def bodies_over_the_limit(http: httpx.Client, tally: Counter[int]) -> None:
    big = json.dumps({**BASE, "name": "x" * 200_000}).encode()
    check_refusal(http.post("/v1/jobs", content=big,
                            headers={"Content-Type": "application/json"}), tally)  # fmt: skip

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit counts the bytes
        for _ in range(40):
            yield b" " * 4096
        yield json.dumps(BASE).encode()

    r = http.post("/v1/jobs", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413, r.text
    check_refusal(r, tally)
    r = http.post("/v1/datasets", data={"target": "y"},
                  files={"file": ("big.csv", b"a,y\n" + b"1,0\n" * 40_000, "text/csv")})  # fmt: skip
    assert r.status_code == 413, r.text
    check_refusal(r, tally)


def test_bodies_over_the_limit_are_413_declared_or_streamed(http: httpx.Client) -> None:
    bodies_over_the_limit(http, Counter())


CSVS = {
    "nan": b"a,b,y\n1,2,0\nnan,3,1\n4,5,0\n6,7,1\n",
    "text": b"a,b,y\n1,two,0\n3,4,1\n5,6,0\n7,8,1\n",
    "empty": b"",
    "header-only": b"a,b,y\n",
    "one-row": b"a,b,y\n1,2,0\n",
    "ragged": b"a,b,y\n1,2\n3,4,5,6\n",
    "binary": bytes(range(256)) * 4,
    "latin1": "é,ü,y\n1,2,0\n3,4,1\n".encode("latin-1"),
    "no-target": b"a,b,c\n1,2,0\n3,4,1\n5,6,0\n",
    "inf": b"a,b,y\n1,inf,0\n3,4,1\n5,6,0\n7,8,1\n",
}


def bad_csv(http: httpx.Client, case: str, tally: Counter[int]) -> None:
    r = http.post("/v1/datasets", data={"target": "y"},
                  files={"file": (f"{case}.csv", CSVS[case], "text/csv")})  # fmt: skip
    body = check_refusal(r, tally)
    assert r.status_code in (400, 413, 422), body


@pytest.mark.parametrize("case", sorted(CSVS))
def test_bad_csv_uploads_are_4xx_naming_the_field(http: httpx.Client, case: str) -> None:
    bad_csv(http, case, Counter())


def wrong_dataset_at_submit(http: httpx.Client, tally: Counter[int]) -> None:
    csv = b"a,b,y\n" + b"".join(f"{i},{i % 7},{i % 2}\n".encode() for i in range(60))
    r = http.post("/v1/datasets", data={"target": "y"}, files={"file": ("ok.csv", csv, "text/csv")})
    assert r.status_code == 201, r.text
    dataset_id = r.json()["id"]
    spec = {**BASE, "dataset": {"name": "upload", "id": dataset_id, "target": "nope"}}
    body = check_refusal(http.post("/v1/jobs", json=spec), tally)
    assert body["error"]["field"] == "dataset.target", body
    r = http.post("/v1/jobs", json={**BASE, "dataset": {"name": "upload", "id": "no-such-id",
                                                         "target": "y"}})  # fmt: skip
    assert check_refusal(r, tally)["error"]["field"] == "dataset.id"


def test_a_wrong_target_at_submit_is_422_on_dataset_target(http: httpx.Client) -> None:
    wrong_dataset_at_submit(http, Counter())


def test_the_service_still_trains_a_valid_job_after_bad_input_at_volume(
    service: Service, http: httpx.Client
) -> None:
    """All of the above in one go, counted here (whatever ran before), then a valid job."""
    tally: Counter[int] = Counter()
    before = server_answers(http)["5xx"]
    random_specs(http, tally)
    for content_type in CONTENT_TYPES:
        hostile_bodies(http, content_type, tally)
    bodies_over_the_limit(http, tally)
    for case in sorted(CSVS):
        bad_csv(http, case, tally)
    wrong_dataset_at_submit(http, tally)
    r = http.post("/v1/jobs", json=iris("after-the-storm", epochs=4))
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    wait_until("the valid job to end", lambda: (lambda j: j if j["status"] in TERMINAL
               else None)(http.get(f"/v1/jobs/{job_id}").json()), 180)  # fmt: skip
    checked = audit(http, service.env["GRADQ_MLFLOW_TRACKING_URI"], {job_id: 4})
    http_5xx = server_answers(http)["5xx"] - before
    record({
        "fault": "bad input at volume (hypothesis specs, hostile JSON, huge bodies, bad CSVs)",
        "in_flight": 1, "accepted": tally[201] + tally[200] + 1, **checked.counts,
        "http_5xx": http_5xx, "recover_s": 0.0,
        "checked": f"{sum(tally.values())} requests: " + ", ".join(
            f"{n}x {code}" for code, n in sorted(tally.items()))
            + f"; {http_5xx}x 5xx (the server's count); then a job succeeded",
    })  # fmt: skip
    checked.assert_clean()
    assert http_5xx == 0, f"the server answered {http_5xx} 5xx:\n{service.log_tail()}"
    assert http.get("/readyz").status_code == 200


def test_the_server_counted_no_5xx(service: Service, http: httpx.Client) -> None:
    """The server's own count of its 5xx answers (``/metrics``), over every request of this
    module so far, is 0: also those whose answer a test did not look at."""
    answers = server_answers(http)
    assert answers["5xx"] == 0, f"{answers}\n{service.log_tail()}"
    assert answers["2xx"] > 0, answers  # the count counts: /metrics answered before
