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
    peer = PeerProcess("condor-site", root / "condor-site", free_port(),
                       ["--threads", "8", "--no-agent", "--executor", "condor"], env).start()
    peer.publish.mkdir(parents=True, exist_ok=True)
    try:
        yield peer
    finally:
        peer.stop()
        shutil.rmtree(root, ignore_errors=True)


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
    assert job["peer"] == "condor-site" and len(job["clusters"]) == 1  # one cluster, one proc per input
    cluster = job["clusters"][0]
    # The schedd has the procs, tagged with the job and the input index (right after the commit they may
    # still be transferring, running or done; they must no longer be held since submission).
    queued = _schedd_jobs(cluster)
    assert all(j["PocketgridJob"] == job["id"] for j in queued)
    assert all(j["HoldReasonCode"] != 15 or j["JobStatus"] != 5 for j in queued)

    final = client.wait(job["id"], timeout=TIMEOUT, poll=30)
    by_input = {i["input"]: i for i in final["inputs"]}
    for n in names:
        assert by_input[n]["state"] == "completed" and by_input[n]["exit_code"] == 0, by_input[n]
        assert by_input[n].get("execute_host")
    assert by_input["bad.txt"]["state"] == "failed" and by_input["bad.txt"]["exit_code"] == 7
    assert final["state"] == "failed" and final["executor"] == "condor"
    log = (condor_peer.state / "stage" / job["id"] / "job.log").read_text()
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
        res = client.kill(job["id"])
        assert res["removed_procs"] == 1
        final = client.wait(job["id"], timeout=TIMEOUT, poll=10)
        assert final["state"] == "removed" and final["inputs"][0]["state"] == "removed"
        cluster = job["clusters"][0]
        wait_until(lambda c=cluster: all(j["JobStatus"] == 3 for j in _schedd_jobs(c)), timeout=TIMEOUT,
                   interval=2, what=f"cluster {cluster} to leave the queue")
    assert client.kill(held["id"])["removed_procs"] == 0  # nothing left to remove


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
