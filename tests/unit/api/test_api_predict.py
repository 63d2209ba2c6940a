"""``POST /v1/jobs/{id}/predict`` over the real app, a real SQLite store and a real MLflow
SQLite store holding a run's ``predictors.npz`` written from a real (short) training: the
answers equal the exported model's; every bad input is a 422 naming where; the limits, the
tenancy and a job without a model are refused with a message that says why."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from mlflow import MlflowClient

from api.predictions import PredictorCache
from core.export import checkpoint_predictor, export_model, export_predictors
from core.predictor import Predictor, dump_predictors
from core.spec import parse_spec
from core.train import TrainResult, train
from db.keys import KeyStore
from db.session import make_engine
from db.store import JobStore
from tests.unit.api.test_api_artifacts import run_with_artifacts


@pytest.fixture(scope="module")
def iris() -> TrainResult:
    spec = {"dataset": "iris", "model": {"hidden": [8]}, "optimizer": {"epochs": 5}}
    return train(parse_spec(spec))


def succeeded_job(
    tmp_path: Path, running_job: Callable[..., str], result: TrainResult, tenant: str = "default"
) -> str:
    """A succeeded job whose run holds the result's predictors.npz."""
    files = {"predictors.npz": export_predictors(result)}
    run_id, experiment_id = run_with_artifacts(tmp_path, files, model=False)
    job_id = running_job(run_id=run_id, experiment_id=experiment_id, tenant=tenant)
    engine = make_engine(f"sqlite:///{tmp_path}/gradq.db")
    try:
        JobStore(engine).finish(job_id=job_id, attempt=1, status="succeeded", result={})
    finally:
        engine.dispose()
    return job_id


def expected(result: TrainResult, raw: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return export_model(result)(torch.as_tensor(raw, dtype=torch.float32)).numpy()


def test_rows_columns_and_a_csv_file_get_the_exported_models_answers(
    client: TestClient, running_job: Callable[..., str], tmp_path: Path, iris: TrainResult
) -> None:
    job_id = succeeded_job(tmp_path, running_job, iris)
    data = iris.data
    raw = data.raw(data.X_test)
    probs = expected(iris, raw)
    url = f"/v1/jobs/{job_id}/predict"

    r = client.post(url, json={"rows": raw.tolist()})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["job_id"], body["checkpoint"], body["classes"]) == (
        job_id, "best", ["setosa", "versicolor", "virginica"],
    )  # fmt: skip
    assert body["predictions"] == [data.classes[i] for i in probs.argmax(1)]
    np.testing.assert_allclose(body["probabilities"], probs, rtol=1e-5, atol=1e-6)

    names = list(reversed(data.feature_names))  # the columns in another order
    by_name = client.post(url, json={"columns": names, "rows": raw[:, ::-1].tolist()}).json()
    assert by_name["probabilities"] == body["probabilities"]

    text = io.StringIO()
    csv.writer(text).writerows([names, *raw[:, ::-1].tolist()])
    r = client.post(url, files={"file": ("rows.csv", text.getvalue().encode())})
    assert r.status_code == 200, r.text
    assert r.json()["probabilities"] == body["probabilities"]
    last = client.post(f"{url}?checkpoint=last", json={"rows": raw[:2].tolist()}).json()
    assert last["checkpoint"] == "last"  # export_predictors without `last`: the same weights
    assert last["probabilities"] == body["probabilities"][:2]


def test_a_regressor_answers_values_without_probabilities(
    client: TestClient, running_job: Callable[..., str], tmp_path: Path
) -> None:
    result = train(parse_spec({"dataset": "diabetes", "optimizer": {"epochs": 2}}))
    job_id = succeeded_job(tmp_path, running_job, result)
    raw = result.data.raw(result.data.X_test[:7])
    body = client.post(f"/v1/jobs/{job_id}/predict", json={"rows": raw.tolist()}).json()
    assert set(body) == {"job_id", "checkpoint", "predictions"}
    np.testing.assert_allclose(body["predictions"], expected(result, raw)[:, 0], rtol=1e-5)


def error(r: Any) -> tuple[int, str, str]:
    e = r.json()["error"]
    return r.status_code, e["field"], e["message"]


