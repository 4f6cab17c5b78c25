"""Who is calling: API keys, the tenant each belongs to, and what each may do.

A key is ``df_<id>_<secret>``: the id finds it, the secret proves it. Only a SHA-256 of the
whole key is kept (keys are 256 random bits, so a slow hash would add nothing), and the key
itself is shown once, when it is created.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from dreamforge.domain.errors import Forbidden

DEFAULT_TENANT = "default"
TENANT_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,62}$"
KEY_PREFIX = "df_"


class Scope(StrEnum):
    JOBS_WRITE = "jobs:write"  # create and cancel jobs
    JOBS_READ = "jobs:read"  # read jobs, their events, logs and images; list models
    MODELS_ADMIN = "models:admin"  # download models into the registry
    ADMIN = "admin"  # the dead-letter queue, every tenant's jobs in it


def visible_to(tenant: str | None, owner: str | None) -> bool:
    """Whether a job or download of ``owner`` (``None``: there is none) is there for
    ``tenant`` (``None``: for anyone, as for an admin): another tenant's is as absent as
    one that never was."""
    return owner is not None and (tenant is None or owner == tenant)


@dataclass(frozen=True)
class Caller:
    """The tenant a request acts for and its scopes; ``key_id`` is ``None`` when the
    server runs without keys (open, on loopback only)."""

    tenant: str
    scopes: frozenset[Scope]
    key_id: str | None = None

    def require(self, scope: Scope) -> None:
        if scope not in self.scopes:
            raise Forbidden(f"this API key lacks the {scope.value!r} scope")


OPEN_CALLER = Caller(DEFAULT_TENANT, frozenset(Scope))


@dataclass(frozen=True)
class ApiKey:
    id: str
    tenant: str
    scopes: frozenset[Scope]
    key_sha256: str
    created_at: datetime
    revoked_at: datetime | None = None

    def caller(self) -> Caller:
        return Caller(self.tenant, self.scopes, self.id)


def new_key() -> tuple[str, str]:
    """A fresh key and its id."""
    key_id = secrets.token_hex(6)
    return f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}", key_id


def key_id_of(key: str) -> str | None:
    """The id part of something that looks like a key; ``None`` if it does not."""
    if not key.startswith(KEY_PREFIX):
        return None
    key_id, sep, secret = key.removeprefix(KEY_PREFIX).partition("_")
    return key_id if sep and key_id and secret else None


def key_sha256(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def matches(key: str, stored: ApiKey) -> bool:
    return hmac.compare_digest(key_sha256(key), stored.key_sha256)
