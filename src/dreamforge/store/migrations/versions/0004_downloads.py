"""downloads: models fetched in the background on the io queue

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

import dreamforge.store.tables

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "downloads",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("source", sa.String(length=1024), nullable=False),
        sa.Column("model_id", sa.String(length=128), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("bytes_done", sa.BigInteger(), nullable=False),
        sa.Column("bytes_total", sa.BigInteger(), nullable=True),
        sa.Column("error", sa.String(length=2000), nullable=True),
        sa.Column("created_at", dreamforge.store.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("started_at", dreamforge.store.tables.UTCDateTime(timezone=True), nullable=True),
        sa.Column("finished_at", dreamforge.store.tables.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )


def downgrade() -> None:
    op.drop_table("downloads")
