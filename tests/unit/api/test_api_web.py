"""The web page's routes (``api/routes/web.py``): ``/`` and ``/web/…`` serve the package's
files only, each with the Content-Security-Policy; the page needs no key, its data does."""

from __future__ import annotations

from collections.abc import Callable

from fastapi.testclient import TestClient

from api.routes.web import CSP, static_files


def test_the_page_and_its_files_carry_the_policy(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.headers["content-security-policy"] == CSP
    assert page.headers["x-content-type-options"] == "nosniff"
    assert "script-src 'self';" in CSP and "connect-src 'self';" in CSP
    assert "unsafe" not in CSP
    for name, kind in [("app.js", "text/javascript"), ("style.css", "text/css"),
                       ("vendor/chart.umd.min.js", "text/javascript")]:  # fmt: skip
        r = client.get(f"/web/{name}")
        assert r.status_code == 200 and r.headers["content-type"].startswith(kind), name
        assert r.headers["content-security-policy"] == CSP
    assert client.head("/").status_code == 200


def test_only_the_packaged_files_are_served(client: TestClient) -> None:
    files = static_files()
    assert {"index.html", "app.js", "style.css"} <= set(files)
    assert "vendor/LICENSES.md" not in files  # only .html, .js and .css
    for name in ["../main.py", "..%2Fmain.py", "vendor/../../settings.py", "nope.js",
                 "vendor/LICENSES.md"]:  # fmt: skip
        r = client.get(f"/web/{name}")
        assert r.status_code == 404, (name, r.status_code)


def test_with_keys_the_page_opens_and_its_data_needs_one(
    make_client: Callable[..., TestClient],
) -> None:
    client = make_client(auth="keys")
    assert client.get("/").status_code == 200
    assert client.get("/web/app.js").status_code == 200
    assert client.get("/v1/jobs").status_code == 401


def test_the_page_is_not_in_the_api_schema(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert "/" not in paths and not any(p.startswith("/web") for p in paths)
