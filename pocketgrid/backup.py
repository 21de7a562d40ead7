"""Backups of a peer's state, and restoring them into a new state directory (``pocketgrid backup|restore``).

A backup is ONE tar file (``.tar``, or gzip-compressed ``.tar.gz``/``.tgz``) holding:

* ``pocketgrid-backup.json``: what this is (format, when, which pocketgrid, the database's kind and
  schema revision, where it came from);
* ``pocketgrid.db``: with SQLite, a consistent snapshot of the live database taken with SQLite's online
  backup API (:meth:`sqlite3.Connection.backup`), in one step: it reads one committed state while
  the peer keeps writing (WAL readers never block the writer).  With PostgreSQL the database is not
  in the archive: ``pg_dump`` it (:func:`pg_dump_hint`);
* every other file of the state directory as it is: ``stage/<job>/`` (each job's inputs, outputs and
  event log), ``publish/`` when the publishing area is inside the state directory (its ``uploads/``
  hold the users' uploads), ``uploads-incoming/`` (unfinished resumable uploads).  The live SQLite
  files (``-wal``, ``-shm``, ``-journal``) are left out: the snapshot replaces them.

The database is copied FIRST and the files after it, so every job the snapshot knows has its
directory in the archive, with outputs at least as new as the snapshot's status (the restored peer
reads the rest of each event log and catches up).  Nothing is half-written: the archive is built
under a temporary name beside ``output`` and renamed when complete; a restore unpacks beside the new
state directory and renames it into place.

Standard library only: the thin client could run it, though it is a site operator's command.
"""
from __future__ import annotations

import io
import json
import os
import sqlite3
import stat
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

MANIFEST = "pocketgrid-backup.json"
DB_NAME = "pocketgrid.db"
FORMAT = 1
_SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


class BackupError(Exception):
    """A backup or restore that cannot be done; the message says why and what to do."""


@dataclass
class BackupResult:
    output: Path
    database: str  # "sqlite" | "postgresql"
    revision: str | None
    files: int = 0
    bytes: int = 0
    #: Files that changed size while being archived (their copy may be incomplete), or unreadable.
    warnings: list[str] = field(default_factory=list)


@dataclass
class RestoreResult:
    state: Path
    manifest: dict[str, Any]
    files: int
    jobs: int | None  # jobs in the restored SQLite database (None: PostgreSQL)
    #: Local proc specs whose absolute paths were moved from the old state directory to the new one.
    repointed: int = 0


def _tar_mode(output: Path, write: bool) -> str:
    name = output.name.lower()
    if name.endswith((".tar.gz", ".tgz")):
        return "w:gz" if write else "r:gz"
    if name.endswith(".tar"):
        return "w" if write else "r"
    raise BackupError(f"{output}: name the backup FILE.tar or FILE.tar.gz (gzip-compressed)")


def sqlite_snapshot(database: Path, target: Path) -> str | None:
    """Copy the live SQLite ``database`` to ``target`` (online backup API, one step); its schema revision."""
    if not database.is_file():
        raise BackupError(f"no SQLite database at {database}: is --state (or --database-url) right?")
    # Read-write open (no "mode=ro"): a WAL database needs its -shm; nothing is written.
    src = sqlite3.connect(f"file:{database}?mode=rw", uri=True, timeout=30)
    try:
        dst = sqlite3.connect(target)
        try:
            src.backup(dst)  # pages=-1: the whole database in one step, one consistent read
            dst.execute("PRAGMA journal_mode=DELETE")  # a self-contained file, no -wal beside it
            check = dst.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise BackupError(f"the snapshot of {database} fails SQLite's quick_check: {check}")
            return _revision(dst)
        finally:
            dst.close()
    finally:
        src.close()


def _revision(conn: sqlite3.Connection) -> str | None:
    try:
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.OperationalError:  # written by the release before migrations: no version table
        return None
    return row[0] if row else None


class _Exactly(io.RawIOBase):
    """Reads exactly ``size`` bytes of ``fh``: zeros past an early end (the file shrank meanwhile)."""

    def __init__(self, fh: BinaryIO, size: int) -> None:
        self.fh, self.left, self.short = fh, size, False

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        data = self.fh.read(n)
        if len(data) < n:
            self.short = True
            data += b"\0" * (n - len(data))
        self.left -= len(data)
        return data


