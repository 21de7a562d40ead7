"""Where a job's inputs went and why, on real TLS peers: the placement (each dispatch round's split,
kept at the job's home) in the owner's status and CLI, the broker's recent decisions for
administrators (and only them), and run times learned from real event logs through the in-process
agent's reports, used by the split with the job's own program's history."""
from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from mobile_client import ApiError, Client
from tests.conftest import PeerProcess, free_port, host_session, login_client, secure_args, user_session, wait_until
from tests.integration.test_cli_ux import Cli

pytestmark = pytest.mark.integration

COUNT_SH = b"#!/bin/sh\nwc -l < \"$1\" > count.txt\n"
COUNT_SUB = "executable = count.sh\narguments = $(input)\nqueue\n"


def report(peer: PeerProcess, broker: PeerProcess, coefficient: float, **extra) -> None:
    """Act as ``peer``'s agent: one load report to the broker (mutual TLS with its host certificate)."""
    r = peer.host.post(f"{broker.url}/api/v1/broker/reports",
                       json={"peer": peer.name, "url": peer.url, "coefficient": coefficient, "metrics": {},
                             "sampled_at": time.time(), "interval": 15, **extra}, timeout=5)
    r.raise_for_status()


@pytest.fixture(scope="module")
def pair(tmp_path_factory, site_pki):
    """Broker site-a and site-b, no agents (the tests report loads); inputs published on site-a."""
    root = tmp_path_factory.mktemp("placement")
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
    alice = login_client(a, site_pki, "alice")
    wait_until(lambda: len(alice.system()["members"]) == 2, what="site-b to join")
    for i in range(3):
        (a.publish / f"in{i}.txt").write_text("1\n2\n3\n")
    yield a, b
    for p in started:
        p.stop()


def placed(client: Client, job_id: str, **kw) -> dict:
    """The job's status once its home has placed it (the first dispatch round comes right after the 201)."""
    return wait_until(lambda: (st := client.status(job_id, **kw)[0]).get("placement") and st, 30,
                      what=f"job {job_id}'s first dispatch round")


def submit_to_b(a: PeerProcess, b: PeerProcess, client: Client, name: str, inputs: list[str]) -> dict:
    """Make site-a look busy and site-b idle, then submit through site-a: the broker sends it to site-b."""
    report(a, a, 4.0)  # one slot, two procs ahead: two waves of the nominal 60 s
    report(b, a, 0.0)
    return client.submit(name, COUNT_SH, "count.sub", inputs, executable_name="count.sh", submit_text=COUNT_SUB)


def test_the_owner_sees_where_the_job_went_and_why(pair, site_pki, tmp_path):
    a, b = pair
    alice = login_client(a, site_pki, "alice")
    job = submit_to_b(a, b, alice, "placed", ["in0.txt"])
    assert job["peer"] == "site-a"  # its home, which keeps its record and asks the broker to split it

    status = placed(alice, job["id"])
    p = status["placement"]
    assert p["chosen"] == "site-b" and p["policy"] == "least-expected-load" and p["rounds"] == 1
    assert p["inputs"] == [0] and [(s["site"], s["count"]) for s in p["shares"]] == [("site-b", 1)]
    assert [r["name"] for r in p["ranking"]] == ["site-b", "site-a"]
    best, other = p["ranking"]
    assert best["score"] < other["score"]
    assert re.match(r"est \d+\.\d s \(wait 0\.0 \+ run 60 \+ move 0\.0\)", best["reason"]), best["reason"]
    assert "wait 120" in other["reason"]
    assert "detail" not in best and "detail" not in p["shares"][0]  # a phone's status stays small

    full, etag = alice.status(job["id"], placement=True)
    detail = full["placement"]["ranking"][0]["detail"]
    assert detail["wait_s"] == 0 and detail["run_s"] == 60
    assert detail["run_source"].startswith("nominal") and detail["wait_source"].startswith("nominal")
    plain_etag = alice.status(job["id"])[1]
    assert etag != plain_etag  # another representation, another tag

    cli = Cli(tmp_path / "home")
    cli.login(a.url, site_pki)
    out = cli("status", job["id"])
    assert out.returncode == 0, out.stderr
    line = out.stdout.splitlines()[1]
    assert re.fullmatch(r"  placed on site-b: est \d+\.\d s \(wait 0\.0 \+ run 60 \+ move 0\.0\); "
                        r"site-a est \d+\.\d s \(wait 120 \+ run 60 \+ move 0\.0\)", line), out.stdout
    out = cli("status", job["id"], "--placement")
    assert out.returncode == 0, out.stderr
    assert "placement: least-expected-load, decided " in out.stdout and "chosen site-b" in out.stdout
    assert re.search(r"^\s+\*\s+1\. site-b\s+\d+\.\d\s+est ", out.stdout, re.M), out.stdout
    assert "run: nominal 60 s at speed 1 (no history of this executable)" in out.stdout


