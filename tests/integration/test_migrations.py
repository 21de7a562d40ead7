"""Schema migrations (peer/migrations/): a database of the previous release keeps its history when a peer
of this version starts on it, on SQLite and PostgreSQL (its database as that release left it, at its
last revision, and the same rows in a database of the release before migrations); the migrations create
exactly what the models declare; a database from a newer pocketgrid is refused with a message; upgrades
are all or nothing and serialised.

The previous release's site is made by that release's own code: ``git archive`` of its commit
(:data:`RELEASE_COMMIT`), run as a real peer (jobs ran whole on it, one ``jobs`` row each: this version
turns each into a record, peer/migrations/versions/0003_job_records.py)."""
from __future__ import annotations

import os
import secrets
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.conftest import ROOT, PeerProcess, SitePki, free_port, secure_args, wait_until
from tests.integration.populated_site import SiteFacts, assert_same_site, populate

pytestmark = [pytest.mark.integration]

PG_URL = os.environ.get("POCKETGRID_TEST_PG_URL")
FUTURE = "9999_from_the_future"
#: The previous release: main before jobs became records at their home and pieces at sites (issue 14).
RELEASE_COMMIT = "6377e1c62daa811cf47dfaf2ba922901f2270207"
#: Its last migration.
RELEASE_REVISION = "0002_jobs_retention"


def pg_or_skip() -> str:
    if not PG_URL:
        pytest.skip("POCKETGRID_TEST_PG_URL is not set: no PostgreSQL server (bash .ci/run starts one)")
    return PG_URL


@pytest.fixture
def pg_database():
    """A new, empty PostgreSQL database for one test (dropped afterwards)."""
    url = pg_or_skip()
    name = f"pocketgrid_mig_{secrets.token_hex(4)}"
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    yield url.rsplit("/", 1)[0] + f"/{name}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def all_metadata() -> list[sa.MetaData]:
    """Every table the running peer declares (importing the app loads every module that declares one)."""
    import peer.app  # noqa: F401
    from broker.models import BrokerBase
    from peer.models import Base

    return [Base.metadata, BrokerBase.metadata]


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pocketgrid.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)

class Ran:
    """What a ``pocketgrid`` command run in this process returned and printed."""

    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def run(capsys, *args: str) -> Ran:
    """``pocketgrid ARGS`` in this process (the commands that need no server process: fast)."""
    from pocketgrid.cli import main

    capsys.readouterr()
    rc = main(list(args))
    out, err = capsys.readouterr()
    return Ran(rc, out, err)



def recorded_revisions(url: str) -> list[str] | None:
    """alembic_version's rows, or None when the table does not exist."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            if not sa.inspect(conn).has_table("alembic_version"):
                return None
            return [r[0] for r in conn.execute(sa.text("SELECT version_num FROM alembic_version"))]
    finally:
        engine.dispose()


def dump(path: Path) -> list[str]:
    """A SQLite database's schema and rows as SQL text."""
    conn = sqlite3.connect(path)
    try:
        return list(conn.iterdump())
    finally:
        conn.close()


def release_database(url: str) -> None:
    """The schema exactly as the release before migrations made it (its ``create_all``): the baseline
    revision's tables, without Alembic's version table."""
    from peer.migrations.runner import BASELINE, upgrade

    upgrade(url, BASELINE)
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE alembic_version"))
    engine.dispose()


def copy_rows(src_url: str, dst_url: str) -> int:
    """Every row of every pocketgrid table from one database into another, in the columns both databases
    have (an older schema has fewer tables and columns); the row count."""
    src, dst = sa.create_engine(src_url), sa.create_engine(dst_url)
    n = 0
    try:
        with src.connect() as s, dst.begin() as d:
            for metadata in all_metadata():
                for table in metadata.sorted_tables:
                    if not sa.inspect(s).has_table(table.name) or not sa.inspect(d).has_table(table.name):
                        continue
                    have = ({c["name"] for c in sa.inspect(d).get_columns(table.name)}
                            & {c["name"] for c in sa.inspect(s).get_columns(table.name)})
                    read = sa.select(*(table.c[c] for c in table.columns.keys() if c in have))
                    rows = [dict(r) for r in s.execute(read).mappings()]
                    if rows:
                        shown = sa.Table(table.name, sa.MetaData(),  # the model's types, the columns dst has
                                         *(sa.Column(c.name, c.type) for c in table.columns if c.name in have))
                        d.execute(shown.insert(), rows)
                        n += len(rows)
                    if d.dialect.name == "postgresql":  # explicit ids do not move PostgreSQL's sequences
                        for col in table.primary_key.columns:
                            if col.autoincrement is True:  # every serial id of the models says so
                                d.execute(sa.text(f"SELECT setval(pg_get_serial_sequence('{table.name}', '{col.name}'), "
                                                  f"COALESCE(MAX(\"{col.name}\"), 0) + 1, false) FROM \"{table.name}\""))
    finally:
        src.dispose()
        dst.dispose()
    return n


