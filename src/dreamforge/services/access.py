"""Who a request is: the API key in its ``Authorization`` header, checked against the
stored hashes. A server with no active key runs open (every request is the default
tenant with every scope); the CLI refuses to serve that way beyond loopback.

Lookups are cached for a few seconds: a revoked key stops working within
``CACHE_S``, and a request costs no query.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from dreamforge.domain.access import (
    OPEN_CALLER,
    ApiKey,
    Caller,
    Scope,
    key_id_of,
    key_sha256,
    matches,
    new_key,
)
from dreamforge.domain.clock import utcnow
from dreamforge.domain.errors import NotFound, Unauthorized
from dreamforge.store.keys import KeyRepository

CACHE_S = 5.0


@dataclass(frozen=True)
class IssuedKey:
    key: str  # shown once, never stored
    record: ApiKey


class AccessService:
    def __init__(self, keys: KeyRepository, cache_s: float = CACHE_S) -> None:
        self._keys = keys
        self._cache_s = cache_s
        self._lock = threading.Lock()
        self._open: tuple[float, bool] | None = None
        self._found: dict[str, tuple[float, ApiKey | None]] = {}

    def create(self, tenant: str, scopes: frozenset[Scope]) -> IssuedKey:
        key, key_id = new_key()
        record = ApiKey(key_id, tenant, scopes, key_sha256(key), utcnow())
        self._keys.add(record)
        self._forget()
        return IssuedKey(key, record)

    def list(self) -> list[ApiKey]:
        return self._keys.list()

    def revoke(self, key_id: str) -> None:
        if not self._keys.revoke(key_id):
            raise NotFound("active API key", key_id)
        self._forget()

    def is_open(self) -> bool:
        """No active key: the server runs without authentication."""
        now = time.monotonic()
        with self._lock:
            if self._open is not None and now - self._open[0] < self._cache_s:
                return self._open[1]
        is_open = not self._keys.any_active()
        with self._lock:
            self._open = (now, is_open)
        return is_open

    def caller(self, authorization: str | None) -> Caller:
        """The caller an ``Authorization`` header names; ``Unauthorized`` if it names
        none that is valid. An open server (no keys) takes anyone, whatever they send:
        clients such as OpenAI's always send some key."""
        if self.is_open():
            return OPEN_CALLER
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("send an API key as 'Authorization: Bearer df_…'")
        token = token.strip()
        key_id = key_id_of(token)
        stored = self._lookup(key_id) if key_id is not None else None
        if stored is None or stored.revoked_at is not None or not matches(token, stored):
            raise Unauthorized("the API key is not valid (unknown, revoked or mistyped)")
        return stored.caller()

    def _lookup(self, key_id: str) -> ApiKey | None:
        now = time.monotonic()
        with self._lock:
            cached = self._found.get(key_id)
            if cached is not None and now - cached[0] < self._cache_s:
                return cached[1]
        found = self._keys.get(key_id)
        with self._lock:
            if len(self._found) > 10_000:  # ids a client made up must not grow it forever
                self._found.clear()
            self._found[key_id] = (now, found)
        return found

    def _forget(self) -> None:
        with self._lock:
            self._open = None
            self._found.clear()
