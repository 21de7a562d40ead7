"""Security end to end: certificates, TLS, login, tokens, pairing, ACLs, ownership, audit.

Real peer processes with TLS (mutual TLS between peers), a real site CA made
by ``pocketgrid pki``; every attack the issue lists is tried and must be
refused with a clear 4xx and change nothing.
"""
from __future__ import annotations

import base64
import json
import socket
import ssl
import time
from datetime import datetime, timedelta, timezone

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import ec

from mobile_client import ApiError, Client
from pocketgrid.http import Session
from pocketgrid import pki
from tests.conftest import host_session, user_session, wait_until
from tests.conftest import login_client as login, start_secure as start

pytestmark = pytest.mark.integration

OK_SH = b"#!/bin/sh\necho ok > out.txt\n"
OK_SUB = "executable = ok.sh\nqueue\n"


@pytest.fixture(scope="module")
def site(tmp_path_factory, site_pki):
    """Two TLS peers: site-a holds the broker role, site-b joins it (mutual TLS)."""
    root = tmp_path_factory.mktemp("secure")
    a = start(root, site_pki, "site-a")
    b = start(root, site_pki, "site-b", join=a)
    for p in (a, b):
        (p.publish / "data.txt").write_text("1\n2\n3\n")
    wait_until(lambda: len(user_session(a, site_pki, "carol").get(f"{a.url}/api/v1/broker").json()["members"]) == 2,
               what="site-b to join site-a over mutual TLS")
    yield a, b
    for p in (b, a):
        p.stop()


def login_body(peer, site_pki, cert_path, key_path, *, challenge=None) -> dict:
    """A login answer built by hand, so a test can tamper with any part."""
    s = Session(verify=site_pki.ca)
    challenge = challenge or s.post(f"{peer.url}/api/v1/auth/challenge", timeout=5).json()
    signature = pki.sign_bytes(pki.load_private_key(key_path), challenge["message"].encode())
    return {"nonce": challenge["nonce"], "certificate": open(cert_path).read(),
            "signature": base64.b64encode(signature).decode()}


def post_login(peer, site_pki, body) -> requests.Response:
    return requests.post(f"{peer.url}/api/v1/auth/login", json=body, verify=site_pki.ca, timeout=5)


def submit(client: Client, name="j") -> dict:
    return client.submit(name, OK_SH, "job.sub", ["data.txt"], executable_name="ok.sh", submit_text=OK_SUB)


def tokens_issued(peer, site_pki) -> int:
    """Tokens the peer issued to anyone but carol (who logs in to look)."""
    carol = login(peer, site_pki, "carol")
    return len([t for t in carol.tokens(everyone=True) if t["dn"] != site_pki.dn("carol")])


def audit(peer, site_pki, action: str) -> list[dict]:
    return login(peer, site_pki, "carol").audit(action=action, limit=1000)


# ---- TLS and certificates -----------------------------------------------------------------------
def test_plain_http_and_unknown_server_certificates_are_refused(site, site_pki, tmp_path):
    a, _ = site
    with pytest.raises(requests.exceptions.ConnectionError):  # the peer speaks TLS only
        requests.get(a.url.replace("https://", "http://") + "/healthz", timeout=5)
    other = tmp_path / "other-ca"
    pki.init_ca(other)
    with pytest.raises(requests.exceptions.SSLError):  # a client trusting another CA refuses the peer
        requests.get(f"{a.url}/healthz", verify=str(other / "ca.pem"), timeout=5)


def test_client_certificates_from_another_ca_or_expired_fail_the_handshake(site, site_pki, tmp_path):
    a, _ = site
    other = tmp_path / "other-ca"
    pki.init_ca(other)
    foreign = pki.issue_host(other, "site-b")  # right name, wrong CA
    past = datetime.now(timezone.utc) - timedelta(days=30)
    expired = pki.issue_host(site_pki.root, "expired-host", days=1, not_before=past)
    for issued in (foreign, expired):
        with pytest.raises(requests.exceptions.SSLError):
            r = requests.get(f"{a.url}/api/v1/peer/security", verify=site_pki.ca, timeout=5,
                             cert=(str(issued.cert_path), str(issued.key_path)))
            r.raise_for_status()


