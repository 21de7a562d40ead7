"""``pocketgrid backup`` of a peer that is running and writing, ``pocketgrid restore`` into a new state
directory, and a peer started there serving the same jobs; the PostgreSQL way (pg_dump + the files);
the refusals that keep a backup or a restore from destroying anything."""
from __future__ import annotations

import io
import os
import secrets
import shutil
import sqlite3
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa

from mobile_client import Client
from peer.migrations.runner import head
from pocketgrid import backup
from tests.conftest import ROOT, PeerProcess, secure_args, start_secure, wait_until
from tests.integration.populated_site import assert_same_site, populate, submit

pytestmark = [pytest.mark.integration]

PG_URL = os.environ.get("POCKETGRID_TEST_PG_URL")


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



def restart_elsewhere(peer: PeerProcess, state: Path, site_pki, *extra: str) -> PeerProcess:
    """The same peer (name, address, certificates) started on another state directory."""
    args = secure_args(site_pki, peer.name, "--no-agent", "--threads", "8", *extra)
    return PeerProcess(peer.name, state, peer.port, args, {**os.environ}).start()


def test_backup_of_a_running_peer_restores_into_a_new_state_directory(site_pki, tmp_path, capsys):
    peer = start_secure(tmp_path / "old", site_pki, "bk-site")
    try:
        facts = populate(peer, site_pki, tmp_path / "client")
        # While the backup runs, a user keeps submitting jobs (and the peer keeps running them).
        writer = Client(peer.url, ca=site_pki.ca, token=facts.alice_token, retries=0)
        submitted: list[str] = []
        stop = threading.Event()

        def keep_submitting() -> None:
            while not stop.is_set() and len(submitted) < 25:
                submitted.append(submit(writer, f"during-{len(submitted)}", ["a.txt"])["id"])

        thread = threading.Thread(target=keep_submitting, daemon=True)
        thread.start()
        wait_until(lambda: len(submitted) >= 2, 30, what="jobs submitted before the backup")
        committed_before = list(submitted)
        archive = tmp_path / "site.tar.gz"
        r = cli("backup", "--state", str(peer.state), "--output", str(archive))
        stop.set()
        thread.join(60)
        assert r.returncode == 0, r.stderr
        assert f"SQLite snapshot ({head()})" in r.stdout
        print(r.stdout, r.stderr, f"{len(submitted)} jobs submitted around the backup", sep="\n")
        later = submit(writer, "after-the-backup", ["b.txt"])
    finally:
        peer.stop()

    new_state = tmp_path / "new" / "bk-site"
    r = run(capsys, "restore", "--backup", str(archive), "--state", str(new_state))
    assert r.returncode == 0, r.stderr
    assert oct(new_state.stat().st_mode & 0o777) == "0o700"
    old_logs = {p: p.read_bytes() for p in peer.state.glob("stage/*/job.log")}
    restored = restart_elsewhere(peer, new_state, site_pki)
    try:
        alice = assert_same_site(restored, site_pki, facts, tmp_path)
        listed = {j["id"] for j in alice.jobs()}
        assert later["id"] not in listed  # written after the backup: not in it
        during = listed - set(facts.statuses)
        assert set(committed_before) <= during <= set(submitted)
        for job_id in sorted(during):  # every job the snapshot knows has its files: each one finishes
            final = alice.wait(job_id, timeout=90)
            assert [i["state"] for i in final["inputs"]] == ["completed"], final
            out = alice.outputs(job_id)["outputs"]
            assert [f["size"] for o in out for f in o["files"] if f["name"] == "n.txt"] == [2]
        # a proc run again after the restore ran in the new directory, not in the old one
        assert {p: p.read_bytes() for p in peer.state.glob("stage/*/job.log")} == old_logs
    finally:
        restored.stop()


@pytest.fixture
def pg_database():
    if not PG_URL:
        pytest.skip("POCKETGRID_TEST_PG_URL is not set: no PostgreSQL server (bash .ci/run starts one)")
    created: list[str] = []
    admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")

    def new() -> str:
        name = f"pocketgrid_bk_{secrets.token_hex(4)}"
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        created.append(name)
        return PG_URL.rsplit("/", 1)[0] + f"/{name}"

    yield new
    with admin.connect() as conn:
        for name in created:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.mark.postgres
