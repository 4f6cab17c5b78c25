"""api_keys, and the tenant every job and download belongs to

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

import dreamforge.store.tables

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("tenant", sa.String(length=63), nullable=False),
        sa.Column("scopes", sa.JSON(), nullable=False),
        sa.Column("key_sha256", sa.String(length=64), nullable=False),
        sa.Column("created_at", dreamforge.store.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", dreamforge.store.tables.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    # What existed before tenants belongs to the one tenant of a server without keys.
    for table in ("jobs", "downloads"):
        with op.batch_alter_table(table) as batch_op:
            batch_op.add_column(
                sa.Column("tenant", sa.String(length=63), nullable=False, server_default="default")
            )
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.create_index("ix_jobs_tenant_created", ["tenant", "created_at"])


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.drop_index("ix_jobs_tenant_created")
    for table in ("jobs", "downloads"):
        with op.batch_alter_table(table) as batch_op:
            batch_op.drop_column("tenant")
    op.drop_table("api_keys")
