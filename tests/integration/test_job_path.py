"""The whole job path on real peer processes over loopback: TLS, mutual TLS between the peers,
and every request a logged-in user's.

The peer a job is submitted to is its home (its ID names it); the inputs run
at the sites the broker's split chose, and each input's status names its site."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time

import psutil
import pytest

from mobile_client import ApiError, Client
from tests.conftest import host_session, report_load, user_session, wait_until
from tests.job_processes import attempt_dir, job_pids, with_history

pytestmark = pytest.mark.integration

COUNT_SH = b"""#!/bin/sh
# usage: count.sh INPUT INDEX ; fails with exit code 7 on an input named bad.txt
n=$(wc -l < "$1")
echo "$n" > count.txt
echo "input $2 has $n lines"
case "$1" in bad.txt) echo "bad input" >&2; exit 7;; esac
"""
COUNT_SUB = """executable = count.sh
arguments = $(input) $(input_index)
output = stdout.txt
error = stderr.txt
queue
"""


@pytest.fixture(scope="module")
def trio(tmp_path_factory, site_pki):
    """Broker site-a and two joined peers, no agents (the tests report loads); alice logged in."""
    from tests.conftest import PeerProcess, free_port, secure_args

    root = tmp_path_factory.mktemp("trio")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    started = []

    def start(name, join=None):
        args = secure_args(site_pki, name, "--threads", "8", "--no-agent")
        if join:
            args += ["--join", join]
        p = PeerProcess(name, root / name, free_port(), args, env).start()
        p.host = host_session(site_pki, name)  # acts as its agent: load reports
        started.append(p)
        return p

    a = start("site-a")
    b = start("site-b", a.url)
    c = start("site-c", a.url)
    http = user_session(a, site_pki, "alice")
    for p in (a, b, c):
        p.http = http
        p.token = http.headers["Authorization"].split()[1]
        p.broker_url = a.url
    wait_until(lambda: len(http.get(f"{a.url}/api/v1/broker", timeout=2).json()["members"]) == 3,
               what="both peers to register")
    wait_until(lambda: len(http.get(f"{b.url}/api/v1/broker", timeout=2).json()["members"]) == 3,
               what="membership push to site-b")
    for p in (a, b, c):
        p.publish.mkdir(parents=True, exist_ok=True)
    yield a, b, c
    for p in started:
        p.stop()


def publish(peer, name: str, lines: int) -> str:
    path = peer.publish / name
    path.write_text("".join(f"{i}\n" for i in range(lines)))
    return name


def load(p, coefficient: float, cores: int = 4) -> None:
    """``p``'s agent reporting to the broker site-a: ``cores`` slots, busy in proportion to ``coefficient``."""
    report_load(p.broker_url, p, coefficient, session=p.host, metrics={"cores": cores})


def test_job_lands_on_less_loaded_peer_and_completes(trio, tmp_path):
    a, b, c = trio
    load(a, 5.0)
    load(b, 3.0)
    load(c, 0.5)
    inputs = [publish(b, f"in{i}.txt", 10 + i) for i in range(3)]
    client = Client(b.url, ca=b.ca, token=b.token)  # the job's home is not the broker
    job = client.submit("count", COUNT_SH, "count.sub", inputs, executable_name="count.sh", submit_text=COUNT_SUB)
    assert job["peer"] == "site-b" and job["id"].startswith("site-b.")  # its home: where it was submitted
    final = client.wait(job["id"], timeout=60)
    assert final["state"] == "completed"
    assert [(i["input"], i["state"], i["exit_code"], i["site"]) for i in final["inputs"]] == [
        (f"in{i}.txt", "completed", 0, "site-c") for i in range(3)  # all of it where slots were free
    ]
    # Outputs, listed and downloaded through the home (relayed from site-c).
    outs = client.outputs(job["id"])["outputs"]
    names = {f["name"] for f in outs[0]["files"]}
    assert names == {"count.txt", "stdout.txt", "stderr.txt"}  # not the staged executable/submit/input
    page = Client(a.url, ca=a.ca, token=a.token).outputs(job["id"], start=1, limit=1)  # a page, via another peer
    assert ([o["index"] for o in page["outputs"]], page["total"], page["next"]) == ([1], 3, 2)
    assert {f["name"] for f in page["outputs"][0]["files"]} == names
    last = client.outputs(job["id"], start=2, limit=25)
    assert ([o["index"] for o in last["outputs"]], last["next"]) == ([2], None)
    results = client.fetch_all(job["id"], tmp_path / "res")
    counts = sorted(int((tmp_path / "res" / str(i) / "count.txt").read_text()) for i in range(3))
    assert counts == [10, 11, 12]
    for r in results:
        assert hashlib.sha256(r.path.read_bytes()).hexdigest() == r.sha256


