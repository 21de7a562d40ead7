"""Certificate login by challenge-response.

1. ``POST /api/v1/auth/challenge`` hands out a random nonce bound to this
   peer (its name and URL are in the text to sign) with a short expiry.
2. The client signs that text with its certificate's private key and sends
   ``{nonce, certificate, signature}`` to ``POST /api/v1/auth/login``.
3. The peer takes the nonce out of its table first (single use: a second
   attempt with the same nonce fails whatever the first one did), then checks
   the certificate's validity dates, that it is a user (not host)
   certificate, its chain to the site CA (``cryptography``'s X.509 client
   verifier) and the signature; only then does it issue a bearer token.

The private key never leaves the user's machine, and a captured login
request is worthless: its nonce is spent and names one peer.
"""
from __future__ import annotations

import base64
import binascii
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from pocketgrid.errors import BadRequest, TooManyRequests, Unauthorized
from pocketgrid.pki import PkiError, identity_of, is_host_certificate, verify_signature

#: Outstanding challenges one peer keeps, and one address may hold, before refusing new ones.
_MAX_OUTSTANDING = 10_000
_MAX_PER_SOURCE = 20


@dataclass(frozen=True)
class Challenge:
    nonce: str
    message: str
    expires_at: float
    source: str = ""

    def to_dict(self) -> dict[str, object]:
        return {"nonce": self.nonce, "message": self.message, "expires_at": self.expires_at}


@dataclass(frozen=True)
class VerifiedUser:
    dn: str
    vo: str | None


def challenge_message(server: str, url: str, nonce: str, expires_at: float) -> str:
    """The exact text a client signs (also returned to it, so it need not rebuild it)."""
    return f"pocketgrid-login\nserver={server}\nurl={url}\nnonce={nonce}\nexpires={int(expires_at)}\n"


class LoginService:
    def __init__(self, *, server: str, url: str, ca_file: str, challenge_lifetime: float) -> None:
        self.server = server
        self.url = url
        with open(ca_file, "rb") as fh:
            self.store = Store(x509.load_pem_x509_certificates(fh.read()))
        self.challenge_lifetime = challenge_lifetime
        self._challenges: dict[str, Challenge] = {}
        self._lock = threading.Lock()

    def challenge(self, source: str = "") -> Challenge:
        """A new nonce; an address may hold only a few unanswered ones (so nobody can exhaust the table)."""
        now = time.time()
        nonce = secrets.token_urlsafe(24)
        expires_at = now + self.challenge_lifetime
        item = Challenge(nonce, challenge_message(self.server, self.url, nonce, expires_at), expires_at, source)
        with self._lock:
            if len(self._challenges) % 256 == 0 or len(self._challenges) >= _MAX_OUTSTANDING:
                for key in [k for k, c in self._challenges.items() if c.expires_at < now]:
                    del self._challenges[key]
            mine = sum(1 for c in self._challenges.values() if c.source == source and c.expires_at >= now)
            if mine >= _MAX_PER_SOURCE or len(self._challenges) >= _MAX_OUTSTANDING:
                raise TooManyRequests("too many logins in progress; retry in a minute", retry_after=int(self.challenge_lifetime))
            self._challenges[nonce] = item
        return item

    def verify(self, nonce: str, certificate_pem: str, signature_b64: str) -> VerifiedUser:
        """Check one login answer; raise Unauthorized (401) naming what failed."""
        with self._lock:
            item = self._challenges.pop(nonce, None)  # spent now, whatever happens next
        if item is None:
            raise Unauthorized("unknown or already used challenge: ask for a new one (POST /api/v1/auth/challenge)")
        if item.expires_at < time.time():
            raise Unauthorized("the challenge has expired: ask for a new one and answer within "
                               f"{self.challenge_lifetime:.0f} s")
        try:
            certs = x509.load_pem_x509_certificates(certificate_pem.encode())
        except ValueError:
            raise BadRequest("'certificate' must be the PEM text of your user certificate") from None
        leaf, chain = certs[0], certs[1:]
        now = datetime.now(timezone.utc)
        if leaf.not_valid_after_utc < now:
            raise Unauthorized(f"the certificate expired on {leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC: get a new one")
        if leaf.not_valid_before_utc > now:
            raise Unauthorized(f"the certificate is not valid before {leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC")
        if is_host_certificate(leaf):
            raise Unauthorized("a host certificate cannot log in as a user: use a user certificate")
        try:
            PolicyBuilder().store(self.store).time(now).build_client_verifier().verify(leaf, chain)
        except VerificationError as exc:
            raise Unauthorized(f"the certificate was not issued by this site's CA ({exc})") from None
        try:
            signature = base64.b64decode(signature_b64, validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest("'signature' must be base64") from None
        try:
            verify_signature(leaf.public_key(), signature, item.message.encode())
        except (InvalidSignature, PkiError):
            raise Unauthorized("the signature does not match the challenge and the certificate's key") from None
        dn, vo = identity_of(leaf)
        return VerifiedUser(dn, vo)
