"""API keys: only the sha256 of a key is stored, with a short prefix to show users, the
key's role and the caps it sets on its tenant."""

from __future__ import annotations

import builtins
import hashlib
import secrets
import uuid
from collections.abc import Iterable
from typing import cast

from sqlalchemy import Engine, Table, insert, select, update

from db.models import ApiKey, utcnow
from db.session import read_tx, write_tx
from db.views import ROLES, ApiKeyView, KeyGrant, TenantCaps

KEYS = cast(Table, ApiKey.__table__)
KEY_PREFIX = "gq_"
PREFIX_LENGTH = 11  # "gq_" and 8 characters of the secret: enough to tell keys apart
MAX_PRIORITY = 1000  # a job's priority is between -1000 and 1000 (core.spec.JobSpec)


def hash_key(key: str) -> str:
    """The stored form of a key: its sha256, hex."""
    return hashlib.sha256(key.encode()).hexdigest()


class KeyStore:
    """The API keys of every tenant. Methods are keyword-only."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def create(
        self,
        *,
        tenant: str,
        role: str = "tenant",
        max_running: int | None = None,
        max_priority: int | None = None,
    ) -> tuple[str, str]:
        """Make a key for ``tenant``; returns ``(key_id, plaintext)``. The plaintext is shown
        once and never stored. ``role`` is one of :data:`db.views.ROLES`; ``max_running`` (at
        least 1) and ``max_priority`` (-1000 to 1000) cap the tenant (:meth:`tenant_caps`).
        A bad value raises ValueError naming it."""
        check_grant(role, max_running, max_priority)
        plaintext = KEY_PREFIX + secrets.token_urlsafe(32)
        key_id = str(uuid.uuid4())
        row = _row(key_id, tenant, plaintext, role)
        row.update(max_running=max_running, max_priority=max_priority)
        with write_tx(self._engine) as conn:
            conn.execute(insert(KEYS), row)
        return key_id, plaintext

    def ensure(self, *, tenant: str, key: str, role: str = "tenant") -> bool:
        """Store a key an operator chose (a deployment's first key, from its secrets) for
        ``tenant`` unless it is already stored; True when it was added. A key already stored
        for ``tenant`` takes ``role``. A key already held by another tenant, or revoked, is
        refused with ValueError."""
        check_grant(role, None, None)
        with write_tx(self._engine) as conn:
            row = conn.execute(
                select(KEYS.c.id, KEYS.c.tenant, KEYS.c.revoked_at, KEYS.c.role).where(
                    KEYS.c.key_hash == hash_key(key)
                )
            ).first()
            if row is not None:
                if row.tenant != tenant or row.revoked_at is not None:
                    raise ValueError("that API key is already used by another tenant or revoked")
                if row.role != role:
                    conn.execute(update(KEYS).where(KEYS.c.id == row.id).values(role=role))
                return False
            conn.execute(insert(KEYS), _row(str(uuid.uuid4()), tenant, key, role))
        return True

    def authenticate(self, *, key: str) -> str | None:
        """The tenant of a valid key; None for an unknown or revoked one."""
        grant = self.lookup(key=key)
        return None if grant is None else grant.tenant

    def lookup(self, *, key: str) -> KeyGrant | None:
        """The tenant and role of a valid key; None for an unknown or revoked one."""
        query = select(KEYS.c.tenant, KEYS.c.role).where(
            KEYS.c.key_hash == hash_key(key), KEYS.c.revoked_at.is_(None)
        )
        with read_tx(self._engine) as conn:
            row = conn.execute(query).first()
        return None if row is None else KeyGrant(tenant=row.tenant, role=row.role)

    def tenant_caps(self, *, tenants: Iterable[str], default: TenantCaps) -> dict[str, TenantCaps]:
        """Each tenant's caps: per cap, the strictest (smallest) that its active keys set;
        ``default``'s where none of them sets it. A new key can so tighten a tenant's cap but
        not loosen one another active key sets: to raise it, revoke that key."""
        wanted = sorted(set(tenants))
        query = select(KEYS.c.tenant, KEYS.c.max_running, KEYS.c.max_priority).where(
            KEYS.c.tenant.in_(wanted),
            KEYS.c.revoked_at.is_(None),
            (KEYS.c.max_running.is_not(None)) | (KEYS.c.max_priority.is_not(None)),
        )
        running: dict[str, int] = {}
        priority: dict[str, int] = {}
        with read_tx(self._engine) as conn:
            for tenant, max_running, max_priority in conn.execute(query).all():
                if max_running is not None:
                    running[tenant] = min(running.get(tenant, max_running), max_running)
                if max_priority is not None:
                    priority[tenant] = min(priority.get(tenant, max_priority), max_priority)
        return {
            t: TenantCaps(
                max_running=running.get(t, default.max_running),
                max_priority=priority.get(t, default.max_priority),
            )
            for t in wanted
        }

    def revoke(self, *, key_id: str | None = None, prefix: str | None = None) -> int:
        """Revoke the key with this id or display prefix; returns how many were revoked
        (0 when none matched or it was already revoked)."""
        if (key_id is None) == (prefix is None):
            raise ValueError("give exactly one of key_id and prefix")
        match = KEYS.c.id == key_id if key_id is not None else KEYS.c.prefix == prefix
        stmt = (
            update(KEYS)
            .where(match, KEYS.c.revoked_at.is_(None))
            .values(revoked_at=utcnow())
            .returning(KEYS.c.id)
        )
        with write_tx(self._engine) as conn:
            return len(conn.execute(stmt).all())

    def list(self, *, tenant: str | None = None) -> builtins.list[ApiKeyView]:
        """Keys (without secrets), oldest first."""
        query = select(
            KEYS.c.id,
            KEYS.c.tenant,
            KEYS.c.prefix,
            KEYS.c.created_at,
            KEYS.c.revoked_at,
            KEYS.c.role,
            KEYS.c.max_running,
            KEYS.c.max_priority,
        ).order_by(KEYS.c.created_at, KEYS.c.id)
        if tenant is not None:
            query = query.where(KEYS.c.tenant == tenant)
        with read_tx(self._engine) as conn:
            return [ApiKeyView(**r) for r in conn.execute(query).mappings()]


def check_grant(role: str, max_running: int | None, max_priority: int | None) -> None:
    """ValueError naming the first bad value of a key's role and caps."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    if max_running is not None and max_running < 1:
        raise ValueError(f"max_running must be at least 1, not {max_running}")
    if max_priority is not None and not -MAX_PRIORITY <= max_priority <= MAX_PRIORITY:
        raise ValueError(
            f"max_priority must be between {-MAX_PRIORITY} and {MAX_PRIORITY}, not {max_priority}"
        )


def _row(key_id: str, tenant: str, plaintext: str, role: str) -> dict[str, object]:
    """The stored row of a new key: its hash and display prefix, never the key."""
    return dict(
        id=key_id,
        tenant=tenant,
        key_hash=hash_key(plaintext),
        prefix=plaintext[:PREFIX_LENGTH],
        created_at=utcnow(),
        revoked_at=None,
        role=role,
    )
