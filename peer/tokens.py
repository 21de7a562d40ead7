"""Bearer tokens: short-lived, signed by the issuing peer's host key, revocable.

A token is a JWT (PyJWT) signed with the issuing peer's host-certificate key
(ES256 for EC keys, RS256 for RSA) whose ``kid`` header names that peer.
Any peer can check it without asking anyone: the public key comes from the
issuer's host certificate, which the membership carries (the broker took it
from the mutual-TLS handshake when the issuer registered), checked against
the site CA, its dates, and its CN (must equal the issuer's name).  Only if
the membership has none yet is it read from a TLS handshake with the issuer.
So a phone whose entry peer died keeps working on the others, and a token
signed with any other key is refused.

Revocation (logout, a lost phone) is a set of token IDs: written to the
database, pushed to the other peers (peer/security_sync.py) and checked on
every request from memory.  Verified tokens are cached by their text, so
the hot path (a status poll) costs one dict lookup, not a signature check.
"""
from __future__ import annotations

import logging
import secrets
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable
from urllib.parse import urlsplit

import jwt
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from sqlalchemy import delete, select

from pocketgrid.errors import NotFound, Unauthorized
from pocketgrid.pki import common_name, is_host_certificate

from .db import Database
from .models import IssuedToken, RevokedToken

log = logging.getLogger(__name__)

ALGORITHMS = ["ES256", "RS256"]
#: Verified tokens kept in memory; the cache is dropped whole when it fills.
_CACHE_MAX = 4096
#: Shortest time between two fresh looks at one issuer's certificate.
REFRESH_SECONDS = 60.0
#: Lifetime of a delegation (peer/auth.py): an entry peer's word for a certificate user, to one peer.
DELEGATION_SECONDS = 60.0


@dataclass(frozen=True)
class Claims:
    jti: str
    dn: str
    vo: str | None
    kind: str  # login | device | delegation
    issuer: str
    expires_at: float
    device: str | None = None
    #: The one peer a delegation is for (``aud``); None for login and device tokens.
    audience: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """As the API shows a token: its ID is ``id`` (as in the token list), not the JWT's ``jti``."""
        d = self.__dict__.copy()
        d["id"] = d.pop("jti")
        return d


@dataclass(frozen=True)
class NewToken:
    token: str
    claims: Claims


def algorithm_for(key: Any) -> str:
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        return "ES256"
    if isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey)):
        return "RS256"
    raise ValueError(f"unsupported host key type {type(key).__name__}: use an EC (P-256) or RSA key")


