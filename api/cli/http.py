"""A small HTTP client of the API for the ``gradq`` command (submit, watch, jobs, …)."""

from __future__ import annotations

import http.client
import json
import os
import re
from typing import Any
from urllib.parse import urlencode, urlsplit

from core import defaults

_dumps = json.dumps  # `json` is also the name of a request's body argument


class ApiFailure(Exception):
    """The service refused (4xx/5xx) or could not be reached (``status`` 0)."""

    def __init__(self, status: int, body: Any, message: str) -> None:
        super().__init__(message)
        self.status, self.body, self.message = status, body, message


class Answer:
    """A response as the client reads it: its status and body."""

    def __init__(self, status_code: int, content: bytes) -> None:
        self.status_code, self.content = status_code, content
        self.is_success = 200 <= status_code < 300
        self.text = content.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.content)


class Unreachable(Exception):
    """No answer: the connection failed or timed out."""


class ApiClient:
    """The API at ``url`` (``GRADQ_URL``, else the local default), as the caller with ``key``
    (``GRADQ_API_KEY``).

    A plain ``http://`` request goes over the standard library's ``http.client``, a
    connection each: httpx imports httpcore and builds a TLS context even for a plain URL,
    which every command paid at its start (bench/RESULTS.md, "`gradq cancel`"). httpx
    carries an ``https://`` URL, a file upload (multipart) and a request while a proxy is
    named in the environment (which httpx honours); it is imported only then."""

    def __init__(self, url: str | None = None, key: str | None = None, timeout: float = 60) -> None:
        self.url = (url or os.environ.get("GRADQ_URL") or defaults.API_URL).rstrip("/")
        key = key or os.environ.get("GRADQ_API_KEY")
        self.has_key = bool(key)
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.timeout = timeout
        self.plain = self.url.startswith("http://") and not _proxied()
        self._httpx: Any = None  # the httpx.Client, once a request needs it

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._httpx is not None:
            self._httpx.close()

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """The JSON body of a 2xx answer; :class:`ApiFailure` otherwise. ``kwargs``: httpx's
        ``json``, ``params``, ``headers``, ``files``, ``data``."""
        try:
            response = self.send(method, path, **kwargs)
        except Unreachable as exc:
            raise ApiFailure(
                0, None, f"cannot reach {self.url} ({exc}); is `gradq serve` running?"
            ) from None
        try:
            body = response.json()
        except ValueError:
            body = response.text
        if response.is_success:
            return body
        status = response.status_code
        raise ApiFailure(status, body, describe(status, body, has_key=self.has_key))

    def send(self, method: str, path: str, **kwargs: Any) -> Any:
        """The answer to one request (an :class:`Answer` or an ``httpx.Response``);
        :class:`Unreachable` when none came."""
        if self.plain and not kwargs.keys() - {"json", "params", "headers"}:
            return self._plain(method, path, **kwargs)
        import httpx

        if self._httpx is None:
            self._httpx = httpx.Client(
                base_url=self.url, headers=self.headers, timeout=self.timeout
            )
        try:
            return self._httpx.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise Unreachable(str(exc) or type(exc).__name__) from None

    def _plain(
        self,
        method: str,
        path: str,
        json: Any = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        base = urlsplit(self.url)
        query = {k: v for k, v in (params or {}).items() if v is not None}
        target = base.path + path + (f"?{urlencode(query, doseq=True)}" if query else "")
        sent = {**self.headers, **(headers or {})}
        body = None
        if json is not None:
            body = _dumps(json, separators=(",", ":"), ensure_ascii=False).encode()
            sent["Content-Type"] = "application/json"
        conn = http.client.HTTPConnection(
            base.hostname or "", base.port or 80, timeout=self.timeout
        )
        try:
            conn.request(method, target, body=body, headers=sent)
            answer = conn.getresponse()
            return Answer(answer.status, answer.read())
        except (OSError, http.client.HTTPException) as exc:
            raise Unreachable(str(exc) or type(exc).__name__) from None
        finally:
            conn.close()


def _proxied() -> bool:
    """A proxy named in the environment (``HTTP_PROXY``, ``ALL_PROXY``, any case)."""
    return any(k.lower() in ("http_proxy", "all_proxy") and v for k, v in os.environ.items())


# The API's words for an HTTP client, and what a user of the command does instead.
CLI_HINTS = {"(see GET /v1/datasets)": "(see `gradq datasets list`)"}
CLI_PATTERNS = {r"\(POST /v1/jobs/([\w-]+)/cancel\)": r"(`gradq cancel \1`)"}
"""The hints that name a job, as regular expressions and what replaces them."""


def describe(status: int, body: Any, *, has_key: bool = False) -> str:
    """What the command's user reads for a refusal: a 401 says to pass a key (``--key`` or
    ``GRADQ_API_KEY``), not how to send a header; otherwise one line per problem from the
    error shape ``{"error": {...}, "errors": [...]}``, the API's hints put in the command's
    terms (``CLI_HINTS``)."""
    if status == 401:
        if has_key:
            return (
                "unauthorized: the API key given was refused (unknown or revoked); pass "
                "another with --key or GRADQ_API_KEY"
            )
        return "unauthorized: this service needs an API key; pass --key or set GRADQ_API_KEY"
    text = _describe(status, body)
    for api, cli in CLI_HINTS.items():
        text = text.replace(api, cli)
    for pattern, cli in CLI_PATTERNS.items():
        text = re.sub(pattern, cli, text)
    return text


def _describe(status: int, body: Any) -> str:
    if not isinstance(body, dict) or not isinstance(body.get("error"), dict):
        return f"HTTP {status}: {str(body)[:500]}"
    error = body["error"]
    problems = body.get("errors") or []
    if len(problems) > 1:
        lines = [f"HTTP {status} {error.get('code')}:"]
        lines += [f"  {p.get('field')}: {p.get('message')}" for p in problems]
        return "\n".join(lines)
    where = f" at {error['field']}" if error.get("field") else ""
    return f"HTTP {status} {error.get('code')}{where}: {error.get('message')}"
