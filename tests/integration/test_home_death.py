"""The job's home dies (issue 14, last part): its deputy keeps the record, takes the job over and finishes it;
the home back with its stale state yields.

Three TLS peers on loopback: site-a (the broker; alice's client there is the "any other peer"), site-b (the
job's home: alice submits there) and site-c (its deputy: the next member after the home by name).  Two slots
each, so a six-input job runs on all three at once, two inputs at the home.  Jobs wait on a ``gate`` file in
their own proc directory, so the test decides when each attempt finishes.  Every wait is a condition with a
deadline; the times from kill -9 to takeover and to completion are printed, not asserted.
"""
from __future__ import annotations

import hashlib
import os
import signal
import time

import pytest
from mobile_client.client import ApiError

from tests.conftest import login_client, report_load, wait_until
from tests.job_processes import attempt_dir, job_pids, with_history
from tests.site_grid import GATED, GATED_SUB, PeerStarter

pytestmark = pytest.mark.integration

SLOTS = 2
INPUTS = 6
LOST_AFTER = 3.0
KNOBS = {"POCKETGRID_MONITOR_INTERVAL": "0.4", "POCKETGRID_SITE_LOST_AFTER": str(LOST_AFTER),
         "POCKETGRID_RETRY_BACKOFF": "0.2", "POCKETGRID_MAX_ATTEMPTS": "4", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def trio(tmp_path_factory, site_pki):
    root = tmp_path_factory.mktemp("home-death")
    env = {**os.environ, **KNOBS}
    start = PeerStarter(root, site_pki, env, SLOTS)
    started = start.started

    a = start("site-a")
    b = start("site-b", a)
    c = start("site-c", a)
    alice = login_client(a, site_pki, "alice")  # the client at another peer than the home
    wait_until(lambda: len(alice.system()["members"]) == 3, 30, what="every peer to join")
    at_home = login_client(b, site_pki, "alice")
    for i in range(INPUTS):
        (b.publish / f"in{i}.txt").write_text(f"input {i}\n" * (50 * (i + 1)))
    yield {"a": a, "b": b, "c": c, "peers": [a, b, c], "alice": alice, "at_home": at_home, "pki": site_pki}
    for p in started:  # nothing of ours may keep running: gated procs left at the killed home
        stage = p.state / "stage"
        for proc_dir in stage.glob("*/*") if stage.exists() else []:
            if proc_dir.is_dir() and proc_dir.name.isdigit():
                (proc_dir / "gate").touch()
    for p in started:
        p.stop()


def report(trio) -> None:
    """Each peer's agent: SLOTS cores, all free (and in-flight counts reset)."""
    for p in trio["peers"]:
        if p.proc is not None and p.proc.poll() is None:
            report_load(trio["a"].url, p, 0.1, session=p.host,
                        metrics={"cores": SLOTS, "cpu_percent": 0.0, "load1": 0.0, "clock_mhz": 2000.0})


def replica(trio, job_id: str) -> dict | None:
    """What the deputy (site-c) holds of the job (its host-only route), None before it has it."""
    c = trio["c"]
    r = c.host.get(f"{c.url}/api/v1/peer/records/{job_id}", timeout=5)
    return r.json() if r.ok else None


def open_gates(trio, job_id: str, skip: str) -> None:
    status = with_history(trio["alice"], job_id)
    for i in range(len(status["inputs"])):
        d = attempt_dir(trio["peers"], status, i)
        if d is not None and d.is_dir() and d.parent.parent.parent.name != skip:
            (d / "gate").touch()


def test_kill_9_of_the_home_mid_run_the_job_stays_visible_and_completes_at_its_deputy(trio, tmp_path):
    alice, at_home, b = trio["alice"], trio["at_home"], trio["b"]
    report(trio)
    job = at_home.submit("orphan", GATED, "gated.sub", [f"in{i}.txt" for i in range(INPUTS)],
                         executable_name="gated.sh", submit_text=GATED_SUB)
    job_id = job["id"]
    assert job["peer"] == "site-b" and job_id.startswith("site-b.")
    running = wait_until(lambda: (st := with_history(alice, job_id))["counts"].get("running") == INPUTS and st,
                         60, 0.2, what="every input to run (two at each peer)")
    at_b = sorted(i["index"] for i in running["inputs"] if i["site"] == "site-b")
    assert at_b, f"no input runs at the home: {[(i['index'], i['site']) for i in running['inputs']]}"
    assert running["manager"] == "site-b"
    # the deputy holds the record, the executable and a verified copy of every input
    held = wait_until(lambda: (r := replica(trio, job_id)) and r["copies"] == {
        "executable": True, "inputs": INPUTS, "of": INPUTS} and r, 30, 0.2, what="the deputy's copies")
    assert (held["manager"], held["home"], held["holder"], held["manager_epoch"]) == ("site-b", "site-b", "site-c", 1)
    home_dirs = {i: attempt_dir(trio["peers"], running, i) for i in at_b}

    b.stop(signal.SIGKILL)  # the home dies; its runners live on at their gates, out of anyone's reach
    killed = time.monotonic()
    trio["home_dirs"] = home_dirs
    assert all(job_pids(d) for d in home_dirs.values())

    # through another peer the job stays visible at once (its deputy answers from the replica)
    seen = alice.status(job_id)[0]
    assert seen["id"] == job_id and seen["counts"].get("running", 0) + seen["counts"].get("idle", 0) == INPUTS
    taken = wait_until(lambda: (st := alice.status(job_id)[0])["manager"] == "site-c" and st, 30, 0.2,
                       what="the deputy to take the job over")
    took = time.monotonic() - killed

    def finished():
        open_gates(trio, job_id, skip="site-b")  # the re-run attempts too, as they are staged
        st = alice.status(job_id)[0]
        return st["state"] == "completed" and st

    final = wait_until(finished, 90, 0.3, what="the job to complete without its home")
    done = time.monotonic() - killed
    print(f"\nkill -9 of the home -> takeover {took:.1f} s (site_lost_after {LOST_AFTER} s), "
          f"-> completed {done:.1f} s")
    assert taken["peer"] == "site-b"  # still the job's home by its ID
    # the new manager chose a deputy of its own (not the dead home): a second death is covered too
    a = trio["a"]
    second = wait_until(lambda: (r := a.host.get(f"{a.url}/api/v1/peer/records/{job_id}", timeout=5)).ok and r.json(),
                        30, 0.2, what="the new manager's deputy to hold the replica")
    assert (second["manager"], second["manager_epoch"], second["holder"]) == ("site-c", 2, "site-a")
    listed = [j for j in alice.jobs() if j["id"] == job_id]  # the list too: once, the manager's copy
    assert len(listed) == 1 and listed[0]["manager"] == "site-c" and listed[0]["state"] == "completed"
    assert final["counts"] == {"completed": INPUTS}
    history = with_history(alice, job_id)
    for i in history["inputs"]:
        results = [h for h in i["attempts"] if h["result"]]
        assert len(results) == 1, i  # no input counted twice
        assert results[0]["site"] != "site-b"
        if i["index"] in at_b:
            first = i["attempts"][0]
            assert (first["site"], first["state"]) == ("site-b", "lost") and "site-b" in first["reason"]
    # every output downloads through the other peer and verifies (SHA-256), each once
    results = alice.fetch_all(job_id, tmp_path / "out")
    for r in results:
        assert hashlib.sha256(r.path.read_bytes()).hexdigest() == r.sha256
    for i in range(INPUTS):
        assert (tmp_path / "out" / str(i) / "index.txt").read_text() == f"{i}\n"
        assert (tmp_path / "out" / str(i) / "copy.txt").read_text() == f"input {i}\n" * (50 * (i + 1))
    trio["job"] = job_id
    trio["results"] = {i["index"]: [(h["site"], h["attempt"]) for h in i["attempts"] if h["result"]]
                       for i in history["inputs"]}


def test_the_home_back_with_its_stale_record_yields_to_the_deputy(trio):
    alice, at_home, b = trio["alice"], trio["at_home"], trio["b"]
    job_id = trio["job"]
    for d in trio["home_dirs"].values():  # while the home is down its old procs finish: late results
        (d / "gate").touch()
    wait_until(lambda: all((d / "index.txt").exists() and not job_pids(d) for d in trio["home_dirs"].values()), 60,
               what="the old procs at the home to finish late")
    b.start()  # the same state: its record still says it manages the job, at epoch 1
    # through the home itself: it asked its deputy before managing anything, and yielded (on a machine
    # too loaded for the deputy to answer at once, its first push meets the newer claim: it yields then)
    seen = wait_until(lambda: (st := at_home.status(job_id)[0])["manager"] == "site-c" and st, 30, 0.2,
                      what="the home to yield to its deputy")
    assert seen["peer"] == "site-b"
    assert seen["state"] == "completed" and seen["counts"] == {"completed": INPUTS}
    assert "managed by site-c now (epoch 2)" in b.log_tail(200_000)
    wait_until(lambda: not any(d.exists() for d in trio["home_dirs"].values()), 90, 0.5,
               what="the new manager to have the late copies deleted at the returning home")
    history = with_history(at_home, job_id)
    now = {i["index"]: [(h["site"], h["attempt"]) for h in i["attempts"] if h["result"]] for i in history["inputs"]}
    assert now == trio["results"]  # no second result: the late ones were lost for good
    assert with_history(alice, job_id)["manager"] == "site-c"
    listed = [j for j in at_home.jobs() if j["id"] == job_id]  # the home's own list: the manager's copy
    assert len(listed) == 1 and listed[0]["manager"] == "site-c" and listed[0]["state"] == "completed"
    # only the manager changes the job: a change asked at the home is relayed there and done
    assert at_home.pin(job_id)["pinned"] is True
    assert alice.status(job_id)[0]["pinned"] is True
    # the manager removes the job: no copy of its record stays anywhere, and it is 404 through any peer
    assert at_home.purge(job_id)["removed"] is True
    for p in trio["peers"]:
        wait_until(lambda p=p: p.host.get(f"{p.url}/api/v1/peer/records/{job_id}", timeout=5).status_code == 404,
                   30, 0.2, what=f"{p.name} to drop its copy of the record")
    for client in (alice, at_home):
        with pytest.raises(ApiError) as gone:
            client.status(job_id)
        assert gone.value.status == 404
