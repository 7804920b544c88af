"""API keys: one tenant and one role (``app`` or ``admin``) per key; only a hash is stored.

Lookups are cached in-process for ``key_cache_s`` seconds, which keeps authentication off the hot
path. A revocation is announced on a Postgres channel in the transaction that makes it, and
every gateway drops the key from its cache when it hears it (within a second); a gateway whose
listening connection was down drops its whole cache when it is back, and ``key_cache_s`` stays
the bound if it never is. A tenant's last admin key cannot be revoked: nobody could manage the
tenant's keys any more.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy import Engine, insert, select, text, update

from gateway.errors import Conflict, Forbidden, NotFound, Unauthorized
from gateway.ledger import models
from gateway.ledger.transitions import now
from gateway.notifications import listen

KEY_PREFIX = "sgk_"
REVOKED_CHANNEL = "specgate_key_revoked"  # payload: the key's hash


class Role(StrEnum):
    APP = "app"
    ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class Principal:
    key_id: str
    tenant: str
    role: Role

    def require_admin(self) -> None:
        if self.role != Role.ADMIN:
            raise Forbidden("this route needs an admin key")


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_key(ledger: Engine, tenant: str, role: Role | str, name: str = "") -> tuple[str, str]:
    """Create a key; returns (key id, the secret — shown once, never stored)."""
    if not tenant or len(tenant) > 128:
        raise ValueError("a tenant is a non-empty name of at most 128 characters")
    role = Role(role)
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    key_id = models.new_id("key")
    with ledger.begin() as conn:
        conn.execute(insert(models.ApiKey).values(
            id=key_id, tenant=tenant, role=role, name=name, key_hash=hash_key(secret)))
    return key_id, secret


def revoke_key(ledger: Engine, tenant: str, key_id: str, *,
               keep_last_admin: bool = True) -> None:
    """Revoke a key of the tenant, and tell every gateway to forget it. Its last admin key is
    refused (409 ``last_admin_key``) unless ``keep_last_admin`` is False (a tenant being
    removed)."""
    table = models.table_of(models.ApiKey)
    with ledger.begin() as conn:
        # The tenant's live admin keys, locked: two revocations at once cannot both see
        # another admin key left.
        admins = set(conn.execute(select(table.c.id).where(
            table.c.tenant == tenant, table.c.role == Role.ADMIN,
            table.c.revoked_at.is_(None)).with_for_update()).scalars())
        if keep_last_admin and admins == {key_id}:
            raise Conflict(f"key {key_id!r} is the tenant's last admin key; create another "
                           "admin key first", code="last_admin_key")
        digest = conn.execute(update(table).where(
            table.c.id == key_id, table.c.tenant == tenant, table.c.revoked_at.is_(None)
        ).values(revoked_at=now()).returning(table.c.key_hash)).scalar()
        if digest is None:
            raise NotFound(f"key {key_id!r} not found")
        conn.execute(text("SELECT pg_notify(:channel, :digest)"),
                     {"channel": REVOKED_CHANNEL, "digest": digest})


class KeyCache:
    def __init__(self, ledger: Engine, ttl_s: float) -> None:
        self.ledger = ledger
        self.ttl_s = ttl_s
        self._cache: dict[str, tuple[float, Principal]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listener: threading.Thread | None = None

    def cached(self, secret: str | None) -> Principal | None:
        """The principal of a key seen recently, without touching the database."""
        if not secret:
            return None
        hit = self._cache.get(hash_key(secret))
        return hit[1] if hit is not None and hit[0] > time.monotonic() else None

    def authenticate(self, secret: str | None) -> Principal:
        if not secret or not secret.startswith(KEY_PREFIX):
            raise Unauthorized("missing or malformed API key (Authorization: Bearer sgk_…)")
        digest = hash_key(secret)
        hit = self._cache.get(digest)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        table = models.table_of(models.ApiKey)
        with self.ledger.connect() as conn:
            row = conn.execute(select(table.c.id, table.c.tenant, table.c.role).where(
                table.c.key_hash == digest, table.c.revoked_at.is_(None))).first()
        if row is None:
            raise Unauthorized("unknown or revoked API key")
        principal = Principal(row.id, row.tenant, Role(row.role))
        with self._lock:
            self._cache[digest] = (time.monotonic() + self.ttl_s, principal)
        return principal

    def forget(self) -> None:
        with self._lock:
            self._cache.clear()

    def _revoked(self, digest: str) -> None:
        with self._lock:
            self._cache.pop(digest, None)

    def listen(self, dsn: str) -> None:
        """Hear revocations from now on (a thread of its own, until ``close``)."""
        self._listener = threading.Thread(
            target=listen, args=(dsn, REVOKED_CHANNEL, self._stop, self._revoked, self.forget),
            name="specgate-key-revocations", daemon=True)
        self._listener.start()

    def close(self) -> None:
        self._stop.set()
        if self._listener is not None:
            self._listener.join(timeout=2.0)
