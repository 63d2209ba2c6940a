"""The ``gradq`` command's lists (jobs, data sets, keys), fitted to the terminal: the ids
never cut, since ``show``, ``cancel``, ``logs`` and ``keys revoke`` take them (a table fitted
to an 80-column terminal cut them to 20 characters)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Column, Table

WIDE = 100  # below: a list leaves out its "created" column, `sweep show` its trials' ids
# free text, folded onto more lines; every other cell stays whole
FOLDS = ("name", "tenant", "params")


def listing(console: Console, ids: list[str], *columns: str, wide: int = WIDE) -> Table:
    """A table with the ids first, then ``columns`` ("created" only in a terminal of ``wide``
    columns or more)."""
    table = Table(Column("id", no_wrap=True, min_width=max(map(len, ids), default=2)))
    for name in columns:
        if name == "created" and console.width < wide:
            continue
        folds = name in FOLDS
        table.add_column(name, overflow="fold" if folds else "ellipsis", no_wrap=not folds)
    return table


def add(table: Table, row: dict[str, str]) -> None:
    """One row, by column name (cells of columns the table leaves out are dropped)."""
    table.add_row(*(row[str(column.header)] for column in table.columns))


def when(iso: str) -> str:
    """An ISO time as the lists show it: ``2026-11-29 03:26:56``."""
    return iso[:19].replace("T", " ")
