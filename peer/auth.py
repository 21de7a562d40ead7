"""Who is calling: the request's :class:`Identity`.

Kinds of caller, checked in this order (docs/security.md):

1. **A peer or an agent** presents its host certificate as the TLS client
   certificate (mutual TLS; gunicorn's handshake already checked the chain
   to the site CA and the dates).  A host certificate alone gives **host
   powers only** (the peer-to-peer routes).  When a peer acts for a user (a
   relayed status poll, a job list fan-out, a forwarded submission) it sends
   the user's proof in ``X-Pocketgrid-User-Token`` and this peer verifies it
   by itself: the user's own token (bearer or cookie: signature, expiry,
   revocation), or, for a user who authenticated with a TLS client
   certificate at the entry peer, a 60-second ``delegation`` that peer signed
   for this peer only (``aud`` = this peer, ``iss`` = the relaying host).
   DN, VO and kind come from the proof; ``X-Pocketgrid-User`` only tells the
   phone's address (``source``) and, if it names a DN, must name the same.
2. **A user** sends ``Authorization: Bearer <token>`` from a certificate
   login or a paired device (peer/tokens.py).
3. **A user with a certificate at hand** (a laptop) may present it as the
   TLS client certificate and skip the login.
4. **A browser session**: the ``pg_session`` cookie set by pairing from the
   web app carries a device token (peer/session_cookie.py); its writes also
   need the CSRF header (peer/csrf.py).

Paired devices (token kind ``device``, also relayed for one) never hold
admin rights: a phone is easier to lose than a certificate.  A delegation
carries the user's rights by this peer's ACL, admin included: the key that
signs it (a member's host key) could sign a login token just as well, so
withholding admin from it would protect nothing.  Delegations are accepted
only from the relaying peer that signed them, never as a bearer token.

Anything else is unauthenticated (401).  With ``insecure_http`` (local
development) there is no TLS, hence no way to authenticate anyone: every
caller is ``anonymous``, as the loud start-up warning says.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import jwt
from flask import current_app, g, request

from pocketgrid.client_certificate import CertIdentity, require_host_name, tls_client_certificate
from pocketgrid.errors import Unauthorized

from .session_cookie import COOKIE_NAME
from .tokens import Claims

#: Header a peer uses to say which user it acts for: information only (the phone's address).
USER_HEADER = "X-Pocketgrid-User"
#: Header carrying the user's proof on a peer-to-peer request: the user's token or a delegation.
TOKEN_HEADER = "X-Pocketgrid-User-Token"
#: Blueprints whose routes are host-to-host (peer/access.py HOST_BLUEPRINTS): a host is a host there.
_HOST_BLUEPRINTS = frozenset({"peer", "broker"})


@dataclass(frozen=True)
class Identity:
    dn: str
    vo: str | None = None
    is_admin: bool = False
    kind: str = "user"  # user | host | anonymous
    token: Claims | None = None
    #: The address the request came from (the phone's, also through a relay).
    source: str = ""
    #: The host DN that relayed this user's request, if any.
    via: str | None = None
    #: How the caller proved it: bearer | cookie | certificate | host | relayed | anonymous.
    credential: str = ""
    #: A paired device (token kind "device"): the user's rights, never admin rights.
    device: bool = False
    #: The cookie's token (cookie sessions) or the client certificate (certificate
    #: callers): what the CSRF token is derived from (peer/csrf.py).
    session_token: str | None = field(default=None, repr=False)
    certificate_pem: str = field(default="", repr=False)
    #: The user's own token (bearer, cookie, or as relayed to us): what a relay forwards as proof.
    proof: str | None = field(default=None, repr=False)

    def assertion(self) -> str:
        """The ``X-Pocketgrid-User`` value a peer sends when relaying for this user."""
        user: dict[str, Any] = {"dn": self.dn, "vo": self.vo, "source": self.source}
        if self.device:
            user["device"] = True  # information only: the owner peer reads the kind from the proof
        return json.dumps(user)


def relay_headers(who: Identity, peer: str) -> dict[str, str]:
    """Headers that let peer ``peer`` verify for itself that this request is ``who``'s (peer-to-peer only).

    The user's own token when there is one; else (a TLS client certificate
    on the connection, or a delegation that was for this peer only) a
    short-lived delegation this peer signs for ``peer`` alone.  Empty for a caller that is not a user.  Call it in the request's
    context (not from a worker thread).
    """
    if who.kind != "user":
        return {}
    proof = who.proof
    if proof is None or (who.token is not None and who.token.kind == "delegation"):
        # No token of the user's own (a certificate), or a delegation to this peer alone (a second
        # hop: the job's home fetching an output from a site): sign one for ``peer``.
        proof = current_app.extensions["pocketgrid"].security.tokens.delegate(who.dn, who.vo, peer)
    return {USER_HEADER: who.assertion(), TOKEN_HEADER: proof}


ANONYMOUS = Identity(dn="anonymous", kind="anonymous")


def identity(required: bool = True) -> Identity:
    """The caller's identity for this request (cached on ``flask.g``); 401 if required and unknown."""
    if "pocketgrid_identity" not in g:
        svc = current_app.extensions["pocketgrid"]
        try:
            g.pocketgrid_identity = _resolve(svc)
        except Unauthorized as exc:
            _audit_refusal(svc, exc)
            raise
    ident = g.pocketgrid_identity
    if ident is None and required:
        raise Unauthorized(
            "log in first: `pocketgrid login URL --cert ... --key ...`, or pair this device with a code"
        )
    return ident


