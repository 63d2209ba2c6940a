"""``core.uploads``: an upload's shape from its recorded column profiles is the one
``core.csvdata.read_csv_table`` gives when a job loads the file, for every column as the
target and every task, or the same field's refusal."""

from __future__ import annotations

import pytest

from core.csvdata import DataError, column_profiles, read_csv_table
from core.spec import DatasetSpec, InvalidSpec
from core.uploads import ColumnProfile, upload_shape

# 30 rows: real numbers, 3 classes, 2 classes, 20 integers (≥ rows/2), one value, 60 labels
ROWS = [
    [0.5 * i + 0.25, i % 3, i % 2, i % 20, 7, i * 2, "abcd"[i % 4]] for i in range(30)
]  # fmt: skip
COLUMNS = ["real", "three", "two", "many", "one", "wide", "label"]


def _csv(columns: list[str], rows: list[list[object]]) -> bytes:
    lines = [",".join(columns)] + [",".join(str(v) for v in row) for row in rows]
    return ("\n".join(lines) + "\n").encode()


def _outcome(f: object) -> tuple[str, object, object]:
    try:
        return ("ok", *f())  # type: ignore[operator]
    except InvalidSpec as exc:
        return ("refused", exc.errors[0].field, None)


@pytest.mark.parametrize("task", [None, "classification", "regression"])
@pytest.mark.parametrize("with_text", [False, True])
def test_the_recorded_shape_is_what_loading_the_file_gives(
    task: str | None, with_text: bool
) -> None:
    columns = COLUMNS if with_text else COLUMNS[:-1]
    data = _csv(columns, [row[: len(columns)] for row in ROWS])
    uploaded_target = "label" if with_text else "real"
    table = read_csv_table(data, target=uploaded_target)
    stored = {k: v.to_json() for k, v in column_profiles(table, uploaded_target).items()}
    profiles = {k: ColumnProfile.from_json(v) for k, v in stored.items()}
    assert sorted(profiles) == sorted(columns)
    for target in columns:
        spec = DatasetSpec(name="upload", id="x", target=target, task=task)  # type: ignore[arg-type]

        def loaded(target: str = target) -> tuple[object, object]:
            try:
                t = read_csv_table(data, target=target, task=task)  # type: ignore[arg-type]
            except DataError as exc:
                if exc.errors[0].field == "dataset.path":  # a text feature column
                    raise InvalidSpec.at("dataset.target", str(exc)) from None
                raise
            return t.task, (len(t.classes) or None, t.X.shape)

        def recorded(spec: DatasetSpec = spec) -> tuple[object, object]:
            shape = upload_shape(spec, columns=columns, rows=len(ROWS), profiles=profiles)
            return shape.task, (shape.n_classes, (shape.n_rows, shape.n_features))

        assert _outcome(recorded) == _outcome(loaded), (target, task)
