"""Jobs never run as the peer's account and never see its files (issue 10, section 1).

A real TLS peer (run as root here, so jobs run in bubblewrap as ``nobody``); jobs are submitted by
logged-in users.  One job tries to take the peer's host key, its database, another user's job
directory and the peer's own port; it gets none of them, and the peer's files are private."""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from mobile_client import Client
from tests.conftest import user_session, wait_until
from tests.job_processes import attempt_dir, with_history

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

BOB_SECRET = b"""#!/bin/sh
echo bob-secret-4711 > secret.txt
"""

ATTACK = """#!/bin/sh
try() {{ label=$1; shift; if "$@" > "got-$label.txt" 2>> denied.txt; then echo "$label: READ"; else echo "$label: refused"; fi; }}
try key cat {key}
try hostkeys sh -c 'cat {pki}/hosts/*.key'
try db cat {db}
try state ls {state}
try other cat {other}/secret.txt
try otherdir ls {other}
try etc-shadow cat /etc/shadow
if python3 -c "import socket; socket.create_connection(('127.0.0.1', {port}), 2)" 2>> denied.txt; then
  echo "net: CONNECTED"; else echo "net: blocked"; fi
echo "uid $(id -u)"
echo mine > mine.txt
mkdir -p sub && echo deeper > sub/nested.txt
exit 0
"""


@pytest.fixture
def peer(peers, site_pki):
    return peers("iso", site_pki=site_pki, extra=["--no-agent"])


def _client(peer, site_pki, user: str) -> Client:
    token = user_session(peer, site_pki, user).headers["Authorization"].split()[1]
    return Client(peer.url, ca=site_pki.ca, token=token)


def _proc_dir(peer, client: Client, job_id: str) -> Path:
    """The directory of the job's only input at this (its only) site."""
    return wait_until(lambda: attempt_dir([peer], with_history(client, job_id), 0), 30, what="the input to be staged")


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_a_job_cannot_read_the_peers_key_database_or_other_users_jobs(peer, site_pki, tmp_path):
    peer.publish.mkdir(parents=True, exist_ok=True)
    (peer.publish / "in.txt").write_text("1\n")
    bob = _client(peer, site_pki, "bob")
    bob_job = bob.submit("bob", BOB_SECRET, "b.sub", ["in.txt"], executable_name="b.sh",
                         submit_text="executable = b.sh\nqueue\n")
    assert bob.wait(bob_job["id"], timeout=60)["state"] == "completed"
    other = _proc_dir(peer, bob, bob_job["id"])
    assert (other / "secret.txt").read_text() == "bob-secret-4711\n"  # it is there, on the host

    key_path = site_pki.host("iso").key_path
    script = ATTACK.format(key=key_path, pki=site_pki.root, db=peer.state / "pocketgrid.db", state=peer.state,
                           other=other, port=peer.port)
    alice = _client(peer, site_pki, "alice")
    job = alice.submit("attack", script.encode(), "a.sub", ["in.txt"], executable_name="a.sh",
                       submit_text="executable = a.sh\noutput = out.txt\nerror = err.txt\nqueue\n")
    final = alice.wait(job["id"], timeout=60)
    assert final["state"] == "completed", final
    alice.fetch_all(job["id"], tmp_path / "res")
    outputs = _files(tmp_path / "res" / "0")
    report = outputs["out.txt"].decode()
    for label in ("key", "hostkeys", "db", "state", "other", "otherdir", "etc-shadow"):
        assert f"{label}: refused" in report, report
    assert "net: blocked" in report, report
    assert "uid 0\n" not in report  # never root
    denied = outputs["denied.txt"].decode()
    assert "No such file or directory" in denied or "Permission denied" in denied, denied
    # No byte of the secrets in any output.
    key_body = [line for line in Path(key_path).read_text().splitlines() if line and not line.startswith("-----")]
    for name, data in outputs.items():
        assert b"PRIVATE KEY" not in data, name
        assert not any(line.encode() in data for line in key_body), name
        assert b"bob-secret-4711" not in data, name
        assert b"SQLite format" not in data, name
    # The job's own outputs are there, nested ones too.
    assert outputs["mine.txt"] == b"mine\n" and outputs["sub/nested.txt"] == b"deeper\n"


def test_the_sample_histogram_job_completes_in_the_sandbox(peer, site_pki, tmp_path):
    sample = ROOT / "pocketgrid" / "sample"
    peer.publish.mkdir(parents=True, exist_ok=True)
    (peer.publish / "numbers.txt").write_text("".join(f"{x / 10}\n" for x in range(-30, 30)))
    alice = _client(peer, site_pki, "alice")
    job = alice.submit("hist", sample / "histogram.py", sample / "histogram.sub", ["numbers.txt"])
    final = alice.wait(job["id"], timeout=60)
    assert final["state"] == "completed", final
    alice.fetch_all(job["id"], tmp_path / "res")
    result = json.loads((tmp_path / "res" / "0" / "histogram.json").read_text())
    assert result["n"] == 60 and sum(result["counts"]) == 60