def test_every_bad_input_is_a_422_naming_where(
    client: TestClient, running_job: Callable[..., str], tmp_path: Path, iris: TrainResult
) -> None:
    url = f"/v1/jobs/{succeeded_job(tmp_path, running_job, iris)}/predict"
    names = iris.data.feature_names
    row = [5.1, 3.5, 1.4, 0.2]
    cases: list[tuple[Any, str, str]] = [
        ({"rows": [row, row[:3]]}, "rows[1]", "has 3 values; the model takes 4 features"),
        ({"rows": [row, [*row, 1.0]]}, "rows[1]", "has 5 values"),
        ({"rows": [row, [1, "x", 2, 3]]}, "rows[1][1]", "not a number: 'x'"),
        ({"rows": [[1, None, 2, 3]]}, "rows[0][1]", "not a number"),
        ({"rows": [[1, 10**400, 2, 3]]}, "rows[0][1]", "not a finite number"),
        ({"rows": [[1, 2, True, 3]]}, "rows[0][2]", "not a number: 'True'"),
        ({"rows": []}, "rows", "no rows"),
        ({"row": [row]}, "row", "unknown field 'row'"),
        ({"columns": [*names[:3], "petal width"], "rows": [row]}, "columns[3]",
         "unknown column 'petal width': the model's features are 'sepal length (cm)'"),
        ({"columns": names[:3], "rows": [row[:3]]}, "columns", "missing column 'petal width (cm)'"),
        ({"columns": [*names, names[0]], "rows": [[*row, 1]]}, "columns[4]", "given twice"),
    ]  # fmt: skip
    for body, field, words in cases:
        status, where, message = error(client.post(url, json=body))
        assert (status, where) == (422, field), body
        assert words in message, (body, message)
    bad_csv = [
        (b"a,b\n1,2\n", "header row: unknown column 'a'"),
        (",".join(names).encode() + b"\n1,2,3,x\n", "row 2, column 'petal width (cm)': 'x'"),
        (",".join(names).encode() + b"\n1,2,3\n", "row 2 has 3 cells, the header has 4"),
    ]
    for data, words in bad_csv:
        status, where, message = error(client.post(url, files={"file": ("r.csv", data)}))
        assert (status, where) == (422, "file") and words in message, message
    r = client.post(url, content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = client.post(f"{url}?checkpoint=first", json={"rows": [row]})
    assert (r.status_code, r.json()["error"]["field"]) == (422, "checkpoint")


def test_the_row_and_byte_limits_are_named(
    make_client: Callable[..., TestClient],
    running_job: Callable[..., str],
    tmp_path: Path,
    iris: TrainResult,
) -> None:
    client = make_client(predict_max_rows=10, predict_max_bytes=2048)
    url = f"/v1/jobs/{succeeded_job(tmp_path, running_job, iris)}/predict"
    row = [5.1, 3.5, 1.4, 0.2]
    assert len(client.post(url, json={"rows": [row] * 10}).json()["predictions"]) == 10
    status, field, message = error(client.post(url, json={"rows": [row] * 11}))
    assert (status, field) == (413, "rows")
    assert message.startswith("11 rows are over the limit of 10 rows a request")
    header = ",".join(iris.data.feature_names).encode()
    status, field, _ = error(
        client.post(url, files={"file": ("r.csv", header + b"\n1,2,3,4" * 11)})
    )
    assert (status, field) == (413, "file")
    r = client.post(url, json={"rows": [row] * 200})  # over 2048 bytes
    assert r.status_code == 413
    assert r.json()["error"]["message"] == "request body larger than the limit of 2,048 bytes"


def test_another_tenants_job_is_not_found(
    make_client: Callable[..., TestClient],
    running_job: Callable[..., str],
    tmp_path: Path,
    iris: TrainResult,
) -> None:
    keys = KeyStore(make_engine(f"sqlite:///{tmp_path}/gradq.db"))
    a = {"Authorization": f"Bearer {keys.create(tenant='a')[1]}"}
    b = {"Authorization": f"Bearer {keys.create(tenant='b')[1]}"}
    client = make_client(auth="keys")
    url = f"/v1/jobs/{succeeded_job(tmp_path, running_job, iris, tenant='a')}/predict"
    rows = {"rows": [[5.1, 3.5, 1.4, 0.2]]}
    assert client.post(url, json=rows, headers=a).json()["predictions"] == ["setosa"]
    r = client.post(url, json=rows, headers=b)  # after a's answer: its model is cached
    assert (r.status_code, r.json()["error"]["code"]) == (404, "not_found")
    assert "predictions" not in r.json()
    assert client.post("/v1/jobs/nope/predict", json=rows, headers=b).status_code == 404


def test_a_job_without_a_model_says_why(
    client: TestClient, running_job: Callable[..., str], tmp_path: Path
) -> None:
    rows = {"rows": [[5.1, 3.5, 1.4, 0.2]]}
    queued = client.post("/v1/jobs", json={"dataset": "iris"}).json()["id"]
    status, field, message = error(client.post(f"/v1/jobs/{queued}/predict", json=rows))
    assert (status, field) == (409, "job_id")
    assert message == (
        f"job {queued} is queued and has no best checkpoint to predict with yet; ask again once "
        "it has one (checkpoints are taken as it trains), or once it has succeeded"
    )
    run_id, experiment_id = run_with_artifacts(tmp_path, {"error.txt": b"boom"}, model=False)
    failed = running_job(run_id=run_id, experiment_id=experiment_id)
    engine = make_engine(f"sqlite:///{tmp_path}/gradq.db")
    store = JobStore(engine)
    store.finish(job_id=failed, attempt=1, status="failed", error={"message": "boom"})
    status, _, message = error(client.post(f"/v1/jobs/{failed}/predict", json=rows))
    assert (status, message) == (
        409, f"job {failed} failed: only a succeeded job has a model to predict with",
    )  # fmt: skip
    kept_none = running_job(run_id=run_id, experiment_id=experiment_id)
    store.finish(job_id=kept_none, attempt=1, status="succeeded", result={})
    engine.dispose()
    status, _, message = error(client.post(f"/v1/jobs/{kept_none}/predict", json=rows))
    assert status == 409 and "succeeded without a model" in message


def test_a_job_in_training_answers_from_its_latest_checkpoint(
    client: TestClient, running_job: Callable[..., str], tmp_path: Path, iris: TrainResult
) -> None:
    """Each request reads the checkpoint folder's file again: a newer checkpoint answers."""
    params = [p.detach() for p in iris.model.parameters()]

    def weights(shift: float) -> bytes:
        moved = [p + shift for p in params]
        return dump_predictors({"weights": checkpoint_predictor(
            moved, iris.data, activation="relu", loss="cross_entropy")})  # fmt: skip

    files = {"checkpoints/last/predictors.npz": weights(0.0)}
    run_id, experiment_id = run_with_artifacts(tmp_path, files, model=False)
    job_id = running_job(run_id=run_id, experiment_id=experiment_id)
    raw = iris.data.raw(iris.data.X_test[:5])
    url = f"/v1/jobs/{job_id}/predict"
    first = client.post(f"{url}?checkpoint=last", json={"rows": raw.tolist()})
    assert first.status_code == 200, first.text
    np.testing.assert_allclose(first.json()["probabilities"], expected(iris, raw), rtol=1e-5)
    status, _, message = error(client.post(url, json={"rows": raw.tolist()}))
    assert status == 409
    assert message.startswith(f"job {job_id} is running and has no best checkpoint")

    newer = tmp_path / "newer" / "predictors.npz"
    newer.parent.mkdir()
    newer.write_bytes(weights(0.5))
    MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").log_artifact(
        run_id, str(newer), "checkpoints/last"
    )
    second = client.post(f"{url}?checkpoint=last", json={"rows": raw.tolist()}).json()
    moved = checkpoint_predictor([p + 0.5 for p in params], iris.data, activation="relu",
                                 loss="cross_entropy").outputs(raw)  # fmt: skip
    np.testing.assert_allclose(second["probabilities"], moved, rtol=1e-6)
    assert not np.allclose(second["probabilities"], first.json()["probabilities"])


def _predictor(width: int) -> Predictor:
    w = np.ones((1, width), dtype=np.float32)
    return Predictor(weights=[w], biases=[np.zeros(1, np.float32)], activation="relu",
                     loss="squared", task="regression", mean=np.zeros(width, np.float32),
                     scale=np.ones(width, np.float32), feature_names=["x"] * width,
                     classes=[])  # fmt: skip


def test_the_cache_keeps_at_most_its_size_dropping_the_least_recently_used() -> None:
    cache = PredictorCache(2)
    loads: list[str] = []

    def loader(key: str) -> Callable[[], Predictor]:
        return lambda: loads.append(key) or _predictor(len(key))

    for key in ("a", "bb", "a", "ccc", "a", "bb"):
        cache.get(key, loader(key))
    # a hit moved "a" to the back, so "ccc" dropped "bb"; then "bb" dropped "ccc"
    assert loads == ["a", "bb", "ccc", "bb"]
    assert len(cache) == 2 and "a" in cache and "bb" in cache and "ccc" not in cache
    assert cache.get("bb", loader("never")).n_features == 2
