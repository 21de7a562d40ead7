"""A stolen host key is not a master key: a relayed request carries the user's proof (issue 10, 1b).

Two real TLS peers (site-a holds the broker role, site-b joins it).  The
attacker holds a host certificate and its key (what a job running as the
peer's account could read) and asserts a user in ``X-Pocketgrid-User``: every
user route refuses it, with or without a forged, expired, revoked or
misdirected proof; nor do the host-to-host routes that act for a user (a
piece's outputs, which a job's home relays a download to).  The real user's
relayed requests (bearer token, and a TLS client certificate, which the
entry peer turns into a delegation, and the job's home into another for the
site) still work: status, live events, outputs, kill, job list, grid views,
a job whose inputs run at another peer, pairing at another peer.
"""
from __future__ import annotations

import json
import time

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import ec

from mobile_client import ApiError, Client
from pocketgrid import pki
from pocketgrid.http import Session
from tests.conftest import host_session, report_load, user_session, wait_until
from tests.conftest import login_client as login, start_secure as start
from tests.job_processes import with_history

pytestmark = pytest.mark.integration

SLOW_SH = b"#!/bin/sh\necho started > out.txt\nsleep 120\n"
OK_SH = b"#!/bin/sh\necho ok > out.txt\n"
SUB = "executable = job.sh\nqueue\n"
TOKEN_HEADER = "X-Pocketgrid-User-Token"


@pytest.fixture(scope="module")
def site(tmp_path_factory, site_pki):
    root = tmp_path_factory.mktemp("relay-proof")
    a = start(root, site_pki, "site-a")
    b = start(root, site_pki, "site-b", join=a)
    for p in (a, b):
        (p.publish / "data.txt").write_text("1\n")
    wait_until(lambda: len(user_session(a, site_pki, "carol").get(f"{a.url}/api/v1/broker").json()["members"]) == 2,
               what="site-b to join site-a")
    yield a, b
    for p in (b, a):
        p.stop()


def certificate_client(peer, site_pki, user: str) -> Client:
    """A user with the certificate on the TLS connection, no token (a laptop); writes carry the CSRF token."""
    issued = site_pki.users[user]
    session = Session(verify=site_pki.ca, cert=(str(issued.cert_path), str(issued.key_path)))
    c = Client(peer.url, ca=site_pki.ca, session=session, retries=0)
    session.headers["X-CSRF-Token"] = c.whoami()["csrf"]
    return c


def steer_to_b(site, site_pki) -> None:
    """Load reports (as the peers' agents) that make the broker send the next job's inputs to site-b."""
    a, b = site
    report_load(a.url, a, 5.0, session=host_session(site_pki, "site-a"))
    report_load(a.url, b, 0.1, session=host_session(site_pki, "site-b"))


def submit(client: Client, exe: bytes, name: str) -> dict:
    return client.submit(name, exe, "job.sub", ["data.txt"], executable_name="job.sh", submit_text=SUB)


@pytest.fixture(scope="module")
def alices_job(site, site_pki):
    """A job of alice's, home site-a, that keeps running at site-b (its piece sent there with her proof)."""
    a, b = site
    alice = login(a, site_pki, "alice")
    steer_to_b(site, site_pki)
    job = submit(alice, SLOW_SH, "long")
    assert job["peer"] == "site-a"
    seen: list[dict] = []
    try:
        wait_until(lambda: seen.append(alice.status(job["id"])[0]) or seen[-1]["state"] == "running", 60,
                   what="alice's job to run")
    except AssertionError:
        raise AssertionError(f"alice's job did not run: {seen[-1]}") from None
    assert seen[-1]["inputs"][0]["site"] == "site-b"
    job["piece"] = with_history(alice, job["id"])["inputs"][0]["attempts"][0]["piece"]
    return alice, job


def stolen_key_token(site_pki, host: str, **claims) -> str:
    """A token signed with a stolen host key (what a job could read from the peer's PKI directory)."""
    key = pki.load_private_key(site_pki.host(host).key_path)
    payload = {"iss": host, "jti": "stolen", **claims}
    return jwt.encode(payload, key, algorithm="ES256", headers={"kid": host, "typ": None})