class ReleaseSite:
    """A TLS peer that ran jobs and more; stopped; its state directory and facts."""

    def __init__(self, peer: PeerProcess, facts: SiteFacts) -> None:
        self.peer, self.facts = peer, facts

    @property
    def url(self) -> str:
        return f"sqlite:///{self.peer.state / 'pocketgrid.db'}"

    def files_into(self, state: Path) -> None:
        """The state directory's files (stage, publish, uploads), not its database or log."""
        shutil.copytree(self.peer.state, state, symlinks=True,
                        ignore=shutil.ignore_patterns("pocketgrid.db*", "peer.log"))


class ReleasePeer(PeerProcess):
    """A peer of the previous release: its code from ``git archive``, run from its own tree (cwd and
    PYTHONPATH: its modules, not this checkout's, for the peer and every process it starts)."""

    def __init__(self, tree: Path, *args, **kw) -> None:
        super().__init__(*args, **kw)
        self.tree = tree
        self.env = {**self.env, "PYTHONPATH": str(tree)}

    def start(self) -> "ReleasePeer":
        self.state.mkdir(parents=True, exist_ok=True)
        log = open(self.state / "peer.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pocketgrid.cli", "serve", "--name", self.name, "--port", str(self.port),
             "--state", str(self.state), *self.args],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env, cwd=self.tree,
            start_new_session=True,
        )
        log.close()
        wait_until(self.healthy, 60, what=f"the previous release's peer {self.name} to answer /healthz")
        return self


def release_tree(root: Path) -> Path:
    """The previous release's source tree (``git archive`` of :data:`RELEASE_COMMIT`)."""
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: the previous release's code cannot be read from the history")
    tree = root / "release-src"
    tree.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", RELEASE_COMMIT],
                             capture_output=True, timeout=120)
    assert archive.returncode == 0, (f"the previous release {RELEASE_COMMIT} is not in this repository's history: "
                                     f"{archive.stderr.decode()[:300]}")
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True, timeout=120)
    return tree


@pytest.fixture(scope="module")
def release_site(tmp_path_factory, site_pki: SitePki) -> ReleaseSite:
    root = tmp_path_factory.mktemp("release")
    tree = release_tree(root)
    peer = ReleasePeer(tree, "rel-site", root / "rel-site", free_port(),
                       secure_args(site_pki, "rel-site", "--threads", "8"), {**os.environ}).start()
    try:
        facts = populate(peer, site_pki, root / "client")
    finally:
        peer.stop()
    return ReleaseSite(peer, facts)


def start_on(state: Path, site: ReleaseSite, site_pki: SitePki, *extra: str) -> PeerProcess:
    """The site's peer (same name, same address) started on ``state``."""
    args = secure_args(site_pki, site.peer.name, "--no-agent", "--threads", "8", *extra)
    return PeerProcess(site.peer.name, state, site.peer.port, args, {**os.environ}).start()


def check_release_database_upgrade(url: str, state: Path, site: ReleaseSite, site_pki: SitePki, tmp: Path,
                                   *extra: str) -> None:
    from peer.migrations.runner import BASELINE, head

    release_database(url)
    assert copy_rows(site.url, url) > 20
    assert recorded_revisions(url) is None  # as the release left it: no version table
    peer = start_on(state, site, site_pki, *extra)
    try:
        assert_same_site(peer, site_pki, site.facts, tmp, since_release=True)
        assert f"stamped {BASELINE}" in peer.log_tail(100_000)
    finally:
        peer.stop()
    assert recorded_revisions(url) == [head()]


def test_the_previous_releases_own_database_keeps_every_job(release_site, site_pki, tmp_path):
    """The release's SQLite database as it left it (at its last revision): upgraded at start, every job of it
    listed with its status and outputs, now a record at this peer."""
    from peer.migrations.runner import head

    state = tmp_path / "state"
    shutil.copytree(release_site.peer.state, state, symlinks=True, ignore=shutil.ignore_patterns("peer.log"))
    url = f"sqlite:///{state / 'pocketgrid.db'}"
    assert recorded_revisions(url) == [RELEASE_REVISION]
    peer = start_on(state, release_site, site_pki)
    try:
        alice = assert_same_site(peer, site_pki, release_site.facts, tmp_path, since_release=True)
        for job_id in release_site.facts.statuses:  # each is a record here now, its one round the old job
            status = alice.status(job_id, history=True)[0]
            assert status["peer"] == "rel-site" and {i["site"] for i in status["inputs"]} == {"rel-site"}
            assert all([a["piece"] for a in i["attempts"]] == [job_id] for i in status["inputs"])
        assert f"{RELEASE_REVISION} -> {head()}" in peer.log_tail(100_000)
    finally:
        peer.stop()
    assert recorded_revisions(url) == [head()]


