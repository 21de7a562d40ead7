"""Tokens, pairing codes and login challenges, in process (the HTTP side: tests/integration/test_security.py)."""
from __future__ import annotations

import base64
import time

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from peer.db import Database
from peer.login import LoginService
from peer.models import Base
from peer.pairing import ALPHABET, PairingService
from peer.tokens import IssuerKeys, TokenService
from pocketgrid import pki
from pocketgrid.errors import TooManyRequests, Unauthorized
from tests.conftest import wait_until


@pytest.fixture
def db(tmp_path):
    database = Database(f"sqlite:///{tmp_path / 'p.db'}")
    database.create_all(Base.metadata)
    yield database
    database.dispose()


def tokens(db, site_pki, *, lifetime=60.0, name="site-a", url_of=lambda n: None, cert_of=lambda n: None):
    host = site_pki.host(name)
    key = pki.load_private_key(host.key_path)
    keys = IssuerKeys(name, key.public_key(), site_pki.ca, url_of, cert_of=cert_of, timeout=1)
    return TokenService(db, issuer=name, private_key=key, keys=keys, lifetime=lifetime, device_lifetime=600)


# ---- tokens -----------------------------------------------------------------------------
def test_a_cached_token_is_still_refused_once_revoked(db, site_pki):
    svc = tokens(db, site_pki)
    new = svc.issue("CN=Alice", "cms")
    assert svc.verify(new.token).dn == "CN=Alice"  # now cached
    svc.revoke(new.claims.jti, new.claims.expires_at)
    with pytest.raises(Unauthorized, match="revoked"):
        svc.verify(new.token)
    assert svc.issued_to("CN=Alice")[0]["revoked"] is True


def test_revocations_survive_a_restart_and_merge_from_other_peers(db, site_pki):
    svc = tokens(db, site_pki)
    mine = svc.issue("CN=Alice", None)
    svc.revoke(mine.claims.jti, mine.claims.expires_at)
    assert svc.merge_revocations([{"jti": "elsewhere", "expires_at": time.time() + 60},
                                  {"jti": mine.claims.jti, "expires_at": mine.claims.expires_at}]) == 1
    again = tokens(db, site_pki)  # a restarted peer reads them back
    assert {r["jti"] for r in again.revocations()} == {mine.claims.jti, "elsewhere"}
    with pytest.raises(Unauthorized, match="revoked"):
        again.verify(mine.token)


def test_tokens_of_another_peer_verify_through_the_membership_certificate(db, site_pki):
    issuer = tokens(db, site_pki, name="site-b")
    new = issuer.issue("CN=Bob", "atlas", kind="device", device="pixel")
    pem = site_pki.host("site-b").cert_path.read_text()
    verifier = tokens(db, site_pki, name="site-a", cert_of=lambda n: pem if n == "site-b" else None)
    claims = verifier.verify(new.token)
    assert (claims.dn, claims.vo, claims.kind, claims.device, claims.issuer) == ("CN=Bob", "atlas", "device", "pixel", "site-b")
    # a certificate for the right name from another CA is not believed
    other = site_pki.root.parent / "other-ca-for-tokens"
    if not (other / "ca.pem").exists():
        pki.init_ca(other)
    forged_pem = pki.issue_host(other, "site-b").cert_path.read_text()
    fooled = tokens(db, site_pki, name="site-a", cert_of=lambda n: forged_pem)
    with pytest.raises(Unauthorized, match="a member of this system"):  # falls back to url_of: unknown
        fooled.verify(new.token)


def test_expired_and_foreign_tokens(db, site_pki):
    import jwt

    svc = tokens(db, site_pki, lifetime=-1)
    with pytest.raises(Unauthorized, match="expired"):
        svc.verify(svc.issue("CN=Alice", None).token)
    forged = jwt.encode({"iss": "site-a", "sub": "CN=Root", "jti": "x", "iat": 1, "exp": time.time() + 60},
                        ec.generate_private_key(ec.SECP256R1()), algorithm="ES256", headers={"kid": "site-a"})
    with pytest.raises(Unauthorized, match="signature"):
        tokens(db, site_pki).verify(forged)


