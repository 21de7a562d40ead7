"""Waiting requests never take the threads kept for short ones (peer/parking.py).

Only long-polls and event streams relayed to the job's home still park an
app thread, at the entry peer (those of jobs whose home is the peer wait in
its front: tests/integration/test_front_waits.py).  An entry peer with 4
threads lets 2 of them park; a third answers 429 with Retry-After at once,
while /healthz, plain polls and logins keep being served.
"""
from __future__ import annotations

import json
import threading

import pytest
import requests

from tests.conftest import user_session, wait_until

pytestmark = pytest.mark.integration

SLEEPY = b"#!/bin/sh\nsleep 120\n"


def parked(peer, session: requests.Session) -> int:
    return session.get(f"{peer.url}/healthz", timeout=10).json()["parked_requests"]


def test_waiting_requests_beyond_the_limit_get_429_and_short_requests_still_pass(peers, site_pki):
    """The entry peer ``b`` (4 threads: 2 may park) relays long-polls for a job whose home is ``a``."""
    a = peers("site-a", site_pki=site_pki, extra=["--no-agent"])
    b = peers("site-b", join=a.url, site_pki=site_pki, extra=["--no-agent", "--threads", "4"])
    (a.publish / "a.txt").write_text("a\n")
    s = user_session(a, site_pki, "alice")
    wait_until(lambda: len(s.get(f"{b.url}/api/v1/broker", timeout=10).json()["members"]) == 2, 30,
               what="site-b to join")
    r = s.post(f"{a.url}/api/v1/jobs", timeout=60, headers={"Idempotency-Key": "park-1"},
               data={"name": "sleepy", "executable_name": "sleepy.sh", "inputs": json.dumps(["a.txt"])},
               files={"executable": ("sleepy.sh", SLEEPY), "submit": ("job.sub", b"executable = sleepy.sh\nqueue\n")})
    assert r.status_code == 201, r.text
    job = r.json()["id"]
    wait_until(lambda: s.get(f"{b.url}/api/v1/jobs/{job}", timeout=10).json()["state"] == "running", 60,
               what="the job to run")
    etag = s.get(f"{b.url}/api/v1/jobs/{job}", timeout=10).headers["ETag"]
    health = s.get(f"{b.url}/healthz", timeout=10).json()
    assert health["max_parked_requests"] == 2 and health["parked_requests"] == 0

    answers: list[int] = []

    def long_poll() -> None:
        r = user_session(a, site_pki, "alice").get(f"{b.url}/api/v1/jobs/{job}?wait=60",
                                                   headers={"If-None-Match": etag}, timeout=90)
        answers.append(r.status_code)

    pollers = [threading.Thread(target=long_poll) for _ in range(2)]
    for t in pollers:
        t.start()
    wait_until(lambda: parked(b, s) == 2, 30, what="two relayed long-polls to park at the entry peer")

    third = s.get(f"{b.url}/api/v1/jobs/{job}?wait=60", headers={"If-None-Match": etag}, timeout=30)
    assert third.status_code == 429 and int(third.headers["Retry-After"]) > 0
    assert "retry in" in third.json()["error"]
    stream = s.get(f"{b.url}/api/v1/jobs/{job}/events", timeout=30, stream=True)  # a relayed stream parks too
    assert stream.status_code == 429
    stream.close()
    # Short requests are still served: health, a plain (relayed) poll, a new login.
    assert s.get(f"{b.url}/healthz", timeout=10).status_code == 200
    assert s.get(f"{b.url}/api/v1/jobs/{job}", timeout=10).status_code == 200
    assert user_session(b, site_pki, "bob").get(f"{b.url}/api/v1/jobs", timeout=10).status_code == 200

    assert s.delete(f"{a.url}/api/v1/jobs/{job}", timeout=30).status_code == 200  # the change wakes the polls
    for t in pollers:
        t.join(timeout=90)
    assert answers == [200, 200]
    wait_until(lambda: parked(b, s) == 0, 30, what="the parked places to be given back")


def test_relayed_waits_give_their_places_back(peers, site_pki):
    """A long-poll or an event stream relayed to the job's home holds a place at the relaying peer too,
    and gives it back when it ends, whatever it answered (a 200 through the relay kept it for good once)."""
    a = peers("site-a", site_pki=site_pki, extra=["--no-agent"])
    b = peers("site-b", join=a.url, site_pki=site_pki, extra=["--no-agent"])
    (a.publish / "a.txt").write_text("a\n")
    s = user_session(a, site_pki, "alice")
    wait_until(lambda: len(s.get(f"{b.url}/api/v1/broker", timeout=10).json()["members"]) == 2, 30,
               what="site-b to join")
    r = s.post(f"{a.url}/api/v1/jobs", timeout=60,
               data={"name": "sleepy", "executable_name": "sleepy.sh", "inputs": json.dumps(["a.txt"])},
               files={"executable": ("sleepy.sh", SLEEPY), "submit": ("job.sub", b"executable = sleepy.sh\nqueue\n")})
    job = r.json()["id"]
    wait_until(lambda: s.get(f"{b.url}/api/v1/jobs/{job}", timeout=10).json()["state"] == "running", 60,
               what="the job to run")
    etag = s.get(f"{b.url}/api/v1/jobs/{job}", timeout=10).headers["ETag"]
    answers: list[int] = []
    poller = threading.Thread(target=lambda: answers.append(
        s.get(f"{b.url}/api/v1/jobs/{job}?wait=60", headers={"If-None-Match": etag}, timeout=90).status_code))
    poller.start()
    # the entry peer parks a thread for the relay; the home's front holds the wait (no thread there)
    wait_until(lambda: parked(b, s) == 1 and s.get(f"{a.url}/healthz", timeout=10).json()["front_waits"] == 1, 30,
               what="the relayed long-poll to park at the entry and wait in the home's front")
    assert s.delete(f"{b.url}/api/v1/jobs/{job}", timeout=30).status_code == 200  # the change answers it
    poller.join(timeout=90)
    assert answers == [200]
    wait_until(lambda: parked(b, s) == 0 and parked(a, s) == 0, 30, what="both places to be given back")
    with s.get(f"{b.url}/api/v1/jobs/{job}/events", stream=True, timeout=30) as stream:  # final: status, end
        assert stream.status_code == 200 and b"event: end" in stream.content
    wait_until(lambda: parked(b, s) == 0, 30, what="the relayed stream's place to be given back")
