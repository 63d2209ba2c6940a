"""gradq's web page: ``GET /`` and its static files under ``/web/``, shipped as package data
(``api/web/``), no build step.

The page is one static HTML file and one script that read everything from gradq's own API
(``v1/…``, relative URLs, so that it works behind a reverse proxy's path prefix) and keep an
API key, when the service asks for one, in the tab's ``sessionStorage``, sent as
``Authorization: Bearer``. Every answer here carries a Content-Security-Policy that allows
scripts, styles and connections from the page's own origin only: no inline script, no
request to MLflow or Ray, no framing.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from api.errors import ApiError

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}
TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}


def web_folder() -> Path:
    return Path(str(resources.files("api") / "web"))


def static_files() -> dict[str, Path]:
    """The files ``/web/`` serves, by their path under it: only these (a fixed list made
    at start, so no request names a file outside it)."""
    root = web_folder()
    return {
        p.relative_to(root).as_posix(): p
        for p in root.rglob("*")
        if p.is_file() and p.suffix in TYPES
    }


def make_router(files: dict[str, Path] | None = None) -> APIRouter:
    """The page's routes over ``files`` (default: :func:`static_files`)."""
    files = static_files() if files is None else files
    router = APIRouter(include_in_schema=False)

    @router.api_route("/", methods=["GET", "HEAD"])
    def page() -> FileResponse:
        return FileResponse(files["index.html"], media_type="text/html", headers=HEADERS)

    @router.api_route("/web/{name:path}", methods=["GET", "HEAD"])
    def static(name: str) -> FileResponse:
        found = files.get(name)
        if found is None:
            raise ApiError(404, "not_found", f"no file {name!r} in the web page", field="path")
        return FileResponse(found, media_type=TYPES[found.suffix], headers=HEADERS)

    return router
