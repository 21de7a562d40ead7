"""A submit file means the same at every site, or is refused where it cannot; an idle job says why.

Real LocalExecutor peers on loopback (the ``condor``-marked twins of these
tests are in tests/integration/test_condor_pool.py):

* requirements this host does not match (``request_memory = 99999999``,
  ``requirements = (Arch == "NOPE")``): accepted with a warning (site policy
  ``warn``), never started, and the idle proc's status says how many slots
  match and which requirement fails; the site's load report counts them as
  unmatchable, not as load; ``unmatchable = "refuse"`` makes the job's home
  send its inputs to a site that takes them;
* job policy HTCondor would apply (periodic_hold, periodic_remove,
  on_exit_hold, max_retries, missing output files) is applied here too;
* commands the local executor cannot honour are refused by that site (a
  400 with ``elsewhere``); when no site runs the file, the input fails with
  a note naming the key, each site, and which sites would run it.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import requests

from mobile_client import Client
from tests.conftest import host_session, report_load, wait_until

pytestmark = pytest.mark.integration

SLEEP = b"#!/bin/sh\necho started > started.txt\nsleep 60\n"
FAIL = b"#!/bin/sh\necho run >> runs.txt\nexit 3\n"
OK = b"#!/bin/sh\necho ok > out.txt\n"


def submit(peer, name: str, exe: bytes, submit_text: str, *, url: str | None = None, inputs=("in.txt",)) -> dict:
    peer.publish.mkdir(parents=True, exist_ok=True)
    for i in inputs:  # written once: rewriting it would change an input an earlier job is still to send
        if not (peer.publish / i).exists():
            (peer.publish / i).write_text("1\n")
    return Client(url or peer.url).submit(name, exe, "job.sub", list(inputs), executable_name="job.sh",
                                          submit_text=submit_text)


def proc(peer, job: dict) -> dict:
    status, _ = Client(peer.url).status(job["id"])
    return status["inputs"][0]


def piece_dir(peer, job: dict) -> Path:
    """The staging directory of the job's one piece at this (its only) site."""
    def made():
        status, _ = Client(peer.url).status(job["id"], history=True)
        return status["inputs"][0]["attempts"][-1]["piece"]

    return peer.state / "stage" / wait_until(made, what="the job's piece")


def warnings_of(peer, job: dict, client: Client | None = None) -> str:
    """The job's warnings once its piece is made (a site's warnings reach the status, not the 201)."""
    client = client or Client(peer.url)
    return wait_until(lambda: " ".join(client.status(job["id"])[0]["warnings"]) if
                      client.status(job["id"], history=True)[0]["inputs"][0]["attempts"][-1]["piece"] else None,
                      what="the site's warnings in the status")


def executor(peer) -> dict:
    return requests.get(f"{peer.url}/healthz", timeout=5).json()["executor"]


def test_a_job_this_host_cannot_match_is_accepted_with_a_warning_and_says_why_it_waits(peers):
    p = peers("solo", extra=["--no-agent"])
    big = submit(p, "big", OK, "executable = job.sh\nrequest_memory = 99999999\nqueue\n")
    warning = warnings_of(p, big)
    assert "does not match" in warning and "request_memory = 99999999" in warning
    nope = submit(p, "nope", OK, 'executable = job.sh\nrequirements = (Arch == "NOPE")\nqueue\n')
    fine = submit(p, "fine", OK, "executable = job.sh\nrequest_memory = 1\nqueue\n")
    assert Client(p.url).wait(fine["id"], timeout=30)["state"] == "completed"  # not held up behind them

    i = proc(p, big)
    assert i["state"] == "idle" and i["match"]["slots"] == 0 and i["match"]["of"] == 1
    assert "request_memory = 99999999" in i["match"]["failing"] and "Memory = " in i["match"]["failing"]
    n = proc(p, nope)
    assert n["state"] == "idle" and n["match"]["slots"] == 0 and 'Arch == "NOPE"' in n["match"]["failing"]
    assert proc(p, fine).get("match") is None  # a finished proc needs no explanation
    assert not (piece_dir(p, big) / "0" / "out.txt").exists()  # never started
    assert executor(p)["procs"] == {"held": 0, "unmatchable": 2, "idle": 2}  # what the agent reports: not load

    Client(p.url).kill(big["id"])
    assert Client(p.url).wait(big["id"], timeout=30)["state"] == "removed"
    assert executor(p)["procs"]["unmatchable"] == 1


