"""CSRF protection for browsers: a per-session token in a header, and no cross-site writes.

A browser sends its credentials by itself: the session cookie (a paired
phone, peer/session_cookie.py) or the user's TLS client certificate (a
desktop with the certificate installed).  So every state-changing request
(POST, PUT, PATCH, DELETE) authenticated by one of those must also carry
``X-CSRF-Token``, a value only a page of this origin can read (from
``GET /api/v1/auth/whoami``).  Bearer tokens need none: a browser never
attaches them by itself.

The token is derived, not stored, so any peer checks it without state:

* cookie session: ``base64url(HMAC-SHA256(key=the session token, "pocketgrid-csrf-v1"))``.
  Another page cannot compute it without the cookie, which script cannot
  read (HttpOnly) and other sites never get (SameSite=Strict).
* certificate: ``base64url(HMAC-SHA256(key=this peer's CSRF key, "cert\\0" + SHA-256 of the
  certificate))``; the key is derived from the peer's host private key, so it
  survives restarts and differs per peer (a browser talks to one origin).

Independently of credentials, a state-changing request whose ``Origin`` is
not this peer, or whose ``Sec-Fetch-Site`` is ``cross-site``, is refused
(this also stops a foreign page from pairing a browser to another account).
"""
from __future__ import annotations

import base64
import hashlib
import hmac

from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from flask import current_app, request

from pocketgrid.errors import Forbidden

from .access import PUBLIC, audience
from .auth import Identity, identity

HEADER = "X-CSRF-Token"
LABEL = b"pocketgrid-csrf-v1"
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: How the caller authenticated when the browser sends the credential by itself.
AMBIENT_CREDENTIALS = frozenset({"cookie", "certificate"})
MISSING_OR_WRONG = "missing or wrong CSRF token: reload the page"


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def token_for_session(session_token: str) -> str:
    return _b64(hmac.new(session_token.encode(), LABEL, hashlib.sha256).digest())


def _peer_key() -> bytes:
    ext = current_app.extensions
    key = ext.get("pocketgrid.csrf_key")
    if key is None:
        private_key = ext["pocketgrid"].security.tokens.private_key
        der = private_key.private_bytes(Encoding.DER, PrivateFormat.PKCS8, NoEncryption())
        key = hashlib.sha256(LABEL + b"\0peer key\0" + der).digest()
        ext["pocketgrid.csrf_key"] = key
    return key


def token_for_certificate(pem: str) -> str:
    fingerprint = hashlib.sha256(pem.encode()).digest()
    return _b64(hmac.new(_peer_key(), b"cert\0" + fingerprint, hashlib.sha256).digest())


def token_for(who: Identity) -> str | None:
    """The CSRF token this caller must send on writes, or None when it needs none (bearer, host)."""
    if who.credential == "cookie" and who.session_token:
        return token_for_session(who.session_token)
    if who.credential == "certificate" and who.certificate_pem:
        return token_for_certificate(who.certificate_pem)
    return None


def _same_origin(origin: str) -> bool:
    own = {request.host_url.rstrip("/"), current_app.extensions["pocketgrid"].config.url.rstrip("/")}
    return origin.rstrip("/") in own


def check_csrf() -> None:
    """``before_request`` (after peer/access.py): refuse cross-site writes and writes without the token."""
    if request.method not in STATE_CHANGING:
        return
    if request.headers.get("Sec-Fetch-Site") == "cross-site":
        raise Forbidden("cross-site requests are refused: open the web app of this peer itself")
    origin = request.headers.get("Origin")
    if origin is not None and not _same_origin(origin):
        raise Forbidden(f"requests from another site ({origin[:200]}) are refused: open the web app of this peer itself")
    endpoint = request.endpoint
    svc = current_app.extensions["pocketgrid"]
    if endpoint is None or svc.config.insecure_http or audience(endpoint) == PUBLIC:
        return  # public routes read no ambient credential (a stale cookie must not stop a new pairing)
    who = identity(required=False)
    if who is None or who.credential not in AMBIENT_CREDENTIALS:
        return
    expected = token_for(who)
    sent = request.headers.get(HEADER, "")
    if expected is None or not hmac.compare_digest(sent.encode(), expected.encode()):
        raise Forbidden(MISSING_OR_WRONG)
