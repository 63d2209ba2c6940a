"""``api.routes.common.parse_body`` reads a body in one pass (pydantic's
``model_validate_json``) and falls back to ``json.loads`` and core's ``parse_spec`` for
anything that pass refuses: for every body its answer (the spec, or the error with its
message and field paths) must be the one of those two steps alone."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from api.errors import ApiError
from api.routes import common
from core.spec import InvalidSpec, JobSpec, SpecLimits, parse_spec

LIMITS = SpecLimits(max_parameters=20000, max_epochs=20, max_hidden_layers=64)
BASE: dict[str, Any] = {
    "name": "b",
    "dataset": "iris",
    "model": {"hidden": [16]},
    "optimizer": {"epochs": 5},
}
PATHS = [
    (), ("name",), ("dataset",), ("dataset", "name"), ("dataset", "target"), ("dataset", "id"),
    ("model",), ("model", "hidden"), ("model", "activation"), ("optimizer",),
    ("optimizer", "epochs"), ("optimizer", "batch_size"), ("optimizer", "lr"),
    ("regularization", "dropout"), ("regularization", "early_stopping"), ("seed",),
    ("resources", "cpus"), ("max_attempts",), ("gradcheck",), ("loss",), ("no_such_field",),
]  # fmt: skip
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=12)
    | st.floats(allow_nan=False, allow_infinity=False) | st.sampled_from(
        ["relu", "tanh", "iris", "upload", "csv", "", "\x00", "5", "1e3", 8.0, 8.5, 10**6]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                  max_size=4),
    max_leaves=8,
)  # fmt: skip


def two_steps(raw: bytes) -> JobSpec:
    """What the API did before the one-pass read: ``json.loads``, then core's parse."""
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, "malformed_json", f"the body is not valid JSON: {exc}") from None
    return parse_spec(data, limits=LIMITS)


def answer(read: Any, raw: bytes) -> Any:
    try:
        spec = read(raw)
    except InvalidSpec as exc:
        return ("invalid", [(e.field, e.message) for e in exc.errors])
    except ApiError as exc:
        return ("refused", exc.status, exc.code, exc.message, exc.field)
    assert isinstance(spec, JobSpec)
    return ("spec", spec.model_dump())


def with_value(path: tuple[str, ...], value: Any, base: Any = BASE) -> Any:
    """``base`` with the field at ``path`` set to ``value`` (each parent made a mapping)."""
    if not path:
        return value
    parent = base if isinstance(base, dict) else {}
    return {**parent, path[0]: with_value(path[1:], value, parent.get(path[0]))}


@settings(max_examples=400, suppress_health_check=list(HealthCheck), deadline=None)
@given(path=st.sampled_from(PATHS), value=JSON, ascii_only=st.booleans())
@example(path=("model", "hidden"), value=[8.0], ascii_only=True)
@example(path=("seed",), value="5", ascii_only=True)
@example(path=("optimizer", "epochs"), value=True, ascii_only=True)
def test_a_spec_reads_as_the_two_steps_read_it(
    path: tuple[str, ...], value: Any, ascii_only: bool
) -> None:
    raw = json.dumps(with_value(path, value), ensure_ascii=ascii_only).encode()
    assert answer(lambda r: common.parse_body(r, LIMITS), raw) == answer(two_steps, raw)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"dataset": "iris", "name": "a\\ud800b"}',  # a lone surrogate
        b'{"dataset": "iris", "name": "x", "name": "y"}',  # a key twice: the last counts
        b'{"dataset": "iris", "seed": 100000000000000000000000}',
        b'{"dataset": "iris", "optimizer": {"lr": NaN}}',  # json.loads reads NaN
        b'{"dataset": "iris", "optimizer": {"lr": 1e400}}',
        b'\xef\xbb\xbf{"dataset": "iris"}',  # a byte-order mark
        b'{"dataset": "iris", "name": "\xff"}',  # not UTF-8
        b'{"dataset": "iris"} trailing',
        b'{"dataset": "iris", "model": {"hidden": [99999]}}',  # over the parameter limit
        b'{"dataset": "iris", "optimizer": {"epochs": 21}}',  # over the epoch limit
        b"[" * 100_000 + b"]" * 100_000,
        b"[1, 2]",
        b'"iris"',
        b"{not json",
    ],
)
def test_odd_bodies_read_as_the_two_steps_read_them(raw: bytes) -> None:
    assert answer(lambda r: common.parse_body(r, LIMITS), raw) == answer(two_steps, raw)


def test_a_valid_spec_is_read_in_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_called(*_: object, **__: object) -> None:
        raise AssertionError("read in two steps")

    monkeypatch.setattr(common, "parse_spec", not_called)
    spec = common.parse_body(json.dumps(BASE).encode(), LIMITS)
    assert spec == parse_spec(BASE, limits=LIMITS)
    with pytest.raises(AssertionError, match="two steps"):
        common.parse_body(b'{"dataset": "nope"}', LIMITS)
