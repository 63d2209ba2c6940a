"""A small HTTP client of the API for the ``gradq`` command (submit, watch, jobs, …)."""

from __future__ import annotations

import os
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
        raise ApiFailure(response.status_code, body, describe(response.status_code, body))


def describe(status: int, body: Any) -> str:
    """One line per problem from the error shape ``{"error": {...}, "errors": [...]}``."""
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