def user_routes(b, job_id: str) -> list[tuple[str, str]]:
    return [("GET", f"{b.url}/api/v1/admin/acl"), ("GET", f"{b.url}/api/v1/admin/audit?local=1"),
            ("GET", f"{b.url}/api/v1/jobs/{job_id}"), ("GET", f"{b.url}/api/v1/jobs/{job_id}/outputs"),
            ("GET", f"{b.url}/api/v1/jobs/{job_id}/outputs/0/out.txt"), ("GET", f"{b.url}/api/v1/jobs?local=1"),
            ("GET", f"{b.url}/api/v1/auth/tokens?local=1&all=1"), ("DELETE", f"{b.url}/api/v1/jobs/{job_id}"),
            ("POST", f"{b.url}/api/v1/jobs/{job_id}/retry")]


def piece_routes(b, piece: str) -> list[tuple[str, str]]:
    """Host-to-host routes that act for the piece's owner: the user's proof is needed there too."""
    return [("GET", f"{b.url}/api/v1/peer/pieces/{piece}/outputs"),
            ("GET", f"{b.url}/api/v1/peer/pieces/{piece}/outputs/0/out.txt")]


def assert_still_running(alice: Client, job_id: str) -> None:
    status, _ = alice.status(job_id)
    assert status["state"] == "running", status


def test_a_host_certificate_asserting_a_user_gets_no_user_powers(site, site_pki, alices_job):
    a, b = site
    alice, job = alices_job
    thief = host_session(site_pki, "site-a")  # site-a's certificate and key, as a job could have read them
    carol = json.dumps({"dn": site_pki.dn("carol"), "vo": "cms", "source": "192.0.2.1"})
    for peer, stolen in ((b, thief), (a, host_session(site_pki, "site-b"))):  # the job's site, and its home
        for method, url in user_routes(peer, job["id"]):
            r = stolen.request(method, url, headers={"X-Pocketgrid-User": carol}, timeout=10)
            assert r.status_code == 401, (url, r.status_code, r.text)
            assert "proof" in r.json()["error"] and "host powers only" in r.json()["error"]
            r = stolen.request(method, url, timeout=10)  # the host certificate alone: a host, not a user
            assert r.status_code == 403, (url, r.status_code, r.text)
    alice_dn = json.dumps({"dn": site_pki.dn("alice"), "vo": "cms"})
    for method, url in piece_routes(b, job["piece"]):  # the owner's own piece, asked with only a host's word
        for headers in ({"X-Pocketgrid-User": alice_dn}, {}):
            r = thief.request(method, url, headers=headers, timeout=10)
            assert r.status_code == 401 and "proof" in r.json()["error"], (url, r.status_code, r.text)
    assert_still_running(alice, job["id"])
    r = thief.get(f"{b.url}/api/v1/peer/security", timeout=10)  # host powers are still there
    assert r.status_code == 200


