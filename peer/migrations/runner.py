"""Schema migrations (Alembic, configured in code): bring a peer's database to the code's head revision.

What :func:`upgrade` does, in ONE transaction on ONE connection:

1. Serialise: on PostgreSQL a transaction-level advisory lock (two peers sharing one database, or a
   ``pocketgrid db upgrade`` beside a starting peer, wait for each other); on SQLite ``BEGIN
   IMMEDIATE`` (the file's write lock, held to the end).
2. Read the database's revision.  A revision this code does not know means a newer pocketgrid upgraded
   the database: :class:`DatabaseTooNew`, nothing is changed.
3. A database with pocketgrid's tables but no ``alembic_version`` table was written by the release
   before migrations (``create_all``): its schema is checked against :data:`BASELINE` and stamped
   with it (:class:`DatabaseNotAdoptable` if a table or column of the baseline is missing).
4. ``alembic upgrade head``.

Then commit.  PostgreSQL has transactional DDL, and so does SQLite once the driver stops managing
transactions itself (:func:`migration_engine`): a crash or an error half-way leaves the database as
it was.  Migrations run with SQLite's ``foreign_keys`` OFF, so batch mode's copy-and-drop of a
referenced table (``jobs``) cannot cascade into its children (``procs``).
"""
from __future__ import annotations

import logging
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import MetaData, create_engine, event, inspect, make_url, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import NullPool, StaticPool

log = logging.getLogger(__name__)

#: Where env.py and versions/ are (shipped inside the package).
SCRIPT_LOCATION = Path(__file__).resolve().parent
#: The schema of the last release without migrations (``Base.metadata.create_all``).
BASELINE = "0001_baseline"
VERSION_TABLE = "alembic_version"
#: pg_advisory_xact_lock key: any fixed 64-bit number that no other code uses on the database.
_PG_LOCK_KEY = zlib.crc32(b"pocketgrid schema migrations")


class SchemaError(RuntimeError):
    """The database cannot be brought to this code's schema; the message says what to do."""


class DatabaseTooNew(SchemaError):
    """The database is at a revision this code does not know (a newer pocketgrid upgraded it)."""


class DatabaseNotAdoptable(SchemaError):
    """A database without a version lacks part of the baseline schema (written by a pre-release)."""


@dataclass
class UpgradeResult:
    before: list[str]
    after: list[str]
    #: True when a database of the release before migrations was stamped as the baseline.
    stamped: bool = False
    #: The revisions applied, oldest first.
    applied: list[str] = field(default_factory=list)


@dataclass
class SchemaState:
    """Where a database stands relative to this code."""

    revisions: list[str]  # as recorded in alembic_version (empty: none recorded)
    head: str
    #: "empty" (no pocketgrid table), "unversioned" (tables, no version: the release before
    #: migrations), "current" (at head), "behind" (upgrade pending), "unknown" (newer than this code).
    status: str
    pending: list[str] = field(default_factory=list)


def target_metadata() -> list[MetaData]:
    """Every table the peer uses: the peer's ``Base`` and the broker role's ``BrokerBase``."""
    from broker.models import BrokerBase
    from peer import acl  # noqa: F401  (declares acl_rules on Base)
    from peer.models import Base

    return [Base.metadata, BrokerBase.metadata]


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic configuration without alembic.ini; ``connection`` is what env.py migrates."""
    cfg = Config()
    cfg.set_main_option("script_location", str(SCRIPT_LOCATION))
    cfg.set_main_option("path_separator", "os")
    cfg.set_main_option("file_template", "%%(rev)s")  # versions/0002_what.py: the file is named by its id
    cfg.attributes["connection"] = connection
    return cfg


def script_directory() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head() -> str:
    heads = script_directory().get_heads()
    if len(heads) != 1:  # a developer chained two revisions to one parent: merge them
        raise SchemaError(f"the migrations have {len(heads)} heads ({', '.join(heads)}): "
                          "chain each new revision after the previous head")
    return heads[0]


def migration_engine(url: str) -> Engine:
    """An engine for migrating: SQLite with real transactions around DDL and ``foreign_keys`` OFF."""
    if not url.startswith("sqlite"):
        return create_engine(url, poolclass=NullPool)
    from peer.db import _private_sqlite_files

    _private_sqlite_files(url)
    engine = create_engine(url, poolclass=NullPool, connect_args={"timeout": 30})

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn, _record) -> None:
        dbapi_conn.isolation_level = None  # the driver no longer BEGINs (and COMMITs before DDL) itself
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=OFF")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")  # the write lock now, not at the first write

    return engine


def _lock(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})


def _recorded(conn: Connection) -> list[str]:
    return list(MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE}).get_current_heads())


def _known_revisions(script: ScriptDirectory) -> set[str]:
    return {s.revision for s in script.walk_revisions()}


def _pocketgrid_tables(conn: Connection) -> set[str]:
    """The models' tables present in the database (a database that has none of them is empty)."""
    ours = {t for m in target_metadata() for t in m.tables}
    return set(inspect(conn).get_table_names()) & ours


def _state(conn: Connection, script: ScriptDirectory) -> SchemaState:
    top = head()
    recorded = _recorded(conn)
    if not recorded:
        status = "unversioned" if _pocketgrid_tables(conn) else "empty"
        pending = [s.revision for s in _upgrade_path(script, None, top)]
        return SchemaState([], top, status, pending)
    unknown = [r for r in recorded if r not in _known_revisions(script)]
    if unknown:
        return SchemaState(recorded, top, "unknown")
    pending = [s.revision for s in _upgrade_path(script, recorded[0], top)]
    return SchemaState(recorded, top, "current" if not pending else "behind", pending)


