"""Releasing held inputs on real TLS peers: through the CLI at the job's home, relayed from
another peer to the home and from the home to the site holding the piece, with the same
ownership rules as kill; and the reasons a person reads after a hold, a release, a kill.

The job holds itself (its submit file's ``on_exit_hold``, HTCondor's hold code 3: a hold of
the job's own, which its home leaves held for its owner) when a file it needs is missing: the
tests name a file under ``/usr/local/bin`` (which the job sandbox shows) that is not there, and
create it once the inputs are held: the cause goes away, as when a site installs what was
missing, and the released inputs complete.  (A hold for a *site* reason, e.g. an executable that
cannot start, is not left held: the home runs the input again elsewhere; see
tests/integration/test_jobs_across_sites.py.)
"""
from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from mobile_client import ApiError
from tests.conftest import PeerProcess, free_port, host_session, login_client, secure_args, wait_until
from tests.integration.test_cli_ux import Cli
from tests.integration.test_placement_record import report

pytestmark = pytest.mark.integration

def sub(needed: Path) -> str:
    return ("executable = fix.sh\narguments = $(input)\noutput = out.txt\non_exit_hold = ExitCode != 0\n"
            f'on_exit_hold_reason = "needs {needed}"\nqueue\n')


@pytest.fixture
def interpreter():
    """A path in /usr/local/bin where no interpreter is yet; removed after the test."""
    folder = Path("/usr/local/bin")
    if not os.access(folder, os.W_OK):
        pytest.skip("the test creates an interpreter in /usr/local/bin, which this account cannot write "
                    "(tests run as root here and in CI)")
    path = folder / f"pg-test-interp-{uuid.uuid4().hex[:10]}"
    yield path
    path.unlink(missing_ok=True)


def script(needed: Path) -> bytes:
    return f"#!/bin/sh\n[ -e {needed} ] || exit 1\necho \"done with $1\"\n".encode()


@pytest.fixture(scope="module")
def pair(tmp_path_factory, site_pki):
    root = tmp_path_factory.mktemp("release")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    started = []

    def start(name, join=None):
        args = secure_args(site_pki, name, "--threads", "8", "--no-agent")
        if join:
            args += ["--join", join]
        p = PeerProcess(name, root / name, free_port(), args, env).start()
        p.host = host_session(site_pki, name)
        started.append(p)
        return p

    a = start("site-a")
    b = start("site-b", a.url)
    wait_until(lambda: len(login_client(a, site_pki, "alice").system()["members"]) == 2, what="site-b to join")
    for name in ("r0.txt", "r1.txt"):
        (a.publish / name).write_text("1\n")
    yield a, b
    for p in started:
        p.stop()


def place_on(target: PeerProcess, a: PeerProcess, b: PeerProcess) -> None:
    """Make ``target`` look idle and the other peer busy, so the next job goes to ``target``."""
    for p in (a, b):
        report(p, a, 0.0 if p is target else 4.0)


def held_everywhere(client, job_id: str, n: int) -> dict:
    def held():
        st, _ = client.status(job_id)
        return st if [i["state"] for i in st["inputs"]] == ["held"] * n else None

    return wait_until(held, 60, what=f"the {n} inputs of {job_id} to be held")


