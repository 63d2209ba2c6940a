"""API keys and uploaded data sets: stores of their own over the jobs' engine."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy import Engine

from core.spec import JobSpec
from db.datasets import DatasetStore
from db.errors import DatasetNotFound
from db.keys import KeyStore
from db.store import JobStore
from db.views import KeyGrant, TenantCaps


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


def test_a_key_carries_its_role_and_its_tenants_caps(keys: KeyStore) -> None:
    """Migration 0005: a key has a role ("tenant" unless created otherwise) and may cap its
    tenant's running jobs and priority. A tenant's cap is the strictest its active keys set;
    with none set (or only revoked keys setting one), the default given."""
    plain_id, plain = keys.create(tenant="acme")
    _, ops = keys.create(tenant="ops", role="operator")
    assert keys.lookup(key=plain) == KeyGrant(tenant="acme", role="tenant")
    assert keys.lookup(key=ops) == KeyGrant(tenant="ops", role="operator")
    assert keys.lookup(key=plain + "x") is None
    default = TenantCaps(max_running=8, max_priority=None)
    assert keys.tenant_caps(tenants=["acme", "nobody"], default=default) == {
        "acme": default, "nobody": default}  # fmt: skip
    keys.create(tenant="acme", max_running=3, max_priority=50)
    strict_id, _ = keys.create(tenant="acme", max_running=2)
    caps = keys.tenant_caps(tenants=["acme", "ops"], default=default)
    assert caps == {"acme": TenantCaps(max_running=2, max_priority=50), "ops": default}
    keys.revoke(key_id=strict_id)  # a revoked key's caps no longer count
    assert keys.tenant_caps(tenants=["acme"], default=default)["acme"] == TenantCaps(3, 50)
    listed = {k.id: k for k in keys.list(tenant="acme")}
    assert (listed[plain_id].role, listed[plain_id].max_running) == ("tenant", None)
    assert listed[strict_id].max_running == 2
    with pytest.raises(ValueError, match="role"):
        keys.create(tenant="acme", role="root")
    with pytest.raises(ValueError, match="max_running"):
        keys.create(tenant="acme", max_running=0)
    with pytest.raises(ValueError, match="max_priority"):
        keys.create(tenant="acme", max_priority=1001)


def test_the_bootstrap_key_is_an_operators(keys: KeyStore) -> None:
    key = "gq_" + "b" * 40
    keys.ensure(tenant="ops", key=key, role="operator")
    assert keys.lookup(key=key) == KeyGrant(tenant="ops", role="operator")
    other = "gq_" + "c" * 40
    keys.ensure(tenant="ops", key=other)  # stored before 0005 gave it a role: made one now
    keys.ensure(tenant="ops", key=other, role="operator")
    assert keys.lookup(key=other) == KeyGrant(tenant="ops", role="operator")


def test_running_jobs_by_tenant(store: JobStore, make_spec: Callable[..., JobSpec]) -> None:
    ids = [store.submit(spec=make_spec(), tenant=t).id for t in ("a", "a", "a", "b")]
    store.claim(owner="w", limit=3, lease_seconds=30, ids=ids[1:])
    assert store.running_counts(tenants=["a", "b", "c"]) == {"a": 2, "b": 1, "c": 0}