def _upgrade_path(script: ScriptDirectory, base: str | None, top: str) -> list:
    """Revisions after ``base`` up to ``top``, oldest first."""
    return list(reversed(list(script.iterate_revisions(top, base or "base"))))


def _too_new(state: SchemaState) -> DatabaseTooNew:
    from pocketgrid import __version__

    return DatabaseTooNew(
        f"the database is at schema revision {', '.join(state.revisions)}, which this pocketgrid "
        f"({__version__}, newest revision {state.head}) does not know: a newer pocketgrid upgraded it. "
        "Run that newer version, or restore a backup taken before the upgrade (docs/operations.md). "
        "Nothing was changed.")


def inspect_state(url: str) -> SchemaState:
    """Where the database at ``url`` stands; changes nothing (a missing SQLite file is ``empty``)."""
    if url.startswith("sqlite"):
        path = make_url(url).database
        if path and path != ":memory:" and not Path(path).exists():
            return SchemaState([], head(), "empty", [s.revision for s in _upgrade_path(script_directory(), None, head())])
    engine = create_engine(url, poolclass=NullPool)
    try:
        with _quiet_alembic(), engine.connect() as conn:
            return _state(conn, script_directory())
    finally:
        engine.dispose()


@contextmanager
def _quiet_alembic() -> Iterator[None]:
    """Alembic says "Context impl ..." at INFO on every run: keep the peer's log to what happened."""
    logger = logging.getLogger("alembic")
    if logger.level != logging.NOTSET:  # someone configured it: leave it alone
        yield
        return
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(logging.NOTSET)


def check(url: str) -> SchemaState:
    """What :func:`upgrade` would refuse, found without changing anything (``serve`` calls it before
    the server starts, so the refusal is a message, not a worker that fails to boot)."""
    state = inspect_state(url)
    if state.status == "unknown":
        raise _too_new(state)
    if state.status == "unversioned":
        engine = create_engine(url, poolclass=NullPool)
        try:
            with _quiet_alembic(), engine.connect() as conn:
                _check_baseline(conn)
        finally:
            engine.dispose()
    return state


def upgrade(url: str, target: str = "head") -> UpgradeResult:
    """Bring the database at ``url`` to ``target`` (default: this code's head), all or nothing."""
    with _quiet_alembic():
        return _upgrade(url, target)


def _upgrade(url: str, target: str) -> UpgradeResult:
    script = script_directory()
    engine = migration_engine(url)
    try:
        with engine.connect() as conn:
            with conn.begin():
                _lock(conn)
                state = _state(conn, script)
                if state.status == "unknown":
                    raise _too_new(state)
                stamped = False
                cfg = alembic_config(conn)
                if state.status == "unversioned":
                    _check_baseline(conn)
                    command.stamp(cfg, BASELINE)
                    stamped = True
                    log.warning("database schema: tables of the release before migrations and no version: "
                                "stamped %s", BASELINE)
                before = _recorded(conn)
                command.upgrade(cfg, target)
                after = _recorded(conn)
            applied = [s.revision for s in _upgrade_path(script, before[0] if before else None, after[0])] \
                if after and after != before else []
    finally:
        engine.dispose()
    if applied:
        log.info("database schema: upgraded %s -> %s (%s)", before[0] if before else "empty", after[0],
                 ", ".join(applied))
    else:
        log.info("database schema: at %s (head)", ", ".join(after))
    return UpgradeResult(before=state.revisions, after=after, stamped=stamped, applied=applied)


_BASELINE_CACHE: dict[str, set[str]] = {}


def _baseline_schema() -> dict[str, set[str]]:
    """Tables and their columns as :data:`BASELINE` creates them (run once on an in-memory SQLite)."""
    if not _BASELINE_CACHE:
        engine = create_engine("sqlite://", poolclass=StaticPool)
        with engine.connect() as conn:
            with conn.begin():
                command.upgrade(alembic_config(conn), BASELINE)
            insp = inspect(conn)
            for table in insp.get_table_names():
                if table != VERSION_TABLE:
                    _BASELINE_CACHE[table] = {c["name"] for c in insp.get_columns(table)}
        engine.dispose()
    return _BASELINE_CACHE


def _check_baseline(conn: Connection) -> None:
    insp = inspect(conn)
    present = set(insp.get_table_names())
    missing: list[str] = []
    for table, columns in sorted(_baseline_schema().items()):
        if table not in present:
            missing.append(f"table {table}")
            continue
        have = {c["name"] for c in insp.get_columns(table)}
        missing += [f"{table}.{c}" for c in sorted(columns - have)]
    if missing:
        raise DatabaseNotAdoptable(
            f"the database has pocketgrid tables but no schema version, and lacks {', '.join(missing)}: it was "
            f"written by a development version older than the first release with migrations ({BASELINE}). "
            "Start from a fresh state directory (or database), or add what is missing by hand and start again. "
            "Nothing was changed.")


def history() -> Iterator[tuple[str, str | None, str]]:
    """(revision, down_revision, first line of its message), oldest first."""
    for script in reversed(list(script_directory().walk_revisions())):
        down = script.down_revision if isinstance(script.down_revision, str) or script.down_revision is None \
            else ", ".join(script.down_revision)
        yield script.revision, down, (script.doc or "").strip().splitlines()[0] if script.doc else ""
