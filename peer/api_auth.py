"""``/api/v1/auth``: certificate login, logout, pairing a phone, listing and revoking tokens."""
from __future__ import annotations

import re
from urllib.parse import quote
from typing import Any

from flask import Blueprint, current_app, jsonify, request

from pocketgrid.errors import BadRequest, Forbidden, NotFound, PocketgridError

from . import csrf
from .auth import identity
from .fanout import ask_others, grid_view
from .pairing import members_lookup
from .session_cookie import clear_session_cookie, set_session_cookie

bp = Blueprint("auth", __name__, url_prefix="/api/v1/auth")

_DEVICE_NAME = re.compile(r"[\w .@()+-]{1,64}")


def _security():
    svc = current_app.extensions["pocketgrid"]
    if svc.security.tokens is None:
        raise BadRequest("this peer runs without TLS (insecure_http): there is nothing to log in to")
    return svc.security


def _metrics():
    return current_app.extensions["pocketgrid"].metrics


def _body(*fields: str) -> dict[str, Any]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise BadRequest("expected a JSON object body")
    for name in fields:
        if not isinstance(body.get(name), str) or not body[name]:
            raise BadRequest(f"missing or empty string field {name!r}")
    return body


def _token_answer(new) -> dict[str, Any]:
    c = new.claims
    return {"token": new.token, "token_id": c.jti, "dn": c.dn, "vo": c.vo, "kind": c.kind, "expires_at": c.expires_at}


@bp.post("/challenge")
def challenge():
    """Step 1 of a login: a single-use nonce bound to this peer; sign ``message`` with your key."""
    item = _security().login.challenge(request.remote_addr or "")
    return jsonify({**item.to_dict(), "server": current_app.extensions["pocketgrid"].config.name})


@bp.post("/login")
def login():
    """Step 2: ``{nonce, certificate (PEM), signature (base64)}`` -> a bearer token."""
    sec = _security()
    source = request.remote_addr or ""
    body = _body("nonce", "certificate", "signature")
    try:
        user = sec.login.verify(body["nonce"], body["certificate"], body["signature"])
    except PocketgridError as exc:  # recorded, then answered by the error handlers
        sec.audit.record("login", dn=_claimed_dn(body["certificate"]), source=source, outcome="failed",
                         detail=exc.message)
        _metrics().login("certificate", ok=False)
        raise
    new = sec.tokens.issue(user.dn, user.vo)
    sec.audit.record("login", dn=user.dn, source=source, detail=f"token {new.claims.jti}")
    _metrics().login("certificate", ok=True)
    return jsonify(_token_answer(new))


def _claimed_dn(pem: str) -> str:
    """The subject a failed login claimed (for the audit log only; never trusted)."""
    from cryptography import x509

    try:
        return x509.load_pem_x509_certificate(pem.encode()).subject.rfc4514_string()[:500]
    except ValueError:
        return "(unreadable certificate)"


@bp.post("/logout")
def logout():
    """Revoke the token this request carries (everywhere in the system)."""
    sec = _security()
    who = identity()
    if who.token is None:
        raise BadRequest("this request carries no token (bearer or session cookie) to log out")
    _revoke(who.token.jti, who.token.expires_at)
    sec.audit.record("logout", dn=who.dn, source=who.source, detail=f"token {who.token.jti}")
    response = jsonify({"revoked": who.token.jti})
    if who.credential == "cookie":
        clear_session_cookie(response)
    return response


@bp.get("/whoami")
def whoami():
    svc = current_app.extensions["pocketgrid"]
    who = identity()
    # A host may call user routes only for a user (peer/access.py): as itself it holds none of them.
    # A paired device never holds admin rights (peer/access.py).
    groups = {g: who.kind != "host" and not (g == "admin" and who.device)
              and svc.security.acl.decide(who.dn, who.vo, g).allowed
              for g in ("files-read", "jobs-submit", "jobs-manage", "admin")}
    token = who.token.to_dict() if who.token else None
    # ``csrf``: what a browser (cookie or certificate) sends as X-CSRF-Token on writes; null for bearer tokens.
    return jsonify({"dn": who.dn, "vo": who.vo, "kind": who.kind, "admin": who.is_admin, "groups": groups,
                    "token": token, "csrf": csrf.token_for(who)})


@bp.post("/pairing")
def pairing_code():
    """A short code to type on a phone (only from a certificate login, not from another device)."""
    sec = _security()
    who = identity()
    by_certificate = who.token is None and who.via is None and who.kind == "user"  # a user cert on the connection
    if not by_certificate and (who.token is None or who.token.kind != "login"):
        raise Forbidden("pairing codes are issued to certificate logins only, not to paired devices")
    code, expires_at = sec.pairing.new_code(who.dn, who.vo)
    sec.audit.record("pairing-code", dn=who.dn, source=who.source)
    # Any peer redeems the code (peer/pairing.py); ``url`` is this peer's, one the phone may use.
    return jsonify({"code": code, "expires_at": expires_at, "url": current_app.extensions["pocketgrid"].config.url}), 201