def test_forged_expired_revoked_and_misdirected_proofs_are_refused(site, site_pki, alices_job):
    a, b = site
    alice, job = alices_job
    thief = host_session(site_pki, "site-a")
    carol_dn = site_pki.dn("carol")
    now = int(time.time())
    claims = jwt.decode(alice.token, options={"verify_signature": False})
    other_key = ec.generate_private_key(ec.SECP256R1())
    forged = jwt.encode({**claims, "sub": carol_dn}, other_key, algorithm="ES256",
                        headers=jwt.get_unverified_header(alice.token))
    expired = stolen_key_token(site_pki, "site-a", sub=carol_dn, exp=now - 30)
    elsewhere = stolen_key_token(site_pki, "site-a", sub=carol_dn, exp=now + 60, knd="delegation", aud="site-a")
    victim = login(a, site_pki, "carol")
    revoked = victim.token
    victim.logout()
    wait_until(lambda: requests.get(f"{b.url}/api/v1/auth/whoami", headers={"Authorization": f"Bearer {revoked}"},
                                    verify=site_pki.ca, timeout=5).status_code == 401,
               what="the revocation to reach site-b")
    cases = [(forged, "signature"), (expired, "expired"), (revoked, "revoked"), (elsewhere, "delegation"),
             ("garbage", "malformed")]
    for proof, needle in cases:
        for method, url in user_routes(b, job["id"]) + piece_routes(b, job["piece"]):
            r = thief.request(method, url, timeout=10, headers={
                "X-Pocketgrid-User": json.dumps({"dn": carol_dn}), TOKEN_HEADER: proof})
            assert r.status_code == 401 and needle in r.json()["error"], (needle, url, r.status_code, r.text)
    # alice's own valid token, but the header names carol: refused, not alice's nor carol's powers
    r = thief.get(f"{b.url}/api/v1/jobs/{job['id']}", timeout=10,
                  headers={"X-Pocketgrid-User": json.dumps({"dn": carol_dn}), TOKEN_HEADER: alice.token})
    assert r.status_code == 401 and "other than" in r.json()["error"]
    # a delegation is never a bearer token, nor good from a host other than its signer
    delegation = stolen_key_token(site_pki, "site-a", sub=carol_dn, exp=now + 60, knd="delegation", aud="site-b")
    r = requests.get(f"{b.url}/api/v1/admin/acl", headers={"Authorization": f"Bearer {delegation}"},
                     verify=site_pki.ca, timeout=10)
    assert r.status_code == 401 and "not a bearer token" in r.json()["error"]
    r = host_session(site_pki, "site-x").get(f"{b.url}/api/v1/admin/acl", headers={TOKEN_HEADER: delegation},
                                             timeout=10)
    assert r.status_code == 401 and "delegation" in r.json()["error"]
    assert_still_running(alice, job["id"])


def pieces(peer) -> set[str]:
    stage = peer.state / "stage"
    return {d.name for d in stage.iterdir()} if stage.exists() else set()


def test_a_forwarded_job_must_be_for_the_proven_user(site, site_pki):
    a, b = site
    thief = host_session(site_pki, "site-a")
    alice = login(a, site_pki, "alice")
    meta = {"name": "evil", "owner": site_pki.dn("carol"), "executable_name": "job.sh", "submit_name": "job.sub",
            "submit_text": SUB, "entry_peer": "site-a", "entry_url": a.url, "origin_key": "evil-1",
            "inputs": [{"name": "data.txt", "path": "data.txt", "size": 2, "sha256": "0" * 64}]}
    files = {"executable": ("job.sh", OK_SH, "application/octet-stream")}
    before = pieces(b)
    r = thief.post(f"{b.url}/api/v1/peer/jobs", data={"meta": json.dumps(meta)}, files=files, timeout=30)
    assert r.status_code == 401 and "proof" in r.json()["error"]
    r = thief.post(f"{b.url}/api/v1/peer/jobs", data={"meta": json.dumps(meta)}, files=files, timeout=30,
                   headers={TOKEN_HEADER: alice.token})  # alice's proof, carol named as the owner
    assert r.status_code == 403 and "owner" in r.json()["error"]
    assert pieces(b) == before  # no piece was staged at site-b
    carol = login(b, site_pki, "carol")
    assert not [j for j in carol.jobs() if j["name"] == "evil"]  # no job record either


