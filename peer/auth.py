"""Who is calling: the request's :class:`Identity`.

Three kinds of caller, checked in this order (docs/security.md):

1. **A peer or an agent** presents its host certificate as the TLS client
   certificate (mutual TLS; gunicorn's handshake already checked the chain
   to the site CA and the dates).  When a peer acts for a user (a relayed
   status poll, a job list fan-out) it says so in ``X-Pocketgrid-User``;
   that header is believed only from a host certificate.
2. **A user** sends ``Authorization: Bearer <token>`` from a certificate
   login or a paired device (peer/tokens.py).
3. **A user with a certificate at hand** (a laptop) may present it as the
   TLS client certificate and skip the login.
4. **A browser session**: the ``pg_session`` cookie set by pairing from the
   web app carries a device token (peer/session_cookie.py); its writes also
   need the CSRF header (peer/csrf.py).

Paired devices (token kind ``device``, also relayed for one) never hold
admin rights: a phone is easier to lose than a certificate.

Anything else is unauthenticated (401).  With ``insecure_http`` (local
development) there is no TLS, hence no way to authenticate anyone: every
caller is ``anonymous``, as the loud start-up warning says.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from flask import current_app, g, request

from pocketgrid.client_certificate import CertIdentity, require_host_name, tls_client_certificate
from pocketgrid.errors import Unauthorized

from .session_cookie import COOKIE_NAME
from .tokens import Claims

#: Header a peer uses to say which user it acts for (believed only from hosts).
USER_HEADER = "X-Pocketgrid-User"


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

    def assertion(self) -> str:
        """The ``X-Pocketgrid-User`` value a peer sends when relaying for this user."""
        user: dict[str, Any] = {"dn": self.dn, "vo": self.vo, "source": self.source}
        if self.device:
            user["device"] = True  # the owner peer must not give it admin rights either
        return json.dumps(user)


ANONYMOUS = Identity(dn="anonymous", kind="anonymous")


def identity(required: bool = True) -> Identity:
    """The caller's identity for this request (cached on ``flask.g``); 401 if required and unknown."""
    if "pocketgrid_identity" not in g:
        g.pocketgrid_identity = _resolve(current_app.extensions["pocketgrid"])
    ident = g.pocketgrid_identity
    if ident is None and required:
        raise Unauthorized(
            "log in first: `pocketgrid login URL --cert ... --key ...`, or pair this device with a code"
        )
    return ident


def _resolve(svc: Any) -> Identity | None:
    source = request.remote_addr or ""
    if svc.config.insecure_http:
        return Identity(dn=ANONYMOUS.dn, kind="anonymous", source=source, credential="anonymous")
    acl = svc.security.acl
    cert = tls_client_certificate()
    if cert is not None and cert.is_host:
        asserted = request.headers.get(USER_HEADER)
        if asserted is None:
            return Identity(dn=cert.dn, kind="host", source=source, credential="host")
        try:
            user = json.loads(asserted)
            dn, vo = user["dn"], user.get("vo")
            origin = str(user.get("source") or source)
            device = user.get("device") is True
            if not isinstance(dn, str) or not dn or not (vo is None or isinstance(vo, str)):
                raise TypeError("dn must be a non-empty string, vo a string or null")
        except (ValueError, KeyError, TypeError):
            raise Unauthorized(f"malformed {USER_HEADER} header from peer {cert.dn}") from None
        return Identity(dn=dn, vo=vo, is_admin=not device and acl.is_admin(dn, vo), source=origin, via=cert.dn,
                        credential="relayed", device=device)
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("use 'Authorization: Bearer <token>' (get a token with `pocketgrid login`)")
        claims = svc.security.tokens.verify(token.strip())
        return _token_identity(acl, claims, source, "bearer")
    if cert is not None:
        return Identity(dn=cert.dn, vo=cert.vo, is_admin=acl.is_admin(cert.dn, cert.vo), source=source,
                        credential="certificate", certificate_pem=cert.pem)
    cookie = request.cookies.get(COOKIE_NAME)
    if cookie:  # a browser session (peer/session_cookie.py); writes also need the CSRF header (peer/csrf.py)
        claims = svc.security.tokens.verify(cookie)
        return _token_identity(acl, claims, source, "cookie", session_token=cookie)
    return None


def _token_identity(acl: Any, claims: Claims, source: str, credential: str, session_token: str | None = None) -> Identity:
    device = claims.kind == "device"  # a paired phone never holds admin rights
    return Identity(dn=claims.dn, vo=claims.vo, is_admin=not device and acl.is_admin(claims.dn, claims.vo),
                    token=claims, source=source, credential=credential, device=device, session_token=session_token)
