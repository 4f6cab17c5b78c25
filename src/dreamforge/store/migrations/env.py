"""Alembic environment: runs on the connection that ``Database.upgrade`` hands over."""

from alembic import context

from dreamforge.store.tables import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
