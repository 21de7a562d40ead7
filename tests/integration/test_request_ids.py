"""Request IDs follow a request from peer to peer, every request has an access-log line, and no
credential ever reaches a log file (two real TLS peers; their logs are their stderr, peer.log)."""
from __future__ import annotations

import re

import pytest

from tests.conftest import host_session, login_client, report_load, start_secure, wait_until

pytestmark = pytest.mark.integration

SH = b"#!/bin/sh\nwc -c < \"$1\" > n.txt\n"
SUB = "executable = n.sh\narguments = $(input)\noutput = out.txt\nerror = err.txt\nqueue\n"


@pytest.fixture(scope="module")
def pair_of_peers(tmp_path_factory, site_pki):
    """ids-a (the broker, where alice talks) and ids-b (where placement sends the jobs)."""
    root = tmp_path_factory.mktemp("ids")
    a = start_secure(root, site_pki, "ids-a")
    b = start_secure(root, site_pki, "ids-b", join=a)
    host = host_session(site_pki, "ids-a")
    wait_until(lambda: len(host.get(f"{a.url}/api/v1/broker", timeout=2).json()["members"]) == 2, 30,
               what="ids-b to join")
    for p, load in ((a, 5.0), (b, 0.1)):  # jobs go to ids-b
        report_load(a.url, p, load, session=host_session(site_pki, p.name))
    (a.publish / "in.txt").write_text("some input\n")
    yield a, b
    b.stop()
    a.stop()


def _lines(peer, needle: str) -> list[str]:
    return [line for line in peer.log_tail(10**7).splitlines() if needle in line]


def test_one_request_id_in_both_peers_logs_and_in_the_answer(pair_of_peers, site_pki):
    a, b = pair_of_peers
    c = login_client(a, site_pki, "alice")
    submit_id = "submit-7f3a9c01"
    c.session.headers["X-Request-ID"] = submit_id
    job = c.submit("ids", SH, "job.sub", ["in.txt"], executable_name="n.sh", submit_text=SUB)
    assert job["peer"] == "ids-a"  # the job's home is the peer it was submitted to
    # (the audit line comes first; the access line once the answer has gone)
    wait_until(lambda: any('"POST /api/v1/jobs" 201' in line for line in _lines(a, submit_id)), 10,
               what="the home's access line with the submit's ID")

    # a request for the job at the other peer is relayed to its home: one ID in both logs and the answer
    status_id = "status:relayed.2"
    c.session.headers["X-Request-ID"] = status_id
    r = c.session.get(f"{b.url}/api/v1/jobs/{job['id']}", timeout=10)  # relayed from ids-b to ids-a
    assert r.status_code == 200 and r.headers["X-Request-ID"] == status_id
    wait_until(lambda: all(any(f'"GET /api/v1/jobs/{job["id"]}" 200' in line for line in _lines(p, status_id))
                           for p in (a, b)), 10, what="both access lines")
    for peer in (a, b):
        line = _lines(peer, status_id)[-1]
        assert f'"GET /api/v1/jobs/{job["id"]}" 200' in line and site_pki.dn("alice") in line

    # a malformed ID (it would break the line) is replaced by a new one, and never logged
    c.session.headers["X-Request-ID"] = 'bad id" [injected] ' + "x" * 200
    r = c.session.get(f"{b.url}/api/v1/jobs/{job['id']}", timeout=10)  # relayed to the home, ids-a
    fresh = r.headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{16}", fresh)
    wait_until(lambda: _lines(a, fresh), 10, what="the new ID at the job's home")
    assert not _lines(a, "injected") and not _lines(b, "injected")


def test_relayed_long_polls_give_their_thread_back(pair_of_peers, site_pki):
    """A relayed long-poll parks a thread on the entry peer until its answer is closed (peer/on_close.py)."""
    a, _ = pair_of_peers
    c = login_client(a, site_pki, "alice")
    job = c.submit("poll", SH, "job.sub", ["in.txt"], executable_name="n.sh", submit_text=SUB)
    final = c.wait(job["id"], timeout=60)
    etag = f'"{final["version"]}"'
    for _ in range(3):
        r = c.session.get(f"{a.url}/api/v1/jobs/{job['id']}?wait=0.2", headers={"If-None-Match": etag}, timeout=10)
        assert r.status_code == 304
    wait_until(lambda: c.health()["parked_requests"] == 0, 10, what="the relayed polls to leave parking")


def test_no_credential_reaches_a_log_file(pair_of_peers, site_pki):
    a, b = pair_of_peers
    c = login_client(a, site_pki, "alice")
    token = c.token
    code = c.pairing_code()["code"]
    phone = login_client(a, site_pki, "bob")
    phone.token = None
    phone.pair(code, device="phone")  # the code travels in a JSON body; the device token comes back
    secret = "s3cr3t-query-value"
    for url in (f"{a.url}/api/v1/jobs?token={secret}&wait=1", f"{a.url}/api/v1/files?code={secret}&path="):
        c.session.get(url, timeout=10)
    c.session.get(f"{a.url}/api/v1/jobs", cookies={"pg_session": phone.token}, timeout=10)
    job = c.submit("quiet", SH, "job.sub", ["in.txt"], executable_name="n.sh", submit_text=SUB)
    c.wait(job["id"], timeout=60)  # relayed polls carry alice's token to ids-b in X-Pocketgrid-User-Token
    c.session.get(f"{a.url}/api/v1/jobs", headers={"Authorization": "Bearer not.a.token"}, timeout=10)
    logs = a.log_tail(10**7) + b.log_tail(10**7)
    assert '"GET /api/v1/jobs?token=[redacted]&wait=1"' in logs  # the access line is there, without the value
    for needle in (token, phone.token, code, secret, "not.a.token", "Bearer", "Authorization"):
        assert needle not in logs, needle
