"""Peers crash and restart; downloads get cut: nothing is lost, nothing is re-sent twice.

Over TLS with mutual TLS between peers; alice, logged in, makes every request.
(A site lost for good, and its inputs re-run elsewhere: tests/integration/test_jobs_across_sites.py.)"""
from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys

import pytest

from mobile_client import Client
from tests.conftest import ROOT, free_port, host_session, report_load, wait_until
from tests.job_processes import attempt_dir, job_pids, with_history

pytestmark = pytest.mark.integration

_site: dict = {}


@pytest.fixture(autouse=True)
def _logged_in(site_pki):
    """Every peer of these tests is a TLS peer of the test site; ``client(url)`` is alice logged in there."""
    _site.update(pki=site_pki, tokens={})
    yield
    _site.clear()


@pytest.fixture
def peers(peers, site_pki):  # the conftest factory, with TLS
    return functools.partial(peers, site_pki=site_pki)


def token(url: str) -> str:
    if url not in _site["tokens"]:
        alice = _site["pki"].users["alice"]
        _site["tokens"][url] = Client(url, ca=_site["pki"].ca).login(alice.cert_path, alice.key_path)["token"]
    return _site["tokens"][url]


def client(url: str) -> Client:
    return Client(url, ca=_site["pki"].ca, token=token(url))


def load(broker_url: str, peer, value: float) -> None:
    """``peer``'s agent reporting (with ``peer``'s host certificate)."""
    report_load(broker_url, peer, value, session=host_session(_site["pki"], peer.name))

# Runs ~2 s, then writes its exit marker: long enough to kill the peer meanwhile.
SLOW = b"""#!/bin/sh
echo $$ > pid.txt
echo run >> runs.txt
i=0
while [ $i -lt 20 ]; do i=$((i+1)); sleep 0.1; done
echo finished > done.txt
exit 3
"""
SLOW_SUB = "executable = slow.sh\nqueue\n"


def _submit(url: str, peer, name: str) -> dict:
    (peer.publish).mkdir(parents=True, exist_ok=True)
    (peer.publish / f"{name}.txt").write_text("x\n")
    return client(url).submit(name, SLOW, "slow.sub", [f"{name}.txt"], executable_name="slow.sh", submit_text=SLOW_SUB)


def _pid_file(p, job):
    """Where the job's only input writes pid.txt: its attempt's directory at p (home and site)."""
    proc_dir = wait_until(lambda: attempt_dir([p], with_history(client(p.url), job["id"]), 0),
                          what="the input to be staged")
    return proc_dir / "pid.txt"


def test_killed_peer_restarts_and_reports_the_verdict_it_missed(peers):
    p = peers("solo", extra=["--no-agent"])
    job = _submit(p.url, p, "crash")
    pid_file = _pid_file(p, job)
    wait_until(pid_file.exists, what="the proc to start")
    p.stop(signal.SIGKILL)  # the whole peer (gunicorn master + worker) dies; the runner lives on
    wait_until(lambda: (pid_file.parent / "done.txt").exists(), what="the proc to finish")
    p.start()
    final = client(p.url).wait(job["id"], timeout=30)
    assert final["inputs"][0]["state"] == "failed" and final["inputs"][0]["exit_code"] == 3


def test_killed_peer_adopts_a_proc_still_running(peers):
    p = peers("solo", extra=["--no-agent"])
    job = _submit(p.url, p, "adopt")
    pid_file = _pid_file(p, job)
    wait_until(pid_file.exists, what="the proc to start")
    p.stop(signal.SIGKILL)
    p.start()  # back while the proc still runs
    # the restarted home reads its own piece again (one manager round): the adopted proc runs on
    wait_until(lambda: client(p.url).status(job["id"])[0]["inputs"][0]["state"] in ("running", "failed"),
               what="the restarted peer to see the proc it adopted")
    final = client(p.url).wait(job["id"], timeout=30)
    assert final["inputs"][0]["exit_code"] == 3
    assert final["inputs"][0].get("evictions", 0) == 0  # it ran once, never restarted


def test_clean_shutdown_evicts_and_reruns_after_restart(peers):
    p = peers("solo", extra=["--no-agent"])
    job = _submit(p.url, p, "evict")
    pid_file = _pid_file(p, job)
    wait_until(pid_file.exists, what="the proc to start")
    assert job_pids(pid_file.parent)  # host PIDs: the job's $$ is its sandbox's
    p.stop(signal.SIGTERM)
    assert not job_pids(pid_file.parent)
    p.start()
    final = client(p.url).wait(job["id"], timeout=30)
    proc = final["inputs"][0]
    assert proc["exit_code"] == 3 and proc["evictions"] == 1
    assert (pid_file.parent / "runs.txt").read_text() == "run\nrun\n"  # it really ran again


def test_dead_candidate_falls_back_to_the_next(peers):
    a = peers("site-a", extra=["--no-agent"])
    b = peers("site-b", join=a.url, extra=["--no-agent"])
    dead_port = free_port()

    class Dead:
        name, url = "site-dead", f"http://127.0.0.1:{dead_port}"

    load(a.url, Dead, 0.0)   # best score, but nobody listens there
    load(a.url, b, 0.5)
    load(a.url, a, 0.9)
    a.publish.mkdir(parents=True, exist_ok=True)
    (a.publish / "f.txt").write_text("1\n")
    job = client(a.url).submit("fb", b"#!/bin/sh\nexit 0\n", "s.sub", ["f.txt"], executable_name="x.sh",
                               submit_text="executable = x.sh\nqueue\n")
    assert job["peer"] == "site-a"  # its home
    final = client(a.url).wait(job["id"], timeout=60)
    assert final["state"] == "completed" and final["inputs"][0]["site"] == "site-b"
    attempts = with_history(client(a.url), job["id"])["inputs"][0]["attempts"]
    assert [(h["site"], h["state"]) for h in attempts] == [("site-dead", "lost"), ("site-b", "completed")]
    assert "cannot reach site-dead" in attempts[0]["reason"]