# ---- pairing ------------------------------------------------------------------------------
def test_pairing_codes_are_single_use_and_expire():
    svc = PairingService(lifetime=60, max_failures=5, window=60)
    code, expires_at = svc.new_code("CN=Alice", "cms")
    assert len(code) == 9 and code[4] == "-" and set(code.replace("-", "")) <= set(ALPHABET)
    assert expires_at > time.time()
    assert svc.redeem(code.lower().replace("-", " "), "10.0.0.1").dn == "CN=Alice"  # typed loosely on a phone
    with pytest.raises(Unauthorized, match="already used"):
        svc.redeem(code, "10.0.0.1")
    short = PairingService(lifetime=0.05, max_failures=5, window=60)
    old, old_expiry = short.new_code("CN=Alice", None)
    wait_until(lambda: time.time() > old_expiry, what="the code to expire")
    with pytest.raises(Unauthorized, match="expired"):
        short.redeem(old, "10.0.0.1")


def test_guessing_locks_out_the_guesser_not_everyone():
    svc = PairingService(lifetime=60, max_failures=3, window=60)
    code, _ = svc.new_code("CN=Alice", None)
    for _ in range(3):
        with pytest.raises(Unauthorized):
            svc.redeem("ZZZZ-ZZZZ", "10.0.0.66")
    with pytest.raises(TooManyRequests) as err:
        svc.redeem(code, "10.0.0.66")
    assert 0 < err.value.details["retry_after"] <= 61
    assert svc.redeem(code, "10.0.0.7").dn == "CN=Alice"  # another address is not locked out, and the code was kept


def test_guessing_from_many_addresses_hits_the_global_limit():
    svc = PairingService(lifetime=60, max_failures=1, window=60)  # global limit: 20 failures
    for i in range(20):
        with pytest.raises(Unauthorized):
            svc.redeem("ZZZZ-ZZZZ", f"10.0.1.{i}")
    code, _ = svc.new_code("CN=Alice", None)
    with pytest.raises(TooManyRequests):
        svc.redeem(code, "10.0.2.1")


# ---- login challenges -----------------------------------------------------------------------
def test_a_challenge_names_the_peer_and_is_spent_by_any_attempt(site_pki):
    svc = LoginService(server="site-a", url="https://a.example:8650", ca_file=site_pki.ca, challenge_lifetime=30)
    item = svc.challenge()
    assert "server=site-a" in item.message and "url=https://a.example:8650" in item.message and item.nonce in item.message
    alice = site_pki.users["alice"]
    bad = base64.b64encode(pki.sign_bytes(pki.load_private_key(site_pki.users["bob"].key_path), item.message.encode()))
    with pytest.raises(Unauthorized, match="signature"):
        svc.verify(item.nonce, alice.cert_path.read_text(), bad.decode())
    good = base64.b64encode(pki.sign_bytes(pki.load_private_key(alice.key_path), item.message.encode()))
    with pytest.raises(Unauthorized, match="already used"):  # the failed attempt spent it
        svc.verify(item.nonce, alice.cert_path.read_text(), good.decode())
    fresh = svc.challenge()
    good = base64.b64encode(pki.sign_bytes(pki.load_private_key(alice.key_path), fresh.message.encode()))
    user = svc.verify(fresh.nonce, alice.cert_path.read_text(), good.decode())
    assert (user.dn, user.vo) == (site_pki.dn("alice"), "cms")


def test_one_address_cannot_exhaust_the_challenge_table(site_pki):
    svc = LoginService(server="site-a", url="https://a", ca_file=site_pki.ca, challenge_lifetime=30)
    for _ in range(20):
        svc.challenge("10.0.0.66")
    with pytest.raises(TooManyRequests):
        svc.challenge("10.0.0.66")
    assert svc.challenge("10.0.0.7").nonce  # everyone else can still log in
