"""jobs.dead_lettered_at: the dead-letter queue is the failed jobs that have it

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

import dreamforge.store.tables

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.add_column(
            sa.Column(
                "dead_lettered_at",
                dreamforge.store.tables.UTCDateTime(timezone=True),
                nullable=True,
            )
        )
        batch_op.create_index("ix_jobs_dead_lettered", ["dead_lettered_at"])


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.drop_index("ix_jobs_dead_lettered")
        batch_op.drop_column("dead_lettered_at")