def test_failing_input_fails_with_its_exit_code_others_complete(trio):
    a, b, c = trio
    load(a, 0.1)
    load(b, 1.0)
    load(c, 1.0)
    inputs = [publish(a, "good.txt", 3), publish(a, "bad.txt", 2)]
    client = Client(a.url, ca=a.ca, token=a.token)
    job = client.submit("mixed", COUNT_SH, "count.sub", inputs, executable_name="count.sh", submit_text=COUNT_SUB)
    final = client.wait(job["id"], timeout=60)
    by_input = {i["input"]: i for i in final["inputs"]}
    assert by_input["good.txt"]["state"] == "completed" and by_input["good.txt"]["exit_code"] == 0
    assert by_input["bad.txt"]["state"] == "failed" and by_input["bad.txt"]["exit_code"] == 7
    assert final["state"] == "failed"


SLEEPER = b"""#!/bin/sh
echo $$ > pid.txt
i=0
while [ $i -lt 600 ]; do i=$((i+1)); echo tick $i; sleep 0.1; done
"""


def test_kill_stops_running_procs(trio):
    a, b, c = trio
    load(a, 9.0)
    load(b, 0.1)
    load(c, 9.0)
    inputs = [publish(a, "s0.txt", 1), publish(a, "s1.txt", 1)]
    client = Client(a.url, ca=a.ca, token=a.token)
    job = client.submit("sleep", SLEEPER, "s.sub", inputs, executable_name="sleep.sh",
                        submit_text="executable = sleep.sh\noutput = out.txt\nqueue\n")
    assert job["peer"] == "site-a"
    dirs = wait_until(lambda: [attempt_dir(trio, with_history(client, job["id"]), i) for i in range(2)]
                      if all(i["state"] == "running" for i in client.status(job["id"])[0]["inputs"]) else None,
                      what="both procs to run")
    assert {d.parent.parent.parent.name for d in dirs} == {"site-b"}  # <site state>/stage/<piece>/<i>
    wait_until(lambda: all((d / "pid.txt").exists() for d in dirs), what="both procs to start")
    pids = [job_pids(d) for d in dirs]  # host PIDs: the job's $$ is its sandbox's
    assert all(pids), pids
    pids = [p for group in pids for p in group]
    res = client.kill(job["id"])  # at its home, site-a, which removes them at site-b
    assert res["removed_procs"] == 2
    final = client.wait(job["id"], timeout=30)
    assert final["state"] == "removed"
    assert all(i["state"] == "removed" for i in final["inputs"])
    wait_until(lambda: not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
                               for p in pids), what="the killed procs to be gone")


def test_status_etag_and_long_poll(trio):
    a, b, c = trio
    load(a, 0.0)
    inputs = [publish(a, "lp.txt", 1)]
    client = Client(a.url, ca=a.ca, token=a.token)
    job = client.submit("lp", COUNT_SH, "count.sub", inputs, executable_name="count.sh", submit_text=COUNT_SUB)
    final = client.wait(job["id"], timeout=60)
    r = a.http.get(f"{a.url}/api/v1/jobs/{job['id']}")
    etag = r.headers["ETag"]
    # Unchanged: 304 with no body, both directly and relayed through another peer.
    for base in (a.url, c.url):
        r304 = a.http.get(f"{base}/api/v1/jobs/{job['id']}", headers={"If-None-Match": etag})
        assert r304.status_code == 304 and r304.content == b""
    # Long-poll on a finished job returns 304 after the wait (nothing will change).
    t = time.monotonic()
    r = a.http.get(f"{a.url}/api/v1/jobs/{job['id']}", params={"wait": 0.5}, headers={"If-None-Match": etag})
    assert r.status_code == 304 and time.monotonic() - t >= 0.5
    assert final["state"] == "completed"