def test_peer_routes_need_a_host_certificate_for_the_right_name(site, site_pki):
    a, b = site
    assert requests.get(f"{a.url}/api/v1/peer/security", verify=site_pki.ca, timeout=5).status_code == 401
    alice = user_session(a, site_pki, "alice")
    r = alice.get(f"{a.url}/api/v1/peer/security", timeout=5)
    assert r.status_code == 403 and "host certificate" in r.json()["error"]
    r = alice.post(f"{a.url}/api/v1/broker/reports", json={"peer": "site-b", "url": b.url, "coefficient": 0}, timeout=5)
    assert r.status_code == 403
    # a user certificate presented by mutual TLS is a user, not a host
    user_tls = Session(verify=site_pki.ca,
                       cert=(str(site_pki.users["alice"].cert_path), str(site_pki.users["alice"].key_path)))
    assert user_tls.get(f"{a.url}/api/v1/peer/security", timeout=5).status_code == 403
    # a valid host may speak only for itself
    as_b = host_session(site_pki, "site-b")
    r = as_b.post(f"{a.url}/api/v1/broker/register", json={"name": "site-c", "url": "https://127.0.0.1:1"}, timeout=5)
    assert r.status_code == 403 and "site-c" in r.json()["error"]
    r = as_b.post(f"{a.url}/api/v1/broker/reports", json={"peer": "site-a", "url": a.url, "coefficient": 0}, timeout=5)
    assert r.status_code == 403
    members = user_session(a, site_pki, "carol").get(f"{a.url}/api/v1/broker", timeout=5).json()["members"]
    assert {m["name"] for m in members} == {"site-a", "site-b"}  # nothing registered


def test_standalone_agent_reports_over_mutual_tls(site, site_pki):
    from pocketgrid.cli import main

    a, b = site
    args = ["agent", "--peer", b.url, "--name", "site-b", "--pki", str(site_pki.root), "--once", "--log-level", "ERROR"]
    assert main(args) == 0
    load = user_session(a, site_pki, "carol").get(f"{a.url}/api/v1/broker", timeout=5).json()["load"]
    assert "site-b" in {row["peer"] for row in load}
    # an agent without the site's certificates cannot report to a TLS peer
    assert main(["agent", "--peer", b.url, "--name", "site-b", "--once", "--log-level", "ERROR"]) == 2


# ---- login ------------------------------------------------------------------------------------------
def test_no_token_is_401_with_a_way_forward(site, site_pki):
    a, _ = site
    r = requests.get(f"{a.url}/api/v1/jobs", verify=site_pki.ca, timeout=5)
    assert r.status_code == 401 and "log in" in r.json()["error"]
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    r = requests.get(f"{a.url}/api/v1/jobs", verify=site_pki.ca, headers={"Authorization": "Basic YWxpY2U6eA=="}, timeout=5)
    assert r.status_code == 401 and "Bearer" in r.json()["error"]


def test_certificate_login_gives_a_token_for_the_dn_and_vo(site, site_pki):
    a, _ = site
    alice = login(a, site_pki, "alice")
    me = alice.whoami()
    assert me["dn"] == site_pki.dn("alice") and me["vo"] == "cms" and me["admin"] is False
    assert me["groups"] == {"files-read": True, "jobs-submit": True, "jobs-manage": True, "admin": False}
    assert login(a, site_pki, "carol").whoami()["admin"] is True  # bootstrap admin from --admin
    events = audit(a, site_pki, "login")
    assert any(e["dn"] == site_pki.dn("alice") and e["outcome"] == "ok" and e["source"] == "127.0.0.1" for e in events)


@pytest.mark.parametrize("attack", ["other-ca", "expired", "not-yet-valid", "wrong-key", "host-cert", "replayed-nonce",
                                    "unknown-nonce", "tampered-message", "garbage-certificate"])