def test_the_peers_files_are_its_own(peer, site_pki):
    peer.publish.mkdir(parents=True, exist_ok=True)
    (peer.publish / "in.txt").write_text("1\n")
    alice = _client(peer, site_pki, "alice")
    job = alice.submit("m", b"#!/bin/sh\necho out > result.txt\n", "m.sub", ["in.txt"], executable_name="m.sh",
                       submit_text="executable = m.sh\nqueue\n")
    assert alice.wait(job["id"], timeout=60)["state"] == "completed"

    def mode(p: Path) -> int:
        return stat.S_IMODE(p.stat().st_mode)

    assert mode(peer.state) == 0o700
    assert mode(peer.state / "stage") == 0o700
    db = peer.state / "pocketgrid.db"
    assert mode(db) == 0o600
    for companion in (Path(f"{db}-wal"), Path(f"{db}-shm")):
        if companion.exists():
            assert mode(companion) == 0o600, companion
    proc_dir = _proc_dir(peer, alice, job["id"])
    job_root = proc_dir.parent  # the piece
    assert mode(job_root) & 0o077 == 0 and mode(job_root / "job.log") == 0o600
    assert mode(peer.state / "records") == 0o700  # the jobs' executables and submit files, at their home
    assert mode(peer.state / "records" / job["id"]) & 0o077 == 0
    result = proc_dir / "result.txt"
    assert mode(result) & 0o077 == 0  # an output: nobody else's to read
    assert result.stat().st_uid != 0  # written by the job account, not the peer's (root)
    assert "SECRET EXPOSED" not in peer.log_tail(100_000)
    assert "job isolation: namespace sandbox (bubblewrap)" in peer.log_tail(100_000)


def test_a_peer_says_when_its_state_is_readable_by_others(peers, site_pki, tmp_path):
    key = site_pki.host("exposed").key_path
    os.chmod(key, 0o644)
    try:
        p = peers("exposed", site_pki=site_pki, extra=["--no-agent"])
        assert f"SECRET EXPOSED: {key} is mode 0644" in p.log_tail(100_000)
    finally:
        os.chmod(key, 0o600)


def test_an_interpreter_the_sandbox_lacks_holds_the_proc_and_says_why(peers, site_pki, tmp_path):
    """The site cannot start the executable (HTCondor's hold code 6, FailedToCreateProcess): a site reason,
    so the input is tried again (here on the only site there is) and then fails, saying why."""
    quick = tmp_path / "quick.toml"
    quick.write_text("[peer]\nmax_attempts = 2\nretry_backoff = 0.1\nmonitor_interval = 0.3\n")
    peer = peers("iso", site_pki=site_pki, extra=["--no-agent", "--config", str(quick)])
    peer.publish.mkdir(parents=True, exist_ok=True)
    (peer.publish / "in.txt").write_text("1\n")
    alice = _client(peer, site_pki, "alice")
    job = alice.submit("venv", f"#!{ROOT}/.venv/bin/python\nprint(1)\n".encode(), "v.sub", ["in.txt"],
                       executable_name="v.py", submit_text="executable = v.py\nqueue\n")
    final = alice.wait(job["id"], timeout=60)
    why = f"interpreter '{ROOT}/.venv/bin/python' is not available to jobs"
    assert final["state"] == "failed" and why in final["inputs"][0]["note"], final
    attempts = with_history(alice, job["id"])["inputs"][0]["attempts"]
    assert [(a["state"], "FailedToCreateProcess" in a["reason"] and why in a["reason"]) for a in attempts] == [
        ("lost", True), ("lost", True)]


def test_a_removed_job_gets_sigterm_inside_its_sandbox_first(peer, site_pki):
    peer.publish.mkdir(parents=True, exist_ok=True)
    (peer.publish / "in.txt").write_text("1\n")
    alice = _client(peer, site_pki, "alice")
    trap = b"""#!/bin/sh
trap 'echo cleaned up > term.txt; exit 5' TERM
touch started.txt
while :; do sleep 0.1; done
"""
    job = alice.submit("trap", trap, "t.sub", ["in.txt"], executable_name="t.sh",
                       submit_text="executable = t.sh\nqueue\n")
    proc_dir = _proc_dir(peer, alice, job["id"])
    wait_until((proc_dir / "started.txt").exists, what="the proc to start")
    alice.kill(job["id"])
    assert alice.wait(job["id"], timeout=30)["state"] == "removed"
    wait_until((proc_dir / "term.txt").exists, what="the job's TERM handler to run")
    assert (proc_dir / "term.txt").read_text() == "cleaned up\n"
