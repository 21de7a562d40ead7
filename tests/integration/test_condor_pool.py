"""The whole job path on a real HTCondor schedd: submit, status to completion, outputs, holds, kill.

Runs against whatever schedd the environment provides (a site's head node, a
``compose/`` site container, a personal pool): the peer is started with
``--executor condor``, exactly as an operator would.  Skipped, with the
reason, when it cannot run here:

* as root (the schedd never lets root own jobs: run the tests as the job owner);
* when no schedd answers (the reason is the probe's: htcondor2's and condor_q's words).

Nothing here imitates a schedd.  The state directory is created under
``$POCKETGRID_CONDOR_TEST_DIR`` (default ``~/.cache/pocketgrid-condor-tests``),
not under /tmp, because HTCondor's daemons may run with a private /tmp.
``$POCKETGRID_CONDOR_TEST_TIMEOUT`` (default 600 s) bounds each wait for the
pool (a busy pool may take long to match a job).

The tests marked ``condor`` use the host's own HTCondor configuration
(``tests.conftest.host_condor``); every other test runs with the suite's own,
where no schedd answers.  So the second part of the file gives the same
verdict on any machine: ``serve`` refuses ``--executor condor`` with a clear
message when it cannot work, and ``auto`` says in /healthz which executor it
chose and why.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import requests

from mobile_client import Client
from peer.executors.condor import probe_schedd, running_as_root
from tests.conftest import ROOT, PeerProcess, free_port, host_condor, wait_until
from tests.job_processes import with_history

pytestmark = pytest.mark.integration

TIMEOUT = float(os.environ.get("POCKETGRID_CONDOR_TEST_TIMEOUT", "600"))

COUNT_SH = b"""#!/bin/sh
# usage: count.sh INPUT INDEX ; exit 7 on an input named bad.txt
n=$(wc -l < "$1")
echo "$n" > count.txt
echo "input $2 has $n lines"
case "$1" in bad.txt) echo "bad input" >&2; exit 7;; esac
"""
COUNT_SUB = """universe = vanilla
executable = count.sh
arguments = $(input) $(input_index)
output = stdout.txt
error = stderr.txt
request_memory = 64
queue
"""
SLEEP_SH = b"#!/bin/sh\necho started\nsleep 3600\n"


def _skip_reason() -> str | None:
    if running_as_root():
        return "running as root: the HTCondor schedd never lets root own jobs; run the condor tests as the job owner"
    with host_condor():
        probe = probe_schedd(10.0)
    if not probe.ok:
        return f"no HTCondor schedd answers here: {probe.reason}"
    return None


@pytest.fixture(scope="module")
def condor_peer():
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    base = Path(os.environ.get("POCKETGRID_CONDOR_TEST_DIR", Path.home() / ".cache" / "pocketgrid-condor-tests"))
    root = base / uuid.uuid4().hex[:12]
    with host_condor():
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env["POCKETGRID_CONDOR_PROBE_INTERVAL"] = "2"  # the schedd probe every 2 s: the tests wait less
    peer = PeerProcess("condor-site", root / "condor-site", free_port(),
                       ["--threads", "8", "--no-agent", "--executor", "condor"], env).start()
    peer.publish.mkdir(parents=True, exist_ok=True)
    try:
        yield peer
    finally:
        peer.stop()
        shutil.rmtree(root, ignore_errors=True)


def probe_schedd_here():
    with host_condor():
        return probe_schedd(10.0)


def _piece_cluster(client: Client, job_id: str) -> tuple[str, int]:
    """(piece, cluster) of a one-site job: its home sent its inputs here as one piece, one cluster."""
    piece = wait_until(lambda: with_history(client, job_id)["inputs"][0]["attempts"][-1]["piece"], timeout=60,
                       interval=1, what="the job's piece to be queued")
    import htcondor2

    with host_condor():
        ads = htcondor2.Schedd().query(f'PocketgridJob == "{piece}"', ["ClusterId"])
    clusters = {ad["ClusterId"] for ad in ads}
    assert len(clusters) == 1, clusters  # one cluster, one proc per input
    return piece, clusters.pop()


def _schedd_jobs(cluster: int) -> list[dict]:
    import htcondor2

    with host_condor():
        ads = htcondor2.Schedd().query(f"ClusterId == {cluster}", ["ProcId", "JobStatus", "PocketgridJob",
                                                                     "PocketgridIndex", "HoldReasonCode"])
    return [{k: ad.get(k) for k in ("ProcId", "JobStatus", "PocketgridJob", "PocketgridIndex", "HoldReasonCode")}
            for ad in ads]


@pytest.mark.condor
def test_healthz_names_the_condor_executor(condor_peer):
    ex = requests.get(f"{condor_peer.url}/healthz", timeout=5).json()["executor"]
    assert ex["name"] == "condor" and ex["chosen_by"] == "condor" and ex["via"] in ("bindings", "cli")


@pytest.mark.condor
def test_submit_status_outputs_on_the_schedd(condor_peer, tmp_path):
    names = []
    for i, lines in enumerate((3, 5, 8)):
        (condor_peer.publish / f"in{i}.txt").write_text("".join(f"{j}\n" for j in range(lines)))
        names.append(f"in{i}.txt")
    (condor_peer.publish / "bad.txt").write_text("x\n")
    client = Client(condor_peer.url)
    job = client.submit("count", COUNT_SH, "count.sub", names + ["bad.txt"], executable_name="count.sh",
                        submit_text=COUNT_SUB)
    assert job["peer"] == "condor-site"  # its home, which is also its only site
    piece, cluster = _piece_cluster(client, job["id"])
    # The schedd has the procs, tagged with the piece and the input's index in the job (right after the
    # commit they may still be transferring, running or done; they must no longer be held since submission).
    queued = _schedd_jobs(cluster)
    assert all(j["PocketgridJob"] == piece for j in queued) and len(queued) == 4
    assert sorted(j["PocketgridIndex"] for j in queued) == [0, 1, 2, 3]
    assert all(j["HoldReasonCode"] != 15 or j["JobStatus"] != 5 for j in queued)

    final = client.wait(job["id"], timeout=TIMEOUT, poll=30)
    by_input = {i["input"]: i for i in final["inputs"]}
    for n in names:
        assert by_input[n]["state"] == "completed" and by_input[n]["exit_code"] == 0, by_input[n]
        assert by_input[n].get("execute_host")
    assert by_input["bad.txt"]["state"] == "failed" and by_input["bad.txt"]["exit_code"] == 7
    assert final["state"] == "failed" and {i["site"] for i in final["inputs"]} == {"condor-site"}
    log = (condor_peer.state / "stage" / piece / "job.log").read_text()
    assert "Job submitted from host" in log and "Job terminated" in log  # written by the schedd/shadow

    outs = {o["input"]: o for o in client.outputs(job["id"])["outputs"]}
    files = {f["name"] for f in outs["in1.txt"]["files"]}
    assert {"count.txt", "stdout.txt", "stderr.txt"} <= files
    assert "count.sh" not in files and "in1.txt" not in files
    results = client.fetch_all(job["id"], tmp_path / "res")
    for r in results:
        assert hashlib.sha256(r.path.read_bytes()).hexdigest() == r.sha256
    counts = [int((tmp_path / "res" / str(i) / "count.txt").read_text()) for i in range(3)]
    assert counts == [3, 5, 8]
    assert "bad input" in (tmp_path / "res" / "3" / "stderr.txt").read_text()


@pytest.mark.condor
def test_hold_reason_is_surfaced_and_kill_removes_the_cluster(condor_peer):
    (condor_peer.publish / "h.txt").write_text("1\n")
    (condor_peer.publish / "s.txt").write_text("1\n")
    client = Client(condor_peer.url)
    held = client.submit(
        "held", SLEEP_SH, "held.sub", ["h.txt"], executable_name="sleep.sh",
        submit_text='executable = sleep.sh\nperiodic_hold = JobStatus == 1 || JobStatus == 2\n'
                    'periodic_hold_reason = "held by the pocketgrid test"\nperiodic_hold_subcode = 42\nqueue\n')
    sleeper = client.submit("sleep", SLEEP_SH, "sleep.sub", ["s.txt"], executable_name="sleep.sh",
                            submit_text="executable = sleep.sh\noutput = out.txt\nqueue\n")

    def state_of(job_id):
        status, _ = client.status(job_id)
        return status["inputs"][0]

    h = wait_until(lambda: (s := state_of(held["id"]))["state"] == "held" and s, timeout=TIMEOUT,
                   interval=2, what="the periodic hold")
    assert h["hold_reason"] == "held by the pocketgrid test" and h["hold_subcode"] == 42
    wait_until(lambda: state_of(sleeper["id"])["state"] in ("running", "idle"), timeout=60, interval=1,
               what="the sleeper to be queued")

    for job in (held, sleeper):
        _, cluster = _piece_cluster(client, job["id"])
        res = client.kill(job["id"])
        assert res["removed_procs"] == 1
        final = client.wait(job["id"], timeout=TIMEOUT, poll=10)
        assert final["state"] == "removed" and final["inputs"][0]["state"] == "removed"
        wait_until(lambda c=cluster: all(j["JobStatus"] == 3 for j in _schedd_jobs(c)), timeout=TIMEOUT,
                   interval=2, what=f"cluster {cluster} to leave the queue")
    assert client.kill(held["id"])["removed_procs"] == 0  # nothing left to remove


@pytest.mark.condor
def test_restart_removes_an_unrecorded_cluster_and_its_staging(condor_peer):
    """A crash after the cluster was submitted on hold and before the job's row was committed: at start-up
    the peer removes the cluster (no row) and the staging directory made for it."""
    import htcondor2

    job_id = f"{condor_peer.name}.{uuid.uuid4().hex[:16]}"
    proc_dir = condor_peer.state / "stage" / job_id / "0"
    proc_dir.mkdir(parents=True)
    (proc_dir / "in.txt").write_text("1\n")
    with host_condor():
        sub = htcondor2.Submit({"executable": "/bin/true", "hold": "true", "initialdir": str(proc_dir),
                                "log": str(proc_dir.parent / "job.log"), "MY.PocketgridJob": f'"{job_id}"',
                                "MY.PocketgridPeer": f'"{condor_peer.name}"'})
        cluster = htcondor2.Schedd().submit(sub).cluster()
    condor_peer.stop()
    condor_peer.start()
    wait_until(lambda: all(j["JobStatus"] == 3 for j in _schedd_jobs(cluster)), timeout=TIMEOUT, interval=1,
               what=f"the unrecorded cluster {cluster} to be removed")
    assert not (condor_peer.state / "stage" / job_id).exists()


@pytest.mark.condor
def test_standalone_agent_reports_the_pools_figures(condor_peer, tmp_path):
    """A Condor site run as docs/operations.md suggests (peer with --no-agent, `pocketgrid agent` on the head
    node): the agent finds the collector in HTCondor's configuration and the broker places on the pool."""
    with host_condor():
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    log = tmp_path / "agent.log"
    out = subprocess.run([sys.executable, "-m", "pocketgrid.cli", "agent", "--peer", condor_peer.url, "--name",
                          condor_peer.name, "--once", "--log-file", str(log)], env=env, cwd=ROOT, timeout=120,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr + (log.read_text() if log.exists() else "")
    load = requests.get(f"{condor_peer.url}/api/v1/broker", timeout=10).json()["load"]
    row = next(r for r in load if r["peer"] == condor_peer.name)
    assert row["pool"] and row["pool"]["total_slots"] >= 1, row
    assert row["slots"] == row["pool"]["total_slots"]  # placement counts the pool's slots, not the head node's cores
    assert "reporting pool figures from collector" in log.read_text()


@pytest.mark.condor
def test_healthz_shows_the_schedds_state_from_the_probe(condor_peer):
    schedd = wait_until(lambda: (s := requests.get(f"{condor_peer.url}/healthz", timeout=5).json()["executor"]
                                 ["schedd"])["state"] != "unknown" and s, timeout=60, what="the first probe")
    assert schedd["state"] == "ok" and schedd["checked_at"] and schedd["name"]


@pytest.mark.condor
def test_a_job_no_slot_matches_is_accepted_with_a_warning_and_its_status_says_why(condor_peer):
    """The issue's two cases on a real pool: HTCondor's own job ad (condor_submit's clauses included)
    against the collector's slot ads."""
    (condor_peer.publish / "u.txt").write_text("1\n")
    client = Client(condor_peer.url)
    big = client.submit("big", SLEEP_SH, "big.sub", ["u.txt"], executable_name="sleep.sh",
                        submit_text="executable = sleep.sh\nrequest_memory = 99999999\nqueue\n")
    nope = client.submit("nope", SLEEP_SH, "nope.sub", ["u.txt"], executable_name="sleep.sh",
                         submit_text='executable = sleep.sh\nrequirements = (Arch == "NOPE")\nqueue\n')
    def warnings(job: dict) -> str:  # the site's warnings reach the status once it took its piece
        return wait_until(lambda: " ".join(client.status(job["id"])[0]["warnings"]) if
                          with_history(client, job["id"])["inputs"][0]["attempts"][-1]["piece"] else None,
                          timeout=120, interval=1, what="the site's warnings")

    assert "request_memory = 99999999" in warnings(big)
    assert 'Arch == "NOPE"' in warnings(nope)
    for job, said in ((big, "request_memory = 99999999"), (nope, 'Arch == "NOPE"')):
        i = wait_until(lambda j=job: (x := client.status(j["id"])[0]["inputs"][0]).get("match") and x,
                       timeout=120, interval=1, what="the match hint")
        assert i["state"] == "idle" and i["match"]["slots"] == 0 and i["match"]["of"] >= 1
        assert said in i["match"]["failing"]
    wait_until(lambda: (requests.get(f"{condor_peer.url}/healthz", timeout=5).json()["executor"]["procs"] or {})
               .get("unmatchable", 0) >= 2, timeout=120, interval=1, what="the site's unmatchable count")
    for job in (big, nope):
        client.kill(job["id"])
        assert client.wait(job["id"], timeout=TIMEOUT, poll=5)["state"] == "removed"


@pytest.mark.condor
def test_a_kill_during_a_schedd_outage_is_answered_at_once_and_carried_out_later(condor_peer):
    """Stops the pool's schedd (condor_off): skipped where this account may not."""
    (condor_peer.publish / "o.txt").write_text("1\n")
    client = Client(condor_peer.url, retries=0)
    job = client.submit("outage", SLEEP_SH, "o.sub", ["o.txt"], executable_name="sleep.sh",
                        submit_text="executable = sleep.sh\nqueue\n")
    _, cluster = _piece_cluster(client, job["id"])
    with host_condor():
        env = dict(os.environ)
    off = subprocess.run(["condor_off", "-daemon", "schedd"], capture_output=True, text=True, env=env, timeout=60)
    if off.returncode != 0:
        client.kill(job["id"])
        pytest.skip(f"cannot stop the schedd here (condor_off): {off.stderr.strip()[:200]}")
    try:
        wait_until(lambda: requests.get(f"{condor_peer.url}/healthz", timeout=5).json()["executor"]["schedd"]
                   ["state"] == "unreachable", timeout=120, interval=1, what="the probe to notice")
        r = requests.delete(f"{condor_peer.url}/api/v1/jobs/{job['id']}", timeout=30)
        assert r.status_code == 202 and r.json()["removal"].startswith(f"pending at {condor_peer.name}: the schedd")
        assert len(r.text) < 400  # a short sentence, not condor_q's stderr
        assert client.status(job["id"])[0]["removal"] == r.json()["removal"]
        condor_peer.stop()  # the pending removal must survive a restart: stop while it is still pending...
    finally:
        subprocess.run(["condor_on", "-daemon", "schedd"], capture_output=True, text=True, env=env, timeout=60)
    wait_until(lambda: probe_schedd_here().ok, timeout=120, interval=1, what="the schedd to come back")
    condor_peer.start()  # ...and the restarted peer carries it out (`serve --executor condor` needs the schedd)
    final = client.wait(job["id"], timeout=TIMEOUT, poll=5)
    assert final["state"] == "removed" and "removal" not in final
    wait_until(lambda: all(j["JobStatus"] == 3 for j in _schedd_jobs(cluster)), timeout=TIMEOUT, interval=2,
               what="the cluster to leave the queue")


@pytest.mark.condor
def test_release_through_the_schedd_runs_the_held_input_again(condor_peer):
    """Held on its first start only (``NumJobStarts == 1``), released through the API
    (``Schedd.act(Release)``), the input runs again and completes; the status's reason is
    the current state's, the hold stays in the history."""
    (condor_peer.publish / "r.txt").write_text("1\n2\n")
    client = Client(condor_peer.url)
    job = client.submit(
        "release-me", COUNT_SH.replace(b'n=$(wc', b'sleep 30\nn=$(wc'), "rel.sub", ["r.txt"], executable_name="count.sh",
        submit_text='executable = count.sh\narguments = $(input) $(input_index)\nrequest_memory = 64\n'
                    'periodic_hold = JobStatus == 2 && NumJobStarts == 1\n'
                    'periodic_hold_reason = "held once by the pocketgrid test"\nqueue\n')

    def held():
        status, _ = client.status(job["id"])
        return status["inputs"][0]["state"] == "held" and status

    status = wait_until(held, timeout=TIMEOUT, interval=2, what="the periodic hold")
    assert status["inputs"][0]["hold_reason"] == "held once by the pocketgrid test"
    res = client.release(job["id"])
    assert res["released_procs"] == 1 and res["inputs"] == [0]
    final = client.wait(job["id"], timeout=TIMEOUT, poll=10)
    assert final["state"] == "completed" and "hold_reason" not in final["inputs"][0]
    history, _ = client.status(job["id"], history=True)
    events = [h["event"] for h in history["inputs"][0]["history"]]
    assert "job_held" in events and "job_released" in events and events[-1] == "job_terminated"


# ---------------------------------------------------------------------------
# No schedd needed
# ---------------------------------------------------------------------------


def test_serve_condor_refuses_clearly_when_it_cannot_work(tmp_path):
    out = subprocess.run([sys.executable, "-m", "pocketgrid.cli", "serve", "--name", "c", "--executor", "condor",
                          "--state", str(tmp_path), "--insecure-http"], capture_output=True, text=True, cwd=ROOT,
                         timeout=60)
    assert out.returncode == 2
    if running_as_root():
        assert "never lets root own jobs" in out.stderr and "service account" in out.stderr
    else:
        assert "no HTCondor schedd answered" in out.stderr and "--executor local" in out.stderr


def test_auto_says_which_executor_and_why(peers):
    p = peers("auto-site", extra=["--no-agent"])
    ex = requests.get(f"{p.url}/healthz", timeout=5).json()["executor"]
    assert ex["chosen_by"] == "auto"
    if ex["name"] == "local":
        assert ex["condor"]  # e.g. "no HTCondor schedd answered (...)" or "not tried: the peer runs as root ..."
        assert "executor auto:" in p.log_tail(20000)
    else:
        assert ex["name"] == "condor" and ex["via"] in ("bindings", "cli")
