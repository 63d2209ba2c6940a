"""API keys and uploaded data sets: stores of their own over the jobs' engine."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine

from db.datasets import DatasetStore
from db.errors import DatasetNotFound
from db.keys import KeyStore


def test_api_keys_store_only_a_hash(keys: KeyStore, engine: Engine) -> None:
    key_id, key = keys.create(tenant="acme")
    assert keys.authenticate(key=key) == "acme"
    assert keys.authenticate(key=key + "x") is None
    with engine.connect() as conn:
        dumped = " ".join(str(v) for r in conn.exec_driver_sql("SELECT * FROM api_keys") for v in r)
    assert key not in dumped and key[:11] in dumped
    [view] = keys.list(tenant="acme")
    assert view.id == key_id and view.prefix == key[:11] and view.revoked_at is None
    assert keys.revoke(key_id=key_id) == 1
    assert keys.authenticate(key=key) is None
    assert keys.revoke(key_id=key_id) == 0  # already revoked
    _, other = keys.create(tenant="acme")
    assert keys.revoke(prefix=other[:11]) == 1 and keys.authenticate(key=other) is None


def test_datasets_round_trip_per_tenant(datasets: DatasetStore) -> None:
    ds = datasets.add(
        tenant="acme", name="houses.csv", sha256="ab" * 32, size=1234, rows=50,
        columns=["area", "price"], target="price", uri="mlflow-artifacts:/datasets/x/houses.csv",
    )  # fmt: skip
    assert datasets.get(dataset_id=ds.id, tenant="acme") == ds
    assert datasets.get(dataset_id=ds.id).columns == ["area", "price"]
    with pytest.raises(DatasetNotFound):
        datasets.get(dataset_id=ds.id, tenant="other")
    assert datasets.list(tenant="acme") == [ds]
    assert datasets.list(tenant="other") == []


def test_ensure_stores_a_chosen_key_once(keys: KeyStore) -> None:
    key = "gq_" + "s" * 40
    assert keys.ensure(tenant="ops", key=key) is True
    assert keys.ensure(tenant="ops", key=key) is False  # restarts change nothing
    assert keys.authenticate(key=key) == "ops"
    assert [k.tenant for k in keys.list(tenant="ops")] == ["ops"]
    with pytest.raises(ValueError, match="another tenant"):
        keys.ensure(tenant="someone-else", key=key)