def test_release_from_the_cli_after_the_cause_went_away(pair, site_pki, tmp_path, interpreter):
    a, b = pair
    place_on(a, a, b)
    exe = tmp_path / "fix.sh"
    exe.write_bytes(script(interpreter))
    (tmp_path / "fix.sub").write_text(sub(interpreter))
    cli = Cli(tmp_path / "home")
    cli.login(a.url, site_pki)
    out = cli("submit", "--name", "fixable", "--executable", str(exe), "--submit-file", str(tmp_path / "fix.sub"),
              "r0.txt", "r1.txt")
    assert out.returncode == 0, out.stderr
    job = out.stdout.split()[0]
    assert job.startswith("site-a.")
    alice = login_client(a, site_pki, "alice")
    st = held_everywhere(alice, job, 2)
    reason = st["inputs"][0]["hold_reason"]
    assert reason == f"needs {interpreter}"
    out = cli("status", job)
    assert f"  [0] r0.txt: held ({reason}), on site-a" in out.stdout.splitlines()

    # released with nothing fixed: it runs again and is held again, and the history says so
    out = cli("release", job, "--input", "0")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"{job}: released 1 of inputs 0; they run again")

    def held_again():
        st, _ = alice.status(job, history=True)
        events = [h["event"] for h in st["inputs"][0]["history"]]
        return st if st["inputs"][0]["state"] == "held" and events[-3:] == ["job_released", "execute", "job_held"] else None

    st = wait_until(held_again, 60, what="input 0 held again after its release")
    assert [h["event"] for h in st["inputs"][1]["history"]] == ["submit", "execute", "job_held"]
    assert [a["site"] for a in st["inputs"][0]["attempts"]] == ["site-a"]  # released where it is: no new attempt
    assert st["inputs"][0]["history"][-3]["reason"] == "released by its owner (via pocketgrid)"

    out = cli("release", job, "--input", "7")
    assert out.returncode == 1 and "job " + job + " has inputs 0 to 1; no input 7 (HTTP 400)" in out.stderr
    bob = Cli(tmp_path / "bob")
    bob.login(a.url, site_pki, "bob")
    out = bob("release", job)
    assert out.returncode == 1 and "(HTTP 404)" in out.stderr  # another user's job does not exist for bob
    assert [i["state"] for i in alice.status(job)[0]["inputs"]] == ["held", "held"]  # nothing changed

    interpreter.write_text("")  # the site installs what was missing
    out = cli("release", job)
    assert out.returncode == 0 and "released 2 of inputs 0, 1" in out.stdout, out.stdout + out.stderr
    final = alice.wait(job, timeout=60)
    assert final["state"] == "completed"
    out = cli("status", job)
    assert "  [0] r0.txt: completed exit 0, on site-a" in out.stdout.splitlines()  # no stale hold reason
    out = cli("release", job)
    assert out.returncode == 1
    assert f"error: job {job} has no held input: nothing to release (HTTP 409)" in out.stderr


def test_release_relayed_to_the_jobs_home_and_on_to_the_site(pair, site_pki, interpreter):
    a, b = pair
    place_on(a, a, b)  # site-b's job runs at site-a: its home relays the release there
    for name in ("r0.txt", "r1.txt"):
        (b.publish / name).write_text("1\n")
    alice = login_client(b, site_pki, "alice")
    job = alice.submit("relayed", script(interpreter), "fix.sub", ["r0.txt", "r1.txt"], executable_name="fix.sh",
                       submit_text=sub(interpreter))
    assert job["peer"] == "site-b"  # its home
    held_everywhere(alice, job["id"], 2)
    assert alice.status(job["id"])[0]["sites"] == ["site-a"]
    interpreter.write_text("")

    at_a = login_client(a, site_pki, "alice")
    res = at_a.release(job["id"], [1])  # asked at site-a: the body goes along to site-b, then to site-a's piece
    assert res == {"id": job["id"], "released_procs": 1, "inputs": [1]}
    wait_until(lambda: alice.status(job["id"])[0]["inputs"][1]["state"] == "completed", 60,
               what="the released input to complete")
    assert alice.status(job["id"])[0]["inputs"][0]["state"] == "held"  # only input 1 was released
    with pytest.raises(ApiError) as not_held:
        at_a.release(job["id"], [0, 1])
    assert not_held.value.status == 409 and "input 1 is completed" in not_held.value.message
    with pytest.raises(ApiError) as other_user:
        login_client(a, site_pki, "bob").release(job["id"])
    assert other_user.value.status == 404
    assert at_a.release(job["id"])["inputs"] == [0]
    assert alice.wait(job["id"], timeout=60)["state"] == "completed"


def test_a_killed_held_job_is_removed_and_says_so(pair, site_pki, tmp_path, interpreter):
    a, b = pair
    place_on(a, a, b)
    alice = login_client(a, site_pki, "alice")
    job = alice.submit("stuck", script(interpreter), "fix.sub", ["r0.txt"], executable_name="fix.sh",
                       submit_text=sub(interpreter))
    held_everywhere(alice, job["id"], 1)
    assert alice.kill(job["id"])["removed_procs"] == 1
    final = alice.wait(job["id"], timeout=30)
    assert final["state"] == "removed"
    i = final["inputs"][0]
    assert "hold_reason" not in i and i["note"] == "removed by its owner"
    cli = Cli(tmp_path / "home")
    cli.login(a.url, site_pki)
    out = cli("status", job["id"], "--history")
    lines = out.stdout.splitlines()
    assert "  [0] r0.txt: removed (removed by its owner), on site-a" in lines
    held_line = next(line for line in lines if "job_held" in line)  # the history keeps the hold's reason
    assert "-> held (" in held_line and f"needs {interpreter}" in held_line, out.stdout
    with pytest.raises(ApiError) as nothing:
        alice.release(job["id"])
    assert nothing.value.status == 409
