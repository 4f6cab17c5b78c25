"""API keys: their hashes, tenants and scopes."""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import Row, Table, insert, select, update

from dreamforge.domain.access import ApiKey, Scope
from dreamforge.domain.clock import utcnow
from dreamforge.store.db import Database
from dreamforge.store.tables import ApiKeyRow

api_keys = cast(Table, ApiKeyRow.__table__)


def _key(row: Row[Any]) -> ApiKey:
    m = row._mapping
    return ApiKey(
        id=m["id"],
        tenant=m["tenant"],
        scopes=frozenset(Scope(s) for s in m["scopes"]),
        key_sha256=m["key_sha256"],
        created_at=m["created_at"],
        revoked_at=m["revoked_at"],
    )


class KeyRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    def add(self, key: ApiKey) -> None:
        with self._db.connection() as connection:
            connection.execute(
                insert(api_keys).values(
                    id=key.id,
                    tenant=key.tenant,
                    scopes=sorted(s.value for s in key.scopes),
                    key_sha256=key.key_sha256,
                    created_at=key.created_at,
                )
            )

    def get(self, key_id: str) -> ApiKey | None:
        with self._db.reading() as connection:
            row = connection.execute(select(api_keys).where(api_keys.c.id == key_id)).first()
            return _key(row) if row else None

    def list(self) -> list[ApiKey]:
        with self._db.reading() as connection:
            query = select(api_keys).order_by(api_keys.c.tenant, api_keys.c.created_at)
            return [_key(r) for r in connection.execute(query)]

    def any_active(self) -> bool:
        with self._db.reading() as connection:
            query = select(api_keys.c.id).where(api_keys.c.revoked_at.is_(None)).limit(1)
            return connection.execute(query).first() is not None

    def revoke(self, key_id: str) -> bool:
        with self._db.connection() as connection:
            result = connection.execute(
                update(api_keys)
                .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=utcnow())
                .returning(api_keys.c.id)
            )
            return result.first() is not None