def test_the_real_user_still_works_through_every_relay(site, site_pki, alices_job):
    a, b = site
    alice, job = alices_job
    assert job["id"] in {j["id"] for j in alice.jobs()}
    listed = alice.job_list()
    assert listed["unreachable_peers"] == []
    outputs = alice.outputs(job["id"])["outputs"][0]["files"]
    assert "out.txt" in [f["name"] for f in outputs]
    r = alice.session.get(f"{a.url}/api/v1/jobs/{job['id']}/outputs/0/out.txt", timeout=10)
    assert r.status_code == 200 and r.text == "started\n"
    with alice.session.get(f"{a.url}/api/v1/jobs/{job['id']}/events", stream=True, timeout=30) as events:
        assert events.status_code == 200
        first = b""
        for chunk in events.iter_content(None):
            first += chunk
            if any(b"data:" in event for event in first.split(b"\n\n")[:-1]):  # a whole event with data
                break
        assert b'"state":"running"' in first.replace(b" ", b"")
    tokens = alice.token_list()  # alice's tokens from both peers
    assert tokens["unreachable_peers"] == [] and {t["peer"] for t in tokens["tokens"]} >= {"site-a"}
    carol = login(a, site_pki, "carol")  # an administrator with a token: grid views reach every peer
    assert carol.audit_log()["unreachable_peers"] == []
    assert carol.token_list(everyone=True)["unreachable_peers"] == []
    # pairing at another peer: a code minted at site-a, redeemed at site-b
    code = alice.pairing_code()["code"]
    phone = Client(b.url, ca=site_pki.ca, retries=0)
    phone.pair(code, "pixel")
    assert phone.status(job["id"])[0]["state"] == "running"  # relayed to its home site-a with the device token
    phone_at_a = Client(a.url, ca=site_pki.ca, token=phone.token, retries=0)
    assert phone_at_a.status(job["id"])[0]["state"] == "running"  # at its home: no relay, the phone's own token
    r = phone.session.get(f"{b.url}/api/v1/jobs/{job['id']}/outputs/0/out.txt", timeout=10)
    assert r.status_code == 200 and r.text == "started\n"  # site-b -> home site-a -> back to site-b's piece
    assert phone_at_a.whoami()["admin"] is False
    # a browser paired with a cookie at site-a: relayed with the cookie's token
    browser = Session(verify=site_pki.ca)
    r = browser.post(f"{a.url}/api/v1/auth/pair", timeout=10,
                     json={"code": alice.pairing_code()["code"], "device": "browser", "cookie": True})
    assert r.status_code == 201 and "token" not in r.json() and browser.cookies.get("pg_session")
    r = browser.get(f"{a.url}/api/v1/jobs/{job['id']}", timeout=10)
    assert r.status_code == 200 and r.json()["state"] == "running"
    assert job["id"] in {j["id"] for j in browser.get(f"{a.url}/api/v1/jobs", timeout=10).json()["jobs"]}
    alice.kill(job["id"])  # relayed kill, with alice's proof
    final = alice.wait(job["id"], timeout=60)
    assert final["state"] in {"removed", "killed"}, final


def test_a_certificate_user_is_relayed_by_a_delegation(site, site_pki):
    a, b = site
    bob = certificate_client(a, site_pki, "bob")
    assert bob.whoami()["dn"] == site_pki.dn("bob")
    steer_to_b(site, site_pki)
    job = submit(bob, OK_SH, "by-cert")  # its piece sent to site-b with a delegation for site-b
    assert job["peer"] == "site-a"
    final = bob.wait(job["id"], timeout=60)
    assert final["state"] == "completed" and final["owner"] == site_pki.dn("bob")
    assert final["inputs"][0]["site"] == "site-b"
    assert job["id"] in {j["id"] for j in bob.jobs()}
    r = bob.session.get(f"{a.url}/api/v1/jobs/{job['id']}/outputs/0/out.txt", timeout=10)
    assert r.status_code == 200 and r.text == "ok\n"  # the home relays to site-b with a delegation of its own
    bob_at_b = certificate_client(b, site_pki, "bob")  # two delegations: site-b -> home site-a -> site-b
    r = bob_at_b.session.get(f"{b.url}/api/v1/jobs/{job['id']}/outputs/0/out.txt", timeout=10)
    assert r.status_code == 200 and r.text == "ok\n"
    other = certificate_client(a, site_pki, "alice")  # another certificate user still cannot see it
    with pytest.raises(ApiError) as err:
        other.status(job["id"])
    assert err.value.status == 404
    carol = certificate_client(a, site_pki, "carol")  # an administrator's certificate: admin at every peer
    assert carol.audit_log()["unreachable_peers"] == []
    assert carol.status(job["id"])[0]["state"] == "completed"
