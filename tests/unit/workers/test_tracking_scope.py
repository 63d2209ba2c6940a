"""Tenant-scoped MLflow names (``workers.tracking.scope``): one tenant's names can never be
another's."""

from __future__ import annotations

import pytest

from workers.tracking.scope import MAX_NAME, given_name, scoped_name, tenant_prefix


def test_names_are_prefixed_with_the_tenant_and_kept_as_given_without_one() -> None:
    assert scoped_name("iris", tenant="team-a", field="experiment") == "team-a.iris"
    assert scoped_name("a.b/c", tenant=None, field="experiment") == "a.b/c"


def test_the_tenant_part_never_holds_the_separator_so_prefixes_cannot_be_forged() -> None:
    assert tenant_prefix("a.b") == "a%2Eb"
    assert tenant_prefix("50%") == "50%25"  # "%" itself is written out: no alias of "%2E"
    assert tenant_prefix("é/x y") == "%C3%A9%2Fx%20y"
    tenants = ["a", "a.b", "a%2Eb", "a.b.c", "a/b", "é", "%C3%A9"]
    names = ["b.c", "c", "2Eb.c", "x"]
    scoped = {(t, n): scoped_name(n, tenant=t, field="experiment") for t in tenants for n in names}
    assert len(set(scoped.values())) == len(scoped)  # no two (tenant, name) pairs collide
    for (tenant, _), name in scoped.items():
        assert name.split(".", 1)[0] == tenant_prefix(tenant)


def test_a_scoped_name_longer_than_mlflow_keeps_is_refused_naming_the_field() -> None:
    name = "n" * 200
    with pytest.raises(ValueError, match=rf"^register_as: .* at most {MAX_NAME}"):
        scoped_name(name, tenant="t" * 60, field="register_as")
    assert len(scoped_name(name, tenant="t" * 55, field="register_as")) == MAX_NAME


def test_the_given_name_is_read_back_only_by_its_own_tenant() -> None:
    scoped = scoped_name("b.x", tenant="a", field="experiment")
    assert given_name(scoped, tenant="a") == "b.x"
    assert given_name(scoped, tenant="a.b") is None  # "a.b.x" is not tenant "a.b"'s "x"
    assert given_name(scoped_name("x", tenant="a.b", field="e"), tenant="a.b") == "x"
    assert given_name("plain", tenant=None) == "plain"
