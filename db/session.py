"""Engines and sessions. Nothing is built at import: call :func:`make_engine` with a URL.

SQLite (the embedded default) runs in WAL mode with a 30 s busy timeout and foreign keys on;
SQLAlchemy emits the ``BEGIN`` itself (the documented pysqlite recipe), as ``BEGIN IMMEDIATE``
for every transaction begun by ``engine.begin()`` so writers queue on the lock instead of
failing on a read→write upgrade. Reads go through :func:`read_tx`, which begins a plain
deferred ``BEGIN``. PostgreSQL gets a pre-pinged pool, so a restarted server is survived.

Every transaction here raises the store's errors in the driver's place (:func:`translated`):
a database that cannot be reached, or a connection that drops, is
:class:`db.errors.StoreUnavailable`, chained from the driver's error.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic_core import to_json
from sqlalchemy import Connection, Engine, create_engine, event, make_url, text
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import Session, sessionmaker

from db.errors import DRIVER_ERRORS, driver_error

SQLITE_BUSY_TIMEOUT_S = 30.0
_BEGIN_OPTION = "gradq_sqlite_begin"


BACKENDS = ("sqlite", "postgresql")


def check_url(url: str) -> str:
    """``url`` when it is a database URL of a backend gradq runs on; else ``ValueError``
    saying why."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ValueError(f"not a database URL: {url!r}") from None
    if parsed.get_backend_name() not in BACKENDS:
        raise ValueError(f"sqlite or postgresql, not {parsed.get_backend_name()!r}")
    return url


@contextmanager
def translated() -> Iterator[None]:
    """Raise the store's error that a driver error means (:func:`db.errors.driver_error`:
    :class:`StoreUnavailable`, :class:`ValueRefused`), chained from it; any other error
    as it is."""
    try:
        yield
    except DRIVER_ERRORS as exc:
        known = driver_error(exc)
        if known is None:
            raise
        raise known from exc


def ping(engine: Engine) -> str:
    """One ``SELECT 1``: returns what answered, or raises :class:`StoreUnavailable`."""
    with translated(), engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    return f"{engine.dialect.name} answers"


def make_engine(url: str, *, pool_size: int = 5, max_overflow: int = 10) -> Engine:
    """An engine for ``url``, set up for concurrent queue work.

    For a SQLite file URL the parent folder is created. Every connection then has WAL,
    ``busy_timeout``, ``foreign_keys=ON`` and ``check_same_thread=False``; ``engine.begin()``
    starts a ``BEGIN IMMEDIATE`` write transaction. Other backends get ``pool_pre_ping``;
    psycopg binds lists in binary.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        engine = create_engine(
            url,
            pool_pre_ping=True,
            hide_parameters=True,  # an error's text never carries a row's values (secrets)
            pool_size=pool_size,
            max_overflow=max_overflow,
            json_serializer=json_text,
        )
        if engine.dialect.driver == "psycopg":
            event.listen(engine, "connect", _psycopg_on_connect)
        return engine
    database = parsed.database
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url,
        hide_parameters=True,
        connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_S},
        pool_size=pool_size,
        max_overflow=max_overflow,
        json_serializer=json_text,
    )
    event.listen(engine, "connect", _sqlite_on_connect)
    event.listen(engine, "begin", _sqlite_on_begin)
    return engine


def json_text(value: Any) -> str:
    """JSON columns' values as text: pydantic-core's encoder, faster than ``json.dumps``
    (a submit stores its whole spec; bench/RESULTS.md, API); compact, and NaN/Infinity
    written as ``json.dumps`` writes them."""
    return to_json(value, inf_nan_mode="constants").decode()


def _psycopg_on_connect(dbapi_connection: Any, _record: Any) -> None:
    """Lists are bound in binary. psycopg's default for a list is array text, each element
    quoted by a regular expression in Python: a group of submits binds each column of its
    jobs as one array (``db.store``), thousands of elements a group."""
    from psycopg.types.array import ListBinaryDumper

    dbapi_connection.adapters.register_dumper(list, ListBinaryDumper)


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN itself (see _on_begin)
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


def _sqlite_on_begin(conn: Connection) -> None:
    mode = conn.get_execution_options().get(_BEGIN_OPTION, "IMMEDIATE")
    conn.exec_driver_sql("BEGIN IMMEDIATE" if mode == "IMMEDIATE" else "BEGIN")


@contextmanager
def write_tx(engine: Engine) -> Iterator[Connection]:
    """A write transaction: committed on success, rolled back on error.

    On SQLite it holds the database's write lock from its first statement (BEGIN IMMEDIATE).
    """
    with translated(), engine.begin() as conn:
        yield conn


@contextmanager
def read_tx(engine: Engine) -> Iterator[Connection]:
    """A read-only transaction; on SQLite a deferred BEGIN, so it never waits for writers."""
    with translated(), engine.connect() as conn:
        conn.execution_options(**{_BEGIN_OPTION: "DEFERRED"})
        with conn.begin():
            yield conn


@contextmanager
def one_statement_tx(engine: Engine) -> Iterator[Connection]:
    """For a unit of work that is ONE statement. PostgreSQL runs it in autocommit (a single
    statement is atomic on its own; no BEGIN/COMMIT round trips); SQLite gets a write
    transaction (BEGIN IMMEDIATE), so several statements there stay atomic too."""
    if engine.dialect.name != "postgresql":
        with write_tx(engine) as conn:
            yield conn
        return
    with translated(), engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT")
        yield conn


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """An ORM session factory bound to ``engine`` (objects stay loaded after commit)."""
    return sessionmaker(bind=engine, expire_on_commit=False)
