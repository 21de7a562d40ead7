"""Retention on a real peer: expired jobs, uploads and idempotency keys go; nothing in use does.

The peer runs in this process (``create_app``, served by Werkzeug's threaded
server on loopback, the real LocalExecutor running the jobs in their
sandbox) so that the sweeper's clock can be moved: ``sweep(now=...)``
instead of waiting 30 days.  Downloads are real HTTP requests held open
mid-body; a running job really runs (it waits for a file to appear).
"""
from __future__ import annotations

import hashlib
import os
import secrets
import threading
import time
from pathlib import Path

import pytest
import requests
from sqlalchemy import select
from werkzeug.serving import make_server

from mobile_client import ApiError, Client
from peer.app import create_app
from peer.in_use import job_key
from peer.models import IdempotencyKey, Job, JobAttempt, JobRecord
from pocketgrid.config import PeerConfig
from tests.conftest import free_port, report_load, wait_until

pytestmark = pytest.mark.integration

DAY = 86400.0
BIG = 8 * 1024 * 1024  # more than the socket buffers hold: a download of it stays in progress while unread

WRITE_SH = b"""#!/bin/sh
# usage: write.sh INPUT SIZE ; SIZE bytes of 'y' lines into out.bin
yes | head -c "$2" > out.bin
"""
WAIT_SH = b"""#!/bin/sh
# runs until a file named 'go' appears in its directory
while [ ! -e go ]; do sleep 0.05; done
cat "$1" > out.txt
"""


def _sub(size: int | None = None) -> str:
    args = f"$(input) {size}" if size is not None else "$(input)"
    return f"executable = {{exe}}\narguments = {args}\noutput = stdout.txt\nerror = stderr.txt\nqueue\n"


PG_URL = os.environ.get("POCKETGRID_TEST_PG_URL")


@pytest.fixture()
def database(request):
    """'' (SQLite in the state directory), or with ``postgresql`` a fresh database on the test server."""
    if getattr(request, "param", "sqlite") == "sqlite":
        yield ""
        return
    if not PG_URL:
        pytest.skip("POCKETGRID_TEST_PG_URL is not set: no PostgreSQL server (bash .ci/run starts one)")
    import sqlalchemy as sa

    name = f"pocketgrid_{secrets.token_hex(4)}"
    admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    yield PG_URL.rsplit("/", 1)[0] + f"/{name}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture()
def peer(tmp_path, database):
    """An in-process peer (plain HTTP: everyone is 'anonymous') with the default retention times."""
    port = free_port()
    config = PeerConfig(name="keep", port=port, state_dir=str(tmp_path / "state"), insecure_http=True, agent=False,
                        executor="local", local_slots=4, heartbeat_interval=60, database_url=database)
    app = create_app(config)
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    svc = app.extensions["pocketgrid"]
    svc.url = config.url
    report_load(config.url, type("P", (), {"name": "keep", "url": config.url})(), 0.1)
    (svc.publishing.root / "in.txt").write_text("hello\n")
    yield svc
    server.shutdown()
    svc.stop()


def _client(svc) -> Client:
    return Client(svc.url, retries=0)


def _submit(c: Client, name: str, exe: bytes, sub: str, inputs: list[str], key: str | None = None) -> str:
    return c.submit(name, exe, "job.sub", inputs, executable_name=f"{name}.sh",
                    submit_text=sub.format(exe=f"{name}.sh"), idempotency_key=key)["id"]


def piece(svc, job_id: str) -> str:
    """The piece that ran the job here (its home is this peer, its one input ran here): its staging dir's name."""
    def made():
        with svc.db.sessions() as s:
            return s.scalars(select(JobAttempt.piece).where(JobAttempt.job_id == job_id,
                                                            JobAttempt.piece.is_not(None))).first()

    return wait_until(made, 30, what=f"job {job_id}'s piece to be made")


def _finished(c: Client, job_id: str) -> dict:
    def done():
        status = c.status(job_id)[0]
        return status if status["state"] == "completed" else None

    return wait_until(done, 60, what=f"job {job_id} to complete")


@pytest.mark.parametrize("database", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)],
                         indirect=True)
