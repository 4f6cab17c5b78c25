"""The model registry's table."""

from __future__ import annotations

from typing import cast

from sqlalchemy import Table, bindparam, select
from sqlalchemy.orm import Session

from dreamforge.domain.jobs import ModelDefaults
from dreamforge.domain.records import Model, ModelFile
from dreamforge.store.db import Database
from dreamforge.store.tables import ModelRow

_models = cast(Table, ModelRow.__table__)
_MODEL_BY_ID = select(_models).where(_models.c.id == bindparam("model_id"))


def _model(row: ModelRow) -> Model:
    return Model(
        id=row.id,
        source=row.source,
        path=row.path,
        format=row.format,
        base=row.base,
        sha256=row.sha256,
        size_bytes=row.size_bytes,
        files=[ModelFile(**f) for f in row.files],
        defaults=ModelDefaults.model_validate(row.defaults),
        status=row.status,
        created_at=row.created_at,
        revision=row.revision,
        provenance=row.provenance or {},
    )


class ModelRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    def upsert(self, model: Model) -> Model:
        """Insert or replace in one transaction, so a reader never sees half an entry."""
        with self._db.transaction() as session:
            row = session.get(ModelRow, model.id) or ModelRow(id=model.id)
            row.source, row.path, row.format, row.base = (
                model.source,
                model.path,
                model.format,
                model.base,
            )
            row.sha256, row.size_bytes, row.status = model.sha256, model.size_bytes, model.status
            row.files = [f.__dict__ for f in model.files]
            row.defaults = model.defaults.model_dump(mode="json")
            row.created_at = model.created_at
            row.revision, row.provenance = model.revision, model.provenance
            session.add(row)
            session.flush()
            return _model(row)

    def delete(self, model_id: str) -> bool:
        with self._db.transaction() as session:
            row = session.get(ModelRow, model_id)
            if row is None:
                return False
            session.delete(row)
            return True

    def get(self, model_id: str) -> Model | None:
        # Core, not the ORM, and built once: every job submission reads its model.
        with self._db.reading() as connection:
            row = connection.execute(_MODEL_BY_ID, {"model_id": model_id}).first()
            return _model(ModelRow(**row._mapping)) if row else None

    def list(self) -> list[Model]:
        with self._db.reading() as connection:
            rows = Session(bind=connection).scalars(select(ModelRow).order_by(ModelRow.id))
            return [_model(r) for r in rows]
