"""Alembic environment for pocketgrid (configured in code by peer/migrations/runner.py; no alembic.ini).

The runner passes an open connection, already inside the one transaction (and the lock) that the
whole upgrade runs in, as ``config.attributes["connection"]``; this file only binds Alembic to it.
Offline (``--sql``) mode is not supported.
"""
from __future__ import annotations

from alembic import context

from peer.migrations.runner import target_metadata

config = context.config


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("pocketgrid's migrations run through peer.migrations.runner (or `pocketgrid db`), "
                           "which passes an open connection; there is no alembic.ini")
    context.configure(
        connection=connection,
        target_metadata=target_metadata(),
        # SQLite cannot ALTER most things: batch mode copies the table ("move and copy").
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        # The runner holds one transaction around everything; SQLite's DDL is transactional in it too.
        transactional_ddl=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise RuntimeError("offline (--sql) migrations are not supported: run `pocketgrid db upgrade`")
run_migrations_online()