BIG = b"""#!/bin/sh
head -c 12582912 /dev/urandom > big.bin
"""


def test_interrupted_cli_fetch_resumes_with_at_most_one_chunk_resent(peers, tmp_path):
    p = peers("solo", extra=["--no-agent"])
    p.publish.mkdir(parents=True, exist_ok=True)
    (p.publish / "in.txt").write_text("x\n")
    alice = client(p.url)
    job = alice.submit("big", BIG, "b.sub", ["in.txt"], executable_name="big.sh",
                        submit_text="executable = big.sh\nqueue\n")
    assert alice.wait(job["id"], timeout=60)["state"] == "completed"
    dest = tmp_path / "dl"
    chunk = 256 * 1024
    cmd = [sys.executable, "-m", "pocketgrid.cli", "fetch", job["id"], "0/big.bin", "-o", str(dest),
           "--peer", p.url, "--ca", _site["pki"].ca, "--chunk", str(chunk), "--no-progress", "--limit-rate", "4M"]
    env = {**os.environ, "POCKETGRID_TOKEN": token(p.url)}
    part = dest / job["id"] / "0" / "big.bin.part"  # fetch writes DEST/<job-id>/<index>/<name>
    # --limit-rate: a slow link, so it is still downloading when we kill it.
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env)
    wait_until(lambda: part.exists() and part.stat().st_size > 3 * 1024 * 1024, timeout=60,
               what="the first download to get going")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    had = part.stat().st_size
    checkpoint = json.loads((dest / job["id"] / "0" / "big.bin.part.json").read_text())["offset"]
    assert had - checkpoint <= chunk + 1024 * 1024  # at most one chunk (+ one read) past the checkpoint
    out = subprocess.run(cmd[:-2], capture_output=True, text=True, cwd=ROOT, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    assert f"resumed at byte {checkpoint}" in out.stdout and "verified" in out.stdout
    assert (dest / job["id"] / "0" / "big.bin").stat().st_size == 12582912
    assert not part.exists()


def test_a_home_that_lost_a_pieces_answer_sends_it_again_and_gets_the_same_piece(peers):
    """The home died after the site made the piece but before it recorded the answer: sent again with
    the same origin key, the site answers the piece it made (no second copy); a replayed submit is the same job."""
    import sqlite3

    a = peers("site-a", extra=["--no-agent"])
    b = peers("site-b", join=a.url, extra=["--no-agent"])
    a.publish.mkdir(parents=True, exist_ok=True)
    (a.publish / "k.txt").write_text("1\n")
    for peer, value in ((a, 9.0), (b, 0.1)):
        load(a.url, peer, value)
    kw = dict(executable_name="x.sh", submit_text="executable = x.sh\nqueue\n", idempotency_key="flaky-7")
    first = client(a.url).submit("k", b"#!/bin/sh\nexit 0\n", "s.sub", ["k.txt"], **kw)
    assert client(a.url).wait(first["id"], timeout=60)["inputs"][0]["site"] == "site-b"
    piece = with_history(client(a.url), first["id"])["inputs"][0]["attempts"][0]["piece"]
    a.stop(signal.SIGKILL)
    # The state a crash between "site-b made the piece" and "the home recorded it" leaves behind:
    with sqlite3.connect(a.state / "pocketgrid.db") as db:
        db.execute("UPDATE job_attempts SET piece = NULL, piece_version = NULL, state = 'dispatching', result = 0 "
                   "WHERE job_id = ?", (first["id"],))
        db.execute("UPDATE job_records SET finished_at = NULL WHERE id = ?", (first["id"],))
    a.start()
    final = client(a.url).wait(first["id"], timeout=60)
    assert final["state"] == "completed"
    assert with_history(client(a.url), first["id"])["inputs"][0]["attempts"][0]["piece"] == piece
    assert [d.name for d in (b.state / "stage").iterdir() if d.name.startswith("site-b.")] == [piece]
    again = client(a.url).submit("k", b"#!/bin/sh\nexit 0\n", "s.sub", ["k.txt"], **kw)
    assert again["id"] == first["id"]
    assert [j["id"] for j in client(a.url).jobs() if j["name"] == "k"] == [first["id"]]


def test_restart_removes_staging_left_without_a_job_row(peers):
    """A crash between staging and the commit of the job's row leaves a complete staging directory that
    nothing would ever serve or remove: the restarted peer sweeps it (before it serves a request), and
    keeps every directory that has a row."""
    p = peers("solo", extra=["--no-agent"])
    kept = _submit(p.url, p, "kept")
    assert client(p.url).wait(kept["id"], timeout=30)["state"] == "failed"  # exit 3: done, either way
    p.stop(signal.SIGKILL)
    stage = p.state / "stage"
    orphan = stage / "solo.65f1c2ab0badc0de"  # what staging makes, but its row was never committed
    (orphan / "0").mkdir(parents=True)
    (orphan / "0" / "input.txt").write_text("x\n")
    (orphan / "job.log").touch()
    other = stage / "site-b.65f1c2ab00000001"  # not this peer's job ID: none of its business
    other.mkdir()
    p.start()
    assert not orphan.exists() and other.exists()
    assert (attempt_dir([p], with_history(client(p.url), kept["id"]), 0) / "runs.txt").exists()
    assert client(p.url).outputs(kept["id"])["outputs"][0]["files"]
    assert "no job row" in p.log_tail(20000)
