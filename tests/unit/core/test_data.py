"""core.data and core.csvdata: loading, splitting, standardising, and reading CSVs."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.datasets import load_wine

from core import csvdata
from core.data import DataError, Dataset, Table, load_dataset, read_csv_table
from core.spec import (
    BUILTIN_DATASETS,
    SYNTHETIC_DATASETS,
    DatasetSpec,
    InvalidSpec,
    dataset_shape,
)

NAMED = (*BUILTIN_DATASETS, *SYNTHETIC_DATASETS)
SIZES = {"iris": 150, "wine": 178, "breast_cancer": 569, "digits": 1797, "diabetes": 442}


def csv_bytes(header: list[str], rows: Sequence[Sequence[object]]) -> bytes:
    lines = [",".join(header)] + [",".join(str(c) for c in row) for row in rows]
    return ("\n".join(lines) + "\n").encode()


def id_table(n: int = 40, n_classes: int = 2, seed: int = 0) -> tuple[np.ndarray, bytes]:
    """A CSV whose first feature is the row id, so a standardised row can be traced back.
    Returns the raw features (n, 3) and the CSV bytes (columns id, a, b, label)."""
    rng = np.random.default_rng(seed)
    raw = np.column_stack([np.arange(n), rng.normal(5.0, 3.0, n), rng.uniform(-1, 9, n)])
    rows = [
        [int(r[0]), repr(float(r[1])), repr(float(r[2])), f"c{i % n_classes}"]
        for i, r in enumerate(raw)
    ]
    return raw, csv_bytes(["id", "a", "b", "label"], rows)


def write(tmp_path: Path, data: bytes, name: str = "data.csv") -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def all_parts(ds: Dataset) -> tuple[np.ndarray, np.ndarray]:
    return (
        np.concatenate([ds.X_train, ds.X_val, ds.X_test]),
        np.concatenate([ds.y_train, ds.y_val, ds.y_test]),
    )


# ---------------------------------------------------------------------------------------------
# Named data sets


@pytest.mark.parametrize("name", NAMED)
def test_named_dataset_matches_its_declared_shape(name: str) -> None:
    spec = DatasetSpec(name=name)
    shape = dataset_shape(spec)
    ds = load_dataset(spec, seed=0)
    n = SIZES.get(name, 500)
    assert ds.task == shape.task
    assert ds.n_features == shape.n_features == len(ds.feature_names)
    assert len(ds.X_train) + len(ds.X_val) + len(ds.X_test) == n
    assert len(ds.X_test) == round(0.2 * n) and len(ds.X_val) == round(0.2 * n)
    for X, y in ((ds.X_train, ds.y_train), (ds.X_val, ds.y_val), (ds.X_test, ds.y_test)):
        assert X.dtype == np.float64 and X.shape == (len(y), ds.n_features)
        assert np.isfinite(X).all()
        assert y.ndim == 1
    assert ds.mean.shape == ds.scale.shape == (ds.n_features,)
    _, y = all_parts(ds)
    if shape.task == "classification":
        assert ds.n_classes == shape.n_classes == len(ds.classes) == ds.n_outputs
        assert y.dtype == np.int64
        assert sorted(set(y.tolist())) == list(range(ds.n_classes))  # every class is present
    else:
        assert ds.classes == [] and ds.n_classes == 0 and ds.n_outputs == 1
        assert y.dtype == np.float64


def test_builtin_labels_and_feature_names() -> None:
    iris = load_dataset(DatasetSpec(name="iris"), seed=0)
    assert iris.classes == ["setosa", "versicolor", "virginica"]
    assert iris.feature_names[0] == "sepal length (cm)"
    digits = load_dataset(DatasetSpec(name="digits"), seed=0)
    assert digits.classes == [str(d) for d in range(10)]
    sine = load_dataset(DatasetSpec(name="sine"), seed=0)
    assert sine.feature_names == ["x"]


@pytest.mark.parametrize(
    ("name", "params", "n_features", "n_classes"),
    [
        ("blobs", {"n_features": 5, "n_classes": 4}, 5, 4),
        ("blobs", {"n_features": 1}, 1, 3),
        ("spirals", {"n_classes": 3}, 2, 3),
        ("moons", {}, 2, 2),
    ],
)
def test_synthetic_parameters(
    name: str, params: dict[str, int], n_features: int, n_classes: int
) -> None:
    spec = DatasetSpec(name=name, n_samples=123, **params)
    shape = dataset_shape(spec)
    ds = load_dataset(spec, seed=3)
    assert (ds.n_features, ds.n_classes) == (shape.n_features, shape.n_classes)
    assert (ds.n_features, ds.n_classes) == (n_features, n_classes)
    X, y = all_parts(ds)
    assert len(X) == 123
    assert set(y.tolist()) == set(range(n_classes))


def test_noise_is_the_spread_of_the_synthetic_sets() -> None:
    # sine: y - sin(x) is the noise; recover raw x with ds.raw
    for noise in (0.0, 0.5):
        ds = load_dataset(DatasetSpec(name="sine", n_samples=2000, noise=noise), seed=1)
        x = ds.raw(ds.X_train)[:, 0]
        assert x.min() >= -3.0 and x.max() <= 3.0
        assert np.std(ds.y_train - np.sin(x)) == pytest.approx(noise, abs=0.03)
    # xor without noise: the label is exactly "same sign"
    ds = load_dataset(DatasetSpec(name="xor", noise=0.0), seed=2)
    raw = ds.raw(ds.X_train)
    assert np.abs(raw).max() <= 1.0
    np.testing.assert_array_equal(ds.y_train, (raw[:, 0] * raw[:, 1] > 0).astype(np.int64))
    # spirals without noise: radius at most 1, each arm its own angle offset
    ds = load_dataset(DatasetSpec(name="spirals", noise=0.0, n_classes=3), seed=2)
    raw = ds.raw(ds.X_train)
    r = np.hypot(raw[:, 0], raw[:, 1])
    assert r.max() <= 1.0 + 1e-12
    offset = np.mod(np.arctan2(raw[:, 1], raw[:, 0]) - 3 * np.pi * r, 2 * np.pi)
    expected = 2 * np.pi * ds.y_train / 3
    assert np.allclose(np.cos(offset), np.cos(expected)) and np.allclose(
        np.sin(offset), np.sin(expected)
    )


# ---------------------------------------------------------------------------------------------
# Split, stratification, standardisation


@pytest.mark.parametrize("name", ["iris", "moons", "sine", "spirals", "diabetes"])
def test_same_seed_same_arrays_other_seed_other_split(name: str) -> None:
    a = load_dataset(DatasetSpec(name=name), seed=7)
    b = load_dataset(DatasetSpec(name=name), seed=7)
    c = load_dataset(DatasetSpec(name=name), seed=8)
    for field in ("X_train", "y_train", "X_val", "y_val", "X_test", "y_test", "mean", "scale"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.y_test, c.y_test) or not np.array_equal(a.X_test, c.X_test)
    assert not np.array_equal(a.raw(a.X_train), c.raw(c.X_train))


def test_split_of_a_real_data_set_changes_with_the_seed() -> None:
    # iris rows are fixed, so a different seed must pick different test rows
    a = load_dataset(DatasetSpec(name="iris"), seed=0)
    b = load_dataset(DatasetSpec(name="iris"), seed=1)
    rows_a = {tuple(np.round(r, 6)) for r in a.raw(a.X_test)}
    rows_b = {tuple(np.round(r, 6)) for r in b.raw(b.X_test)}
    assert rows_a != rows_b


def test_parts_are_disjoint_and_complete_and_standardised_with_train_statistics() -> None:
    raw, data = id_table(n=60)
    table = read_csv_table(data, target="label")
    ds = _load_upload(data, seed=4)
    ids = {
        part: np.rint(ds.raw(getattr(ds, f"X_{part}"))[:, 0]).astype(int)
        for part in ("train", "val", "test")
    }
    all_ids = np.concatenate(list(ids.values()))
    assert sorted(all_ids.tolist()) == list(range(60))  # disjoint and complete
    assert (len(ids["train"]), len(ids["val"]), len(ids["test"])) == (36, 12, 12)
    train_raw = raw[ids["train"]]
    np.testing.assert_allclose(ds.mean, train_raw.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(ds.scale, train_raw.std(axis=0), rtol=1e-12)
    assert not np.allclose(ds.mean, raw.mean(axis=0))  # train-only, not the whole table
    np.testing.assert_allclose(ds.X_train.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(ds.X_train.std(axis=0), 1.0, rtol=1e-12)
    for part in ("train", "val", "test"):
        X = getattr(ds, f"X_{part}")
        np.testing.assert_allclose(X, (raw[ids[part]] - ds.mean) / ds.scale, rtol=1e-12, atol=1e-12)
        np.testing.assert_array_equal(getattr(ds, f"y_{part}"), table.y[ids[part]])
        np.testing.assert_allclose(ds.raw(X), raw[ids[part]], rtol=1e-12, atol=1e-9)


def _load_upload(data: bytes, seed: int, **spec: object) -> Dataset:
    """Load ``data`` as an uploaded CSV whose target column is ``label``."""
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "upload.csv"
        p.write_bytes(data)
        return load_dataset(
            DatasetSpec.model_validate({"name": "upload", "id": "u1", "target": "label", **spec}),
            seed=seed,
            path=p,
        )


def test_constant_feature_gets_scale_one() -> None:
    rows = [[0.1, i, "a" if i % 2 else "b"] for i in range(20)]
    ds = _load_upload(csv_bytes(["const", "x", "label"], rows), seed=0)
    assert ds.scale[0] == 1.0 and ds.mean[0] == pytest.approx(0.1)
    assert np.abs(ds.X_train[:, 0]).max() < 1e-12
    assert np.abs(ds.X_test[:, 0]).max() < 1e-12
    assert ds.scale[1] > 1.0


def test_stratification_keeps_class_proportions() -> None:
    ds = load_dataset(DatasetSpec(name="iris"), seed=11)  # 50 of each class
    for y, per_class in ((ds.y_train, 30), (ds.y_val, 10), (ds.y_test, 10)):
        assert np.bincount(y, minlength=3).tolist() == [per_class] * 3
    # an unbalanced set: 80/20 → every part within one row of 80/20
    rows = [[i, "rare" if i % 5 == 0 else "common"] for i in range(200)]
    ds = _load_upload(csv_bytes(["x", "label"], rows), seed=3)
    assert ds.classes == ["common", "rare"]
    for y in (ds.y_train, ds.y_val, ds.y_test):
        assert abs(np.sum(y == 1) - 0.2 * len(y)) <= 1


def test_split_falls_back_to_unstratified_when_a_class_has_one_row() -> None:
    rows = [[i, "a" if i < 15 else "b"] for i in range(29)] + [[99, "lonely"]]
    ds = _load_upload(csv_bytes(["x", "label"], rows), seed=0)
    X, y = all_parts(ds)
    assert len(X) == 30 and ds.classes == ["a", "b", "lonely"]
    assert np.bincount(y).tolist() == [15, 14, 1]


def test_split_falls_back_when_a_part_cannot_hold_every_class() -> None:
    # 12 rows, 4 classes, a test part of 1 row: stratification is impossible, no error
    rows = [[i, f"k{i % 4}"] for i in range(12)]
    ds = _load_upload(csv_bytes(["x", "label"], rows), seed=0, test_fraction=0.05)
    assert len(ds.X_test) == 1 and len(ds.X_train) + len(ds.X_val) == 11


def test_zero_fractions_give_empty_parts() -> None:
    ds = load_dataset(DatasetSpec(name="wine", validation_fraction=0.0, test_fraction=0.0), seed=0)
    assert ds.X_val.shape == (0, 13) and ds.X_test.shape == (0, 13)
    assert ds.y_val.shape == (0,) and ds.y_test.dtype == np.int64
    assert len(ds.X_train) == 178
    ds = load_dataset(DatasetSpec(name="sine", validation_fraction=0.3, test_fraction=0.0), seed=0)
    assert ds.X_val.shape == (150, 1) and ds.X_test.shape == (0, 1)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(10, 300),
    val=st.floats(0.0, 0.44),
    test=st.floats(0.0, 0.44),
    seed=st.integers(0, 2**32 - 1),
    name=st.sampled_from(["xor", "sine", "blobs"]),
)
def test_split_sizes_for_any_fractions(
    n: int, val: float, test: float, seed: int, name: str
) -> None:
    ds = load_dataset(
        DatasetSpec(name=name, n_samples=n, validation_fraction=val, test_fraction=test), seed=seed
    )
    assert len(ds.X_test) == (0 if test == 0 else max(1, round(n * test)))
    assert len(ds.X_val) == (0 if val == 0 else max(1, round(n * val)))
    assert len(ds.X_train) >= 1
    assert len(ds.X_train) + len(ds.X_val) + len(ds.X_test) == n


def test_raw_undoes_standardisation_and_checks_the_width() -> None:
    ds = load_dataset(DatasetSpec(name="wine"), seed=0)
    original = load_wine().data
    restored = ds.raw(ds.X_test)
    # every restored row is a row of the bundled data
    for row in restored[:5]:
        assert np.isclose(original, row, rtol=1e-10, atol=1e-10).all(axis=1).any()
    np.testing.assert_array_equal(ds.raw(ds.X_train[0]), ds.raw(ds.X_train)[0])  # 1-D works
    with pytest.raises(ValueError, match="13"):
        ds.raw(np.zeros((2, 4)))


# ---------------------------------------------------------------------------------------------
# CSV: good cases


def test_csv_string_labels_sorted(tmp_path: Path) -> None:
    rows = [[i, i * 0.5, ["virginica", "setosa", "versicolor"][i % 3]] for i in range(12)]
    t = read_csv_table(write(tmp_path, csv_bytes(["a", "b", "species"], rows)), target="species")
    assert t.task == "classification"
    assert t.classes == ["setosa", "versicolor", "virginica"]
    assert t.feature_names == ["a", "b"]
    assert t.X.dtype == np.float64 and t.X.shape == (12, 2)
    assert t.y.dtype == np.int64
    assert [t.classes[k] for k in t.y[:3]] == ["virginica", "setosa", "versicolor"]
    np.testing.assert_array_equal(t.X[:, 1], np.arange(12) * 0.5)


def test_csv_integer_labels_sorted_numerically_and_target_anywhere() -> None:
    rows = [[[10, 2, 9][i % 3], i, -i] for i in range(30)]
    t = read_csv_table(csv_bytes(["y", "p", "q"], rows), target="y")
    assert t.task == "classification"
    assert t.classes == ["2", "9", "10"]
    assert t.y[:3].tolist() == [2, 0, 1]
    assert t.feature_names == ["p", "q"]
    np.testing.assert_array_equal(t.X[:, 1], -np.arange(30))


def test_csv_regression_target() -> None:
    rows = [[i, i * 1.5 + 0.25] for i in range(15)]
    t = read_csv_table(csv_bytes(["x", "y"], rows), target="y")
    assert t.task == "regression" and t.classes == []
    assert t.y.dtype == np.float64
    np.testing.assert_array_equal(t.y, np.arange(15) * 1.5 + 0.25)


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        ([i % 3 for i in range(30)], "classification"),  # few integer values
        (list(range(30)), "regression"),  # as many values as rows
        ([i % 15 for i in range(30)], "regression"),  # 15 values, not fewer than 30/2
        ([i % 14 for i in range(30)], "classification"),  # 14 < 15
        ([i % 51 for i in range(200)], "regression"),  # more than 50 distinct values
        ([i % 50 for i in range(200)], "classification"),
        ([(i % 3) + 0.5 for i in range(30)], "regression"),  # not integers
        ([float(i % 2) for i in range(30)], "classification"),  # 0.0 and 1.0 are integers
    ],
)
def test_csv_auto_task(labels: list[float], expected: str) -> None:
    t = read_csv_table(csv_bytes(["x", "y"], [[i, v] for i, v in enumerate(labels)]), target="y")
    assert t.task == expected


def test_csv_explicit_task_overrides_auto() -> None:
    data = csv_bytes(["x", "y"], [[i, i % 3] for i in range(30)])
    t = read_csv_table(data, target="y", task="regression")
    assert t.task == "regression" and t.y.dtype == np.float64
    data = csv_bytes(["x", "y"], [[i, i] for i in range(60)])
    t = read_csv_table(data, target="y", task="classification")
    assert t.task == "classification" and len(t.classes) == 60


def test_csv_bytes_with_bom_quotes_blank_lines_and_whitespace() -> None:
    text = '\ufeff x , "label"\r\n1, a\r\n\r\n' + "".join(
        f'{i},"{"a" if i % 2 else "b"}"\r\n' for i in range(2, 12)
    )
    t = read_csv_table(text.encode(), target="label")
    assert t.feature_names == ["x"]
    assert t.classes == ["a", "b"]
    assert t.X[:, 0].tolist() == [1.0, *range(2, 12)]


def test_csv_path_as_str_and_path(tmp_path: Path) -> None:
    data = csv_bytes(["x", "y"], [[i, i % 2] for i in range(10)])
    p = write(tmp_path, data)
    a, b, c = (
        read_csv_table(str(p), target="y"),
        read_csv_table(p, target="y"),
        read_csv_table(data, target="y"),
    )
    for other in (b, c):
        np.testing.assert_array_equal(a.X, other.X)
        np.testing.assert_array_equal(a.y, other.y)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    X=st.integers(10, 40).flatmap(
        lambda n: st.lists(
            st.lists(
                st.floats(allow_nan=False, allow_infinity=False, width=64), min_size=2, max_size=2
            ),
            min_size=n,
            max_size=n,
        )
    ),
    labels=st.lists(st.sampled_from(["cat", "dog", "émeu", "a b"]), min_size=40, max_size=40),
)
def test_csv_round_trip_of_random_tables(X: list[list[float]], labels: list[str]) -> None:
    labels = labels[: len(X)]
    labels[0], labels[1] = "cat", "dog"  # at least two classes
    rows = [[repr(a), repr(b), f'"{lab}"'] for (a, b), lab in zip(X, labels, strict=True)]
    t = read_csv_table(csv_bytes(["f1", "f2", "animal"], rows), target="animal")
    np.testing.assert_array_equal(t.X, np.array(X, dtype=np.float64))
    assert t.classes == sorted(set(labels))
    assert [t.classes[k] for k in t.y] == labels


BAD_CELLS = [
    ("abc", "'abc' is not a number"),
    ("", "empty cell"),
    ("  ", "empty cell"),
    ("nan", "'nan' is not a finite number"),
    ("-inf", "'-inf' is not a finite number"),
    ("1..2", "'1..2' is not a number"),
]


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(10, 30),
    data=st.data(),
    cell=st.sampled_from(BAD_CELLS),
)
def test_csv_first_bad_cell_is_named(n: int, data: st.DataObject, cell: tuple[str, str]) -> None:
    token, message = cell
    rows: list[list[object]] = [[i, i * 2.5, -i, i % 2] for i in range(n)]
    r = data.draw(st.integers(0, n - 1))
    c = data.draw(st.integers(0, 2))
    rows[r][c] = token
    if data.draw(st.booleans()) and r + 1 < n:
        rows[r + 1][(c + 1) % 3] = "later"  # a later bad cell is not the one reported
    with pytest.raises(DataError) as exc:
        read_csv_table(csv_bytes(["x1", "x2", "x3", "y"], rows), target="y")
    err = exc.value.errors[0]
    assert err.field == "dataset.path"
    assert err.message == f"row {r + 2}, column 'x{c + 1}': {message}"


def test_csv_bad_cell_message_example() -> None:
    rows: list[list[object]] = [[i, i, i % 2] for i in range(12)]
    rows[2][1] = "abc"
    with pytest.raises(DataError, match=r"row 4, column 'x2': 'abc' is not a number"):
        read_csv_table(csv_bytes(["x1", "x2", "y"], rows), target="y")


def test_csv_blank_lines_count_as_rows() -> None:
    text = "x,y\n1,0\n\n2,1\nzz,0\n" + "".join(f"{i},{i % 2}\n" for i in range(10))
    with pytest.raises(DataError, match=r"^dataset.path: row 5, column 'x': 'zz' is not a number$"):
        read_csv_table(text.encode(), target="y")


# ---------------------------------------------------------------------------------------------
# CSV: bad files


def _error(source: bytes | str | Path, target: str = "y", **kw: object) -> tuple[str, str]:
    with pytest.raises(DataError) as exc:
        read_csv_table(source, target=target, **kw)  # type: ignore[arg-type]
    assert isinstance(exc.value, InvalidSpec) and isinstance(exc.value, ValueError)
    assert len(exc.value.errors) == 1
    return exc.value.errors[0].field, exc.value.errors[0].message


GOOD_ROWS = [[i, i % 2] for i in range(12)]


@pytest.mark.parametrize(
    ("data", "field", "pattern"),
    [
        (b"", "dataset.path", "empty"),
        (b"\n\n  \n", "dataset.path", "empty"),
        (b"x,y\n", "dataset.path", "header but no data rows"),
        (csv_bytes(["x", "y"], GOOD_ROWS[:9]), "dataset.path", "at least 10 data rows, found 9"),
        (
            csv_bytes(["x", "y", "x"], [[*r, 1] for r in GOOD_ROWS]),
            "dataset.path",
            "duplicate column name 'x'",
        ),
        (
            csv_bytes(["x", "", "y"], [[1, *r] for r in GOOD_ROWS]),
            "dataset.path",
            "column 2 has no name",
        ),
        (
            csv_bytes(["x", "z"], GOOD_ROWS),
            "dataset.target",
            "no column 'y'; the columns are 'x', 'z'",
        ),
        (csv_bytes(["y"], [[i % 2] for i in range(12)]), "dataset.path", "no feature columns"),
        (
            csv_bytes(["x", "y"], [[i, "same"] for i in range(12)]),
            "dataset.target",
            "single class 'same'",
        ),
        (csv_bytes(["x", "y"], [[i, 1] for i in range(12)]), "dataset.target", "single class '1'"),
        (
            csv_bytes(["x", "y"], [*GOOD_ROWS[:3], [1, 2, 3], *GOOD_ROWS]),
            "dataset.path",
            "row 5 has 3 cells, the header has 2",
        ),
        (
            csv_bytes(["x", "y"], [*GOOD_ROWS[:3], [1, ""], *GOOD_ROWS]),
            "dataset.path",
            "row 5, column 'y': empty cell",
        ),
        (
            csv_bytes(["x", "y"], [*GOOD_ROWS, [1, "inf"]]),
            "dataset.path",
            "row 14, column 'y': 'inf' is not a finite",
        ),
        (b"x,y\n" + "\xe9,1\n".encode("latin-1") * 12, "dataset.path", "not UTF-8"),
    ],
)
def test_csv_bad_files(data: bytes, field: str, pattern: str) -> None:
    got_field, message = _error(data)
    assert got_field == field
    assert pattern in message


def test_csv_task_mismatch_is_a_task_error() -> None:
    rows = [[i, "a" if i % 2 else "b"] for i in range(12)]
    rows[0][1] = "text"
    field, message = _error(csv_bytes(["x", "y"], rows), task="regression")
    assert field == "dataset.task"
    assert "regression needs a numeric target" in message and "row 2, column 'y': 'text'" in message
    rows2 = [[i, i % 3 + (0.5 if i == 4 else 0)] for i in range(12)]
    field, message = _error(csv_bytes(["x", "y"], rows2), task="classification")
    assert field == "dataset.task"
    assert "row 6, column 'y': '1.5' is not an integer" in message


def test_csv_row_and_class_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(csvdata, "MAX_ROWS", 20)
    data = csv_bytes(["x", "y"], [[i, i % 2] for i in range(21)])
    assert _error(data) == ("dataset.path", "more than 20 data rows")
    read_csv_table(csv_bytes(["x", "y"], [[i, i % 2] for i in range(20)]), target="y")
    monkeypatch.setattr(csvdata, "MAX_CLASSES", 5)
    field, message = _error(csv_bytes(["x", "y"], [[i, f"k{i % 6}"] for i in range(12)]))
    assert field == "dataset.target" and "6 distinct labels" in message


def test_csv_missing_file(tmp_path: Path) -> None:
    field, message = _error(tmp_path / "nope.csv")
    assert field == "dataset.path" and "nope.csv" in message and "No such file" in message


# ---------------------------------------------------------------------------------------------
# load_dataset with files


def test_load_csv_from_spec_path_and_override(tmp_path: Path) -> None:
    _, data = id_table(n=30, n_classes=3)
    p = write(tmp_path, data)
    spec = DatasetSpec(name="csv", path=str(p), target="label")
    ds = load_dataset(spec, seed=0)
    assert ds.task == "classification" and ds.classes == ["c0", "c1", "c2"]
    assert ds.feature_names == ["id", "a", "b"] and ds.n_outputs == 3
    other = write(tmp_path, id_table(n=50, n_classes=2)[1], "other.csv")
    ds2 = load_dataset(spec, seed=0, path=other)
    assert ds2.classes == ["c0", "c1"] and len(all_parts(ds2)[0]) == 50


def test_load_csv_errors_carry_spec_fields(tmp_path: Path) -> None:
    rows = [[i, "a" if i % 2 else "b"] for i in range(12)]
    p = write(tmp_path, csv_bytes(["x", "y"], rows))
    with pytest.raises(DataError) as exc:
        load_dataset(DatasetSpec(name="csv", path=str(p), target="y", task="regression"), seed=0)
    assert exc.value.errors[0].field == "dataset.task"
    with pytest.raises(DataError) as exc:
        load_dataset(DatasetSpec(name="csv", path=str(p), target="label"), seed=0)
    assert exc.value.errors[0].field == "dataset.target"
    # a file read from its path is not quoted back: its columns are counted, not named
    assert exc.value.errors[0].message == (
        "no column 'label' among the file's 2 columns (row 1, the header)"
    )
    with pytest.raises(DataError) as exc:
        load_dataset(
            DatasetSpec(name="csv", path=str(tmp_path / "missing.csv"), target="y"), seed=0
        )
    assert exc.value.errors[0].field == "dataset.path"


def test_upload_file_problems_point_at_the_id(tmp_path: Path) -> None:
    rows: list[list[object]] = [[i, i % 2] for i in range(12)]
    rows[3][0] = "oops"
    p = write(tmp_path, csv_bytes(["x", "label"], rows))
    with pytest.raises(DataError) as exc:
        load_dataset(DatasetSpec(name="upload", id="u1", target="label"), seed=0, path=p)
    assert exc.value.errors[0].field == "dataset.id"
    assert exc.value.errors[0].message == "row 5, column 'x': 'oops' is not a number"
    with pytest.raises(DataError) as exc:
        load_dataset(DatasetSpec(name="upload", id="u1", target="nope"), seed=0, path=p)
    assert exc.value.errors[0].field == "dataset.target"


def test_upload_needs_the_fetched_path() -> None:
    with pytest.raises(ValueError, match="local file") as exc:
        load_dataset(DatasetSpec(name="upload", id="u1", target="y"), seed=0)
    assert not isinstance(exc.value, DataError)


def test_regression_upload_end_to_end() -> None:
    rows = [[i, (i * 7) % 5, i * 0.3 + 1.0] for i in range(40)]
    ds = _load_upload(csv_bytes(["a", "b", "label"], rows), seed=5)
    assert ds.task == "regression" and ds.n_outputs == 1 and ds.n_classes == 0
    assert ds.y_train.dtype == np.float64
    X, y = all_parts(ds)
    np.testing.assert_allclose(y, ds.raw(X)[:, 0] * 0.3 + 1.0, rtol=1e-12)


def test_table_is_exported() -> None:
    t = read_csv_table(csv_bytes(["x", "y"], GOOD_ROWS), target="y")
    assert (
        isinstance(t, Table)
        and t.task == "classification"
        and t.y.tolist() == [i % 2 for i in range(12)]
    )


def test_a_file_read_from_its_path_is_not_quoted_in_errors(tmp_path: Path) -> None:
    """A path may name a file its reader cannot otherwise see (a service's csv path): its
    errors give row and column numbers, never a cell or a column name. Its bytes, sent by
    the caller (an upload), are quoted."""
    rows: list[list[object]] = [[i, i % 2, i] for i in range(12)]
    rows[3][0] = "secret-cell"
    data = csv_bytes(["hidden-name", "y", "z"], rows)
    p = write(tmp_path, data)
    _, message = _error(p, target="y")
    assert message == "row 5, column 1: the cell is not a number"
    _, message = _error(data, target="y")
    assert message == "row 5, column 'hidden-name': 'secret-cell' is not a number"
    _, message = _error(p, target="y", echo=True)
    assert "'secret-cell'" in message
    dup = write(tmp_path, b"a,secret,secret\n" + b"1,2,3\n" * 12, "dup.csv")
    assert _error(dup, target="a")[1] == "row 1: columns 2 and 3 have the same name"
    one = write(
        tmp_path, b"x,y\n" + b"".join(f"{i},only-class\n".encode() for i in range(12)), "one.csv"
    )
    _, message = _error(one, target="y")
    assert message.startswith("column 'y' has a single class;") and "only-class" not in message
