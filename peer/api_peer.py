"""``/api/v1/peer``: peer-to-peer calls (forwarded jobs, input file reads, membership and security pushes,
pairing codes redeemed at another peer).

Hosts only: every route here needs a host certificate (mutual TLS, see peer/access.py).
"""
from __future__ import annotations

import json
import time

from flask import Blueprint, current_app, jsonify, request

from pocketgrid.client_certificate import tls_client_certificate
from pocketgrid.errors import BadRequest, Forbidden, NotFound, PocketgridError

from .auth import identity, relayed_user
from .downloads import send_ranged
from .in_use import file_key

bp = Blueprint("peer", __name__, url_prefix="/api/v1/peer")

_META_FIELDS = {
    "name": str,
    "owner": str,
    "executable_name": str,
    "submit_name": str,
    "submit_text": str,
    "entry_peer": str,
    "entry_url": str,
    "origin_key": str,
    "inputs": list,
}


def _svc():
    return current_app.extensions["pocketgrid"]


@bp.post("/jobs")
def accept():
    """A job placed on this peer by an entry peer, for the user whose proof it carries (peer/auth.py)."""
    try:
        meta = json.loads(request.form.get("meta", ""))
    except ValueError:
        raise BadRequest("'meta' must be a JSON object") from None
    if not isinstance(meta, dict):
        raise BadRequest("'meta' must be a JSON object")
    for key, kind in _META_FIELDS.items():
        if not isinstance(meta.get(key), kind):
            raise BadRequest(f"meta field {key!r} is missing or has the wrong type")
    for item in meta["inputs"]:
        if not isinstance(item, dict) or not {"name", "path", "size", "sha256"} <= set(item):
            raise BadRequest("each input needs name, path, size and sha256")
    exe = request.files.get("executable")
    if exe is None:
        raise BadRequest("missing the 'executable' file part")
    user = relayed_user()  # the submitting user's proof, verified here: the host's word is not enough
    if user.dn != meta["owner"]:
        raise Forbidden(f"the forwarded job's owner {meta['owner']!r} is not the user the entry peer proves "
                        f"({user.dn!r}): a peer submits only for the user it relays")
    summary = _svc().jobs.accept(meta, exe.read())
    return jsonify(summary), 201


@bp.get("/files/<path:path>")
def read_file(path: str):
    """The paper's ``file.read``: another peer fetching an input it stages."""
    svc = _svc()
    real = svc.publishing.file(path)
    return svc.in_use.serve(file_key(svc.publishing.relative(real)), lambda: send_ranged(real))


@bp.get("/security")
def security_state():
    """ACL rules (with their version) and revoked token IDs, for a peer catching up."""
    return jsonify(_svc().security.sync.state())


@bp.post("/security")
def security_push():
    """Another peer's ACL change or revocation (see peer/security_sync.py)."""
    return jsonify(_svc().security.sync.apply(request.get_json(silent=True)))


@bp.post("/membership")
def membership():
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or "members" not in body or "epoch" not in body:
        raise BadRequest("expected {broker, epoch, members}")
    accepted = _svc().membership.apply(body)
    return jsonify({"accepted": accepted})


@bp.post("/pairing/redeem")
def pairing_redeem():
    """The home side of a pairing code redeemed at another peer: ``{code, source}`` (the phone's address).

    200 ``{dn, vo, expires_at}``: the code was issued here and is now spent (the
    asking peer issues the device token); 410: issued here but expired (spent
    too); 404: not issued here.  Nothing is counted against ``source`` here:
    the asking peer counts the phone's failures.
    """
    sec = _svc().security
    if sec.pairing is None:
        raise BadRequest("this peer runs without TLS (insecure_http): it issues no pairing codes")
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or not isinstance(body.get("code"), str) \
            or not isinstance(body.get("source", ""), str):
        raise BadRequest("expected {code: string, source: string (the phone's address)}")
    source = str(body.get("source") or "")[:200]
    cert = tls_client_certificate()
    relay = cert.cn if cert is not None and cert.cn else identity().dn
    grant = sec.pairing.take(body["code"])
    if grant is None:
        raise NotFound("no such pairing code was issued here")
    if grant.expires_at < time.time():
        sec.audit.record("pairing-redeem", dn=grant.dn, source=source, outcome="failed",
                         detail=f"expired code presented at peer {relay}")
        raise PocketgridError("this pairing code has expired: ask for a new one on your logged-in device", status=410)
    sec.audit.record("pairing-redeem", dn=grant.dn, source=source,
                     detail=f"code issued here, redeemed at peer {relay} (which issues the device token)")
    return jsonify({"dn": grant.dn, "vo": grant.vo, "expires_at": grant.expires_at})