def test_bad_logins_are_refused_and_change_nothing(site, site_pki, tmp_path, attack):
    a, _ = site
    alice = site_pki.users["alice"]
    cert, key = alice.cert_path, alice.key_path
    now = datetime.now(timezone.utc)
    if attack == "other-ca":
        pki.init_ca(tmp_path / "evil")
        forged = pki.issue_user(tmp_path / "evil", "Alice", vo="cms")  # same subject, another CA
        cert, key = forged.cert_path, forged.key_path
    elif attack == "expired":
        old = pki.issue_user(site_pki.root, "Old Alice", vo="cms", days=1, not_before=now - timedelta(days=10),
                             file_name="old-alice")
        cert, key = old.cert_path, old.key_path
    elif attack == "not-yet-valid":
        future = pki.issue_user(site_pki.root, "Future Alice", vo="cms", not_before=now + timedelta(days=10),
                                file_name="future-alice")
        cert, key = future.cert_path, future.key_path
    elif attack == "host-cert":
        host = site_pki.host("site-a")
        cert, key = host.cert_path, host.key_path
    before = tokens_issued(a, site_pki)
    body = login_body(a, site_pki, cert, key)
    expected = {"other-ca": (401, "CA"), "expired": (401, "expired"), "not-yet-valid": (401, "not valid before"),
                "host-cert": (401, "host certificate"), "wrong-key": (401, "signature"),
                "replayed-nonce": (401, "already used"), "unknown-nonce": (401, "unknown"),
                "tampered-message": (401, "signature"), "garbage-certificate": (400, "PEM")}[attack]
    if attack == "wrong-key":  # alice's certificate, bob's key
        body = login_body(a, site_pki, cert, site_pki.users["bob"].key_path)
    elif attack == "replayed-nonce":
        assert post_login(a, site_pki, body).status_code == 200
        before += 1
    elif attack == "unknown-nonce":
        body["nonce"] = "made-up-nonce"
    elif attack == "tampered-message":
        s = requests.post(f"{a.url}/api/v1/auth/challenge", verify=site_pki.ca, timeout=5).json()
        s["message"] = s["message"].replace("server=site-a", "server=site-b")  # signed for another server
        body = login_body(a, site_pki, cert, key, challenge=s)
    elif attack == "garbage-certificate":
        body["certificate"] = "not a certificate"
    r = post_login(a, site_pki, body)
    assert (r.status_code, expected[1].lower() in r.json()["error"].lower()) == (expected[0], True), r.json()
    assert "token" not in r.json()
    assert tokens_issued(a, site_pki) == before  # nothing issued
    failed = [e for e in audit(a, site_pki, "login") if e["outcome"] == "failed"]
    assert failed and failed[0]["source"] == "127.0.0.1"


def test_expired_challenge_and_expired_token(tmp_path, site_pki):
    p = start(tmp_path, site_pki, "short", env={"POCKETGRID_CHALLENGE_LIFETIME": "0.5",
                                                "POCKETGRID_TOKEN_LIFETIME": "2"})
    try:
        s = Session(verify=site_pki.ca)
        challenge = s.post(f"{p.url}/api/v1/auth/challenge", timeout=5).json()
        wait_until(lambda: time.time() > challenge["expires_at"] + 0.2, what="the challenge to expire")
        body = login_body(p, site_pki, site_pki.users["alice"].cert_path, site_pki.users["alice"].key_path,
                          challenge=challenge)
        r = post_login(p, site_pki, body)
        assert r.status_code == 401 and "expired" in r.json()["error"]
        alice = login(p, site_pki, "alice")
        assert alice.jobs() == []
        expires = alice.whoami()["token"]["expires_at"]
        wait_until(lambda: time.time() > expires + 0.5, what="the token to expire")
        with pytest.raises(ApiError) as err:
            alice.jobs()
        assert err.value.status == 401 and "expired" in err.value.message
    finally:
        p.stop()


def test_forged_and_tampered_tokens_are_refused(site, site_pki):
    a, _ = site
    alice = login(a, site_pki, "alice")
    claims = jwt.decode(alice.token, options={"verify_signature": False})
    header = jwt.get_unverified_header(alice.token)
    other_key = ec.generate_private_key(ec.SECP256R1())
    forged = jwt.encode({**claims, "sub": site_pki.dn("carol")}, other_key, algorithm="ES256", headers=header)
    head, payload, sig = alice.token.split(".")
    evil_payload = base64.urlsafe_b64encode(json.dumps({**claims, "sub": site_pki.dn("carol")}).encode()).rstrip(b"=")
    tampered = f"{head}.{evil_payload.decode()}.{sig}"
    unknown_issuer = jwt.encode(claims, other_key, algorithm="ES256", headers={**header, "kid": "nobody"})
    for token, needle in [(forged, "signature"), (tampered, "signature"), (unknown_issuer, "a member of this system"),
                          ("x.y.z", "malformed"), (alice.token[:-4], "malformed")]:
        r = requests.get(f"{a.url}/api/v1/admin/audit", headers={"Authorization": f"Bearer {token}"},
                         verify=site_pki.ca, timeout=5)
        assert r.status_code == 401 and needle in r.json()["error"], (needle, r.json())