def test_long_poll_wakes_when_status_changes(trio):
    a, b, c = trio
    load(a, 0.0)
    inputs = [publish(a, "lp2.txt", 1)]
    client = Client(a.url, ca=a.ca, token=a.token)
    job = client.submit("lp2", SLEEPER, "s.sub", inputs, executable_name="sleep.sh",
                        submit_text="executable = sleep.sh\nqueue\n")
    status, etag = client.status(job["id"])
    # Kill from another thread of control after the long-poll started: it must answer with the new status.
    wait_until(lambda: client.status(job["id"])[0]["state"] == "running", what="the proc to run")
    status, etag = client.status(job["id"])
    proc = subprocess.Popen([sys.executable, "-c", "import requests; requests.delete("
                             f"'{a.url}/api/v1/jobs/{job['id']}', verify='{a.ca}', "
                             f"headers={{'Authorization': 'Bearer {a.token}'}})"])
    new, new_etag = client.status(job["id"], wait=30, etag=etag)
    proc.wait()
    assert new is not None and new_etag != etag


def test_outputs_readable_while_running(trio, tmp_path):
    a, b, c = trio
    load(a, 0.0)
    client = Client(a.url, ca=a.ca, token=a.token)
    job = client.submit("live", SLEEPER, "s.sub", [publish(a, "live.txt", 1)], executable_name="sleep.sh",
                        submit_text="executable = sleep.sh\noutput = out.txt\nqueue\n")
    def ticking():
        out = client.outputs(job["id"])["outputs"][0]
        return out["state"] == "running" and next((f for f in out["files"] if f["name"] == "out.txt"
                                                   and f["size"] > 20), None)
    wait_until(ticking, what="output to appear while running")
    out = client.outputs(job["id"])["outputs"][0]
    assert out["state"] == "running" and out["final"] is False and out["site"] == "site-a"
    r = a.http.get(f"{a.url}/api/v1/jobs/{job['id']}/outputs/0/out.txt", headers={"Range": "bytes=0-9"})
    assert r.status_code == 206 and r.content.startswith(b"tick 1")
    client.kill(job["id"])


def test_idempotent_submit(trio):
    a, b, c = trio
    load(a, 0.0)
    inputs = [publish(b, "idem.txt", 2)]
    client = Client(b.url, ca=b.ca, token=b.token)
    kw = dict(executable_name="count.sh", submit_text=COUNT_SUB, idempotency_key="phone-retry-1")
    first = client.submit("idem", COUNT_SH, "count.sub", inputs, **kw)
    again = client.submit("idem", COUNT_SH, "count.sub", inputs, **kw)
    assert again["id"] == first["id"]
    with pytest.raises(ApiError) as err:
        client.submit("idem-other", COUNT_SH, "count.sub", inputs, **kw)
    assert err.value.status == 409 and "Idempotency-Key" in err.value.message
    mine = [j for j in client.jobs() if j["name"] == "idem"]
    assert len(mine) == 1


def test_kill_right_after_submit_ends_removed(trio):
    """A remove that reaches runners before they installed their handlers must still end the job."""
    a, b, c = trio
    load(a, 0.0, cores=10)
    inputs = [publish(a, f"quick{i}.txt", 1) for i in range(10)]
    client = Client(a.url, ca=a.ca, token=a.token)
    job = client.submit("quick-kill", SLEEPER, "s.sub", inputs, executable_name="sleep.sh",
                        submit_text="executable = sleep.sh\nqueue\n")
    client.kill(job["id"])
    final = client.wait(job["id"], timeout=60)
    assert final["state"] == "removed" and final["counts"] == {"removed": 10}


def test_output_names_with_url_characters_survive_the_relay(trio, tmp_path):
    a, b, c = trio
    load(a, 9.0)
    load(b, 9.0)
    load(c, 0.0)
    client = Client(b.url, ca=b.ca, token=b.token)  # entry b, home a, site c: every output request takes two hops
    exe = b"#!/bin/sh\necho hash > 'out#1'\necho query > 'out?x'\necho pct > 'o%41'\necho plain > out\n"
    job = Client(a.url, ca=a.ca, token=a.token).submit("names", exe, "n.sub", [publish(a, "n.txt", 1)],
                                                        executable_name="n.sh", submit_text="executable = n.sh\nqueue\n")
    assert job["peer"] == "site-a"
    final = client.wait(job["id"], timeout=30)
    assert final["state"] == "completed" and final["inputs"][0]["site"] == "site-c"
    got = {r.path.name: r.path.read_text().strip() for r in client.fetch_all(job["id"], tmp_path / "o")}
    assert {k: v for k, v in got.items() if not k.startswith("_condor")} == {
        "out#1": "hash", "out?x": "query", "o%41": "pct", "out": "plain"}