def test_sweep_removes_exactly_what_expired_and_nothing_in_use(peer):
    c = _client(peer)
    stage = peer.stager.root
    used = c.session.put(f"{peer.url}/api/v1/files/uploads/used.txt", data=b"used by a running job\n", timeout=10).json()
    spare = c.session.put(f"{peer.url}/api/v1/files/uploads/spare.txt", data=b"nobody uses me\n", timeout=10).json()
    plain = _submit(c, "plain", WRITE_SH, _sub(100), ["in.txt"])
    downloaded = _submit(c, "downloaded", WRITE_SH, _sub(BIG), ["in.txt"])
    pinned = _submit(c, "pinned", WRITE_SH, _sub(100), ["in.txt"])
    running = _submit(c, "running", WAIT_SH, _sub(), [used["path"]])
    for job_id in (plain, downloaded, pinned):
        _finished(c, job_id)
    assert c._json("POST", f"/api/v1/jobs/{pinned}/pin")["pinned"] is True
    status = c.status(pinned)[0]
    assert status["pinned"] is True and status["expires_at"] is None
    finished = c.status(plain)[0]
    assert finished["expires_at"] == pytest.approx(finished["finished_at"] + 30 * DAY)
    wait_until(lambda: c.status(running)[0]["state"] == "running", 30, what="the waiting job to run")
    pieces = {job_id: piece(peer, job_id) for job_id in (plain, downloaded, pinned, running)}

    # nothing is due yet: a sweep now removes nothing
    assert peer.retention.sweep()["remove"] == []

    # a download of the big output, held open mid-body
    out = c.outputs(downloaded)["outputs"][0]["files"]
    big = next(f for f in out if f["name"] == "out.bin")
    held = c.session.get(f"{peer.url}/api/v1/jobs/{downloaded}/outputs/0/out.bin", stream=True, timeout=30)
    first = held.raw.read(64 * 1024)
    assert peer.in_use.count(job_key(downloaded)) == 1  # the server is still sending it

    later = time.time() + 31 * DAY
    result = peer.retention.sweep(now=later)
    removed = {(i["kind"], i["name"]) for i in result["remove"]}
    kept = {(i["kind"], i["name"]): i["reason"] for i in result["keep"]}
    assert removed == {("job", plain), ("upload", spare["path"]), ("idempotency-keys", "4 keys")}  # the client sends one with every submit
    assert kept == {("job", downloaded): "being downloaded", ("job", pinned): "pinned",
                    ("upload", used["path"]): "a job that has not finished uses it"}
    assert not (stage / pieces[plain]).exists() and not (peer.publishing.root / spare["path"]).exists()
    for job_id in (downloaded, pinned, running):
        assert (stage / pieces[job_id]).is_dir()
    assert (peer.publishing.root / used["path"]).is_file()
    with peer.db.sessions() as s:  # the record, its piece and its files are gone
        assert s.get(JobRecord, plain) is None and s.get(Job, pieces[plain]) is None
        assert s.query(IdempotencyKey).count() == 0
    assert not (peer.config.state_path / "records" / plain).exists()
    with pytest.raises(ApiError) as err:
        c.status(plain)
    assert err.value.status == 404

    # the held download completes, whole and verified, although its job expired meanwhile
    rest = held.raw.read()
    held.close()
    assert hashlib.sha256(first + rest).hexdigest() == big["sha256"] and len(first + rest) == BIG
    wait_until(lambda: peer.in_use.count(job_key(downloaded)) == 0, 10, what="the download to be closed")
    assert {i["name"] for i in peer.retention.sweep(now=later)["remove"]} == {downloaded}
    assert not (stage / pieces[downloaded]).exists()

    # unpinned, the pinned job expires 30 days after it finished
    assert c._json("DELETE", f"/api/v1/jobs/{pinned}/pin")["expires_at"] is not None
    assert {i["name"] for i in peer.retention.sweep(now=later)["remove"]} == {pinned}

    # the running job is not finished, whatever the clock says; once it is, it and its input go too
    assert (stage / pieces[running]).is_dir()
    (stage / pieces[running] / "0" / "go").write_text("")
    _finished(c, running)
    later = time.time() + 31 * DAY

    def due() -> set:
        return {(i["kind"], i["name"]) for i in peer.retention.sweep(now=later, dry_run=True)["remove"]}

    # its last event is written by the proc's runner, which the executor reaps a moment later
    wait_until(lambda: ("job", running) in due(), 10, what="the executor to be done with the job")
    gone = peer.retention.sweep(now=later)
    assert {(i["kind"], i["name"]) for i in gone["remove"]} == {("job", running), ("upload", used["path"])}
    assert sorted(p.name for p in stage.iterdir() if not p.name.startswith(".")) == []


def test_dry_run_and_purge(peer):
    c = _client(peer)
    job = _submit(c, "purged", WRITE_SH, _sub(1000), ["in.txt"])
    _finished(c, job)
    later = time.time() + 31 * DAY

    def due_jobs() -> list:
        plan = peer.retention.sweep(now=later, dry_run=True)
        assert plan["dry_run"] is True
        return [(i["name"], i["action"]) for i in plan["remove"] if i["kind"] == "job"]

    wait_until(lambda: due_jobs() == [(job, "remove")], 10, what="the job to be due at the later time")
    where = peer.stager.root / piece(peer, job)
    assert where.is_dir()  # a dry run removes nothing
    answer = c._json("POST", f"/api/v1/jobs/{job}/purge")
    assert answer["removed"] is True and answer["bytes"] >= 1000
    assert not where.exists()
    with pytest.raises(ApiError) as err:
        c.status(job)
    assert err.value.status == 404


def test_purge_refuses_a_running_job(peer):
    c = _client(peer)
    job = _submit(c, "busy", WAIT_SH, _sub(), ["in.txt"])
    with pytest.raises(ApiError) as err:
        c._json("POST", f"/api/v1/jobs/{job}/purge")
    assert err.value.status == 409 and "kill it first" in err.value.message
    where = peer.stager.root / piece(peer, job)
    assert where.is_dir()
    (where / "0" / "go").write_text("")
    _finished(c, job)