def test_logout_revokes_the_token_on_every_peer(site, site_pki):
    a, b = site
    alice = login(a, site_pki, "alice")
    other_session = login(a, site_pki, "alice")
    on_b = Client(b.url, ca=site_pki.ca, token=alice.token, retries=0)
    assert on_b.whoami()["dn"] == site_pki.dn("alice")  # a token from site-a works on site-b
    alice_token = alice.token
    alice.logout()
    for peer in (a, b):
        def refused(peer=peer):
            r = requests.get(f"{peer.url}/api/v1/jobs", headers={"Authorization": f"Bearer {alice_token}"},
                             verify=site_pki.ca, timeout=5)
            return r.status_code == 401 and "revoked" in r.json()["error"]
        wait_until(refused, what=f"the revocation to reach {peer.name}")
    assert other_session.whoami()["dn"] == site_pki.dn("alice")  # only that token
    assert any(e["dn"] == site_pki.dn("alice") for e in audit(a, site_pki, "logout"))


# ---- pairing a phone --------------------------------------------------------------------------------
def test_pairing_gives_the_phone_its_own_revocable_token(site, site_pki):
    a, b = site
    laptop = login(a, site_pki, "alice")
    job = submit(laptop, "phone-job")
    issued = laptop.pairing_code()
    code = issued["code"]
    assert issued["url"] == a.url  # redeemed where it was issued
    phone = Client([a.url, b.url], ca=site_pki.ca, retries=0)
    paired = phone.pair(code, device="pixel")
    assert paired["dn"] == site_pki.dn("alice") and paired["kind"] == "device"
    assert phone.status(job["id"])[0]["id"] == job["id"]  # the phone sees alice's job
    phone_on_b = Client(b.url, ca=site_pki.ca, token=phone.token, retries=0)
    assert phone_on_b.status(job["id"])[0]["id"] == job["id"]  # on any peer
    with pytest.raises(ApiError) as err:  # a device cannot mint more devices
        phone.pairing_code()
    assert err.value.status == 403
    with pytest.raises(ApiError) as err:  # single use
        Client(b.url, ca=site_pki.ca, retries=0).pair(code)
    assert err.value.status == 401 and "already used" in err.value.message
    device = [t for t in laptop.tokens() if t["kind"] == "device" and t["device"] == "pixel"]
    laptop.revoke_token(device[0]["id"])
    wait_until(lambda: _status_code(phone, job["id"]) == 401 and _status_code(phone_on_b, job["id"]) == 401,
               what="the phone's token to be refused on both peers")
    assert laptop.status(job["id"])[0]["id"] == job["id"]  # the laptop is not logged out
    with pytest.raises(ApiError) as err:  # someone else cannot revoke alice's tokens, nor see they exist
        login(a, site_pki, "bob").revoke_token(laptop.whoami()["token"]["id"])
    assert err.value.status == 404


def _status_code(client: Client, job_id: str) -> int:
    try:
        client.status(job_id)
        return 200
    except ApiError as exc:
        return exc.status


def test_pairing_codes_guessed_or_expired_are_refused_and_guessing_is_rate_limited(tmp_path, site_pki):
    p = start(tmp_path, site_pki, "pairing", env={"POCKETGRID_PAIRING_CODE_LIFETIME": "1"})
    try:
        laptop = login(p, site_pki, "alice")
        expired = laptop.pairing_code()
        wait_until(lambda: time.time() > expired["expires_at"] + 0.2, what="the code to expire")
        phone = Client(p.url, ca=site_pki.ca, retries=0)
        with pytest.raises(ApiError) as err:
            phone.pair(expired["code"])
        assert err.value.status == 401 and "expired" in err.value.message
        good = laptop.pairing_code()["code"]
        for guess in ("AAAA-AAAA", "BBBB-BBBB", "CCCC-CCCC", "DDDD-DDDD"):  # 5 failures with the expired one
            with pytest.raises(ApiError) as err:
                phone.pair(guess)
            assert err.value.status == 401
        r = requests.post(f"{p.url}/api/v1/auth/pair", json={"code": good}, verify=site_pki.ca, timeout=5)
        assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0  # even the right code, while locked out
        assert [t for t in laptop.tokens() if t["kind"] == "device"] == []
        events = login(p, site_pki, "carol").audit(action="pair")
        assert len([e for e in events if e["outcome"] == "failed"]) == 6
    finally:
        p.stop()


