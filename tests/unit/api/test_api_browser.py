"""What a web page in a user's browser can make the API do (auth off, `gradq serve`'s
default): nothing. A foreign ``Host`` (DNS rebinding) is refused, bodies a page can send
without a preflight (text, forms) are refused, state changes from another site are refused,
and a csv path reads only files under GRADQ_CSV_ROOT, never quoting them back."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from api.settings import Settings

IRIS = {"dataset": "iris", "model": {"hidden": [8]}, "optimizer": {"epochs": 3}}
PASSWD_FIRST_LINE = "root:x:0:0"


def _loopback(make_client: Callable[..., TestClient], **overrides: object) -> TestClient:
    """A client whose requests carry ``Host: 127.0.0.1:8000``, as a local CLI's do."""
    client = make_client(**overrides)
    client.base_url = "http://127.0.0.1:8000"  # type: ignore[assignment]
    return client


# --- Host -------------------------------------------------------------------------------------


def test_a_foreign_host_is_refused_naming_the_setting(
    make_client: Callable[..., TestClient],
) -> None:
    client = make_client()
    r = client.get("/v1/jobs", headers={"Host": "evil.example"})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert (error["code"], error["field"]) == ("host_not_allowed", "Host")
    assert "GRADQ_ALLOWED_HOSTS" in error["message"] and "evil.example" in error["message"]
    r = client.post("/v1/jobs", json=IRIS, headers={"Host": "evil.example:8000"})
    assert r.status_code == 400
    assert client.get("/v1/jobs").json()["items"] == []  # nothing was queued


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "127.0.0.1:8000", "localhost:8000", "LOCALHOST", "[::1]:8000"]
)
def test_loopback_names_are_allowed_by_default(
    make_client: Callable[..., TestClient], host: str
) -> None:
    r = make_client().get("/v1/jobs", headers={"Host": host})
    assert (r.status_code, r.json()["items"]) == (200, [])


def test_named_hosts_and_the_bind_host_are_allowed(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(host="10.1.2.3", allowed_hosts="gradq.example.com, Proxy.Internal")
    assert settings.host_allowed("gradq.example.com:443")
    assert settings.host_allowed("proxy.internal")
    assert settings.host_allowed("10.1.2.3:8000")
    assert settings.host_allowed("localhost")
    assert not settings.host_allowed("evil.example")
    assert not settings.host_allowed("gradq.example.com.evil.example")
    wildcard = make_settings(host="0.0.0.0")
    assert not wildcard.host_allowed("0.0.0.0") and not wildcard.host_allowed("evil.example")
    assert make_settings(allowed_hosts="*").host_allowed("evil.example")


def test_allowed_hosts_are_read_from_the_environment_and_checked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GRADQ_ALLOWED_HOSTS", "gradq.example.com,api.internal")
    assert Settings().allowed_hosts == ("gradq.example.com", "api.internal")
    with pytest.raises(ValidationError, match="allowed_hosts"):
        Settings(allowed_hosts="http://gradq.example.com/")


# --- request bodies ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "text/plain; charset=utf-8",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        None,
    ],
)
def test_a_job_in_a_body_a_page_can_send_is_refused(
    make_client: Callable[..., TestClient], content_type: str | None
) -> None:
    client = make_client()
    headers = {"Content-Type": content_type} if content_type else {}
    r = client.post("/v1/jobs", content=json.dumps(IRIS).encode(), headers=headers)
    assert r.status_code == 415, r.text
    error = r.json()["error"]
    assert (error["code"], error["field"]) == ("unsupported_media_type", "Content-Type")
    assert "application/json" in error["message"]
    assert client.get("/v1/jobs").json()["items"] == []


