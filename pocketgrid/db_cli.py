"""``pocketgrid db upgrade|current|history``, ``pocketgrid backup`` and ``pocketgrid restore``.

Server commands (``pip install "pocketgrid[server]"``): building their parsers imports nothing beyond
the standard library; running them loads SQLAlchemy/Alembic (peer/migrations/) lazily.  They find the
database as ``serve`` does: ``--config``, ``--state`` and ``--database-url``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

COMMANDS = ("db", "backup", "restore")


def _database_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="TOML file (table [peer]), as for serve")
    p.add_argument("--state", dest="state_dir", help="state directory (default SQLite database: STATE/pocketgrid.db)")
    p.add_argument("--database-url", help="SQLAlchemy URL, as for serve (default SQLite in STATE)")


def add_commands(sub: argparse._SubParsersAction) -> None:
    db = sub.add_parser("db", help="the database's schema: upgrade it to this version, show its revision, "
                                   "list the migrations")
    dbsub = db.add_subparsers(dest="db_command", required=True, metavar="SUBCOMMAND")
    p = dbsub.add_parser("upgrade", help="apply the pending migrations (serve does this at start too)")
    _database_args(p)
    p = dbsub.add_parser("current", help="the database's schema revision; exit 0 up to date, "
                                         "1 upgrade pending, 2 newer than this pocketgrid")
    _database_args(p)
    p = dbsub.add_parser("history", help="the migrations this pocketgrid ships, oldest first")
    _database_args(p)
    db.set_defaults(func=_cmd_db)

    p = sub.add_parser("backup", help="a consistent copy of a peer's state (SQLite snapshot + state files) "
                                      "into one tar file, safe while the peer runs")
    _database_args(p)
    p.add_argument("--output", required=True, help="FILE.tar or FILE.tar.gz to create (outside the state directory)")
    p.set_defaults(func=_cmd_backup)

    p = sub.add_parser("restore", help="unpack a `pocketgrid backup` into a NEW state directory")
    p.add_argument("--backup", required=True, help="the FILE.tar[.gz] that `pocketgrid backup` wrote")
    p.add_argument("--state", dest="state_dir", required=True, help="the new state directory (absent or empty)")
    p.set_defaults(func=_cmd_restore)


def _config(args: argparse.Namespace):
    from sqlalchemy import make_url
    from sqlalchemy.exc import ArgumentError

    from .config import PeerConfig

    config = PeerConfig.load(args.config, overrides={"state_dir": args.state_dir, "database_url": args.database_url})
    try:
        make_url(config.sqlalchemy_url)
    except ArgumentError:
        raise ValueError(f"database_url {config.database_url!r} is not a database URL "
                         "(e.g. postgresql+psycopg://user@host/name)") from None
    return config


def _label(url: str) -> str:
    from sqlalchemy import make_url

    return make_url(url).render_as_string(hide_password=True)


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _cmd_db(args: argparse.Namespace) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from peer import migrations

    try:
        config = _config(args)
    except (OSError, ValueError) as exc:
        return _error(f"bad configuration: {exc}")
    url = config.sqlalchemy_url
    print(f"database: {_label(url)}")
    try:
        if args.db_command == "history":
            return _history(url)
        if args.db_command == "current":
            return _current(url)
        result = migrations.upgrade(url)
    except migrations.SchemaError as exc:
        return _error(str(exc))
    except SQLAlchemyError as exc:
        return _error(f"cannot use the database {_label(url)}: {exc.orig if hasattr(exc, 'orig') else exc}")
    if result.stamped:
        print(f"stamped {migrations.BASELINE}: tables of the release before migrations, no version recorded")
    if result.applied:
        print(f"upgraded {result.before[0] if result.before else '(empty)'} -> {result.after[0]}: "
              f"{', '.join(result.applied)}")
    else:
        print(f"up to date: {', '.join(result.after)} (head)")
    return 0


def _current(url: str) -> int:
    from peer import migrations

    state = migrations.inspect_state(url)
    if state.status == "unknown":
        print(f"revision {', '.join(state.revisions)}: NEWER than this pocketgrid (newest {state.head}); "
              "a peer of this version refuses to start on it")
        return 2
    if state.status == "current":
        print(f"revision {state.head} (head): up to date")
        return 0
    if state.status == "empty":
        print(f"empty: no pocketgrid tables yet; `pocketgrid db upgrade` or the first start creates them "
              f"({', '.join(state.pending)})")
    elif state.status == "unversioned":
        print(f"no revision recorded: written by the release before migrations; the next upgrade stamps it "
              f"{migrations.BASELINE} and applies {', '.join(state.pending[1:]) or 'nothing more'}")
    else:
        print(f"revision {', '.join(state.revisions)}: behind; pending {', '.join(state.pending)}")
    return 1


def _history(url: str) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from peer import migrations

    try:
        state = migrations.inspect_state(url)
        applied_to = set(state.revisions) if state.status != "unknown" else set()
    except (SQLAlchemyError, OSError) as exc:  # the list needs no database: say why the marks are missing
        print(f"(cannot read the database: {exc})")
        state, applied_to = None, set()
    for revision, down, message in migrations.history():
        marks = []
        if state is not None and revision == state.head:
            marks.append("head")
        if revision in applied_to:
            marks.append("current")
        mark = f" ({', '.join(marks)})" if marks else ""
        print(f"{down or '<base>'} -> {revision}{mark}: {message}")
    return 0


def _cmd_backup(args: argparse.Namespace) -> int:
    from sqlalchemy import make_url

    from . import backup

    try:
        config = _config(args)
    except (OSError, ValueError) as exc:
        return _error(f"bad configuration: {exc}")
    url = config.sqlalchemy_url
    parsed = make_url(url)
    sqlite_db: Path | None = None
    revision = None
    if parsed.get_backend_name() == "sqlite":
        if not parsed.database or parsed.database == ":memory:":
            return _error(f"{_label(url)}: an in-memory database cannot be backed up")
        sqlite_db = Path(parsed.database)
    else:
        from sqlalchemy.exc import SQLAlchemyError

        from peer import migrations

        try:
            revision = (migrations.inspect_state(url).revisions or [None])[0]
        except (SQLAlchemyError, OSError) as exc:  # the files can be archived all the same; the manifest just lacks it
            print(f"warning: could not read the database's schema revision: {exc}", file=sys.stderr)
    try:
        result = backup.backup(config.state_path, Path(args.output), sqlite_database=sqlite_db,
                               database_label=_label(url), revision=revision)
    except backup.BackupError as exc:
        return _error(str(exc))
    except OSError as exc:
        return _error(f"backup failed, nothing was written: {exc}")
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"wrote {result.output}: {'SQLite snapshot (' + (result.revision or 'no revision') + ') + ' if sqlite_db else ''}"
          f"{result.files} files, {result.bytes} bytes from {config.state_path}")
    publish = config.publish_path.resolve()
    if config.state_path.resolve() not in publish.parents:
        print(f"note: the publishing area {publish} is outside the state directory and NOT in this backup "
              "(users' uploads live in its uploads/): back it up with the site's data")
    if sqlite_db is None:
        print(backup.pg_dump_hint(_label(url)))
    print(f"restore: pocketgrid restore --backup {result.output} --state NEWDIR")
    return 0


def _cmd_restore(args: argparse.Namespace) -> int:
    from . import backup

    try:
        result = backup.restore(Path(args.backup), Path(args.state_dir))
    except backup.BackupError as exc:
        return _error(str(exc))
    m = result.manifest
    print(f"restored {result.files} files into {result.state} (backup of {m.get('source_state_dir')}, "
          f"pocketgrid {m.get('pocketgrid')}, schema {m.get('schema_revision') or 'before migrations'})")
    if result.repointed:
        print(f"re-pointed {result.repointed} local proc specifications from {m.get('source_state_dir')} "
              f"to {result.state.resolve()}")
    if result.jobs is not None:
        print(f"the SQLite database holds {result.jobs} jobs")
        _check_revision(m.get("schema_revision"))
        print(f"start the peer with the SAME --name and --state {result.state} (no --database-url): "
              "it upgrades the schema if this pocketgrid is newer")
    else:
        print(f"the database ({m.get('database_url')}) is PostgreSQL and not in this archive: restore the pg_dump "
              "taken before this backup into an EMPTY database, e.g.\n"
              "  createdb NEWDB && pg_restore --no-owner --dbname 'postgresql://.../NEWDB' FILE.pgdump\n"
              f"then start the peer with the SAME --name, --state {result.state} and --database-url of that database")
    return 0


def _check_revision(revision: str | None) -> None:
    from peer import migrations

    known = {r for r, _down, _msg in migrations.history()}
    if revision is not None and revision not in known:
        print(f"warning: the backup's schema revision {revision} is newer than this pocketgrid's: "
              "a peer of this version will refuse to start on it; install the version that wrote it",
              file=sys.stderr)