def test_a_site_that_refuses_unmatchable_jobs_sends_them_to_one_that_takes_them(peers, site_pki, tmp_path):
    policy = tmp_path / "policy.toml"
    policy.write_text('[policy]\nunmatchable = "refuse"\n')
    config = tmp_path / "peer.toml"
    config.write_text(f'[peer]\nsubmit_policy = "{policy}"\n')
    a = peers("site-a", extra=["--no-agent", "--config", str(config)], site_pki=site_pki)
    b = peers("site-b", join=a.url, extra=["--no-agent"], site_pki=site_pki)
    wait_until(lambda: len(host_session(site_pki, "site-a").get(f"{a.url}/api/v1/broker", timeout=2)
                           .json()["members"]) == 2, what="membership")
    report_load(a.url, a, 0.0, session=host_session(site_pki, "site-a"))  # site-a looks best...
    report_load(a.url, b, 5.0, session=host_session(site_pki, "site-b"))
    alice = site_pki.users["alice"]
    client = Client(a.url, ca=site_pki.ca)
    client.login(alice.cert_path, alice.key_path)
    a.publish.mkdir(parents=True, exist_ok=True)
    (a.publish / "in.txt").write_text("1\n")
    job = client.submit("big", OK, "job.sub", ["in.txt"], executable_name="job.sh",
                        submit_text="executable = job.sh\nrequest_memory = 99999999\nqueue\n")
    assert job["peer"] == "site-a"  # its home; site-a's executor refuses the input (its policy)...
    wait_until(lambda: client.status(job["id"])[0]["inputs"][0]["site"] == "site-b", what="site-b to take it")
    assert "does not match" in warnings_of(a, job, client)  # ...and site-b takes it with a warning (the default)
    attempts = client.status(job["id"], history=True)[0]["inputs"][0]["attempts"]
    assert [x["site"] for x in attempts] == ["site-b"]  # a refusal is no attempt
    # A file neither site runs as written: the submit is answered (201), the input fails naming the key and
    # each site's reason.
    rel = client.submit("rel", OK, "job.sub", ["in.txt"], executable_name="job.sh",
                        submit_text="executable = job.sh\nperiodic_release = true\nqueue\n")
    final = client.wait(rel["id"], timeout=30)
    said = final["inputs"][0]["note"]
    assert final["state"] == "failed" and said.startswith("no site will take this input")
    assert "site-a: periodic_release" in said and "site-b: periodic_release" in said and "executor is condor" in said


def test_job_policy_is_honoured_as_htcondor_would(peers):
    p = peers("solo", extra=["--no-agent"])
    held = submit(p, "held", SLEEP, 'executable = job.sh\nperiodic_hold = JobStatus == 1 || JobStatus == 2\n'
                                     'periodic_hold_reason = "held by the pocketgrid test"\nperiodic_hold_subcode = 42\n'
                                     'queue\n')  # the same file as the condor-marked test's
    h = wait_until(lambda: (i := proc(p, held))["state"] == "held" and i, what="the periodic hold")
    assert (h["hold_reason"], h["hold_code"], h["hold_subcode"]) == ("held by the pocketgrid test", 3, 42)

    removed = submit(p, "removed", SLEEP, "executable = job.sh\nperiodic_remove = JobStatus == 2\nqueue\n")
    r = Client(p.url).wait(removed["id"], timeout=30)["inputs"][0]
    assert r["state"] == "removed" and "PeriodicRemove" in r["note"]
    assert (piece_dir(p, removed) / "0" / "started.txt").exists()  # it ran, then was removed

    exit_hold = submit(p, "exit-hold", FAIL, "executable = job.sh\non_exit_hold = ExitCode != 0\nqueue\n")
    e = wait_until(lambda: (i := proc(p, exit_hold))["state"] == "held" and i, what="the exit hold")
    assert "OnExitHold" in e["hold_reason"] and e["hold_code"] == 3

    retried = submit(p, "retried", FAIL, "executable = job.sh\nmax_retries = 2\nqueue\n")
    final = Client(p.url).wait(retried["id"], timeout=60)["inputs"][0]
    # re-run by its own policy, logged as the shadow logs it ("Job terminated and was requeued"): retries, not
    # evictions (which the job's home would count as a site's trouble)
    assert final["state"] == "failed" and final["exit_code"] == 3 and final["retries"] == 2
    assert "evictions" not in final and final["attempt"] == 1
    assert (piece_dir(p, retried) / "0" / "runs.txt").read_text() == "run\n" * 3  # 1 + 2 retries

    missing = submit(p, "missing", OK, "executable = job.sh\ntransfer_output_files = out.txt, nothere.txt\nqueue\n")
    m = wait_until(lambda: (i := proc(p, missing))["state"] == "held" and i, what="the missing output")
    assert m["hold_code"] == 12 and "nothere.txt" in m["hold_reason"]
    wait_until(lambda: executor(p)["procs"]["held"] == 3, what="the three holds in what the agent reports")


def test_commands_this_site_cannot_honour_are_refused_naming_the_key_and_who_would_run_it(peers):
    p = peers("solo", extra=["--no-agent"])
    for line, key in (("periodic_release = true", "periodic_release"), ("priority = 5", "priority"),
                      ("transfer_input_files = https://example.org/data.txt", "transfer_input_files")):
        job = submit(p, "refused", OK, f"executable = job.sh\n{line}\nqueue\n")
        final = Client(p.url).wait(job["id"], timeout=30)
        said = final["inputs"][0]["note"]
        assert final["state"] == "failed" and said.startswith("no site will take this input"), said
        assert key in said and "executor is condor" in said and "solo" in said, said
    assert not [d for d in (p.state / "stage").iterdir() if not d.name.startswith(".")]  # no piece was made


def test_the_agent_tells_the_broker_at_once_when_procs_go_unmatchable_or_held(peers):
    """The in-process agent reports every 300 s here: the broker learns of the site's unmatchable and held
    procs from the report the peer sends as soon as they appear, and does not count them as load."""
    p = peers("solo", extra=["--agent-interval", "300"])

    def site() -> dict | None:
        load = requests.get(f"{p.url}/api/v1/broker", timeout=5).json().get("load") or []
        return next((r.get("site") for r in load if r["peer"] == "solo"), None)

    wait_until(lambda: site() is not None, what="the agent's first report")
    submit(p, "big", OK, "executable = job.sh\nrequest_memory = 99999999\nqueue\n")
    wait_until(lambda: (site() or {}).get("unmatchable") == 1, what="a report with the unmatchable proc")
    submit(p, "held", SLEEP, "executable = job.sh\nperiodic_hold = true\nqueue\n")
    wait_until(lambda: (site() or {}).get("held") == 1, what="a report with the held proc")
