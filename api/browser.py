"""What a web page open in a user's browser can make the API do: nothing it could not do
from its own site. One ASGI middleware, :class:`BrowserGuard`, applied to every request:

- ``Host`` must be one the service answers to (``Settings.host_allowed``: the loopback
  names, the bind host, ``GRADQ_ALLOWED_HOSTS``), else 400. A page whose name was made to
  resolve to the service's address (DNS rebinding) sends its own name.
- A request body must be JSON, or ``multipart/form-data`` on the upload route and on a
  job's predict route (a CSV file), else 415: a
  page can send text and forms to any site without asking (no CORS preflight), and JSON not.
- A request that changes something (``POST``, ``PUT``, ``PATCH``, ``DELETE``) is refused
  with 403 when its ``Origin`` is another origin than the one it was sent to, or its
  ``Sec-Fetch-Site`` says ``cross-site`` or ``same-site``. Browsers add both headers; the
  CLI and other programs send neither and pass.
"""

from __future__ import annotations

import json
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

from api.errors import error_body
from api.predictions import is_predict_path
from api.settings import Settings, host_name

UPLOAD_PATH = "/v1/datasets"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
DEFAULT_PORTS = {"http": 80, "https": 443}


class BrowserGuard:
    def __init__(self, app: ASGIApp, *, settings: Settings) -> None:
        self.app, self.settings = app, settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            refusal = self.refusal(scope)
            if refusal is not None:
                await _refuse(send, *refusal)
                return
        await self.app(scope, receive, send)

    def refusal(self, scope: Scope) -> tuple[int, str, str, str] | None:
        """(status, code, message, field) of why ``scope`` is refused; None: it passes."""
        headers: dict[bytes, bytes] = {}
        for name, value in scope.get("headers") or ():
            headers.setdefault(name, value)
        host = headers.get(b"host", b"").decode("latin-1")
        if host and not self.settings.host_allowed(host):
            return (
                400,
                "host_not_allowed",
                f"this service does not answer to the host name {host_name(host)!r}; an "
                "operator can add it to GRADQ_ALLOWED_HOSTS",
                "Host",
            )
        if scope.get("method", "GET") in SAFE_METHODS:
            return None
        site = headers.get(b"sec-fetch-site", b"").decode("latin-1").strip().lower()
        if site in ("cross-site", "same-site"):
            return (
                403,
                "cross_site_request",
                f"a request from another site (Sec-Fetch-Site: {site}) may not change anything",
                "Sec-Fetch-Site",
            )
        origin = headers.get(b"origin")
        if origin is not None and not _same_origin(origin.decode("latin-1"), host):
            return (
                403,
                "cross_site_request",
                "a request from a page of another origin may not change anything",
                "Origin",
            )
        if _has_body(headers):
            media = headers.get(b"content-type", b"").decode("latin-1")
            media = media.split(";", 1)[0].strip().lower()
            path = scope.get("path", "").rstrip("/")
            upload = path == UPLOAD_PATH or is_predict_path(path)
            spec = is_yaml(media) and path in YAML_PATHS
            if not (_is_json(media) or spec or (upload and media == "multipart/form-data")):
                where = f"{media!r}" if media else "no Content-Type"
                return (
                    415,
                    "unsupported_media_type",
                    f"send the body as JSON (Content-Type: application/json), not {where}; "
                    f"a job or sweep may be YAML (application/yaml); an upload to "
                    f"{UPLOAD_PATH} or /v1/jobs/{{id}}/predict is multipart/form-data",
                    "Content-Type",
                )
        return None


def _has_body(headers: dict[bytes, bytes]) -> bool:
    if b"transfer-encoding" in headers:
        return True
    length = headers.get(b"content-length", b"0").strip()
    return length not in (b"", b"0")


# A job or sweep spec may come as YAML, as its file is written: a type a page cannot send
# without the browser asking first (not one of a form's), so no cross-site risk.
YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml")
YAML_PATHS = ("/v1/jobs", "/v1/sweeps", "/v1/gradcheck")


def is_yaml(media: str) -> bool:
    """Whether a Content-Type (its media type, lower case, no parameters) is YAML."""
    return media in YAML_TYPES


def _is_json(media: str) -> bool:
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


def _same_origin(origin: str, host: str) -> bool:
    """Whether ``origin`` (``scheme://name[:port]``) is the origin of a request sent to
    ``host`` (the ``Host`` header) over that scheme. ``null`` (a sandboxed page, a file)
    is never the same."""
    try:
        parts = urlsplit(origin.strip())
        port = parts.port or DEFAULT_PORTS.get(parts.scheme)
    except ValueError:
        return False
    if not parts.hostname or port is None or not host:
        return False
    name = host_name(host)
    host_port = host.strip().rsplit("]", 1)[-1]
    explicit = host_port.rsplit(":", 1)[1] if ":" in host_port else ""
    try:
        wanted = int(explicit) if explicit else DEFAULT_PORTS[parts.scheme]
    except (ValueError, KeyError):
        return False
    return parts.hostname.lower() == name and port == wanted


async def _refuse(send: Send, status: int, code: str, message: str, field: str) -> None:
    body = json.dumps(error_body(code, message, field)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