def _audit_refusal(svc: Any, exc: Unauthorized) -> None:
    """A refused token, cookie or relayed proof goes to the audit log (rate-limited per address), once a request."""
    if g.get("pocketgrid_refusal_audited"):
        return
    g.pocketgrid_refusal_audited = True
    header = request.headers.get("Authorization", "")
    presented = (request.headers.get(TOKEN_HEADER) or (header.partition(" ")[2] if header else "")
                 or request.cookies.get(COOKIE_NAME) or "")
    claimed = _claimed_subject(presented.strip())
    svc.metrics.token_refused(presented.strip(), svc.security.tokens.is_revoked)
    svc.security.audit.refused(
        "token-refused", dn=claimed or "-", source=request.remote_addr or "", what="refused credentials",
        detail=f"{request.method} {request.path[:200]}: {exc.message}" + (" (the DN is the token's claim)" if claimed else ""))


def _claimed_subject(token: str) -> str | None:
    """The ``sub`` a token claims, unverified (for the audit log only: a forged token claims what it likes)."""
    if not token:
        return None
    try:
        sub = jwt.decode(token, options={"verify_signature": False}).get("sub")
    except (jwt.InvalidTokenError, ValueError, TypeError, AttributeError):
        return None
    return sub[:500] if isinstance(sub, str) else None


def _resolve(svc: Any) -> Identity | None:
    source = request.remote_addr or ""
    if svc.config.insecure_http:
        return Identity(dn=ANONYMOUS.dn, kind="anonymous", source=source, credential="anonymous")
    acl = svc.security.acl
    cert = tls_client_certificate()
    if cert is not None and cert.is_host:
        if request.blueprint in _HOST_BLUEPRINTS or (
                USER_HEADER not in request.headers and TOKEN_HEADER not in request.headers):
            return Identity(dn=cert.dn, kind="host", source=source, credential="host")
        return _proven_user(svc, cert, source)
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("use 'Authorization: Bearer <token>' (get a token with `pocketgrid login`)")
        claims = svc.security.tokens.verify(token.strip())
        return _token_identity(acl, claims, source, "bearer", proof=token.strip())
    if cert is not None:
        return Identity(dn=cert.dn, vo=cert.vo, is_admin=acl.is_admin(cert.dn, cert.vo), source=source,
                        credential="certificate", certificate_pem=cert.pem)
    cookie = request.cookies.get(COOKIE_NAME)
    if cookie:  # a browser session (peer/session_cookie.py); writes also need the CSRF header (peer/csrf.py)
        claims = svc.security.tokens.verify(cookie)
        return _token_identity(acl, claims, source, "cookie", session_token=cookie, proof=cookie)
    return None


def relayed_user() -> Identity:
    """The user a host-to-host request acts for, from the proof it carries (401 without one).

    For the host-only routes that act for a user (the job forward): there the
    caller's identity is the host, and this is the user it proves.
    """
    svc = current_app.extensions["pocketgrid"]
    cert = tls_client_certificate()
    if cert is None or not cert.is_host:
        raise Unauthorized("only a peer (host certificate) acts for a user here")
    return _proven_user(svc, cert, request.remote_addr or "")


def _proven_user(svc: Any, cert: CertIdentity, source: str) -> Identity:
    """The user a peer relays for, taken from the proof in ``TOKEN_HEADER``, never from its word."""
    proof = request.headers.get(TOKEN_HEADER, "").strip()
    if not proof:
        raise Unauthorized(
            f"peer {cert.cn or cert.dn} acts for a user without the user's proof ({TOKEN_HEADER}): a host "
            "certificate alone has host powers only (the peer-to-peer routes)")
    asserted: dict[str, Any] = {}
    if USER_HEADER in request.headers:
        try:
            asserted = json.loads(request.headers[USER_HEADER])
            if not isinstance(asserted, dict):
                raise TypeError("not an object")
        except (ValueError, TypeError):
            raise Unauthorized(f"malformed {USER_HEADER} header from peer {cert.cn or cert.dn}") from None
    try:
        claims = svc.security.tokens.verify(proof)
    except Unauthorized as exc:
        raise Unauthorized(f"the user's proof relayed by peer {cert.cn or cert.dn} is refused: {exc.message}") from None
    if claims.kind == "delegation":
        if claims.audience != svc.config.name or claims.issuer != cert.cn:
            raise Unauthorized(
                f"a delegation signed by {claims.issuer} for {claims.audience} was presented by peer "
                f"{cert.cn or cert.dn} to {svc.config.name}: a delegation holds only from its signer to its peer")
    if "dn" in asserted and asserted["dn"] != claims.dn:
        raise Unauthorized(f"peer {cert.cn or cert.dn} names a user ({USER_HEADER}) other than the one its proof is for")
    origin = asserted.get("source")
    device = claims.kind == "device"  # a paired phone never holds admin rights, also relayed
    return Identity(dn=claims.dn, vo=claims.vo, is_admin=not device and svc.security.acl.is_admin(claims.dn, claims.vo),
                    token=claims, source=origin if isinstance(origin, str) and origin else source, via=cert.dn,
                    credential="relayed", device=device, proof=proof)


def _token_identity(acl: Any, claims: Claims, source: str, credential: str, session_token: str | None = None,
                    proof: str | None = None) -> Identity:
    if claims.kind == "delegation":
        raise Unauthorized("a delegation is a peer's word for a user to one other peer, not a bearer token: log in")
    device = claims.kind == "device"  # a paired phone never holds admin rights
    return Identity(dn=claims.dn, vo=claims.vo, is_admin=not device and acl.is_admin(claims.dn, claims.vo),
                    token=claims, source=source, credential=credential, device=device, session_token=session_token,
                    proof=proof)