def test_json_bodies_and_bodiless_posts_still_pass(make_client: Callable[..., TestClient]) -> None:
    client = make_client()
    body = json.dumps(IRIS).encode()
    r = client.post("/v1/jobs", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    r = client.post(
        "/v1/jobs", content=body, headers={"Content-Type": "Application/JSON; charset=utf-8"}
    )
    assert r.status_code == 201, r.text
    r = client.post(f"/v1/jobs/{job_id}/cancel")  # no body, no Content-Type
    assert (r.status_code, r.json()["status"]) == (202, "cancelled")


def test_a_body_over_the_limit_is_413_whatever_its_type(
    make_client: Callable[..., TestClient],
) -> None:
    client = make_client(max_body_bytes=2048)
    for headers in ({}, {"Content-Type": "text/plain"}):
        r = client.post("/v1/jobs", content=b"x" * 5000, headers=headers)
        assert (r.status_code, r.json()["error"]["code"]) == (413, "payload_too_large")


def test_a_form_post_of_a_gradcheck_is_refused(make_client: Callable[..., TestClient]) -> None:
    r = make_client().post("/v1/gradcheck", data={"dataset": "iris"})
    assert r.status_code == 415, r.text


# --- another site ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Origin": "http://127.0.0.1:3000"},  # another port is another origin
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
    ],
)
def test_state_changes_from_another_site_are_refused(
    make_client: Callable[..., TestClient], headers: dict[str, str]
) -> None:
    client = _loopback(make_client)
    r = client.post("/v1/jobs", json=IRIS, headers=headers)
    assert r.status_code == 403, r.text
    error = r.json()["error"]
    assert error["code"] == "cross_site_request"
    assert error["field"] == ("Origin" if "Origin" in headers else "Sec-Fetch-Site")
    assert client.get("/v1/jobs").json()["items"] == []


def test_a_cross_site_cancel_and_upload_are_refused(make_client: Callable[..., TestClient]) -> None:
    client = _loopback(make_client)
    job_id = client.post("/v1/jobs", json=IRIS).json()["id"]
    evil = {"Origin": "https://evil.example"}
    assert client.post(f"/v1/jobs/{job_id}/cancel", headers=evil).status_code == 403
    assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "queued"
    csv = b"a,b,y\n" + b"".join(f"{i},{i % 7},{i % 2}\n".encode() for i in range(20))
    files = {"file": ("d.csv", csv, "text/csv")}
    r = client.post("/v1/datasets", data={"target": "y"}, files=files, headers=evil)
    assert r.status_code == 403
    assert client.get("/v1/datasets").json()["items"] == []


def test_the_services_own_pages_and_reads_pass(make_client: Callable[..., TestClient]) -> None:
    client = _loopback(make_client)
    own = {"Origin": "http://127.0.0.1:8000", "Sec-Fetch-Site": "same-origin"}
    r = client.post("/v1/jobs", json=IRIS, headers=own)
    assert r.status_code == 201, r.text
    csv = b"a,b,y\n" + b"".join(f"{i},{i % 7},{i % 2}\n".encode() for i in range(20))
    files = {"file": ("d.csv", csv, "text/csv")}
    r = client.post("/v1/datasets", data={"target": "y"}, files=files, headers=own)
    assert (r.status_code, r.json()["rows"]) == (201, 20)
    # a read from another site is answered (the browser keeps it from the page: no CORS)
    listed = client.get("/v1/jobs", headers={"Origin": "http://evil.example"}).json()
    assert len(listed["items"]) == 1


# --- csv paths ---------------------------------------------------------------------------------


def test_a_csv_path_is_refused_without_a_csv_root_and_never_quoted(
    make_client: Callable[..., TestClient],
) -> None:
    client = make_client()
    spec = {"dataset": {"name": "csv", "path": "/etc/passwd", "target": "x"}}
    for route in ("/v1/gradcheck", "/v1/jobs"):
        r = client.post(route, json=spec)
        assert r.status_code == 422, r.text
        assert PASSWD_FIRST_LINE not in r.text
        error = r.json()["error"]
        assert error["field"] == "dataset.path"
        assert "GRADQ_CSV_ROOT" in error["message"]
    assert client.get("/v1/jobs").json()["items"] == []


def _table(folder: Path, name: str = "data.csv") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    rows = "".join(f"{i % 5},{(i * 3) % 7},{i % 2}\n" for i in range(40))
    path.write_text("a,b,y\n" + rows)
    return path