def _same_key(a: Any, b: Any) -> bool:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return a.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo) == b.public_bytes(
        Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


class IssuerKeys:
    """Public keys of the peers that issue tokens, from their host certificates."""

    def __init__(self, own_name: str, own_public_key: Any, ca_file: str, url_of: Callable[[str], str | None],
                 cert_of: Callable[[str], str | None] = lambda name: None, timeout: float = 5.0) -> None:
        self._keys: dict[str, Any] = {own_name: own_public_key}
        self.own_name = own_name
        self.ca_file = ca_file
        with open(ca_file, "rb") as fh:
            self._cas = x509.load_pem_x509_certificates(fh.read())
        self.url_of = url_of
        self.cert_of = cert_of
        self._refreshed: dict[str, float] = {}
        self.timeout = timeout
        self._lock = threading.Lock()

    def get(self, name: str, *, refresh: bool = False) -> Any:
        """``refresh``: the cached key did not verify a token; look again, at most once a minute per
        peer (a forged token must not make this peer open a connection per request)."""
        key = self._keys.get(name)
        if key is not None and (not refresh or name == self.own_name
                                or time.monotonic() - self._refreshed.get(name, -REFRESH_SECONDS) < REFRESH_SECONDS):
            return key
        if refresh:
            self._refreshed[name] = time.monotonic()
        cert = self._from_membership(name)
        if cert is not None and refresh and key is not None and _same_key(cert.public_key(), key):
            cert = None  # the membership knows no newer certificate: ask the peer itself
        if cert is None:
            url = self.url_of(name)
            if url is None:
                raise Unauthorized(f"the token was issued by {name!r}, which is not (or not yet) a member of this "
                                   "system: log in again, or retry once that peer has joined")
            try:
                cert = self._fetch_certificate(url)
            except (OSError, ssl.SSLError) as exc:
                raise Unauthorized(
                    f"the token was issued by peer {name}, whose certificate is unknown here and cannot be fetched "
                    f"now ({exc}); log in here again"
                ) from None
        if common_name(cert) != name or not is_host_certificate(cert):
            raise Unauthorized(f"peer {name}'s address answers with another certificate; log in again")
        key = cert.public_key()
        with self._lock:
            self._keys[name] = key
        return key

    def _from_membership(self, name: str) -> x509.Certificate | None:
        """The member's certificate from the membership, if it is there and the site CA issued it."""
        pem = self.cert_of(name)
        if not pem:
            return None
        cert = x509.load_pem_x509_certificate(pem.encode())
        now = datetime.now(timezone.utc)
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            return None
        for ca in self._cas:
            try:
                cert.verify_directly_issued_by(ca)
                return cert
            except (ValueError, TypeError, InvalidSignature):
                continue
        return None

    def _fetch_certificate(self, url: str) -> x509.Certificate:
        """The host certificate a TLS handshake with ``url`` presents, verified against the CA."""
        parts = urlsplit(url)
        host, port = parts.hostname or "", parts.port or 443
        context = ssl.create_default_context(cafile=self.ca_file)
        with socket.create_connection((host, port), timeout=self.timeout) as raw:
            with context.wrap_socket(raw, server_hostname=host) as tls:
                der = tls.getpeercert(binary_form=True)
        if der is None:
            raise ssl.SSLError("no certificate presented")
        return x509.load_der_x509_certificate(der)


class TokenService:
    def __init__(self, db: Database, *, issuer: str, private_key: Any, keys: IssuerKeys,
                 lifetime: float, device_lifetime: float) -> None:
        self.db = db
        self.issuer = issuer
        self.private_key = private_key
        self.algorithm = algorithm_for(private_key)
        self.keys = keys
        self.lifetime = lifetime
        self.device_lifetime = device_lifetime
        self._lock = threading.Lock()
        self._verified: dict[str, Claims] = {}
        self._delegations: dict[tuple[str, str | None, str], tuple[str, float]] = {}
        now = time.time()
        with db.session() as s:
            s.execute(delete(RevokedToken).where(RevokedToken.expires_at < now))
            self._revoked: set[str] = set(s.scalars(select(RevokedToken.jti)))

    # ---- issuing ------------------------------------------------------------
    def issue(self, dn: str, vo: str | None, *, kind: str = "login", device: str | None = None) -> NewToken:
        now = time.time()
        lifetime = self.device_lifetime if kind == "device" else self.lifetime
        # Small on purpose: the token rides on every poll from a phone.  96 random bits of ID,
        # no "typ" header, no "iat", "knd" only for device tokens.
        claims = Claims(jti=secrets.token_urlsafe(12), dn=dn, vo=vo, kind=kind, issuer=self.issuer,
                        expires_at=int(now + lifetime), device=device)
        payload: dict[str, Any] = {"iss": self.issuer, "sub": dn, "jti": claims.jti, "exp": int(claims.expires_at)}
        if kind != "login":
            payload["knd"] = kind
        if vo:
            payload["vo"] = vo
        if device:
            payload["dev"] = device
        token = jwt.encode(payload, self.private_key, algorithm=self.algorithm,
                           headers={"kid": self.issuer, "typ": None})
        with self.db.session() as s:
            s.add(IssuedToken(jti=claims.jti, dn=dn, vo=vo, kind=kind, device=device, created_at=now,
                              expires_at=claims.expires_at))
        return NewToken(token, claims)

    def delegate(self, dn: str, vo: str | None, audience: str) -> str:
        """A short-lived ``delegation`` token for ``dn``, valid only at peer ``audience``.

        What an entry peer forwards for a user who authenticated with a TLS client
        certificate (no token to forward, peer/auth.py).  Not recorded (not a
        login, not listed); reused for the same user and peer while it has more
        than half its life left, so a poll does not sign anew.
        """
        now = time.time()
        key = (dn, vo, audience)
        cached = self._delegations.get(key)
        if cached is not None and cached[1] - now > DELEGATION_SECONDS / 2:
            return cached[0]
        expires_at = int(now + DELEGATION_SECONDS)
        payload: dict[str, Any] = {"iss": self.issuer, "sub": dn, "jti": secrets.token_urlsafe(12), "exp": expires_at,
                                   "knd": "delegation", "aud": audience}
        if vo:
            payload["vo"] = vo
        token = jwt.encode(payload, self.private_key, algorithm=self.algorithm, headers={"kid": self.issuer, "typ": None})
        with self._lock:
            if len(self._delegations) >= _CACHE_MAX:
                self._delegations.clear()
            self._delegations[key] = (token, expires_at)
        return token

    # ---- checking -------------------------------------------------------------
    def verify(self, token: str) -> Claims:
        """The token's claims, or Unauthorized saying what is wrong with it."""
        claims = self._verified.get(token)
        if claims is None:
            claims = self._verify_signature(token)
            with self._lock:
                if len(self._verified) >= _CACHE_MAX:
                    self._verified.clear()
                self._verified[token] = claims
        if claims.expires_at <= time.time():
            raise Unauthorized("the token has expired: log in again (or pair the device again)")
        if claims.jti in self._revoked:
            raise Unauthorized("the token has been revoked (logged out): log in again")
        return claims

    def _verify_signature(self, token: str) -> Claims:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise Unauthorized("malformed bearer token: log in again") from None
        issuer = header.get("kid")
        if not isinstance(issuer, str) or header.get("alg") not in ALGORITHMS:
            raise Unauthorized("the token does not name a peer that issued it: log in again")
        payload = self._decode(token, issuer, refresh=False)
        if payload is None:  # the issuer's certificate may have been renewed: fetch it once more
            payload = self._decode(token, issuer, refresh=True)
        if payload is None:
            raise Unauthorized("the token's signature does not verify: it was not issued by a peer of this system")
        try:
            return Claims(jti=str(payload["jti"]), dn=str(payload["sub"]), vo=payload.get("vo"),
                          kind=str(payload.get("knd", "login")), issuer=issuer, expires_at=float(payload["exp"]),
                          device=payload.get("dev"),
                          audience=payload["aud"] if isinstance(payload.get("aud"), str) else None)
        except (KeyError, TypeError, ValueError):
            raise Unauthorized("the token lacks required claims: log in again") from None

    def _decode(self, token: str, issuer: str, *, refresh: bool) -> dict[str, Any] | None:
        key = self.keys.get(issuer, refresh=refresh)
        try:
            # ``aud`` (delegations) is checked by the caller against this peer's name (peer/auth.py).
            return jwt.decode(token, key, algorithms=[algorithm_for(key)], issuer=issuer,
                              options={"require": ["exp", "jti", "sub", "iss"], "verify_aud": False})
        except jwt.ExpiredSignatureError:
            raise Unauthorized("the token has expired: log in again (or pair the device again)") from None
        except jwt.InvalidSignatureError:
            return None
        except jwt.InvalidTokenError as exc:
            raise Unauthorized(f"invalid token ({exc}): log in again") from None

    def is_revoked(self, jti: str) -> bool:
        return jti in self._revoked

    # ---- revoking -------------------------------------------------------------
    def revoke(self, jti: str, expires_at: float) -> None:
        """Revoke a token ID here (callers push it to the other peers)."""
        with self.db.session() as s:
            if s.get(RevokedToken, jti) is None:
                s.add(RevokedToken(jti=jti, expires_at=expires_at))
            issued = s.get(IssuedToken, jti)
            if issued is not None and issued.revoked_at is None:
                issued.revoked_at = time.time()
        with self._lock:
            self._revoked.add(jti)

    def merge_revocations(self, items: list[dict[str, Any]]) -> int:
        """Revocations pushed by another peer; returns how many were new."""
        new = [i for i in items if str(i["jti"]) not in self._revoked]
        for item in new:
            self.revoke(str(item["jti"]), float(item["expires_at"]))
        return len(new)

    def revocations(self) -> list[dict[str, Any]]:
        now = time.time()
        with self.db.sessions() as s:
            rows = s.scalars(select(RevokedToken).where(RevokedToken.expires_at >= now))
            return [{"jti": r.jti, "expires_at": r.expires_at} for r in rows]

    def issued_to(self, dn: str | None) -> list[dict[str, Any]]:
        """Unexpired tokens issued here (to ``dn``, or to everyone when None)."""
        query = select(IssuedToken).where(IssuedToken.expires_at >= time.time()).order_by(IssuedToken.created_at)
        if dn is not None:
            query = query.where(IssuedToken.dn == dn)
        with self.db.sessions() as s:
            return [
                {"id": t.jti, "dn": t.dn, "kind": t.kind, "device": t.device, "created_at": t.created_at,
                 "expires_at": t.expires_at, "revoked": t.revoked_at is not None}
                for t in s.scalars(query)
            ]

    def find_issued(self, jti: str, dn: str | None) -> IssuedToken:
        """A token issued here, visible to ``dn`` (None: an administrator); NotFound otherwise."""
        with self.db.sessions() as s:
            t = s.get(IssuedToken, jti)
        if t is None or (dn is not None and t.dn != dn):
            raise NotFound(f"no token {jti!r} issued to you on this peer")
        return t
