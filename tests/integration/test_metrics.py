"""``/metrics`` on a real TLS peer: scraped and parsed with prometheus_client's own parser, the counters
move by exactly what real traffic did (logins, an upload each way, a submit, status polls, an output
download, refused tokens), and who may scrape (``metrics_access``: loopback without credentials, or an
administrator; a user's token and a request from a non-loopback address without credentials are refused).
"""
from __future__ import annotations

import os
import socket
from collections import Counter as Tally

import psutil
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from requests.adapters import HTTPAdapter

from pocketgrid.http import Session
from tests.conftest import host_session, login_client, report_load, start_secure, user_session

pytestmark = pytest.mark.integration

PEER = "metrics-a"
COPY_SH = b"#!/bin/sh\ncat \"$1\" > copy.dat\n"
SUB = "executable = copy.sh\narguments = $(input)\noutput = out.txt\nerror = err.txt\nqueue\n"
FINAL = {"completed", "failed", "removed"}
STATUS_ROUTE = "/api/v1/jobs/<job_id>"

Samples = dict[tuple[str, frozenset], float]


@pytest.fixture(scope="module")
def peer(tmp_path_factory, site_pki):
    root = tmp_path_factory.mktemp("metrics")
    p = start_secure(root, site_pki, PEER)
    (p.publish / "data.bin").write_bytes(os.urandom(150_000))
    yield p
    p.stop()