def test_release_sqlite_database_keeps_every_job(release_site, site_pki, tmp_path):
    state = tmp_path / "state"
    release_site.files_into(state)
    check_release_database_upgrade(f"sqlite:///{state / 'pocketgrid.db'}", state, release_site, site_pki, tmp_path)


@pytest.mark.postgres
def test_release_postgresql_database_keeps_every_job(release_site, site_pki, tmp_path, pg_database):
    state = tmp_path / "state"
    release_site.files_into(state)
    check_release_database_upgrade(pg_database, state, release_site, site_pki, tmp_path, "--database-url", pg_database)


def compare_with_models(url: str) -> list:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    merged = sa.MetaData()
    for metadata in all_metadata():
        for table in metadata.tables.values():
            table.to_metadata(merged)
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), merged)
    finally:
        engine.dispose()


def test_migrations_create_what_the_models_declare_sqlite(tmp_path):
    from peer.migrations import upgrade

    url = f"sqlite:///{tmp_path / 'p.db'}"
    result = upgrade(url)
    assert result.applied[0] == "0001_baseline" and not result.stamped
    assert compare_with_models(url) == []


@pytest.mark.postgres
def test_migrations_create_what_the_models_declare_postgresql(pg_database):
    from peer.migrations import upgrade

    upgrade(pg_database)
    assert compare_with_models(pg_database) == []


def test_a_model_change_without_a_migration_is_found(tmp_path):
    """The comparison above is not blind: a column the migrations lack shows up."""
    from peer.migrations import upgrade

    url = f"sqlite:///{tmp_path / 'p.db'}"
    upgrade(url)
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE jobs DROP COLUMN removed_at"))
    engine.dispose()
    diffs = compare_with_models(url)
    assert [(d[0], d[2], d[3].name) for d in diffs] == [("add_column", "jobs", "removed_at")]


def test_a_database_from_a_newer_pocketgrid_refuses_to_start(tmp_path, capsys):
    from peer.migrations import upgrade

    state = tmp_path / "state"
    state.mkdir()
    url = f"sqlite:///{state / 'pocketgrid.db'}"
    upgrade(url)
    with sqlite3.connect(state / "pocketgrid.db") as conn:
        conn.execute("UPDATE alembic_version SET version_num = ?", (FUTURE,))
    before = dump(state / "pocketgrid.db")
    serve = cli("serve", "--name", "old-code", "--state", str(state), "--port", str(free_port()), "--insecure-http",
                "--no-agent")
    assert serve.returncode == 2, serve.stderr
    assert FUTURE in serve.stderr and "newer pocketgrid" in serve.stderr and "Traceback" not in serve.stderr
    for sub in ("current", "upgrade"):
        r = run(capsys, "db", sub, "--state", str(state))
        assert r.returncode == 2 and FUTURE in r.stdout + r.stderr, (sub, r.stdout, r.stderr)
    assert recorded_revisions(url) == [FUTURE]
    assert dump(state / "pocketgrid.db") == before


def test_an_unversioned_database_lacking_a_column_is_refused_and_left_alone(tmp_path, capsys):
    state = tmp_path / "state"
    state.mkdir()
    url = f"sqlite:///{state / 'pocketgrid.db'}"
    release_database(url)
    with sqlite3.connect(state / "pocketgrid.db") as conn:  # as a development version before members.cert
        conn.execute("ALTER TABLE members DROP COLUMN cert")
    r = run(capsys, "db", "upgrade", "--state", str(state))
    assert r.returncode == 2 and "members.cert" in r.stderr and "fresh state directory" in r.stderr, r.stderr
    serve = cli("serve", "--name", "old", "--state", str(state), "--port", str(free_port()), "--insecure-http")
    assert serve.returncode == 2 and "members.cert" in serve.stderr
    assert recorded_revisions(url) is None


