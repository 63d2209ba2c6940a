"""Tenant-scoped names in MLflow: a job's experiment and registered model.

With API keys (``GRADQ_AUTH=keys``) an experiment or registered model name that a spec gives
(``experiment``, ``register_as``) is stored in MLflow as ``<tenant>.<name>``, so that two
tenants who choose the same name get their own experiment and model, and no tenant adds a
version to another's model or restores another's deleted experiment. The tenant part is the
tenant's name with every character other than an ASCII letter, a digit, ``-`` and ``_``
written as ``%XX`` (its UTF-8 bytes): it never holds a ``.``, so the first ``.`` of a scoped
name always ends the tenant, and no choice of ``name`` (``"b.x"``) or of tenant (``"a.b"``)
makes another tenant's prefix (``a.b.x`` is tenant ``a``'s, ``a%2Eb.x`` tenant ``a.b``'s).
``.`` rather than ``/``: MLflow refuses ``/`` and ``:`` in a registered model's name.

Without keys (``tenant=None``) names are as given. The spec keeps the names as the tenant
gave them: that is what the API shows; ``given_name`` reads a tenant's own name back from an
MLflow name, for a reader that lists names from MLflow.
"""

from __future__ import annotations

import string

SEPARATOR = "."
MAX_NAME = 256  # MLflow's column for experiment and registered model names
_PLAIN = frozenset(string.ascii_letters + string.digits + "-_")


def tenant_prefix(tenant: str) -> str:
    """``tenant`` with every character outside ``[A-Za-z0-9_-]`` written as ``%XX``."""
    return "".join(c if c in _PLAIN else "".join(f"%{b:02X}" for b in c.encode()) for c in tenant)


def scoped_name(name: str, *, tenant: str | None, field: str) -> str:
    """The MLflow name of the spec's ``name`` (its field ``field``): ``<tenant>.<name>``, or
    ``name`` itself when ``tenant`` is None. Raises ValueError, naming ``field``, when the
    scoped name is longer than MLflow keeps."""
    if tenant is None:
        return name
    scoped = f"{tenant_prefix(tenant)}{SEPARATOR}{name}"
    if len(scoped) > MAX_NAME:
        raise ValueError(
            f"{field}: {name!r} with its tenant prefix is the MLflow name {scoped[:40]!r}…, "
            f"{len(scoped)} characters; MLflow keeps at most {MAX_NAME}"
        )
    return scoped


def given_name(scoped: str, *, tenant: str | None) -> str | None:
    """The name ``tenant`` gave, from an MLflow name: None when it is not one of that
    tenant's (``tenant`` None: the name itself, as names are not scoped without keys)."""
    if tenant is None:
        return scoped
    prefix = f"{tenant_prefix(tenant)}{SEPARATOR}"
    return scoped.removeprefix(prefix) if scoped.startswith(prefix) else None
