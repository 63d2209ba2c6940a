"""An uploaded data set's shape for a spec, from what was recorded of it at upload: the
columns, the rows and a profile of each column (:class:`ColumnProfile`). A job on an upload
is checked against it when submitted, as a job on a built-in set is against its known shape.

Pure Python (no numpy): the API imports it on its submit path. ``core.csvdata`` makes the
profiles from a parsed table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from core.spec import DatasetShape, DatasetSpec, InvalidSpec, Task

AUTO_MAX_CLASSES = 50  # as core.csvdata: an integer target with more values is regression
MAX_CLASSES = 1_000  # as core.csvdata: the most classes a target column may have


@dataclass(frozen=True)
class ColumnProfile:
    """What a column would be as a target: ``text`` when a value is not a number (only an
    upload's own target column may be), ``integral`` when every value is an integer, and
    ``distinct`` its distinct values (text or integral columns; None otherwise)."""

    text: bool
    integral: bool
    distinct: int | None

    def to_json(self) -> dict[str, Any]:
        return {"text": self.text, "integral": self.integral, "distinct": self.distinct}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ColumnProfile:
        distinct = data.get("distinct")
        return cls(
            bool(data["text"]), bool(data["integral"]), None if distinct is None else int(distinct)
        )


def target_task(
    profile: ColumnProfile, rows: int, column: str, task: Task | None
) -> tuple[Task, int | None]:
    """The task and number of classes ``core.csvdata.read_csv_table`` gives ``column`` as the
    target with ``task`` (None: detected), or the ``InvalidSpec`` it would raise when the job
    loads the file."""
    if profile.text:
        if task == "regression":
            raise InvalidSpec.at(
                "dataset.task", f"regression needs a numeric target; column {column!r} holds text"
            )
        return "classification", _classes(profile.distinct or 0, column)
    if task is None:
        distinct = profile.distinct or 0
        auto = profile.integral and distinct <= AUTO_MAX_CLASSES and distinct < rows / 2
        task = "classification" if auto else "regression"
    if task == "regression":
        return "regression", None
    if not profile.integral:
        raise InvalidSpec.at(
            "dataset.task",
            f"classification needs class labels, integers or text; column {column!r} holds "
            "numbers that are not integers",
        )
    return "classification", _classes(profile.distinct or 0, column)


def _classes(n: int, column: str) -> int:
    if n < 2:
        raise InvalidSpec.at(
            "dataset.target",
            f"column {column!r} has a single class; classification needs at least 2",
        )
    if n > MAX_CLASSES:
        raise InvalidSpec.at(
            "dataset.target",
            f"column {column!r} has {n:,} distinct labels; classification allows at most "
            f"{MAX_CLASSES:,}",
        )
    return n


def upload_shape(
    ds: DatasetSpec,
    *,
    columns: Sequence[str],
    rows: int,
    profiles: Mapping[str, ColumnProfile],
) -> DatasetShape:
    """The shape of the upload ``ds`` names: its features (every column but the target),
    the target's task and classes, and its rows. ``InvalidSpec`` (``dataset.target``,
    ``dataset.task``) for a target the file cannot give, or a text column left as a feature.
    The caller checks that the target is one of ``columns``."""
    target = ds.target
    if target is None or target not in profiles:
        raise KeyError(target)
    for name in columns:  # the features first, as the file is read
        if name != target and profiles[name].text:
            raise InvalidSpec.at(
                "dataset.target",
                f"column {name!r} is not numeric, so it can only be the target; "
                f"it is the target of this upload, not {target!r}",
            )
    task, classes = target_task(profiles[target], rows, target, ds.task)
    return DatasetShape(task, len(columns) - 1, classes, n_rows=rows)


def recorded_shape(
    ds: DatasetSpec,
    *,
    columns: Sequence[str],
    rows: int,
    profile: Mapping[str, Mapping[str, Any]] | None,
) -> DatasetShape | None:
    """:func:`upload_shape` from an upload's record, its ``profile`` as stored
    (:meth:`ColumnProfile.to_json` per column); None for a record made before profiles were
    (its shape is then unknown until the file is loaded)."""
    if profile is None:
        return None
    profiles = {name: ColumnProfile.from_json(p) for name, p in profile.items()}
    return upload_shape(ds, columns=columns, rows=rows, profiles=profiles)