def test_db_commands_report_and_upgrade(tmp_path, capsys):
    state = tmp_path / "state"
    r = run(capsys, "db", "current", "--state", str(state))
    assert r.returncode == 1 and "empty" in r.stdout and not (state / "pocketgrid.db").exists()
    state.mkdir()
    release_database(f"sqlite:///{state / 'pocketgrid.db'}")
    r = run(capsys, "db", "current", "--state", str(state))
    assert r.returncode == 1 and "no revision recorded" in r.stdout, r.stdout
    r = run(capsys, "db", "upgrade", "--state", str(state))
    assert r.returncode == 0 and "stamped 0001_baseline" in r.stdout, r.stdout + r.stderr
    from peer.migrations.runner import head

    r = run(capsys, "db", "current", "--state", str(state))
    assert r.returncode == 0 and f"{head()} (head)" in r.stdout
    r = run(capsys, "db", "history", "--state", str(state))
    assert r.returncode == 0 and "<base> -> 0001_baseline" in r.stdout and f"{head()} (head, current)" in r.stdout, \
        r.stdout


def test_sqlite_migration_rolls_back_as_a_whole(tmp_path):
    """DDL in the migration transaction is undone with it (the driver would otherwise autocommit it)."""
    from peer.migrations.runner import migration_engine

    url = f"sqlite:///{tmp_path / 'p.db'}"
    engine = migration_engine(url)
    with pytest.raises(RuntimeError, match="half-way"):
        with engine.connect() as conn, conn.begin():
            conn.execute(sa.text("CREATE TABLE first_step (x INTEGER)"))
            conn.execute(sa.text("ALTER TABLE first_step ADD COLUMN y INTEGER"))
            raise RuntimeError("a migration failed half-way")
    with engine.connect() as conn:
        assert not sa.inspect(conn).has_table("first_step")
    engine.dispose()


def test_sqlite_batch_alter_of_jobs_keeps_their_procs(tmp_path):
    """What a later revision adding a column to ``jobs`` does on SQLite (copy the table, drop the old one):
    the drop must not cascade into ``procs`` (migrations run with foreign_keys OFF)."""
    from alembic.operations import Operations
    from alembic.runtime.migration import MigrationContext

    from peer.migrations import upgrade
    from peer.migrations.runner import migration_engine

    url = f"sqlite:///{tmp_path / 'p.db'}"
    upgrade(url)
    with sqlite3.connect(tmp_path / "p.db") as conn:
        conn.execute("INSERT INTO jobs (id, name, owner, created_at, executor, executable_name, submit_name, "
                     "submit_text, input_names, entry_peer, origin_key, warnings, status_version) "
                     "VALUES ('p.1', 'j', 'me', 0, 'local', 'x', 's', 'queue', '[]', 'p', 'k', '[]', 0)")
        conn.execute("INSERT INTO procs (job_id, \"index\", input_name, executor, cluster, proc, local_state, restarts) "
                     "VALUES ('p.1', 0, 'a.txt', 'local', 1, 0, 'done', 0)")
    engine = migration_engine(url)
    with engine.connect() as conn, conn.begin():
        with Operations(MigrationContext.configure(conn)).batch_alter_table("jobs", recreate="always") as batch:
            batch.add_column(sa.Column("note", sa.String(20), nullable=True))
    engine.dispose()
    with sqlite3.connect(tmp_path / "p.db") as conn:
        assert conn.execute("SELECT job_id FROM procs").fetchall() == [("p.1",)]
        assert "note" in [r[1] for r in conn.execute("PRAGMA table_info(jobs)")]
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []


@pytest.mark.postgres
def test_two_upgrades_of_one_postgresql_database_take_turns(pg_database):
    """While one upgrade holds the lock (mid-way, tables created but not committed), a second waits for it,
    then finds the database at head and does nothing (without the lock it would fail: duplicate tables)."""
    from alembic import command

    from peer.migrations.runner import _PG_LOCK_KEY, alembic_config, head

    engine = sa.create_engine(pg_database)
    probe = sa.create_engine(pg_database)
    try:
        with engine.connect() as conn:
            tx = conn.begin()
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_KEY})
            command.upgrade(alembic_config(conn), "head")
            second = subprocess.Popen([sys.executable, "-m", "pocketgrid.cli", "db", "upgrade", "--database-url",
                                       pg_database], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, stdin=subprocess.DEVNULL)

            def waiting() -> bool:
                assert second.poll() is None, second.communicate()
                with probe.connect() as p:
                    return bool(p.execute(sa.text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                                                  "AND NOT granted")).scalar())

            wait_until(waiting, 60, what="the second upgrade to wait for the lock")
            tx.commit()
        out, err = second.communicate(timeout=60)
        assert second.returncode == 0, err
        assert f"up to date: {head()} (head)" in out
    finally:
        engine.dispose()
        probe.dispose()
    assert recorded_revisions(pg_database) == [head()]
