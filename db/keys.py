"""API keys: only the sha256 of a key is stored, with a short prefix to show users."""

from __future__ import annotations

import builtins
import hashlib
import secrets
import uuid
from typing import cast

from sqlalchemy import Engine, Table, insert, select, update

from db.models import ApiKey, utcnow
from db.session import read_tx, write_tx
from db.views import ApiKeyView

KEYS = cast(Table, ApiKey.__table__)
KEY_PREFIX = "gq_"
PREFIX_LENGTH = 11  # "gq_" and 8 characters of the secret: enough to tell keys apart


def hash_key(key: str) -> str:
    """The stored form of a key: its sha256, hex."""
    return hashlib.sha256(key.encode()).hexdigest()


class KeyStore:
    """The API keys of every tenant. Methods are keyword-only."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def create(self, *, tenant: str) -> tuple[str, str]:
        """Make a key for ``tenant``; returns ``(key_id, plaintext)``. The plaintext is shown
        once and never stored."""
        plaintext = KEY_PREFIX + secrets.token_urlsafe(32)
        key_id = str(uuid.uuid4())
        with write_tx(self._engine) as conn:
            conn.execute(insert(KEYS), _row(key_id, tenant, plaintext))
        return key_id, plaintext

    def ensure(self, *, tenant: str, key: str) -> bool:
        """Store a key an operator chose (a deployment's first key, from its secrets) for
        ``tenant`` unless it is already stored; True when it was added. A key already held
        by another tenant, or revoked, is refused with ValueError."""
        with write_tx(self._engine) as conn:
            row = conn.execute(
                select(KEYS.c.tenant, KEYS.c.revoked_at).where(KEYS.c.key_hash == hash_key(key))
            ).first()
            if row is not None:
                if row.tenant != tenant or row.revoked_at is not None:
                    raise ValueError("that API key is already used by another tenant or revoked")
                return False
            conn.execute(insert(KEYS), _row(str(uuid.uuid4()), tenant, key))
        return True

    def authenticate(self, *, key: str) -> str | None:
        """The tenant of a valid key; None for an unknown or revoked one."""
        query = select(KEYS.c.tenant).where(
            KEYS.c.key_hash == hash_key(key), KEYS.c.revoked_at.is_(None)
        )
        with read_tx(self._engine) as conn:
            return conn.execute(query).scalar()

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
            KEYS.c.id, KEYS.c.tenant, KEYS.c.prefix, KEYS.c.created_at, KEYS.c.revoked_at
        ).order_by(KEYS.c.created_at, KEYS.c.id)
        if tenant is not None:
            query = query.where(KEYS.c.tenant == tenant)
        with read_tx(self._engine) as conn:
            return [ApiKeyView(**r) for r in conn.execute(query).mappings()]


def _row(key_id: str, tenant: str, plaintext: str) -> dict[str, object]:
    """The stored row of a new key: its hash and display prefix, never the key."""
    return dict(
        id=key_id,
        tenant=tenant,
        key_hash=hash_key(plaintext),
        prefix=plaintext[:PREFIX_LENGTH],
        created_at=utcnow(),
        revoked_at=None,
    )