@bp.post("/pair")
def pair():
    """The phone's side: ``{code, device}`` -> its own device token for the same DN."""
    sec = _security()
    source = request.remote_addr or ""
    body = _body("code")
    device = body.get("device") or "device"
    if not isinstance(device, str) or not _DEVICE_NAME.fullmatch(device):
        raise BadRequest("'device' must be 1-64 letters, digits, spaces or . @ ( ) + - _")
    if not isinstance(body.get("cookie", False), bool):
        raise BadRequest("'cookie' must be true (a browser: the token goes into an HttpOnly cookie) or false")
    try:
        grant = sec.pairing.redeem(body["code"], source, elsewhere=_other_members())
    except PocketgridError as exc:
        sec.audit.record("pair", dn="(unknown)", source=source, outcome="failed",
                         detail=exc.message)
        _metrics().login("pairing", ok=False)
        raise
    new = sec.tokens.issue(grant.dn, grant.vo, kind="device", device=device)
    sec.audit.record("pair", dn=grant.dn, source=source, detail=f"device {device!r} token {new.claims.jti}"
                     + (f" (code issued by peer {grant.home})" if grant.home else ""))
    _metrics().login("pairing", ok=True)
    if body.get("cookie") is True:  # a browser: the token goes into the cookie, never into script's reach
        return _cookie_answer(new)
    return jsonify(_token_answer(new)), 201


def _cookie_answer(new):
    answer = {k: v for k, v in _token_answer(new).items() if k != "token"}
    response = jsonify({**answer, "csrf": csrf.token_for_session(new.token)})
    response.status_code = 201
    set_session_cookie(response, new.token, new.claims.expires_at)
    return response


def _other_members():
    """Where ``pair`` looks for a code this peer did not issue: the other members (peer/pairing.py)."""
    svc = current_app.extensions["pocketgrid"]
    return members_lookup(svc.http, svc.membership, timeout=min(svc.config.peer_timeout, 5.0))


@bp.get("/tokens")
def tokens():
    """Your unexpired tokens issued by any peer, newest first, each with its ``peer`` (peer/fanout.py);
    an admin with ``?all=1``: everyone's; ``?local=1``: this peer's only."""
    sec = _security()
    who = identity()
    everyone = request.args.get("all") in {"1", "true"}
    if everyone and not who.is_admin:
        raise Forbidden("only administrators may list everyone's tokens (?all=1)")
    found, unreachable = grid_view(current_app.extensions["pocketgrid"], who, "/api/v1/auth/tokens", key="tokens",
                                   records=sec.tokens.issued_to(None if everyone else who.dn),
                                   params={"all": 1} if everyone else {},
                                   local_only=request.args.get("local") in {"1", "true"})
    found.sort(key=lambda t: t.get("created_at") or 0, reverse=True)
    return jsonify({"tokens": found, "unreachable_peers": unreachable})


@bp.delete("/tokens/<token_id>")
def revoke_token(token_id: str):
    """Revoke one of your tokens (a lost phone) without logging out elsewhere."""
    sec = _security()
    who = identity()
    try:
        issued = sec.tokens.find_issued(token_id, None if who.is_admin else who.dn)
    except NotFound:
        if request.args.get("local") in {"1", "true"} or who.kind != "user" or who.via is not None:
            raise
        return jsonify(_revoke_at_issuer(token_id, who))  # issued by another peer: revoked there
    _revoke(issued.jti, issued.expires_at)
    sec.audit.record("token-revoke", dn=who.dn, source=who.source, detail=f"token {issued.jti} of {issued.dn}")
    return jsonify({"revoked": issued.jti})


def _revoke_at_issuer(token_id: str, who) -> dict[str, Any]:
    """Ask the other members to revoke a token this peer did not issue (the issuer records and pushes it)."""
    svc = current_app.extensions["pocketgrid"]
    replies, unreachable = ask_others(svc.http, svc.membership, "DELETE", f"/api/v1/auth/tokens/{quote(token_id)}",
                                      params={"local": 1}, for_user=who,
                                      timeout=svc.config.peer_timeout)
    for reply in replies:
        if reply.status == 200 and isinstance(reply.body, dict):
            return {**reply.body, "peer": reply.peer}
    unreachable += [r.peer for r in replies if r.status != 404]
    raise NotFound(f"no token {token_id!r} issued to you on any peer"
                   + (f" that answered ({', '.join(sorted(unreachable))} did not)" if unreachable else ""),
                   unreachable_peers=sorted(unreachable))


def _revoke(jti: str, expires_at: float) -> None:
    svc = current_app.extensions["pocketgrid"]
    svc.security.tokens.revoke(jti, expires_at)
    svc.security.sync.push_revocation(jti, expires_at)
    svc.metrics.revocations.inc()
