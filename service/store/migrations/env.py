"""Alembic environment: always run on a connection that `service.store.migrate` hands in.

Sharing the caller's async connection (Alembic's "sharing a connection" recipe) means migrations
run inside the service's own event loop, with its URL handling, and under its PostgreSQL lock.
"""

from __future__ import annotations

from alembic import context

from service.store.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations with `pdbridge migrate`, not the alembic command")

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=True,  # SQLite alters tables by copying them; batch mode does that for us
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