def test_postgresql_backup_is_pg_dump_plus_the_files(site_pki, tmp_path, pg_database, capsys):
    """The documented way: pg_dump first, then `pocketgrid backup` for the files; pg_restore into a new
    database and `pocketgrid restore` into a new state directory give the same site."""
    pg_dump, pg_restore = shutil.which("pg_dump"), shutil.which("pg_restore")
    if not (pg_dump and pg_restore):
        pytest.skip("pg_dump/pg_restore not installed (Debian package postgresql-client)")
    url = pg_database()
    peer = start_secure(tmp_path / "old", site_pki, "pgbk-site", "--database-url", url)
    libpq = url.replace("postgresql+psycopg://", "postgresql://")
    dump = tmp_path / "site.pgdump"
    archive = tmp_path / "site.tar"
    try:
        facts = populate(peer, site_pki, tmp_path / "client")
        subprocess.run([pg_dump, "--format=custom", "--file", str(dump), libpq], check=True, timeout=120)
        r = cli("backup", "--state", str(peer.state), "--database-url", url, "--output", str(archive))
        assert r.returncode == 0, r.stderr
        assert "pg_dump --format=custom" in r.stdout and "pg_restore" in r.stdout
    finally:
        peer.stop()
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert backup.DB_NAME not in names and any(n.startswith("stage/") for n in names)
    assert backup.read_manifest(archive)["schema_revision"] == head()

    new_url = pg_database()
    subprocess.run([pg_restore, "--no-owner", "--dbname", new_url.replace("postgresql+psycopg://", "postgresql://"),
                    str(dump)], check=True, timeout=120)
    new_state = tmp_path / "new" / "pgbk-site"
    r = run(capsys, "restore", "--backup", str(archive), "--state", str(new_state))
    assert r.returncode == 0 and "pg_restore" in r.stdout, r.stderr
    restored = restart_elsewhere(peer, new_state, site_pki, "--database-url", new_url)
    try:
        assert_same_site(restored, site_pki, facts, tmp_path)
    finally:
        restored.stop()


# ---- refusals: nothing is overwritten, nothing lands outside the new state directory -----------------

def small_state(root: Path) -> Path:
    state = root / "state"
    (state / "stage" / "p.1").mkdir(parents=True)
    (state / "stage" / "p.1" / "job.log").write_text("events\n")
    with sqlite3.connect(state / "pocketgrid.db") as conn:
        conn.execute("CREATE TABLE jobs (id TEXT PRIMARY KEY)")
        conn.execute("INSERT INTO jobs VALUES ('p.1')")
    return state


def test_backup_refuses_to_overwrite_or_to_contain_itself(tmp_path, capsys):
    state = small_state(tmp_path)
    r = run(capsys, "backup", "--state", str(state), "--output", str(state / "inside.tar"))
    assert r.returncode == 2 and "outside the state directory" in r.stderr
    existing = tmp_path / "existing.tar"
    existing.write_bytes(b"keep me")
    r = run(capsys, "backup", "--state", str(state), "--output", str(existing))
    assert r.returncode == 2 and "exists" in r.stderr and existing.read_bytes() == b"keep me"
    r = run(capsys, "backup", "--state", str(state), "--output", str(tmp_path / "b.zip"))
    assert r.returncode == 2 and ".tar" in r.stderr
    r = run(capsys, "backup", "--state", str(tmp_path / "nowhere"), "--output", str(tmp_path / "b.tar"))
    assert r.returncode == 2 and "does not exist" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing.tar", "state"]  # no partial file left


def test_restore_refuses_a_used_directory_and_a_foreign_file(tmp_path, capsys):
    state = small_state(tmp_path)
    archive = tmp_path / "b.tar"
    result = backup.backup(state, archive, sqlite_database=state / "pocketgrid.db", database_label="sqlite:///x")
    assert result.files == 1  # job.log; the database is the snapshot
    used = tmp_path / "used"
    used.mkdir()
    (used / "keep.txt").write_text("mine")
    r = run(capsys, "restore", "--backup", str(archive), "--state", str(used))
    assert r.returncode == 2 and "not an empty directory" in r.stderr
    assert [p.name for p in used.iterdir()] == ["keep.txt"]
    foreign = tmp_path / "foreign.tar"
    with tarfile.open(foreign, "w") as tar:
        tar.add(state / "stage", arcname="stage")
    r = run(capsys, "restore", "--backup", str(foreign), "--state", str(tmp_path / "new"))
    assert r.returncode == 2 and "not a pocketgrid backup" in r.stderr and not (tmp_path / "new").exists()
    r = run(capsys, "restore", "--backup", str(archive), "--state", str(tmp_path / "new"))
    assert r.returncode == 0 and "holds 1 jobs" in r.stdout, r.stderr
    assert (tmp_path / "new" / "stage" / "p.1" / "job.log").read_text() == "events\n"