def test_csv_paths_inside_the_csv_root_are_read(
    make_client: Callable[..., TestClient], tmp_path: Path
) -> None:
    root = tmp_path / "inputs"
    inside = _table(root / "sub")
    client = make_client(csv_root=str(root))
    for path in ("sub/data.csv", str(inside), "sub/../sub/data.csv"):
        spec = {"dataset": {"name": "csv", "path": path, "target": "y"}, "model": {"hidden": [4]}}
        r = client.post("/v1/gradcheck", json=spec)
        assert (r.status_code, r.json()["passed"]) == (200, True), r.text
    r = client.post("/v1/jobs", json={"dataset": {"name": "csv", "path": "sub/data.csv",
                                                  "target": "y"}})  # fmt: skip
    assert r.status_code == 201, r.text
    assert r.json()["spec"]["dataset"]["path"] == str(inside.resolve())  # what the worker opens


def test_csv_paths_outside_the_csv_root_are_refused(
    make_client: Callable[..., TestClient], tmp_path: Path
) -> None:
    root = tmp_path / "inputs"
    _table(root)
    outside = _table(tmp_path / "private", "secret.csv")
    os.symlink(outside, root / "link.csv")
    os.symlink(tmp_path / "private", root / "dir")
    client = make_client(csv_root=str(root))
    for path in ("../private/secret.csv", str(outside), "link.csv", "dir/secret.csv",
                 "/etc/passwd"):  # fmt: skip
        spec = {"dataset": {"name": "csv", "path": path, "target": "x"}}
        r = client.post("/v1/gradcheck", json=spec)
        assert r.status_code == 422, (path, r.text)
        error = r.json()["error"]
        assert error["field"] == "dataset.path"
        assert "GRADQ_CSV_ROOT" in error["message"]
        assert "a,b,y" not in r.text and PASSWD_FIRST_LINE not in r.text
        assert str(tmp_path / "private") not in r.text  # where a link leads is not told


def test_a_csv_root_must_be_a_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError, match="csv_root"):
        Settings(csv_root=str(tmp_path / "nope"))
    monkeypatch.setenv("GRADQ_CSV_ROOT", "")
    assert Settings().csv_root is None  # an empty variable is unset, not the current folder
    monkeypatch.setenv("GRADQ_CSV_ROOT", str(tmp_path))
    assert Settings().csv_root == tmp_path.resolve()


def test_a_file_in_the_csv_root_is_not_quoted_in_errors(
    make_client: Callable[..., TestClient], tmp_path: Path
) -> None:
    root = tmp_path / "inputs"
    root.mkdir()
    (root / "notes.csv").write_text("first-line secret,other\n1,2\n")
    client = make_client(csv_root=str(root))
    spec = {"dataset": {"name": "csv", "path": "notes.csv", "target": "x"}}
    r = client.post("/v1/gradcheck", json=spec)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == "dataset.target"
    assert "secret" not in r.text and "other" not in r.text
    assert "2 columns" in r.json()["error"]["message"]


def test_every_operation_documents_the_refusals_of_the_browser_guard(client: TestClient) -> None:
    """A foreign Host (400), another site (403) and a body that is not JSON (415) can meet
    any /v1 operation: each one's OpenAPI responses name them."""
    operations = [
        (path, method, op["responses"])
        for path, item in client.get("/openapi.json").json()["paths"].items()
        if path.startswith("/v1/")
        for method, op in item.items()
    ]
    assert len(operations) > 10
    for path, method, responses in operations:
        assert {"400", "403", "415"} <= responses.keys(), (method, path, sorted(responses))


def test_a_yaml_spec_passes_where_a_spec_is_posted(make_client: Callable[..., TestClient]) -> None:
    """A job as YAML (a type a form cannot send) is taken; elsewhere YAML is refused."""
    client = make_client()
    body = b"dataset: iris\nmodel: {hidden: [8]}\noptimizer:\n  epochs: 3\n"
    r = client.post("/v1/jobs", content=body, headers={"Content-Type": "application/yaml"})
    assert (r.status_code, r.json()["spec"]["model"]["hidden"]) == (201, [8]), r.text
    r = client.post("/v1/jobs", content=b"dataset: [", headers={"Content-Type": "text/yaml"})
    assert (r.status_code, r.json()["error"]["code"]) == (400, "malformed_yaml")
    r = client.post("/v1/datasets", content=body, headers={"Content-Type": "application/yaml"})
    assert r.status_code == 415, r.text
