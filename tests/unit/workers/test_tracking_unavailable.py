"""``workers.tracking.client.unavailable``: which errors say that MLflow is away (the
tracker's start tries again) and which are answers of a server that is there."""

from __future__ import annotations

import socket

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from workers.tracking.client import unavailable


def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wrapped(cause: BaseException) -> MlflowException:
    """``cause`` as MLflow's HTTP layer raises it: an MlflowException raised while handling
    it (its context)."""
    try:
        raise cause
    except Exception:
        try:
            raise MlflowException(f"API request failed with exception {cause}")
        except MlflowException as exc:
            return exc
    raise AssertionError("unreachable")


def test_a_refused_connection_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    client = MlflowClient(tracking_uri=f"http://127.0.0.1:{unused_port()}")
    with pytest.raises(MlflowException) as raised:
        client.get_run("0" * 32)
    assert unavailable(raised.value)


def test_a_reset_or_cut_off_connection_is_unavailable() -> None:
    import http.client

    import requests
    import urllib3.exceptions

    cut = http.client.IncompleteRead(b"", 1263)
    protocol = urllib3.exceptions.ProtocolError("Connection broken: IncompleteRead", cut)
    chunked = requests.exceptions.ChunkedEncodingError(protocol)
    for error in (ConnectionResetError(104, "reset by peer"), cut, protocol, chunked):
        assert unavailable(error), error
        assert unavailable(wrapped(error)), error


def test_an_answer_of_mlflow_is_not_unavailable() -> None:
    assert not unavailable(MlflowException("no run", error_code="RESOURCE_DOES_NOT_EXIST"))
    assert not unavailable(MlflowException("bad filter", error_code="INVALID_PARAMETER_VALUE"))
    assert not unavailable(ValueError("MLflow run belongs to another job"))