def backup(state: Path, output: Path, *, sqlite_database: Path | None, database_label: str,
           revision: str | None = None) -> BackupResult:
    """Archive ``state`` into ``output``; ``sqlite_database`` is snapshotted first (None: PostgreSQL).

    ``revision`` is the PostgreSQL database's schema revision, for the manifest (SQLite: read from
    the snapshot).  ``database_label`` is the database URL without its password.
    """
    state = state.resolve()
    output = output.resolve()
    mode = _tar_mode(output, write=True)
    if not state.is_dir():
        raise BackupError(f"state directory {state} does not exist")
    if output == state or state in output.parents:
        raise BackupError(f"write the backup outside the state directory {state} (it would contain itself)")
    if output.exists():
        raise BackupError(f"{output} exists: choose another name (a backup never replaces a file)")
    if not output.parent.is_dir():
        raise BackupError(f"directory {output.parent} does not exist")
    live = set()
    if sqlite_database is not None:
        sqlite_database = sqlite_database.resolve()
        live = {sqlite_database, *(Path(f"{sqlite_database}{s}") for s in _SQLITE_SIDE_FILES)}
    with tempfile.TemporaryDirectory(prefix=".pocketgrid-backup-", dir=output.parent) as tmp:
        partial = Path(tmp) / output.name
        result = BackupResult(output, "sqlite" if sqlite_database else "postgresql", revision)
        snapshot = Path(tmp) / DB_NAME
        if sqlite_database is not None:
            result.revision = sqlite_snapshot(sqlite_database, snapshot)
        manifest = {
            "format": FORMAT,
            "created_at": time.time(),
            "pocketgrid": _version(),
            "database": result.database,
            "database_url": database_label,
            "schema_revision": result.revision,
            "source_state_dir": str(state),
            "contents": ([DB_NAME] if sqlite_database else []) + ["the state directory's files"],
        }
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode=mode) as tar:
            _add_bytes(tar, MANIFEST, json.dumps(manifest, indent=2).encode() + b"\n")
            if sqlite_database is not None:
                tar.add(snapshot, arcname=DB_NAME)
            _add_tree(tar, state, live, result)
            tar.close()
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(partial, output)  # the temporary directory is on output's file system
        _fsync_dir(output.parent)
    return result


def _version() -> str:
    from pocketgrid import __version__

    return __version__


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), int(time.time()), 0o600
    tar.addfile(info, io.BytesIO(data))


def _add_tree(tar: tarfile.TarFile, state: Path, skip: set[Path], result: BackupResult) -> None:
    for root, dirs, files in os.walk(state, onerror=lambda e: result.warnings.append(f"{e.filename}: {e.strerror}")):
        dirs.sort()
        base = Path(root)
        for d in dirs:
            path = base / d
            try:
                info = tar.gettarinfo(path, arcname=str(path.relative_to(state)))
            except FileNotFoundError:  # removed meanwhile (e.g. a finished upload's directory)
                continue
            tar.addfile(info)
        for name in sorted(files):
            path = base / name
            if path in skip:
                continue
            _add_file(tar, path, str(path.relative_to(state)), result)


def _add_file(tar: tarfile.TarFile, path: Path, arcname: str, result: BackupResult) -> None:
    try:
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            tar.addfile(tar.gettarinfo(path, arcname=arcname))
            return
        if not stat.S_ISREG(st.st_mode):  # sockets, fifos: nothing to keep
            return
        with open(path, "rb") as fh:
            info = tar.gettarinfo(arcname=arcname, fileobj=fh)
            body = _Exactly(fh, info.size)
            tar.addfile(info, body)
    except FileNotFoundError:  # removed meanwhile: a swept upload part, a cleaned directory
        return
    except PermissionError as exc:
        result.warnings.append(f"{path}: not readable ({exc.strerror}): left out")
        return
    if body.short:
        result.warnings.append(f"{path}: shrank while being archived (padded with zeros)")
    result.files += 1
    result.bytes += info.size


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_manifest(archive: Path) -> dict[str, Any]:
    """The manifest of a pocketgrid backup (BackupError if ``archive`` is not one)."""
    try:
        with tarfile.open(archive, mode="r:*") as tar:
            member = tar.next()
            if member is None or member.name != MANIFEST:
                raise BackupError(f"{archive} is not a pocketgrid backup (no {MANIFEST} first)")
            fh = tar.extractfile(member)
            manifest = json.loads(fh.read()) if fh else None
    except (OSError, tarfile.TarError, ValueError) as exc:
        raise BackupError(f"cannot read {archive}: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BackupError(f"{archive}: unknown backup format {manifest.get('format') if isinstance(manifest, dict) else '?'}"
                          f" (this pocketgrid reads format {FORMAT})")
    return manifest


