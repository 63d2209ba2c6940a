"""The column types' bind processing: ``UTCDateTime`` remembers its last value (a group of
submits binds one ``now`` many times) and must still bind every value right, from any
thread; JSON columns are written by ``json_text``."""

from __future__ import annotations

import json
import math
import threading
from datetime import UTC, datetime, timedelta, timezone

from sqlalchemy.dialects import postgresql, sqlite

from db.models import UTCDateTime
from db.session import json_text


def _plain(dialect: object) -> object:
    """What the bind processing gives without the memory (the parent class's processor)."""
    return super(UTCDateTime, UTCDateTime()).bind_processor(dialect)  # type: ignore[arg-type]


def test_remembered_binding_equals_plain_binding_on_each_backend() -> None:
    base = datetime(2026, 11, 29, 0, 0, tzinfo=UTC)
    values = [base, base, None, base + timedelta(microseconds=1), base]
    values += [datetime(2026, 1, 1, 12, tzinfo=timezone(timedelta(hours=5))), datetime(2026, 1, 1)]
    for dialect in (sqlite.dialect(), postgresql.dialect()):
        remembered = UTCDateTime().bind_processor(dialect)
        plain = _plain(dialect)
        if remembered is None:  # this backend binds datetimes as they are
            assert plain is None
            continue
        assert callable(plain)
        assert [remembered(v) for v in values] == [plain(v) for v in values]


def test_remembered_binding_is_right_from_many_threads() -> None:
    remembered = UTCDateTime().bind_processor(sqlite.dialect())
    plain = _plain(sqlite.dialect())
    assert remembered is not None and callable(plain)
    base = datetime(2026, 11, 29, tzinfo=UTC)
    values = [base + timedelta(seconds=i) for i in range(50)]
    expected = [plain(v) for v in values]
    wrong: list[tuple[int, object]] = []

    def run(offset: int) -> None:
        for n in range(4000):
            i = (n * 7 + offset) % len(values)
            got = remembered(values[i])
            if got != expected[i]:
                wrong.append((i, got))

    threads = [threading.Thread(target=run, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == []


def test_json_text_round_trips_and_writes_what_json_dumps_reads() -> None:
    value = {"b": [1, 2.5, None, True], "a": {"ü": "x"}, "nan": math.nan, "inf": -math.inf}
    back = json.loads(json_text(value))
    assert list(back) == ["b", "a", "nan", "inf"]  # insertion order kept
    assert back["b"] == [1, 2.5, None, True] and back["a"] == {"ü": "x"}
    assert math.isnan(back["nan"]) and back["inf"] == -math.inf
