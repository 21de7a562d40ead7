"""Status long-polls wait in the front, not in an app thread (peer/front/waits.py, proxy.py, changes.py).

A real TLS peer with 4 app threads holds 50 long-polls at once; /healthz and a
plain status poll answer meanwhile, and a change of the job (a kill) wakes
every one of them with 200 and the new status.  A long-poll whose time runs out
answers 304; one without valid credentials 401 at once; beyond the per-user
limit on waits 429 with Retry-After, and the place comes back when a wait ends.
"""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from pocketgrid.http import Session
from tests.conftest import start_secure, user_session, wait_until

pytestmark = pytest.mark.integration

SLEEPY = b"#!/bin/sh\nsleep 120\n"
LONG_POLLS = 50


@pytest.fixture(scope="module")
def peer(tmp_path_factory, site_pki):
    p = start_secure(tmp_path_factory.mktemp("waits"), site_pki, "front-waits", "--threads", "4",
                     env={"POCKETGRID_FRONT_MAX_WAITS_PER_USER": str(LONG_POLLS)})
    yield p
    p.stop()


def running_job(peer, s: requests.Session, key: str) -> str:
    (peer.publish / "a.txt").write_text("a\n")
    r = s.post(f"{peer.url}/api/v1/jobs", timeout=60, headers={"Idempotency-Key": key},
               data={"name": "sleepy", "executable_name": "sleepy.sh", "inputs": json.dumps(["a.txt"])},
               files={"executable": ("sleepy.sh", SLEEPY), "submit": ("job.sub", b"executable = sleepy.sh\nqueue\n")})
    assert r.status_code == 201, r.text
    job = r.json()["id"]
    wait_until(lambda: s.get(f"{peer.url}/api/v1/jobs/{job}", timeout=10).json()["state"] == "running", 60,
               what="the job to run")
    return job


def test_many_more_long_polls_than_threads_wait_and_all_wake_on_a_change(peer, site_pki):
    s = user_session(peer, site_pki, "alice")
    job = running_job(peer, s, "waits-1")
    first = s.get(f"{peer.url}/api/v1/jobs/{job}", timeout=10)
    etag = first.headers["ETag"]
    token = s.headers["Authorization"]

    def long_poll(_: int) -> requests.Response:
        with Session(verify=site_pki.ca) as own:  # a connection each, as 50 phones would have
            return own.get(f"{peer.url}/api/v1/jobs/{job}?wait=60", timeout=90,
                           headers={"If-None-Match": etag, "Authorization": token})

    with ThreadPoolExecutor(LONG_POLLS) as pool:
        polls = [pool.submit(long_poll, i) for i in range(LONG_POLLS)]
        wait_until(lambda: s.get(f"{peer.url}/healthz", timeout=10).json()["front_waits"] == LONG_POLLS, 30,
                   what="the 50 long-polls to be held by the front")
        # the per-user limit is 50: one more is refused at once
        extra = s.get(f"{peer.url}/api/v1/jobs/{job}?wait=60", headers={"If-None-Match": etag}, timeout=30)
        assert extra.status_code == 429, extra.text
        assert int(extra.headers["Retry-After"]) > 0 and "retry in" in extra.json()["error"]
        assert not any(p.done() for p in polls)
        # the app's 4 threads are free: health, a plain poll, a login, another user's list all answer
        health = s.get(f"{peer.url}/healthz", timeout=10)
        assert health.status_code == 200 and health.json()["parked_requests"] == 0
        plain = s.get(f"{peer.url}/api/v1/jobs/{job}", timeout=10)
        assert plain.status_code == 200 and plain.headers["ETag"] == etag
        assert user_session(peer, site_pki, "bob").get(f"{peer.url}/api/v1/jobs", timeout=10).status_code == 200

        assert s.delete(f"{peer.url}/api/v1/jobs/{job}", timeout=30).status_code == 200  # the change
        answers = [p.result(timeout=90) for p in polls]
    now = s.get(f"{peer.url}/api/v1/jobs/{job}", timeout=10)
    assert [a.status_code for a in answers] == [200] * LONG_POLLS
    assert {a.headers["ETag"] for a in answers} != {etag}
    assert all(a.json()["id"] == job for a in answers)
    assert all(not any(k.lower().startswith("x-pocketgrid-front") for k in a.headers) for a in answers)
    assert now.headers["ETag"] in {a.headers["ETag"] for a in answers} or now.headers["ETag"] != etag
    # the places were given back: a new long-poll is held again (it answers 304 at its deadline)
    again = s.get(f"{peer.url}/api/v1/jobs/{job}?wait=1", headers={"If-None-Match": now.headers["ETag"]}, timeout=30)
    assert again.status_code == 304


def test_a_long_poll_that_times_out_answers_304_and_a_stranger_gets_401_or_404(peer, site_pki):
    s = user_session(peer, site_pki, "alice")
    job = running_job(peer, s, "waits-2")
    etag = s.get(f"{peer.url}/api/v1/jobs/{job}", timeout=10).headers["ETag"]
    r = s.get(f"{peer.url}/api/v1/jobs/{job}?wait=1", headers={"If-None-Match": etag}, timeout=30)
    assert r.status_code == 304 and r.headers["ETag"] == etag
    assert not any(k.lower().startswith("x-pocketgrid-front") for k in r.headers)

    anonymous = requests.get(f"{peer.url}/api/v1/jobs/{job}?wait=60", headers={"If-None-Match": etag},
                             verify=site_pki.ca, timeout=10)  # answered at once, well before the wait
    assert anonymous.status_code == 401
    forged = requests.get(f"{peer.url}/api/v1/jobs/{job}?wait=60", verify=site_pki.ca, timeout=10,
                          headers={"If-None-Match": etag, "Authorization": "Bearer not-a-token",
                                   "X-Pocketgrid-Front-Waits": "1", "X-Pocketgrid-Front-Wait": f"60 0 x {job}"})
    assert forged.status_code == 401
    bob = user_session(peer, site_pki, "bob")  # someone else's job: never a 304 that confirms the ETag
    other = bob.get(f"{peer.url}/api/v1/jobs/{job}?wait=60", headers={"If-None-Match": etag}, timeout=10)
    assert other.status_code in (403, 404)
    s.delete(f"{peer.url}/api/v1/jobs/{job}", timeout=30)


