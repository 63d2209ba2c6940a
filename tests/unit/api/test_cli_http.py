"""The commands' HTTP client (``api.cli.http.ApiClient``): plain ``http://`` goes over the
standard library, so a command such as `gradq cancel` starts without httpx, httpcore and a
TLS context; a file upload, ``https://`` and a proxy go through httpx. Both send the same
request."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from api.cli.http import ApiClient, ApiFailure


class Echo(BaseHTTPRequestHandler):
    """Answers what it was asked: method, path with query, headers, body; /refuse answers
    the API's error shape with 422."""

    def _answer(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path.startswith("/refuse"):
            status, out = (
                422,
                {"error": {"code": "invalid", "field": "optimizer.lr", "message": "must be > 0"}},
            )
        else:
            status, out = (
                200,
                {
                    "method": self.command,
                    "path": self.path,
                    "headers": {k.lower(): v for k, v in self.headers.items()},
                    "body": body.decode("latin-1"),
                },
            )
        data = json.dumps(out).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_DELETE = _answer

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.usefixtures("no_proxy")
def test_plain_http_and_httpx_send_the_same_request(url: str) -> None:
    asked = {"json": {"seed": 1, "name": "ä"}, "params": {"limit": 3, "tag": ["a:1", "b:2"]},
             "headers": {"Idempotency-Key": "once"}}  # fmt: skip
    got = []
    for plain in (True, False):
        with ApiClient(url, "k-123") as client:
            assert client.plain
            client.plain = plain  # False: as for a proxy or https
            got.append(client.call("POST", "/v1/jobs", **asked))
            assert (client._httpx is None) is plain
    for g in got:
        assert (g["method"], g["path"]) == ("POST", "/v1/jobs?limit=3&tag=a%3A1&tag=b%3A2")
        assert g["headers"]["authorization"] == "Bearer k-123"
        assert g["headers"]["idempotency-key"] == "once"
        assert g["headers"]["content-type"] == "application/json"
        assert json.loads(g["body"].encode("latin-1")) == {"seed": 1, "name": "ä"}


def test_a_file_upload_is_sent_as_multipart(url: str) -> None:
    with ApiClient(url) as client:
        got = client.call(
            "POST", "/v1/datasets", files={"file": ("rows.csv", b"a,b\n1,2\n")},
            data={"target": "b"},
        )  # fmt: skip
    assert got["headers"]["content-type"].startswith("multipart/form-data; boundary=")
    assert 'name="target"\r\n\r\nb\r\n' in got["body"]
    assert 'filename="rows.csv"' in got["body"] and "a,b\n1,2\n" in got["body"]
    assert "authorization" not in got["headers"]  # no key, no header


def test_a_refusal_names_its_field(url: str) -> None:
    with ApiClient(url) as client, pytest.raises(ApiFailure) as caught:
        client.call("POST", "/refuse", json={})
    assert caught.value.status == 422
    assert caught.value.message == "HTTP 422 invalid at optimizer.lr: must be > 0"


def test_no_server_is_a_failure_that_says_so() -> None:
    with socket.socket() as s:  # a port of 127.0.0.1 that nothing listens on once released
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with ApiClient(f"http://127.0.0.1:{port}") as client, pytest.raises(ApiFailure) as caught:
        client.call("GET", "/v1/jobs")
    assert caught.value.status == 0
    assert caught.value.message.startswith(f"cannot reach http://127.0.0.1:{port} (")
    assert caught.value.message.endswith("is `gradq serve` running?")


@pytest.mark.usefixtures("no_proxy")
def test_https_or_a_proxy_goes_through_httpx(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not ApiClient("https://gradq.example.org").plain
    assert ApiClient("http://gradq.example.org").plain
    monkeypatch.setenv("https_proxy", "http://proxy.example.org:3128")  # not for http://
    assert ApiClient("http://gradq.example.org").plain
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.example.org:3128")
    assert not ApiClient("http://gradq.example.org").plain


def test_a_client_command_starts_without_the_heavy_libraries() -> None:
    """What `gradq cancel` imports before its request: no httpx, httpcore (nor its TLS
    context's certifi), YAML, database, MLflow or torch."""
    code = (
        "import sys, api.cli\n"
        "from api.cli.http import ApiClient\n"
        "ApiClient('http://127.0.0.1:1')\n"
        "heavy = ('httpx', 'httpcore', 'certifi', 'yaml', 'sqlalchemy', 'alembic', 'mlflow', 'torch',"
        " 'pydantic_settings')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