def scrape(peer, session: requests.Session | None = None) -> Samples:
    """Every sample of one scrape, parsed by prometheus_client: (name, labels) -> value."""
    r = (session or Session(verify=peer.ca)).get(f"{peer.url}/metrics", timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    samples: Samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """A sample's value; 0 when the series does not exist (yet)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def test_counters_move_with_real_traffic(peer, site_pki, tmp_path, monkeypatch):
    monkeypatch.setenv("POCKETGRID_HOME", str(tmp_path / "home"))  # the tus client keeps its resume records there
    report_load(peer.url, peer, 0.5, session=host_session(site_pki, PEER))  # a load report: in-flight starts at 0
    before = scrape(peer)

    # logins: one that works, one with a made-up challenge
    c = login_client(peer, site_pki, "alice")
    bad = requests.post(f"{peer.url}/api/v1/auth/login", json={"nonce": "no-such-nonce", "certificate": "x",
                                                                 "signature": "eA=="}, verify=site_pki.ca, timeout=10)
    assert bad.status_code == 401

    # uploads: one resumable (tus) by the client library, one plain PUT
    tus_file = tmp_path / "tus.bin"
    tus_file.write_bytes(os.urandom(70_000))
    uploaded = c.upload(tus_file)
    put = requests.put(f"{peer.url}/api/v1/files/uploads/put.bin", data=os.urandom(30_000), verify=site_pki.ca,
                       headers={"Authorization": f"Bearer {c.token}"}, timeout=10)
    assert put.status_code == 201, put.text

    # a job of two inputs (a published file and the upload); both are staged from this peer's own area
    job = c.submit("copy", COPY_SH, "job.sub", ["data.bin", uploaded["path"]], executable_name="copy.sh",
                   submit_text=SUB)
    assert job["peer"] == PEER
    polls: Tally[int] = Tally()
    status, etag = c.status(job["id"])
    polls[200] += 1
    long_polls = 0
    while status["state"] not in FINAL:
        new, etag = c.status(job["id"], wait=10, etag=etag)
        polls[200 if new is not None else 304] += 1
        long_polls += 1
        status = new or status
    assert status["state"] == "completed", status
    assert c.status(job["id"], etag=etag) == (None, etag)  # unchanged: 304
    polls[304] += 1

    copy = next(f for f in c.outputs(job["id"])["outputs"][0]["files"] if f["name"] == "copy.dat")
    fetched = c.fetch(job["id"], 0, "copy.dat", tmp_path / "copy.dat")
    assert fetched.size == copy["size"] == 150_000

    # refused credentials: a garbage token, and a token revoked by logging out
    garbage = requests.get(f"{peer.url}/api/v1/jobs", headers={"Authorization": "Bearer not-a-token"},
                           verify=site_pki.ca, timeout=10)
    assert garbage.status_code == 401
    second = login_client(peer, site_pki, "alice")
    revoked = second.token
    second.logout()
    refused = requests.get(f"{peer.url}/api/v1/jobs", headers={"Authorization": f"Bearer {revoked}"},
                           verify=site_pki.ca, timeout=10)
    assert refused.status_code == 401

    after = scrape(peer)
    assert moved(before, after, "pocketgrid_logins_total", method="certificate", outcome="ok") == 2
    assert moved(before, after, "pocketgrid_logins_total", method="certificate", outcome="failed") == 1
    assert moved(before, after, "pocketgrid_uploaded_bytes_total", protocol="tus") == 70_000
    assert moved(before, after, "pocketgrid_uploaded_bytes_total", protocol="put") == 30_000
    assert moved(before, after, "pocketgrid_submits_total", outcome="created") == 1
    assert moved(before, after, "pocketgrid_submits_total", outcome="replayed") == 0
    assert moved(before, after, "pocketgrid_placements_total", peer=PEER) == 1
    assert value(after, "pocketgrid_broker_in_flight_procs", peer=PEER) == 2  # two procs since the last report
    assert 0 <= value(after, "pocketgrid_broker_load_report_age_seconds", peer=PEER) < 600
    assert value(after, "pocketgrid_broker_load_coefficient", peer=PEER) == 0.5
    assert moved(before, after, "pocketgrid_staged_bytes_total", source="local") == 150_000 + 70_000
    assert moved(before, after, "pocketgrid_staged_bytes_total", source="peer") == 0
    assert moved(before, after, "pocketgrid_jobs", state="completed") == 1
    assert moved(before, after, "pocketgrid_job_inputs", state="completed") == 2
    assert moved(before, after, "pocketgrid_downloaded_bytes_total", what="output") == 150_000
    # The app counts what it answers: every 200 the client got, and besides each 304 the client got, up to one
    # more per long-poll -- the 304 "unchanged, wait" the front holds a long-poll on (peer/front/proxy.py),
    # after which the app is asked again and gives the answer the client sees.
    assert moved(before, after, "pocketgrid_http_requests_total", method="GET", route=STATUS_ROUTE,
                 status="200") == polls[200], polls
    app_304 = moved(before, after, "pocketgrid_http_requests_total", method="GET", route=STATUS_ROUTE, status="304")
    assert polls[304] <= app_304 <= polls[304] + long_polls, (app_304, polls, long_polls)
    assert moved(before, after, "pocketgrid_http_request_duration_seconds_count", method="GET",
                 route=STATUS_ROUTE) == polls[200] + app_304
    assert moved(before, after, "pocketgrid_http_requests_total", method="POST", route="/api/v1/jobs",
                 status="201") == 1
    assert moved(before, after, "pocketgrid_token_refusals_total", credential="bearer", reason="invalid") == 1
    assert moved(before, after, "pocketgrid_token_refusals_total", credential="bearer", reason="revoked") == 1
    assert moved(before, after, "pocketgrid_token_revocations_total") == 1
    assert value(after, "pocketgrid_broker_epoch") == 1
    assert value(after, "pocketgrid_broker_role_held") == 1
    assert value(after, "pocketgrid_peer_info", peer=PEER, executor="local", version="0.1.0") == 1
    # the raw path (with the job ID) is never a label: only the route's rule
    assert not any(job["id"] in v for (_, labels) in after for _, v in labels)


def _non_loopback_ipv4() -> str | None:
    for addresses in psutil.net_if_addrs().values():
        for a in addresses:
            if a.family == socket.AF_INET and not a.address.startswith("127."):
                return a.address
    return None


class _FromAddress(HTTPAdapter):
    """Connections from a given local address: the peer on 127.0.0.1 sees that address as the client's."""

    def __init__(self, source: str) -> None:
        self.source = source
        super().__init__()

    def init_poolmanager(self, *args, **kwargs):
        kwargs["source_address"] = (self.source, 0)
        return super().init_poolmanager(*args, **kwargs)


def test_who_may_scrape(peer, site_pki):
    # from the loopback address without credentials: yes (scrape() asserts 200)
    scrape(peer)
    # a user's token, from anywhere: no, and the answer names the setting
    r = user_session(peer, site_pki, "alice").get(f"{peer.url}/metrics", timeout=10)
    assert r.status_code == 403
    assert "metrics_access = loopback-or-admin" in r.json()["error"]
    # an administrator's token: yes
    admin = user_session(peer, site_pki, "carol")
    assert value(scrape(peer, admin), "pocketgrid_broker_role_held") == 1
    events = admin.get(f"{peer.url}/api/v1/admin/audit", params={"action": "access-denied", "local": 1},
                       timeout=10).json()["events"]
    assert any(e["dn"] == site_pki.dn("alice") and "GET /metrics: metrics_access" in e["detail"] for e in events)
    # an administrator's certificate on the connection (how a Prometheus elsewhere scrapes: no token expires)
    carol = site_pki.users["carol"]
    assert value(scrape(peer, Session(verify=site_pki.ca, cert=(str(carol.cert_path), str(carol.key_path)))),
                 "pocketgrid_broker_role_held") == 1
    alice = site_pki.users["alice"]
    r = Session(verify=site_pki.ca, cert=(str(alice.cert_path), str(alice.key_path))).get(f"{peer.url}/metrics",
                                                                                        timeout=10)
    assert r.status_code == 403 and "metrics_access" in r.json()["error"]

    source = _non_loopback_ipv4()
    if source is None:
        pytest.skip("this host has no non-loopback IPv4 address to connect from")
    outside = Session(verify=site_pki.ca)
    outside.mount("https://", _FromAddress(source))
    assert outside.get(f"{peer.url}/healthz", timeout=10).ok  # the connection itself works from there
    r = outside.get(f"{peer.url}/metrics", timeout=10)
    assert r.status_code == 403, r.text
    assert "metrics_access = loopback-or-admin" in r.json()["error"]
    outside.headers["Authorization"] = admin.headers["Authorization"]
    assert value(scrape(peer, outside), "pocketgrid_members") == 1  # an administrator, from anywhere


def test_a_refused_scrape_is_counted_like_any_request(peer, site_pki):
    alice = user_session(peer, site_pki, "alice")
    before = scrape(peer)
    assert alice.get(f"{peer.url}/metrics", timeout=10).status_code == 403
    after = scrape(peer)
    assert moved(before, after, "pocketgrid_http_requests_total", method="GET", route="/metrics", status="403") == 1
    assert moved(before, after, "pocketgrid_http_requests_total", method="GET", route="/metrics", status="200") == 1