def test_administrators_see_the_recent_decisions_and_nobody_else(pair, site_pki, tmp_path):
    a, b = pair
    alice = login_client(a, site_pki, "alice")
    job = submit_to_b(a, b, alice, "watched", ["in1.txt", "in2.txt"])

    carol = login_client(b, site_pki, "carol")  # the administrator, asking at site-b: relayed to the broker

    def decided():
        ds = carol.placements(limit=5)["placements"]
        mine = [d for d in ds if (d.get("outcome") or {}).get("job_id") == job["id"]]
        return mine[0] if mine else None

    d = wait_until(decided, 20, what="the outcome of the decision reported to the broker")
    assert d["chosen"] == "site-b" and d["outcome"]["accepted_by"] == "site-b" and d["outcome"]["failed"] == []
    assert d["ranking"][0]["detail"]["in_flight"] >= 0 and "url" not in d["ranking"][0]

    for who in ("alice", "bob"):
        with pytest.raises(ApiError) as refused:
            login_client(a, site_pki, who).placements()
        assert refused.value.status == 403

    cli = Cli(tmp_path / "carol")
    cli.login(a.url, site_pki, "carol")
    out = cli("placements", "--limit", "3")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("broker site-a (epoch 1), policy least-expected-load")
    assert f"job {job['id']}" in out.stdout and "chosen site-b" in out.stdout


def test_another_users_job_shows_no_placement(pair, site_pki):
    a, b = pair
    alice = login_client(a, site_pki, "alice")
    job = submit_to_b(a, b, alice, "private", ["in0.txt"])
    with pytest.raises(ApiError) as hidden:
        login_client(a, site_pki, "bob").status(job["id"], placement=True)
    assert hidden.value.status == 404


def test_reported_run_times_reach_the_ranking(pair, site_pki):
    """A site whose report says its slots are busy with long jobs is charged their rest, not 60 s."""
    a, b = pair
    alice = login_client(a, site_pki, "alice")
    long_jobs = {"completed": 20, "quantiles_s": [900.0] * 21, "mean_s": 900.0, "median_s": 900.0,
                 "running": 1, "running_ages_s": [100.0], "idle": 0}
    report(a, a, 0.0)
    report(b, a, 2.0, runtimes=long_jobs)  # its one slot is busy (coefficient 2 = one busy slot)
    job = alice.submit("learned", COUNT_SH, "count.sub", ["in0.txt"], executable_name="count.sh",
                       submit_text=COUNT_SUB)
    assert job["peer"] == "site-a"
    status = placed(alice, job["id"], placement=True)
    ranking = {r["name"]: r for r in status["placement"]["ranking"]}
    assert ranking["site-b"]["detail"]["wait_s"] == pytest.approx(800.0)  # 900 s jobs, this one 100 s old
    assert ranking["site-b"]["detail"]["wait_source"].startswith("learned: 1/1 slots busy, oldest 100 s")
    assert "learned wait" in ranking["site-b"]["reason"]
    assert ranking["site-a"]["detail"]["wait_source"].startswith("nominal")


def test_the_agent_learns_run_times_from_the_event_logs(peers, site_pki, tmp_path):
    """Real jobs, their event logs, the in-process agent's reports, the broker's table and the next
    placement of the same executable, whose run time now comes from its earlier procs."""
    p = peers("learner", extra=["--agent-interval", "0.3"], site_pki=site_pki)
    for i in range(3):
        (p.publish / f"x{i}.txt").write_text("1\n")
    alice = login_client(p, site_pki, "alice")
    first = alice.submit("first", COUNT_SH, "count.sub", [f"x{i}.txt" for i in range(3)],
                         executable_name="count.sh", submit_text=COUNT_SUB)
    assert alice.wait(first["id"], timeout=60)["state"] == "completed"

    def learned():
        rows = {r["peer"]: r for r in alice.system()["load"]}
        times = (rows.get("learner") or {}).get("runtimes") or {}
        return times if times.get("completed", 0) >= 3 and times.get("executables") == 1 else None

    times = wait_until(learned, 30, what="the agent's report to carry the completed procs' run times")
    assert times["running"] == 0 and times["idle"] == 0 and times["median_s"] >= 0
    second = alice.submit("second", COUNT_SH, "count.sub", ["x0.txt"], executable_name="count.sh",
                          submit_text=COUNT_SUB)
    status = placed(alice, second["id"], placement=True)
    detail = status["placement"]["ranking"][0]["detail"]
    assert detail["run_source"] == "learned: median of 3 procs of this executable on learner"
    # the split that placed it used the same estimate, with the job's own program's history
    share = status["placement"]["shares"][0]
    assert share["site"] == "learner" and share["detail"]["run_source"] == detail["run_source"]
    other = alice.submit("other", COUNT_SH + b"# another program\n", "count.sub", ["x0.txt"],
                         executable_name="count.sh", submit_text=COUNT_SUB)
    status = placed(alice, other["id"], placement=True)
    assert status["placement"]["ranking"][0]["detail"]["run_source"].startswith("nominal")
    bob = login_client(p, site_pki, "bob")  # the same program of another user has no history yet
    (p.publish / "y.txt").write_text("1\n")
    theirs = bob.submit("bobs", COUNT_SH, "count.sub", ["y.txt"], executable_name="count.sh", submit_text=COUNT_SUB)
    status = placed(bob, theirs["id"], placement=True)
    assert status["placement"]["ranking"][0]["detail"]["run_source"].startswith("nominal")
