"""jobs.enqueued_at, for the reaper to re-send jobs a broker lost

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

import dreamforge.store.tables

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.add_column(
            sa.Column(
                "enqueued_at", dreamforge.store.tables.UTCDateTime(timezone=True), nullable=True
            )
        )
        batch_op.create_index("ix_jobs_status_enqueued", ["status", "enqueued_at"])
    op.execute("UPDATE jobs SET enqueued_at = created_at WHERE status = 'queued'")


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.drop_index("ix_jobs_status_enqueued")
        batch_op.drop_column("enqueued_at")