def test_restore_never_writes_outside_the_new_state_directory(tmp_path):
    state = small_state(tmp_path)
    archive = tmp_path / "b.tar"
    backup.backup(state, archive, sqlite_database=state / "pocketgrid.db", database_label="sqlite:///x")
    with tarfile.open(archive, "a") as tar:  # planted: a path out of the directory and a link out of it
        evil = b"owned\n"
        info = tarfile.TarInfo("../escaped.txt")
        info.size = len(evil)
        tar.addfile(info, io.BytesIO(evil))
        link = tarfile.TarInfo("stage/p.1/outside")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    new = tmp_path / "deep" / "new"
    restored = backup.restore(archive, new)
    assert restored.jobs == 1
    assert not (tmp_path / "deep" / "escaped.txt").exists() and not (tmp_path / "escaped.txt").exists()
    assert not (new / "stage" / "p.1" / "outside").is_symlink()
    assert (new / "stage" / "p.1" / "job.log").read_text() == "events\n"


def test_a_snapshot_is_one_consistent_state_while_another_connection_writes(tmp_path):
    """SQLite's online backup under a writer that never pauses: the copy is a committed state (every
    transaction wrote two rows; a torn copy would hold an odd count) and passes integrity_check."""
    db = tmp_path / "live.db"
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, pad TEXT)")
    stop = threading.Event()
    commits = [0]

    def write() -> None:
        conn = sqlite3.connect(db, timeout=30)
        while not stop.is_set() and commits[0] < 20000:
            with conn:
                conn.execute("INSERT INTO t (pad) VALUES (?)", ("x" * 500,))
                conn.execute("INSERT INTO t (pad) VALUES (?)", ("y" * 500,))
            commits[0] += 1
        conn.close()

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    try:
        wait_until(lambda: commits[0] >= 200, 30, what="the writer to get going")
        counts = []
        for i in range(3):
            snap = tmp_path / f"snap{i}.db"
            backup.sqlite_snapshot(db, snap)
            with sqlite3.connect(snap) as conn:
                assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
                counts.append(conn.execute("SELECT count(*) FROM t").fetchone()[0])
    finally:
        stop.set()
        thread.join(30)
    assert all(n % 2 == 0 and n >= 400 for n in counts), counts
    assert not Path(f"{tmp_path / 'snap0.db'}-wal").exists()  # a self-contained file


def test_restore_points_local_proc_specs_at_the_new_directory(tmp_path):
    """A proc queued (or running) at backup time runs after the restore: its spec must name the new paths."""
    import json

    state = small_state(tmp_path)
    procs = state / "stage" / "p.1" / ".pocketgrid" / "procs"
    procs.mkdir(parents=True)
    old = str(state.resolve())
    spec = {"iwd": f"{old}/stage/p.1/0", "log": f"{old}/stage/p.1/job.log", "index": 0,
            "environment": {"_CONDOR_SCRATCH_DIR": f"{old}/stage/p.1/0", "PATH": "/usr/bin"},
            "staged_files": [f"{old}/stage/p.1/.pocketgrid/files/x.sh"], "note": f"{old}x/not-below-it"}
    (procs / "0.json").write_text(json.dumps(spec))
    archive = tmp_path / "b.tar"
    backup.backup(state, archive, sqlite_database=state / "pocketgrid.db", database_label="sqlite:///x")
    new = (tmp_path / "elsewhere" / "state").resolve()
    result = backup.restore(archive, new)
    assert result.repointed == 1
    moved = json.loads((new / "stage" / "p.1" / ".pocketgrid" / "procs" / "0.json").read_text())
    assert moved == {**spec, "iwd": f"{new}/stage/p.1/0", "log": f"{new}/stage/p.1/job.log",
                     "environment": {"_CONDOR_SCRATCH_DIR": f"{new}/stage/p.1/0", "PATH": "/usr/bin"},
                     "staged_files": [f"{new}/stage/p.1/.pocketgrid/files/x.sh"]}
    assert json.loads((procs / "0.json").read_text()) == spec  # the source is untouched