# ---- ACLs -------------------------------------------------------------------------------------------------
def test_acl_rules_deny_by_dn_substring_and_vo_and_replicate(site, site_pki):
    a, b = site
    carol, alice, bob = (login(a, site_pki, u) for u in ("carol", "alice", "bob"))
    bob_b = login(b, site_pki, "bob")
    assert submit(bob)["id"]
    with pytest.raises(ApiError) as err:  # not an administrator
        bob.acl_add("allow", "admin", "dn", site_pki.dn("bob"))
    assert err.value.status == 403
    version = carol.acl()["version"]
    deny_vo = carol.acl_add("deny", "jobs-submit", "vo", "atlas")
    before = len(bob.jobs())
    with pytest.raises(ApiError) as err:
        submit(bob)
    assert err.value.status == 403 and "atlas" in err.value.message
    assert len(bob.jobs()) == before  # nothing created
    assert submit(alice)["id"]  # cms is not affected
    wait_until(lambda: _submit_status(bob_b) == 403, what="the rule to reach site-b")
    deny_dn = carol.acl_add("deny", "files-read", "dn", site_pki.dn("alice"))
    with pytest.raises(ApiError) as err:
        alice.files()
    assert err.value.status == 403
    bob.files()  # others still read
    deny_part = carol.acl_add("deny", "*", "dn-substring", "CN=Bo")
    with pytest.raises(ApiError):
        bob.jobs()
    rules = carol.acl()
    assert rules["version"] > version and [r["id"] for r in rules["rules"]][-3:] == [deny_vo["id"], deny_dn["id"], deny_part["id"]]
    for rule in (deny_vo, deny_dn, deny_part):
        carol.acl_remove(rule["id"])
    assert submit(bob)["id"] and alice.files()
    wait_until(lambda: _submit_status(bob_b) == 201, what="the removal to reach site-b")
    changes = audit(a, site_pki, "acl-deny") + audit(a, site_pki, "acl-remove")
    assert len([e for e in changes if e["dn"] == site_pki.dn("carol") and e["source"] == "127.0.0.1"]) >= 6


def _submit_status(client: Client) -> int:
    try:
        submit(client)
        return 201
    except ApiError as exc:
        return exc.status


def test_admin_rule_grants_and_bad_rules_change_nothing(site, site_pki):
    a, _ = site
    carol, bob = login(a, site_pki, "carol"), login(a, site_pki, "bob")
    before = carol.acl()
    for bad in [("permit", "admin", "dn", "x"), ("allow", "everything", "dn", "x"), ("allow", "admin", "regex", "x"),
                ("allow", "admin", "dn", ""), ("allow", "admin", "any", "x"), ("deny", "admin", "dn", "a\nb")]:
        with pytest.raises(ApiError) as err:
            carol.acl_add(*bad)
        assert err.value.status == 400 and err.value.message
    with pytest.raises(ApiError) as err:
        carol.acl_remove(999999)
    assert err.value.status == 404
    assert carol.acl() == before
    grant = carol.acl_add("allow", "admin", "dn", site_pki.dn("bob"))
    assert bob.whoami()["admin"] is True and bob.audit(limit=1)
    carol.acl_remove(grant["id"])
    assert bob.whoami()["admin"] is False


