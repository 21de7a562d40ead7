"""Database engine and sessions (SQLAlchemy 2.x).

SQLite in WAL mode is the embedded default: readers never block the writer,
and ``busy_timeout`` turns lock contention between the server's threads into a
short wait instead of an error.  PostgreSQL works through the same code; only
the URL changes.

The schema is Alembic's (peer/migrations/): :meth:`Database.upgrade_schema` brings the database to
the code's head revision before anything uses it; ``create_all`` is for tests that want bare tables.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sqlalchemy import create_engine, event, make_url
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker


def make_engine(url: str) -> Engine:
    """Create an engine with the pragmas the peer relies on for SQLite."""
    if url.startswith("sqlite"):
        _private_sqlite_files(url)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record) -> None:  # pragma: no cover - trivial
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def _private_sqlite_files(url: str) -> None:
    """The SQLite file and its WAL/SHM companions: 0600 (they hold every user's jobs and tokens)."""
    path = make_url(url).database
    if not path or path == ":memory:":
        return
    db = Path(path)
    if not db.exists():
        db.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.close(os.open(db, os.O_CREAT | os.O_WRONLY, 0o600))
    for p in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
        if p.exists():
            p.chmod(0o600)


class Database:
    """An engine plus a session factory; one per peer process."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)

    def upgrade_schema(self):
        """Apply the pending migrations, all or nothing (peer/migrations/runner.py).

        Raises :class:`peer.migrations.SchemaError` (a database from a newer pocketgrid, or an
        unversioned one lacking part of the baseline) with a message for the operator.
        """
        from .migrations import upgrade

        return upgrade(self.url)

    def create_all(self, *metadatas) -> None:
        """Bare ``create_all`` without migrations: for tests only (a peer uses :meth:`upgrade_schema`)."""
        for metadata in metadatas:
            metadata.create_all(self.engine)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits on success and rolls back on any error."""
        with self.sessions() as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    def dispose(self) -> None:
        self.engine.dispose()
