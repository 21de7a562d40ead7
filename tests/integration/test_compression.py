"""A big job's status costs a phone a tenth of its size: gzip on real TLS peers.

A 60-input job's status is several KB of JSON; a client that accepts gzip
(a browser, the thin client) gets it compressed, with a weak ETag that still
makes an unchanged long-poll a 304; a client that does not gets it as it is.
Asked through another peer, the home's bytes are passed on with their
encoding (and a client without gzip is never sent gzip).  The event stream
the front holds is compressed event by event: the first status can be read
while the stream is still open.
"""
from __future__ import annotations

import gzip
import http.client
import json
import ssl
import zlib

import pytest

from mobile_client import Client
from tests.conftest import host_session, user_session, wait_until

pytestmark = pytest.mark.integration

QUICK = b"#!/bin/sh\necho ok > out.txt\n"
SLOW = b"#!/bin/sh\nsleep 120\n"
SUB = "executable = job.sh\nqueue\n"
N = 60


@pytest.fixture(scope="module")
def pair(tmp_path_factory, site_pki):
    from tests.conftest import PeerProcess, free_port, secure_args
    import os

    root = tmp_path_factory.mktemp("gz")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    a = PeerProcess("gz-a", root / "a", free_port(), secure_args(site_pki, "gz-a", "--threads", "8"), env).start()
    b = PeerProcess("gz-b", root / "b", free_port(),
                    secure_args(site_pki, "gz-b", "--threads", "8", "--join", a.url), env).start()
    http_a = host_session(site_pki, "gz-a")
    wait_until(lambda: len(http_a.get(f"{a.url}/api/v1/broker", timeout=2).json()["members"]) == 2, 60,
               what="gz-b to join")
    alice = user_session(a, site_pki, "alice")
    a.publish.mkdir(parents=True, exist_ok=True)
    for i in range(N):
        (a.publish / f"sample-{i:03d}.txt").write_text(f"{i}\n")
    client = Client(a.url, ca=site_pki.ca, token=alice.headers["Authorization"].split()[1])
    job = client.submit("many", QUICK, "job.sub", [f"sample-{i:03d}.txt" for i in range(N)],
                        executable_name="job.sh", submit_text=SUB)
    assert client.wait(job["id"], timeout=120)["state"] == "completed"
    yield a, b, alice, client, job["id"]
    b.stop()
    a.stop()


def wire(session, url: str, encoding: str, **headers: str):
    """The answer as it came over the wire (not decoded), its headers, its status."""
    r = session.get(url, headers={"Accept-Encoding": encoding, **headers}, stream=True, timeout=30)
    return r.raw.read(decode_content=False), r.headers, r.status_code


def test_a_big_status_comes_in_gzip_and_an_unchanged_poll_is_still_a_304(pair):
    a, _, alice, _, job_id = pair
    url = f"{a.url}/api/v1/jobs/{job_id}"
    plain, plain_headers, _ = wire(alice, url, "identity")
    packed, headers, _ = wire(alice, url, "gzip")
    assert "Content-Encoding" not in plain_headers and headers["Content-Encoding"] == "gzip"
    assert "Accept-Encoding" in headers["Vary"]
    assert json.loads(gzip.decompress(packed)) == json.loads(plain)
    assert len(packed) * 4 < len(plain), (len(packed), len(plain))  # what a phone pays for a status
    # The same version, another encoding: a weak tag; sent back, nothing changed, a 304.
    assert headers["ETag"] == "W/" + plain_headers["ETag"]
    r = alice.get(url, params={"wait": 1}, headers={"If-None-Match": headers["ETag"]}, timeout=30)
    assert r.status_code == 304
    r = alice.get(url, params={"wait": 1}, headers={"If-None-Match": plain_headers["ETag"]}, timeout=30)
    assert r.status_code == 304


def test_through_another_peer_the_encoding_is_the_clients(pair):
    _, b, alice, _, job_id = pair
    url = f"{b.url}/api/v1/jobs/{job_id}"  # relayed to the job's home, gz-a
    plain, plain_headers, status = wire(alice, url, "identity")
    assert status == 200 and "Content-Encoding" not in plain_headers
    packed, headers, _ = wire(alice, url, "gzip")
    assert headers["Content-Encoding"] == "gzip"
    assert json.loads(gzip.decompress(packed)) == json.loads(plain)
    assert len(json.loads(plain)["inputs"]) == N
    outputs, out_headers, _ = wire(alice, f"{url}/outputs", "gzip")  # the outputs list too
    assert out_headers["Content-Encoding"] == "gzip" and len(json.loads(gzip.decompress(outputs))["outputs"]) == N


def test_a_small_answer_and_a_file_are_never_compressed(pair):
    a, _, alice, _, job_id = pair
    body, headers, _ = wire(alice, f"{a.url}/api/v1/auth/whoami", "gzip")
    assert "Content-Encoding" not in headers and json.loads(body)
    body, headers, status = wire(alice, f"{a.url}/api/v1/jobs/{job_id}/outputs/0/out.txt", "gzip")
    assert status == 200 and "Content-Encoding" not in headers and body == b"ok\n"  # ranges stay byte ranges


def test_the_event_stream_is_compressed_event_by_event(pair, site_pki):
    a, _, alice, client, _ = pair
    a.publish.joinpath("slow.txt").write_text("1\n")
    job = client.submit("slow", SLOW, "job.sub", ["slow.txt"], executable_name="job.sh", submit_text=SUB)
    conn = http.client.HTTPSConnection("127.0.0.1", a.port, timeout=60,
                                       context=ssl.create_default_context(cafile=site_pki.ca))
    conn.request("GET", f"/api/v1/jobs/{job['id']}/events",
                 headers={"Accept-Encoding": "gzip", "Accept": "text/event-stream",
                          "Authorization": alice.headers["Authorization"]})
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("Content-Encoding") == "gzip"
    inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
    text = ""

    def first_status() -> dict | None:
        nonlocal text
        text += inflate.decompress(resp.read1(65536)).decode()
        if "event: status\n" in text and "\n\n" in text.split("event: status\n", 1)[1]:
            data = text.split("event: status\n", 1)[1].split("\n\n", 1)[0]
            return json.loads(data.split("data: ", 1)[1])
        return None

    try:
        status = wait_until(first_status, 60, what="the first status event, readable while the stream is open")
        assert status["id"] == job["id"] and "event: end" not in text  # the job runs on: the stream is open
        client.kill(job["id"])

        def ended() -> bool:
            nonlocal text
            text += inflate.decompress(resp.read1(65536)).decode()
            return "event: end" in text

        wait_until(ended, 60, what="the end event after the kill")
        assert '"state": "removed"' in text or '"state":"removed"' in text
    finally:
        conn.close()
