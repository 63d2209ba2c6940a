"""The driver's errors as the store raises them (``db.session.translated``, around every
transaction): away → StoreUnavailable, a refused value → ValueRefused, each chained from the
driver's error; anything else unchanged."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import (
    DataError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    ProgrammingError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeout

from db.errors import JobNotFound, StoreUnavailable, ValueRefused
from db.session import translated

CAUSE = Exception("server closed the connection")


@pytest.mark.parametrize(
    ("driver", "raised"),
    [
        (OperationalError("SELECT 1", {}, CAUSE), StoreUnavailable),
        (InterfaceError("SELECT 1", {}, CAUSE), StoreUnavailable),
        (PoolTimeout("QueuePool limit reached"), StoreUnavailable),
        (DataError("INSERT", {}, Exception("NUL in text")), ValueRefused),
    ],
)
def test_known_driver_errors_become_the_stores(driver: Exception, raised: type) -> None:
    with pytest.raises(raised) as info, translated():
        raise driver
    assert info.value.__cause__ is driver
    assert str(driver) in str(info.value)


@pytest.mark.parametrize(
    "other",
    [
        IntegrityError("INSERT", {}, Exception("duplicate key")),  # a bug: reported as one
        ProgrammingError("SELECT", {}, Exception("no such column")),
        JobNotFound("j1"),
        ValueError("x"),
    ],
)
def test_other_errors_pass_unchanged(other: Exception) -> None:
    with pytest.raises(type(other)) as info, translated():
        raise other
    assert info.value is other
