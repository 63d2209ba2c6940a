"""What every router shares: the documented error responses and the JobSpec request body."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from fastapi import Depends, Query, Request

from api.browser import is_yaml
from api.deps import SettingsDep, get_tenant
from api.errors import ApiError
from api.schemas import ErrorBody
from api.settings import Settings
from core.spec import InvalidSpec, JobSpec, SpecLimits, check_limits, parse_spec

T = TypeVar("T")

# Every /v1 router checks the key first, before its body is read or validated.
AUTHENTICATED = [Depends(get_tenant)]

_ERRORS = {
    400: "malformed request (e.g. the body is not JSON), or a Host not in GRADQ_ALLOWED_HOSTS",
    401: "missing, unknown or revoked API key (when GRADQ_AUTH=keys)",
    403: "a request from another site (Origin, Sec-Fetch-Site), or one the API key's role may "
    "not make (operators only)",
    404: "no such resource for this tenant",
    409: "conflicts with the resource's state",
    413: "the request body is over the limit",
    415: "a body that is not JSON (an upload: multipart/form-data)",
    422: "invalid input; `field` names where",
    429: "too many queued jobs for this tenant, or gradient checks waiting (Retry-After)",
    503: "the database or MLflow is not reachable",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI responses for these error codes (and those possible everywhere: 400, 403 and
    415 from ``api.browser``, 401, 413, 503)."""
    wanted = sorted({*codes, 400, 401, 403, 413, 415, 503})
    return {c: {"model": ErrorBody, "description": _ERRORS[c]} for c in wanted}


SPEC_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/JobSpec"}}},
    }
}


async def read_spec(request: Request, settings: Settings) -> JobSpec:
    """The body as a ``JobSpec``, parsed by core (field paths such as ``model.hidden[1]``)
    within the settings' limits. A ``csv`` data set names a file on the server: refused
    when the service is shared (API keys on); upload the file instead. Otherwise its path
    must lie in ``GRADQ_CSV_ROOT`` (:func:`csv_path`), and the spec names it absolutely."""
    raw = await request.body()
    if not raw.strip():
        raise ApiError(400, "malformed_json", "the body is empty: send a job spec as JSON")
    if yaml_body(request):
        spec = parse_spec(load_yaml(raw), limits=settings.limits)
    else:
        spec = parse_body(raw, settings.limits)
    return checked_spec(spec, settings)


def checked_spec(spec: JobSpec, settings: Settings) -> JobSpec:
    """What :func:`read_spec` checks of a parsed spec beyond core's validation: no ``trial``,
    and a ``csv`` path only where the service reads one."""
    if spec.trial is not None:
        raise InvalidSpec.at(
            "trial",
            "set by a sweep for its trials, not in a job spec: submit a sweep (POST /v1/sweeps)",
        )
    if spec.dataset.name == "csv" and settings.auth == "keys":
        raise InvalidSpec.at(
            "dataset.name",
            "a csv path names a file on the server; upload it (POST /v1/datasets) and use "
            "{name: upload, id: …, target: …}",
        )
    if spec.dataset.name == "csv" and spec.dataset.path is not None:
        path = csv_path(spec.dataset.path, settings.csv_root)
        spec = spec.model_copy(update={"dataset": spec.dataset.model_copy(update={"path": path})})
    return spec


def csv_path(path: str, root: Path | None) -> str:
    """``path`` of a ``csv`` data set as the real absolute path of a file in ``root``
    (``GRADQ_CSV_ROOT``; a relative path is taken inside it). Refused (422 at
    ``dataset.path``) without a root, or when the path, ``..`` and symbolic links resolved,
    leads out of it; the message tells nothing of where it leads."""
    if root is None:
        raise InvalidSpec.at(
            "dataset.path",
            "this service reads no csv path: upload the file (POST /v1/datasets, then "
            "{name: upload, id: …, target: …}), or have the operator set GRADQ_CSV_ROOT "
            "to a folder of input files",
        )
    real = (root / path).resolve()
    if not real.is_relative_to(root):
        raise InvalidSpec.at(
            "dataset.path",
            "not a file in the folder of input files (GRADQ_CSV_ROOT): give a path inside it",
        )
    return str(real)


def yaml_body(request: Request) -> bool:
    """Whether the body is YAML by its Content-Type (application/yaml and its kin)."""
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    return is_yaml(media)


def load_yaml(raw: bytes) -> Any:
    """A YAML body's document (``yaml.safe_load``: plain data only), validated as JSON's
    is; a body that does not parse is a 400 ``malformed_yaml`` naming the line and column."""
    try:
        return yaml.safe_load(raw)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = exc.problem or exc.context
        raise ApiError(
            400, "malformed_yaml", f"the body is not valid YAML{where}: {problem}"
        ) from None
    except (yaml.YAMLError, RecursionError) as exc:
        raise ApiError(400, "malformed_yaml", f"the body is not valid YAML: {exc}") from None


def parse_body(raw: bytes, limits: SpecLimits) -> JobSpec:
    """``raw`` as a spec: what ``parse_spec(json.loads(raw))`` accepts, with its errors.

    A body is first parsed and validated by pydantic in one pass over the bytes
    (``model_validate_json``), cheaper than building Python objects and validating them; a
    spec that pass accepts is the one ``parse_spec`` makes. Anything it refuses goes the
    two steps, so every refusal is ``json.loads``'s or core's, with their messages and
    field paths."""
    try:
        spec = JobSpec.model_validate_json(raw)
    except ValueError:  # pydantic's ValidationError among them
        pass
    else:
        check_limits(spec, limits)
        return spec
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, "malformed_json", f"the body is not valid JSON: {exc}") from None
    return parse_spec(data, limits=limits)


async def spec_body(request: Request, settings: SettingsDep) -> JobSpec:
    return await read_spec(request, settings)


SpecDep = Annotated[JobSpec, Depends(spec_body)]


MAX_QUERY_VALUES = 20
"""The most values a repeated query parameter (``tag``, ``metric``) takes: a job holds at
most 20 tags, and each value is one more term of the database's query."""


def parsed(param: str, values: list[str], parse: Callable[[str], T]) -> list[T]:
    """Each query value of ``param`` parsed; a refusal, or more than
    :data:`MAX_QUERY_VALUES` of them, is a 422 naming ``param``."""
    if len(values) > MAX_QUERY_VALUES:
        raise ApiError(422, "invalid_query", f"{param}: at most {MAX_QUERY_VALUES} values, "
                       f"got {len(values)}", field=param)  # fmt: skip
    try:
        return [parse(v) for v in values]
    except ValueError as exc:
        raise ApiError(422, "invalid_query", f"{param}: {exc}", field=param) from None


TagQuery = Annotated[
    list[str],
    Query(description="KEY:VALUE, e.g. team:vision; repeat for jobs with every tag"),
]