# ---- ownership -----------------------------------------------------------------------------------------
def test_jobs_belong_to_their_submitter_through_forwarding(site, site_pki):
    a, b = site
    # make site-b the least loaded, so a job submitted at site-a (its home) runs there
    for peer, load in ((a, 50.0), (b, 0.0)):
        host_session(site_pki, peer.name).post(
            f"{a.url}/api/v1/broker/reports", timeout=5,
            json={"peer": peer.name, "url": peer.url, "coefficient": load, "metrics": {}, "sampled_at": time.time(),
                  "interval": 15}).raise_for_status()
    alice, bob, carol = (login(a, site_pki, u) for u in ("alice", "bob", "carol"))
    job = submit(alice, "mine")
    assert job["peer"] == "site-a"
    final = alice.wait(job["id"], timeout=60)
    assert final["state"] == "completed" and final["inputs"][0]["site"] == "site-b"
    out = alice.outputs(job["id"])["outputs"][0]["files"]
    assert "out.txt" in [f["name"] for f in out]
    bob_b = login(b, site_pki, "bob")
    for client in (bob, bob_b):  # at its home (site-a) and relayed (site-b): the job does not exist for bob
        for call in (lambda c: c.status(job["id"]), lambda c: c.outputs(job["id"]), lambda c: c.kill(job["id"]),
                     lambda c: c._json("GET", f"/api/v1/jobs/{job['id']}/outputs/0/out.txt")):
            with pytest.raises(ApiError) as err:
                call(client)
            assert err.value.status == 404 and "bob" not in err.value.message.lower()
        assert job["id"] not in {j["id"] for j in client.jobs()}
    assert job["id"] in {j["id"] for j in alice.jobs()}
    assert carol.status(job["id"])[0]["state"] == "completed"  # an administrator sees it
    kills = [e for e in audit(a, site_pki, "kill")]
    assert all(e["dn"] != site_pki.dn("bob") for e in kills)  # bob's kill attempts changed nothing
    carol.kill(job["id"])
    kills = audit(a, site_pki, "kill")  # recorded at the job's home, with the user's DN
    assert kills[0]["dn"] == site_pki.dn("carol") and job["id"] in kills[0]["detail"]
    submits = audit(a, site_pki, "submit")
    assert any(job["id"] in e["detail"] and e["dn"] == site_pki.dn("alice") for e in submits)


def test_a_user_cannot_claim_another_dn_with_the_peer_header(site, site_pki):
    a, _ = site
    bob = user_session(a, site_pki, "bob")
    who = json.dumps({"dn": site_pki.dn("carol"), "vo": "cms", "source": "1.2.3.4"})
    r = bob.get(f"{a.url}/api/v1/auth/whoami", headers={"X-Pocketgrid-User": who}, timeout=5)
    assert r.json()["dn"] == site_pki.dn("bob") and r.json()["admin"] is False


def test_uploads_are_private_to_their_owner(site, site_pki, tmp_path):
    a, _ = site
    alice, bob = login(a, site_pki, "alice"), login(a, site_pki, "bob")
    local = tmp_path / "private.txt"
    local.write_text("alice's data\n")
    path = alice.upload(local)["path"]
    assert any(f["path"] == path for f in alice.glob("uploads/**/*"))
    assert not any("private" in f["path"] for f in bob.glob("uploads/**/*")) and not bob.glob("**/private.txt")
    for call in (lambda c: c.checksum(path), lambda c: c.files(path.rsplit("/", 1)[0])):
        with pytest.raises(ApiError) as err:
            call(bob)
        assert err.value.status == 404
    with pytest.raises(ApiError) as err:  # nor can bob run a job on it
        bob.submit("steal", OK_SH, "job.sub", [path], executable_name="ok.sh", submit_text=OK_SUB)
    assert err.value.status == 404
    assert "alice" not in json.dumps(bob.grep("alice's data"))


# ---- oversized input ------------------------------------------------------------------------------------
def test_oversized_headers_are_refused_before_any_work(site, site_pki):
    a, _ = site
    context = ssl.create_default_context(cafile=site_pki.ca)
    with socket.create_connection(("127.0.0.1", a.port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(b"GET /api/v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + b"A" * 20000 + b"\r\n\r\n")
            status_line = tls.recv(200).split(b"\r\n")[0]
    assert status_line.split()[1] in (b"400", b"431"), status_line
    with socket.create_connection(("127.0.0.1", a.port), timeout=10) as raw:  # a body over the limit: refused unread
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(b"POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                        b"Content-Length: 100000000\r\n\r\n{")
            status_line = tls.recv(200).split(b"\r\n")[0]
    assert status_line.split()[1] == b"413", status_line