def test_a_client_that_leaves_gives_its_wait_back(peer, site_pki):
    s = user_session(peer, site_pki, "alice")
    job = running_job(peer, s, "waits-3")
    etag = s.get(f"{peer.url}/api/v1/jobs/{job}", timeout=10).headers["ETag"]
    token = s.headers["Authorization"]
    leaving = [Session(verify=site_pki.ca) for _ in range(LONG_POLLS)]

    def leave(own: requests.Session) -> None:
        try:  # the client gives up long before the wait's end and closes its connection
            own.get(f"{peer.url}/api/v1/jobs/{job}?wait=60", timeout=2,
                    headers={"If-None-Match": etag, "Authorization": token})
        except requests.Timeout:
            pass
        own.close()

    with ThreadPoolExecutor(LONG_POLLS) as pool:
        list(pool.map(leave, leaving))
    # all 50 left: their places come back at once, not at the end of their 60 s
    wait_until(lambda: s.get(f"{peer.url}/healthz", timeout=10).json()["front_waits"] == 0, 30,
               what="the places to come back")
    r = s.get(f"{peer.url}/api/v1/jobs/{job}?wait=1", headers={"If-None-Match": etag}, timeout=30)
    assert r.status_code == 304
    s.delete(f"{peer.url}/api/v1/jobs/{job}", timeout=30)


class Events:
    """Server-Sent Events blocks of a streamed response, read as they come (one reader for the stream's whole
    life: dropping a half-read iterator would close the connection)."""

    def __init__(self, response: requests.Response) -> None:
        self.response = response
        self._chunks = response.iter_content(chunk_size=None)
        self._buffer = b""

    def until(self, done) -> list[dict]:
        blocks: list[dict] = []
        while True:
            while b"\n\n" not in self._buffer:
                self._buffer += next(self._chunks)  # StopIteration: the stream ended first (a test failure)
            raw, self._buffer = self._buffer.split(b"\n\n", 1)
            block: dict = {}
            for line in raw.decode().split("\n"):
                name, _, value = line.partition(": ")
                block[name] = value
            blocks.append(block)
            if done(block):
                return blocks


def test_many_more_event_streams_than_threads_are_held_by_the_front(peer, site_pki):
    s = user_session(peer, site_pki, "alice")
    job = running_job(peer, s, "waits-4")
    limit = 4  # sse_max_streams_per_user: counted by the front now
    streams = [user_session(peer, site_pki, "alice") for _ in range(limit)]
    opened = [Events(st.get(f"{peer.url}/api/v1/jobs/{job}/events", timeout=30, stream=True)) for st in streams]
    firsts = [r.until(lambda b: b.get("event") == "status") for r in opened]
    assert all(f[-1]["id"] and json.loads(f[-1]["data"])["state"] == "running" for f in firsts)
    assert all(r.response.headers["Content-Type"].startswith("text/event-stream") for r in opened)
    assert all(not any(k.lower().startswith("x-pocketgrid-front") for k in r.response.headers) for r in opened)
    # 4 streams of one user on a peer with 4 threads: health, polls and logins still answer, nothing parks
    health = s.get(f"{peer.url}/healthz", timeout=10).json()
    assert health["parked_requests"] == 0 and health["front_waits"] == limit
    assert s.get(f"{peer.url}/api/v1/jobs/{job}", timeout=10).status_code == 200
    fifth = s.get(f"{peer.url}/api/v1/jobs/{job}/events", timeout=30, stream=True)
    assert fifth.status_code == 429 and int(fifth.headers["Retry-After"]) > 0
    assert "close one" in fifth.json()["error"]
    bob = user_session(peer, site_pki, "bob")  # another user's streams are not alice's
    assert bob.get(f"{peer.url}/api/v1/jobs/{job}/events", timeout=30).status_code in (403, 404)

    assert s.delete(f"{peer.url}/api/v1/jobs/{job}", timeout=30).status_code == 200  # the change
    for r, first in zip(opened, firsts):
        rest = r.until(lambda b: b.get("event") == "end")  # the removed job's status, then the end
        statuses = [b for b in rest if b.get("event") == "status"]
        assert rest[-1]["event"] == "end", rest
        assert statuses and int(statuses[-1]["id"]) > int(first[-1]["id"])
        assert json.loads(statuses[-1]["data"])["state"] == "removed"
        r.response.close()
    final = s.get(f"{peer.url}/api/v1/jobs/{job}", timeout=10)
    wait_until(lambda: s.get(f"{peer.url}/healthz", timeout=10).json()["front_waits"] == 0, 30,
               what="the streams' places to come back")
    # a reconnect with the final version gets no repeated status, only the end
    again = s.get(f"{peer.url}/api/v1/jobs/{job}/events", timeout=30, stream=True,
                  headers={"Last-Event-ID": final.headers["ETag"].strip('"')})
    assert [b.get("event") for b in Events(again).until(lambda b: b.get("event") == "end")] == ["end"]