def _member_filter(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
    """Python's "data" filter (nothing outside ``dest``, no devices, no setuid), dropping what it refuses."""
    if member.name == MANIFEST:
        return None
    data_filter = getattr(tarfile, "data_filter", None)
    if data_filter is not None:
        try:
            kept = data_filter(member, dest)
        except tarfile.FilterError:
            return None
        if kept.isdir():  # the data filter drops directory modes: keep the peer's own (0700, at most 0755)
            kept = kept.replace(mode=(member.mode & 0o755) | 0o700, deep=False)
        return kept
    # Python < 3.11.4: the same idea by hand: plain files and directories inside dest only.
    target = os.path.realpath(os.path.join(dest, member.name))
    if not (member.isfile() or member.isdir()) or os.path.commonpath([target, os.path.realpath(dest)]) != os.path.realpath(dest):
        return None
    return member


def restore(archive: Path, state: Path) -> RestoreResult:
    """Unpack ``archive`` into the NEW state directory ``state`` (absent or empty), all or nothing."""
    manifest = read_manifest(archive)
    state = state.absolute()
    if state.exists() and (not state.is_dir() or any(state.iterdir())):
        raise BackupError(f"{state} exists and is not an empty directory: restore into a new state directory")
    state.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{state.name}.restoring-", dir=state.parent) as tmp:
        target = Path(tmp) / "state"
        target.mkdir(mode=0o700)
        counted: list[tarfile.TarInfo] = []

        def keep(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
            kept = _member_filter(member, dest)
            if kept is not None and kept.isfile():
                counted.append(kept)
            return kept

        try:
            with tarfile.open(archive, mode="r:*") as tar:
                if _HAS_FILTER:
                    tar.extractall(target, filter=keep)
                else:  # Python < 3.11.4
                    tar.extractall(target, members=[m for m in tar if keep(m, str(target)) is not None])
        except (OSError, tarfile.TarError) as exc:
            raise BackupError(f"cannot unpack {archive}: {exc} (nothing was restored)") from exc
        files = len(counted)
        jobs = None
        if manifest.get("database") == "sqlite":
            db = target / DB_NAME
            if not db.is_file():
                raise BackupError(f"{archive} says it holds a SQLite database but has no {DB_NAME}")
            conn = sqlite3.connect(db)
            try:
                check = conn.execute("PRAGMA integrity_check").fetchone()[0]
                if check != "ok":
                    raise BackupError(f"the database in {archive} fails SQLite's integrity_check: {check}")
                jobs = conn.execute("SELECT count(*) FROM jobs").fetchone()[0]
            finally:
                conn.close()
            db.chmod(0o600)
        source = manifest.get("source_state_dir")
        repointed = _repoint_proc_specs(target, source, state.resolve()) if isinstance(source, str) else 0
        target.chmod(0o700)
        if state.exists():
            state.rmdir()  # empty (checked above)
        os.replace(target, state)
        _fsync_dir(state.parent)
    return RestoreResult(state, manifest, files, jobs, repointed)


#: The local executor's per-proc run specifications: the only state files that name absolute paths.
PROC_SPECS = "stage/*/.pocketgrid/procs/*.json"


def _repoint_proc_specs(root: Path, old: str, new: Path) -> int:
    """Paths under the old state directory in the local procs' specs now point into ``new``.

    A proc that runs again after the restore (it was queued, or running when the backup was taken)
    must write into the restored directory, not the old one.  Returns the number of files changed.
    """
    old = old.rstrip("/")
    if not old or old == str(new):
        return 0

    def repoint(value: Any) -> Any:
        if isinstance(value, str) and (value == old or value.startswith(old + "/")):
            return str(new) + value[len(old):]
        if isinstance(value, list):
            return [repoint(v) for v in value]
        if isinstance(value, dict):
            return {k: repoint(v) for k, v in value.items()}
        return value

    changed = 0
    for spec in sorted(root.glob(PROC_SPECS)):
        try:
            data = json.loads(spec.read_text())
        except (OSError, ValueError):
            continue  # not a spec this code wrote: leave it as it is
        moved = repoint(data)
        if moved != data:
            tmp = spec.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(moved))
            os.replace(tmp, spec)
            changed += 1
    return changed


_HAS_FILTER = hasattr(tarfile, "data_filter")


def pg_dump_hint(url_without_password: str, name: str = "pocketgrid.pgdump") -> str:
    """How to back up and restore the PostgreSQL database (pg_dump/pg_restore; not reimplemented here)."""
    libpq = url_without_password.replace("postgresql+psycopg://", "postgresql://", 1)
    return (
        "The database is PostgreSQL: it is not in this archive.  Dump it BEFORE archiving the files "
        "(so every job the dump knows has its directory in the archive), e.g.:\n"
        f"  pg_dump --format=custom --file {name} '{libpq}'\n"
        "  (the password from ~/.pgpass or PGPASSWORD)\n"
        "and restore it into an EMPTY database before starting the peer on the restored state directory:\n"
        f"  createdb NEWDB && pg_restore --no-owner --dbname 'postgresql://.../NEWDB' {name}"
    )
