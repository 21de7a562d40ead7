"""Jobs across sites on four real peers (issue 14): a big job spreads over sites, inputs lost with a site run
again elsewhere, a returning site gives no second result, user failures are not re-run (until the user
retries), a site failure re-runs elsewhere with the reason in the history.

Four TLS peers on loopback (site-a is the broker and every job's home), 10 slots each (``--slots 10``,
and load reports saying so, as tests/integration/test_job_path.py steers placement), with the job
manager's timing made small (``POCKETGRID_MONITOR_INTERVAL`` etc.).  Jobs wait on a ``gate`` file in
their own proc directory (a sandboxed job sees nothing else), so the test decides when each attempt
finishes.  Every wait is a condition with a deadline.
"""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys

import pytest

from peer.dispatch import piece_key
from tests.conftest import ROOT, login_client, report_load, wait_until
from tests.job_processes import attempt_dir, job_pids, with_history
from tests.site_grid import GATED, GATED_SUB, PeerStarter

pytestmark = pytest.mark.integration

SLOTS = 10
KNOBS = {"POCKETGRID_MONITOR_INTERVAL": "0.4", "POCKETGRID_SITE_LOST_AFTER": "6", "POCKETGRID_RETRY_BACKOFF": "0.2",
         "POCKETGRID_MAX_ATTEMPTS": "4", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def grid(tmp_path_factory, site_pki):
    root = tmp_path_factory.mktemp("across")
    env = {**os.environ, **KNOBS}
    start = PeerStarter(root, site_pki, env, SLOTS)
    started = start.started

    a = start("site-a")
    others = [start(n, a) for n in ("site-b", "site-c", "site-d")]
    peers = [a, *others]
    alice = login_client(a, site_pki, "alice")
    wait_until(lambda: len(alice.system()["members"]) == 4, 30, what="every site to join")
    for i in range(40):
        (a.publish / f"in{i:02d}.txt").write_text(f"input {i}\n" * (i + 1))
    yield {"a": a, "peers": peers, "alice": alice, "pki": site_pki}
    for p in peers:  # nothing of ours may keep running: gated procs left at a killed site
        stage = p.state / "stage"
        for proc_dir in stage.glob("*/*") if stage.exists() else []:
            if proc_dir.is_dir() and proc_dir.name.isdigit():
                (proc_dir / "gate").touch()
    for p in started:
        p.stop()


def report(grid, *, free: dict[str, int] | None = None) -> None:
    """Each site's agent: SLOTS cores, ``free[name]`` of them free (default all); resets in-flight counts."""
    a = grid["a"]
    for p in grid["peers"]:
        idle = (free or {}).get(p.name, SLOTS)
        busy = 100.0 * (SLOTS - idle) / SLOTS
        report_load(a.url, p, 0.1, session=p.host,
                    metrics={"cores": SLOTS, "cpu_percent": busy, "load1": SLOTS - idle, "clock_mhz": 2000.0})


def open_gates(grid, job_id: str, *, skip: frozenset[str] = frozenset(), files: tuple[str, ...] = ("gate",)) -> int:
    """Open the gate of each input's current attempt that is staged at a site not in ``skip``."""
    status = with_history(grid["alice"], job_id)
    opened = 0
    for i in range(len(status["inputs"])):
        d = attempt_dir(grid["peers"], status, i)
        if d is None or d.parent.parent.parent.name in skip or not d.is_dir():
            continue
        for name in files:
            (d / name).touch()
        opened += 1
    return opened


def sites_of(status: dict) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for i in status["inputs"]:
        out.setdefault(i["site"], []).append(i["index"])
    return out


# ---- 1. a big job spreads --------------------------------------------------------------------------
def test_a_forty_input_job_spreads_over_sites_when_none_has_the_free_slots(grid):
    alice, a = grid["alice"], grid["a"]
    report(grid)
    job = alice.submit("forty", GATED, "gated.sub", [f"in{i:02d}.txt" for i in range(40)],
                       executable_name="gated.sh", submit_text=GATED_SUB)
    assert job["peer"] == "site-a" and job["id"].startswith("site-a.") and job["inputs"] == 40
    running = wait_until(lambda: (st := alice.status(job["id"])[0])["counts"].get("running") == 40 and st, 120,
                         what="all 40 inputs to run (none waits for a slot)")
    spread = sites_of(running)
    assert len(spread) >= 2, spread  # no site alone has 40 free slots
    assert sum(len(v) for v in spread.values()) == 40 and max(len(v) for v in spread.values()) <= SLOTS
    grid["job"] = job["id"]
    grid["spread"] = spread
    # A site says which pieces it made from a home's sends (a new manager's question after a takeover)
    site, indexes = next((s, i) for s, i in spread.items() if s != "site-a")
    peer = next(p for p in grid["peers"] if p.name == site)
    key = piece_key(job["id"], site, [(i, 1) for i in indexes])
    piece = next(h["piece"] for h in with_history(alice, job["id"])["inputs"][indexes[0]]["attempts"])
    r = a.host.post(f"{peer.url}/api/v1/peer/pieces/status", timeout=10,
                    json={"pieces": {}, "origins": {key: "site-a", "0" * 64: "site-a"}})
    assert r.status_code == 200 and r.json()["found"] == {key: piece}
    r = a.host.post(f"{peer.url}/api/v1/peer/pieces/status", timeout=10,
                    json={"pieces": {}, "origins": {key: "site-b" if site != "site-b" else "site-c"}})
    assert r.json()["found"] == {}  # the same key from another home: not that piece


# ---- 2. kill -9 a site holding inputs: they run again elsewhere -----------------------------------
def test_inputs_of_a_killed_site_run_again_elsewhere_and_every_output_verifies(grid, tmp_path):
    alice, job_id = grid["alice"], grid["job"]
    victim_name = "site-d" if "site-d" in grid["spread"] else next(s for s in grid["spread"] if s != "site-a")
    victim = next(p for p in grid["peers"] if p.name == victim_name)
    lost = sorted(grid["spread"][victim_name])
    before = with_history(alice, job_id)
    victim_dirs = {i: attempt_dir(grid["peers"], before, i) for i in lost}
    victim.stop(signal.SIGKILL)  # the peer dies; its runners live on, still waiting at their gates
    grid["victim"], grid["lost"], grid["victim_dirs"] = victim, lost, victim_dirs
    assert all(job_pids(d) for d in victim_dirs.values())  # still running there, out of the home's reach

    def finished():
        open_gates(grid, job_id, skip=frozenset({victim_name}))  # new attempts too, as they are staged
        st = alice.status(job_id)[0]
        return st["state"] == "completed" and st

    final = wait_until(finished, 180, 0.5, what="the job to complete without the killed site")
    assert final["counts"] == {"completed": 40}
    assert victim_name not in sites_of(final)
    history = with_history(alice, job_id)
    for i in history["inputs"]:
        results = [h for h in i["attempts"] if h["result"]]
        assert len(results) == 1, i  # exactly one result per input
        if i["index"] in lost:
            first, again = i["attempts"][0], results[0]
            assert (first["site"], first["state"]) == (victim_name, "lost") and "did not answer" in first["reason"]
            assert again["attempt"] >= 2 and again["site"] != victim_name
            assert first["cleanup"] == "delete"  # remembered until the site answers again
        else:
            assert [h["attempt"] for h in i["attempts"]] == [1]
    # Every output downloads and verifies (SHA-256, by the client), each exactly once.
    results = alice.fetch_all(job_id, tmp_path / "out")
    mine = sorted((r.path.parent.name, r.path.name) for r in results if r.path.name in ("copy.txt", "index.txt"))
    assert len(results) == len({(r.path.parent.name, r.path.name) for r in results})  # nothing twice
    assert mine == sorted((str(i), name) for i in range(40) for name in ("copy.txt", "index.txt"))
    for r in results:
        assert hashlib.sha256(r.path.read_bytes()).hexdigest() == r.sha256
    for i in range(40):
        assert (tmp_path / "out" / str(i) / "index.txt").read_text() == f"{i}\n"
        assert (tmp_path / "out" / str(i) / "copy.txt").read_text() == f"input {i}\n" * (i + 1)
    grid["results"] = {i["index"]: [(h["site"], h["attempt"]) for h in i["attempts"] if h["result"]]
                       for i in history["inputs"]}


# ---- 3. the site comes back with its stale state ------------------------------------------------------
def test_the_site_back_with_stale_state_gives_no_second_result_and_its_copies_are_deleted(grid):
    alice, job_id, victim = grid["alice"], grid["job"], grid["victim"]
    dirs = grid["victim_dirs"]
    for d in dirs.values():  # while the peer is down its old procs finish: late results, waiting for it
        (d / "gate").touch()
    wait_until(lambda: all((d / "index.txt").exists() and not job_pids(d) for d in dirs.values()), 60,
               what="the killed site's procs to finish late")
    victim.start()  # same state directory: it knows its old pieces and their (late) results
    wait_until(lambda: not any(d.exists() for d in dirs.values()), 90, 0.5,
               what="the home to have the late copies deleted at the returning site")
    # the site deletes the copies, then answers the home, which records it: wait for the record to say so
    history = wait_until(lambda: (h := with_history(alice, job_id)) and all(
        h["inputs"][i]["attempts"][0]["cleanup"] == "deleted" for i in grid["lost"]) and h, 60, 0.5,
        what="the home to record the late copies as deleted")
    assert history["state"] == "completed" and history["counts"] == {"completed": 40}
    now = {i["index"]: [(h["site"], h["attempt"]) for h in i["attempts"] if h["result"]] for i in history["inputs"]}
    assert now == grid["results"]  # still one result per input, the same ones
    for i in grid["lost"]:
        first = history["inputs"][i]["attempts"][0]
        assert first["state"] == "lost" and first["cleanup"] == "deleted"
    outputs = alice.outputs(job_id)["outputs"]
    assert all(o["site"] != victim.name and o["files"] for o in outputs)


# ---- 4. user failures are final, until the user retries ----------------------------------------------
FLAKY = b"""#!/bin/sh
while [ ! -e go ]; do sleep 0.2; done
if [ -e ok ]; then echo "fine $2" > out.txt; exit 0; fi
echo "no ok file for $1" >&2
exit 1
"""


def test_an_input_that_exits_1_is_not_run_again_until_the_user_retries_it(grid):
    alice, a = grid["alice"], grid["a"]
    report(grid)
    job = alice.submit("flaky", FLAKY, "flaky.sub", ["in00.txt", "in01.txt"], executable_name="flaky.sh",
                       submit_text="executable = flaky.sh\narguments = $(input) $(input_index)\nqueue\n")
    status = wait_until(lambda: (st := with_history(alice, job["id"])) and all(
        attempt_dir(grid["peers"], st, i) for i in range(2)) and st, 60, what="both inputs to be staged")
    (attempt_dir(grid["peers"], status, 0) / "ok").touch()
    for i in range(2):
        (attempt_dir(grid["peers"], status, i) / "go").touch()
    final = alice.wait(job["id"], timeout=60)
    assert final["state"] == "failed"
    assert [(i["state"], i.get("exit_code")) for i in final["inputs"]] == [("completed", 0), ("failed", 1)]
    assert "no ok file" in final["inputs"][1]["stderr_tail"]
    assert [len(i["attempts"]) for i in with_history(alice, job["id"])["inputs"]] == [1, 1]  # not re-run

    cli = [sys.executable, "-m", "pocketgrid.cli", "retry", job["id"], "--failed", "--peer", a.url,
           "--ca", grid["pki"].ca]
    env = {**os.environ, "POCKETGRID_TOKEN": alice.token, "POCKETGRID_HOME": str(a.state / "cli-home")}
    out = subprocess.run(cli, capture_output=True, text=True, cwd=ROOT, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    assert f"{job['id']}: running again: input 1 (attempt 2)" in out.stdout
    again = wait_until(lambda: attempt_dir(grid["peers"], with_history(alice, job["id"]), 1, attempt=2), 60,
                       what="the retry to be staged")
    (again / "ok").touch()
    (again / "go").touch()
    final = alice.wait(job["id"], timeout=60)
    assert final["state"] == "completed" and final["inputs"][1]["attempt"] == 2
    attempts = with_history(alice, job["id"])["inputs"][1]["attempts"]
    assert [(h["state"], h["result"], h["retry"]) for h in attempts] == [("failed", False, False),
                                                                         ("completed", True, True)]
    nothing = subprocess.run(cli, capture_output=True, text=True, cwd=ROOT, timeout=60, env=env)
    assert nothing.returncode != 0 and "nothing to retry" in nothing.stderr


ONCE_FAILS = b"""#!/bin/sh
if [ -e tried ]; then echo "ok" > out.txt; exit 0; fi
touch tried
exit 1
"""


def test_the_submit_files_max_retries_is_carried_out_by_the_site(grid):
    alice = grid["alice"]
    report(grid)
    job = alice.submit("retried", ONCE_FAILS, "r.sub", ["in02.txt"], executable_name="r.sh",
                       submit_text="executable = r.sh\nmax_retries = 1\nqueue\n")
    final = alice.wait(job["id"], timeout=60)
    assert final["state"] == "completed" and final["inputs"][0]["retries"] == 1
    assert len(with_history(alice, job["id"])["inputs"][0]["attempts"]) == 1  # the site's re-run, not ours


# ---- 5. a site failure runs the input again elsewhere, the reason in the history ---------------------
def test_a_site_that_cannot_stage_loses_the_input_to_another_site_with_its_reason(grid):
    alice = grid["alice"]
    broken = next(p for p in grid["peers"] if p.name == "site-c")
    stage = broken.state / "stage"
    aside = broken.state / "stage.aside"
    os.replace(stage, aside)
    stage.write_text("not a directory\n")  # site-c's staging area cannot be written
    try:
        report(grid, free={"site-a": 0, "site-b": 0, "site-c": SLOTS, "site-d": 0})  # site-c looks best
        job = alice.submit("unlucky", GATED, "gated.sub", ["in03.txt"], executable_name="gated.sh",
                           submit_text=GATED_SUB)

        def done():
            open_gates(grid, job["id"])
            st = alice.status(job["id"])[0]
            return st["state"] == "completed" and st

        final = wait_until(done, 90, 0.3, what="the input to complete at another site")
        attempts = with_history(alice, job["id"])["inputs"][0]["attempts"]
        assert attempts[0]["site"] == "site-c" and attempts[0]["state"] == "lost"
        assert "staging failed on site-c" in attempts[0]["reason"]
        assert attempts[-1]["result"] and attempts[-1]["site"] != "site-c"
        assert final["inputs"][0]["site"] == attempts[-1]["site"]
    finally:
        stage.unlink()
        os.replace(aside, stage)


# ---- a kill while a site does not answer ---------------------------------------------------------
def test_a_kill_is_carried_out_at_a_silent_site_when_it_answers_again(grid):
    alice = grid["alice"]
    site = next(p for p in grid["peers"] if p.name == "site-b")
    report(grid, free={"site-a": 0, "site-b": SLOTS, "site-c": 0, "site-d": 0})
    job = alice.submit("stuck", GATED, "gated.sub", ["in04.txt"], executable_name="gated.sh", submit_text=GATED_SUB)
    running = wait_until(lambda: (st := alice.status(job["id"])[0])["inputs"][0]["state"] == "running" and st, 60,
                         what="the input to run at site-b")
    assert running["inputs"][0]["site"] == "site-b"
    proc_dir = attempt_dir(grid["peers"], with_history(alice, job["id"]), 0)
    site.stop(signal.SIGKILL)  # its runner lives on, waiting at its gate
    r = alice.session.delete(f"{alice.base_url}/api/v1/jobs/{job['id']}", timeout=30)
    assert r.status_code == 202 and r.json()["removed_procs"] == 1  # accepted; not carried out yet
    assert r.json()["removal"].startswith("pending at site-b: it does not answer")
    pending = wait_until(lambda: (st := alice.status(job["id"])[0])["state"] == "removed"
                         and "does not answer" in st.get("removal", "") and st, 60,
                         what="the status to say the removal waits for site-b")
    assert pending["removal"] == pending["inputs"][0]["removal"] == r.json()["removal"]  # one wording
    assert job_pids(proc_dir)  # still running there: nobody could tell it
    site.start()
    wait_until(lambda: not job_pids(proc_dir), 90, 0.5, what="the removal to be carried out at site-b")
    attempt = with_history(alice, job["id"])["inputs"][0]["attempts"][0]
    assert attempt["state"] == "removed" and attempt["cleanup"] == "removed"
    after = alice.status(job["id"])[0]
    # nothing pending any more: the input says only why it is removed
    assert "removal" not in after and "removal" not in after["inputs"][0]
    assert after["inputs"][0].get("note") == "removed by its owner"
    assert not (proc_dir / "index.txt").exists()  # it never went past its gate
