"""``POST /v1/gradcheck`` runs in the API process, so it is bounded: its estimated memory
(GRADQ_GRADCHECK_MAX_MEMORY, 422 naming the field), one check at a time with at most
GRADQ_GRADCHECK_QUEUE waiting (429 with Retry-After beyond), and a check whose client goes
away is stopped between its finite-difference chunks, freeing its slot."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import pytest
from fastapi.testclient import TestClient

import core.gradcheck

SMALL = {"dataset": "iris", "model": {"hidden": [6, 5]}, "gradcheck": {"fd_samples": 4}}
WIDE = {"dataset": "digits", "model": {"hidden": [400, 400]}, "gradcheck": {"fd_samples": 32}}


def _wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 60
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.01)


class Held:
    """Holds every check in its first finite-difference chunk until ``release`` (or until the
    check's own stop flag is set), counting the chunks that started."""

    def __init__(self) -> None:
        self.calls = 0
        self.started = threading.Event()
        self.release = threading.Event()
        self.stops: list[Callable[[], bool]] = []
        self.outcomes: list[str] = []

    def check_spec(self, real: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            self.stops.append(kwargs.get("stop") or (lambda: False))
            try:
                report = real(*args, **kwargs)
            except Exception as exc:
                self.outcomes.append(type(exc).__name__)
                raise
            self.outcomes.append("report")
            return report

        return wrapped

    def central_differences(self, real: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            self.started.set()
            stop = self.stops[-1]
            _wait_for(lambda: self.release.is_set() or stop(), "a release or a stop")
            return real(*args, **kwargs)

        return wrapped


@pytest.fixture
def held(monkeypatch: pytest.MonkeyPatch) -> Iterator[Held]:
    h = Held()
    monkeypatch.setattr(core.gradcheck, "check_spec", h.check_spec(core.gradcheck.check_spec))
    monkeypatch.setattr(
        core.gradcheck,
        "central_differences",
        h.central_differences(core.gradcheck.central_differences),
    )
    yield h
    h.release.set()


def test_a_check_over_the_memory_limit_is_a_422_naming_the_field(
    make_client: Callable[..., TestClient],
) -> None:
    client = make_client(gradcheck_max_memory="64MiB")
    r = client.post("/v1/gradcheck", params={"batch": 256}, json=WIDE)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["field"] == "batch"
    assert error["message"].startswith("this gradient check needs about ")
    assert error["message"].endswith("the limit is 64 MiB (GRADQ_GRADCHECK_MAX_MEMORY)")
    # the same model on a few rows fits, and is checked
    ok = client.post("/v1/gradcheck", params={"batch": 4}, json=WIDE)
    assert ok.status_code == 200, ok.text
    assert ok.json()["passed"] is True and ok.json()["batch"] == 4


def test_one_check_at_a_time_and_a_bounded_queue(
    make_client: Callable[..., TestClient], held: Held
) -> None:
    client = make_client(gradcheck_queue=1)
    services = client.app.state.services  # type: ignore[attr-defined]
    answers: dict[str, Any] = {}

    def post(name: str) -> None:
        answers[name] = client.post("/v1/gradcheck", json=SMALL)

    first = threading.Thread(target=post, args=("first",))
    first.start()
    _wait_for(held.started.is_set, "the first check to start")
    second = threading.Thread(target=post, args=("second",))
    second.start()
    _wait_for(lambda: services.gradcheck_waiting == 1, "the second check to queue")
    third = client.post("/v1/gradcheck", json=SMALL)
    assert third.status_code == 429
    assert third.headers["Retry-After"].isdigit()
    assert third.json()["error"]["code"] == "too_many_checks"
    assert "GRADQ_GRADCHECK_QUEUE" in third.json()["error"]["message"]
    assert held.calls == 1  # the second waits: one check at a time
    held.release.set()
    first.join(60)
    second.join(60)
    assert [answers[n].status_code for n in ("first", "second")] == [200, 200]
    assert all(answers[n].json()["passed"] for n in ("first", "second"))
    assert held.outcomes == ["report", "report"]
    assert services.gradcheck_waiting == 0 and services.gradcheck_slot.borrowed_tokens == 0


def _leaving(client: TestClient, spec: dict[str, Any], leave: Callable[[], bool]) -> list[Any]:
    """POST ``spec`` to /v1/gradcheck as a client that disconnects once ``leave()`` holds;
    the ASGI messages the app sent back."""
    body = json.dumps(spec).encode()
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/v1/gradcheck", "raw_path": b"/v1/gradcheck",
        "root_path": "", "query_string": b"", "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
        "headers": [(b"host", b"testserver"), (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode())],
    }  # fmt: skip
    sent: list[Any] = []

    async def call() -> None:
        messages = iter([{"type": "http.request", "body": body, "more_body": False}])

        async def receive() -> dict[str, Any]:
            message = next(messages, None)
            if message is not None:
                return message
            while not leave():
                await anyio.sleep(0.01)
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await client.app(scope, receive, send)

    client.portal.call(call)  # type: ignore[union-attr]
    return sent


def test_a_client_that_goes_away_stops_its_check_and_frees_the_slot(
    make_client: Callable[..., TestClient], held: Held
) -> None:
    client = make_client()
    services = client.app.state.services  # type: ignore[attr-defined]
    sent = _leaving(client, SMALL, held.started.is_set)  # leaves once its check runs
    assert held.outcomes == ["GradcheckStopped"]
    assert held.calls == 1  # of the 6 tensors' finite differences, only the first started
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 499
    assert services.gradcheck_slot.borrowed_tokens == 0 and services.gradcheck_waiting == 0
    held.release.set()
    again = client.post("/v1/gradcheck", json=SMALL)
    assert again.status_code == 200 and again.json()["passed"] is True


def test_a_client_that_goes_away_while_waiting_leaves_the_queue(
    make_client: Callable[..., TestClient], held: Held
) -> None:
    client = make_client(gradcheck_queue=1)
    services = client.app.state.services  # type: ignore[attr-defined]
    answers: list[Any] = []
    first = threading.Thread(
        target=lambda: answers.append(client.post("/v1/gradcheck", json=SMALL))
    )
    first.start()
    _wait_for(held.started.is_set, "the first check to start")
    sent = _leaving(client, SMALL, lambda: services.gradcheck_waiting == 1)
    assert sent[0]["status"] == 499
    assert services.gradcheck_waiting == 0  # its place in the queue is free again
    assert held.calls == 1 and held.outcomes == []  # it never ran; the first still runs
    held.release.set()
    first.join(60)
    assert answers[0].status_code == 200 and held.outcomes == ["report"]
