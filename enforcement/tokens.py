"""API tokens: created by the CLI, stored only as SHA-256 hashes, checked in constant time."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from enforcement.roles import Role
from enforcement.tables import api_tokens
from events.dialects import write_connection

TOKEN_PREFIX = "enf_"


@dataclass(frozen=True, slots=True)
class Principal:
    token_id: str
    name: str
    role: Role


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def create_token(engine: Engine, role: Role, name: str) -> str:
    """Create a token for ``role`` and return it; only its hash is stored."""
    return issue_token(engine, role, name)[1]


def issue_token(engine: Engine, role: Role, name: str) -> tuple[str, str]:
    """``create_token``, returning the token's id as well (``tok_…``, what ``revoke_token``
    and ``list_tokens`` name it by: the token itself is never shown again)."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token_id = "tok_" + secrets.token_hex(8)
    with write_connection(engine) as conn, conn.begin():
        conn.execute(
            api_tokens.insert().values(
                token_id=token_id,
                name=name,
                role=role.value,
                token_hash=_digest(token),
                created_at=datetime.now(UTC),
            )
        )
    return token_id, token


@dataclass(frozen=True, slots=True)
class TokenInfo:
    token_id: str
    name: str
    role: str
    created_at: datetime


_INFO = sa.select(
    api_tokens.c.token_id, api_tokens.c.name, api_tokens.c.role, api_tokens.c.created_at
)


def _info(row: Any) -> TokenInfo:
    return TokenInfo(row.token_id, row.name, row.role, row.created_at)


def list_tokens(engine: Engine) -> list[TokenInfo]:
    """Every token (never its hash), oldest first."""
    with engine.connect() as conn:
        rows = conn.execute(_INFO.order_by(api_tokens.c.created_at, api_tokens.c.token_id))
        return [_info(row) for row in rows]


def revoke_token(engine: Engine, token_id: str) -> TokenInfo | None:
    """Delete the token ``token_id``; what it was, or None if there is none. A process that
    checked it less than ``TokenAuthenticator``'s ``cache_seconds`` ago accepts it until then.
    """
    with write_connection(engine) as conn, conn.begin():
        row = conn.execute(_INFO.where(api_tokens.c.token_id == token_id)).first()
        if row is None:
            return None
        conn.execute(api_tokens.delete().where(api_tokens.c.token_id == token_id))
    return _info(row)


class TokenAuthenticator:
    """Resolves bearer tokens to principals, with a short positive cache off the hot path."""

    def __init__(self, engine: Engine, cache_seconds: float = 30.0):
        self._engine = engine
        self._cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, Principal]] = {}
        self._lock = threading.Lock()

    def cached(self, token: str) -> Principal | None:
        """The principal of ``token`` if a lookup less than ``cache_seconds`` ago found it;
        None when only ``authenticate`` (which may read the database) can tell."""
        if not token or len(token) > 200:
            return None
        with self._lock:
            hit = self._cache.get(_digest(token))
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        return None

    def authenticate(self, token: str) -> Principal | None:
        if not token or len(token) > 200:
            return None
        remembered = self.cached(token)
        if remembered is not None:
            return remembered
        digest = _digest(token)
        now = time.monotonic()
        with self._engine.connect() as conn:
            row = conn.execute(
                sa.select(
                    api_tokens.c.token_id,
                    api_tokens.c.name,
                    api_tokens.c.role,
                    api_tokens.c.token_hash,
                ).where(api_tokens.c.token_hash == digest)
            ).first()
        # The lookup is by hash; the comparison of what was found is constant-time as well.
        if row is None or not hmac.compare_digest(row.token_hash, digest):
            return None
        principal = Principal(row.token_id, row.name, Role(row.role))
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[digest] = (now + self._cache_seconds, principal)
        return principal
