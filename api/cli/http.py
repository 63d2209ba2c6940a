"""A small HTTP client of the API for the ``gradq`` command (submit, watch, jobs, …)."""

from __future__ import annotations

import os
import re
from typing import Any

import httpx

from core import defaults


class ApiFailure(Exception):
    """The service refused (4xx/5xx) or could not be reached (``status`` 0)."""

    def __init__(self, status: int, body: Any, message: str) -> None:
        super().__init__(message)
        self.status, self.body, self.message = status, body, message


class ApiClient:
    def __init__(self, url: str | None = None, key: str | None = None, timeout: float = 60) -> None:
        self.url = (url or os.environ.get("GRADQ_URL") or defaults.API_URL).rstrip("/")
        key = key or os.environ.get("GRADQ_API_KEY")
        self.has_key = bool(key)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.close()

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """The JSON body of a 2xx answer; :class:`ApiFailure` otherwise."""
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
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
