"""A job on an uploaded data set is checked at submission against the upload's real shape:
its columns, rows, and its target's task and classes, as the data-set store recorded them at
upload — the loss (422 naming ``loss`` or ``dataset.task``), the parameter limit and the
memory limit (``core.memory.estimate`` with the real width and rows)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fastapi.testclient import TestClient

from core.memory import estimate, size
from core.spec import DatasetShape, parse_spec
from db.datasets import DatasetStore
from db.session import make_engine


def _csv(columns: list[str], rows: list[list[object]]) -> bytes:
    lines = [",".join(columns)] + [",".join(str(v) for v in row) for row in rows]
    return ("\n".join(lines) + "\n").encode()


# 20 rows: a float column ``y`` (regression), a 3-class integer ``k``, a 2-class text ``s``
# (a text column is uploaded only as the upload's target)
ROWS = [[i, i % 7, round(0.37 * i + 0.11, 2), i % 3, "ab"[i % 2]] for i in range(20)]
TABLE = _csv(["a", "b", "y", "k"], [row[:4] for row in ROWS])
TEXT = _csv(["a", "b", "y", "s"], [[*row[:3], row[4]] for row in ROWS])


def _upload(client: TestClient, data: bytes, target: str) -> str:
    r = client.post("/v1/datasets", data={"target": target}, files={"file": ("t.csv", data)})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def _submit(client: TestClient, dataset_id: str, target: str, **spec: object) -> dict:
    dataset = {"name": "upload", "id": dataset_id, "target": target}
    extra = spec.pop("dataset", {})
    assert isinstance(extra, dict)
    r = client.post("/v1/jobs", json={"dataset": {**dataset, **extra}, **spec})
    return {**r.json(), "http": r.status_code}  # an error's body: {"error": …}


def _error(answer: dict) -> tuple[int, str, str]:
    error = answer.get("error") or {"field": None, "message": f"accepted: {answer.get('id')}"}
    return answer["http"], error["field"], error["message"]


def test_the_loss_is_checked_against_the_uploads_target(client: TestClient) -> None:
    ds = _upload(client, TABLE, "y")
    # a float target is a regression one: the same refusal as for diabetes
    assert _error(_submit(client, ds, "y", loss="cross_entropy")) == (
        422, "loss", "'cross_entropy' needs a classification task; use 'squared'"
    )  # fmt: skip
    assert _error(_submit(client, ds, "y", loss="logistic")) == (
        422, "loss", "'logistic' needs a classification task; use 'squared'"
    )  # fmt: skip
    # another column of the same upload as the target: 3 classes
    assert _error(_submit(client, ds, "k", loss="logistic")) == (
        422, "loss", "'logistic' needs 2 classes, 'upload' has 3; use 'cross_entropy'"
    )  # fmt: skip
    # what fits is accepted, and keeps the spec as sent
    ok = _submit(client, ds, "y", loss="squared")
    assert ok["http"] == 201 and ok["spec"]["loss"] == "squared"
    assert _submit(client, ds, "k", loss="cross_entropy")["http"] == 201
    assert _submit(client, ds, "k", dataset={"task": "regression"})["http"] == 201
    text = _upload(client, TEXT, "s")
    assert _submit(client, text, "s", loss="logistic")["http"] == 201


def test_a_task_the_target_cannot_have_names_dataset_task(client: TestClient) -> None:
    numbers = _upload(client, TABLE, "y")
    status, field, message = _error(
        _submit(client, numbers, "y", dataset={"task": "classification"})
    )
    assert (status, field) == (422, "dataset.task")
    assert "classification needs class labels" in message and "'y'" in message
    ds = _upload(client, TEXT, "s")  # the text column is the upload's target
    status, field, message = _error(_submit(client, ds, "s", dataset={"task": "regression"}))
    assert (status, field) == (422, "dataset.task")
    assert "regression needs a numeric target" in message and "'s'" in message
    # the text column is then a feature of a job predicting another column: not a number
    status, field, message = _error(_submit(client, ds, "y"))
    assert (status, field) == (422, "dataset.target")
    assert "'s'" in message and "not numeric" in message


def test_the_parameter_limit_counts_the_uploads_real_width(
    make_client: Callable[..., TestClient],
) -> None:
    client = make_client(max_parameters=10_000)
    wide = _csv([f"x{j}" for j in range(300)] + ["y"], [[j % 5 for j in range(300)] + [i % 2]
                                                      for i in range(20)])  # fmt: skip
    ds = _upload(client, wide, "y")
    # 300 features → 40 units → 2 classes: 300·40 + 40 + 40·2 + 2 parameters
    assert _error(_submit(client, ds, "y", model={"hidden": [40]})) == (
        422, "model.hidden", "12,122 parameters exceed the limit of 10,000"
    )  # fmt: skip
    assert _submit(client, ds, "y", model={"hidden": [30]})["http"] == 201


def test_the_memory_limit_uses_the_uploads_rows_and_width(
    make_client: Callable[..., TestClient],
) -> None:
    client = make_client(max_job_memory="256MiB")
    small = _upload(client, TABLE, "k")
    # 20 rows of 4 features fit where a guessed table of a million rows did not
    assert _submit(client, small, "k")["http"] == 201
    wide = _csv([f"x{j}" for j in range(2000)] + ["y"], [[j % 5 for j in range(2000)] + [i % 2]
                                                        for i in range(20)])  # fmt: skip
    ds = _upload(client, wide, "y")
    job = {"model": {"hidden": [4096]}, "optimizer": {"epochs": 1}}
    spec = parse_spec({"dataset": {"name": "upload", "id": ds, "target": "y"}, **job})
    needs = estimate(spec, DatasetShape("classification", 2000, 2, n_rows=20))
    assert needs.total > 256 * 2**20
    status, field, message = _error(_submit(client, ds, "y", **job))
    assert (status, field) == (422, needs.field)
    assert message == f"{needs.refusal(256 * 2**20)}"
    assert f"about {size(needs.total)}" in message


def test_a_data_set_recorded_before_profiles_is_checked_as_before(
    client: TestClient, tmp_path: Path
) -> None:
    engine = make_engine(f"sqlite:///{tmp_path}/gradq.db")
    try:
        old = DatasetStore(engine).add(
            tenant="default", name="old.csv", sha256="0" * 64, size=10, rows=20,
            columns=["a", "y"], target="y", uri="runs:/x/old.csv",
        )  # fmt: skip
    finally:
        engine.dispose()
    assert old.profile is None
    answer = _submit(client, old.id, "y", loss="cross_entropy")
    assert (answer["http"], answer["spec"]["dataset"]["id"]) == (201, old.id)
    assert _error(_submit(client, old.id, "z")) == (
        422, "dataset.target", f"'z' is not a column of data set {old.id}: a, y"
    )  # fmt: skip
