"""``/api/v1/peer``: peer-to-peer calls (pieces of jobs sent by their homes, their status, removal and outputs,
input file reads, job records' replicas at a deputy (peer/replicas.py), membership and security pushes,
pairing codes redeemed at another peer).

Hosts only: every route here needs a host certificate (mutual TLS, see peer/access.py).
"""
from __future__ import annotations

import json
import time

from flask import Blueprint, current_app, jsonify, request

from pocketgrid.client_certificate import tls_client_certificate
from pocketgrid.errors import BadRequest, Forbidden, NotFound, PocketgridError

from .auth import ANONYMOUS, Identity, identity, relayed_user
from .downloads import send_ranged
from .in_use import file_key, job_key

bp = Blueprint("peer", __name__, url_prefix="/api/v1/peer")

#: Most pieces one status request may ask about.
MAX_PIECES_PER_REQUEST = 5000

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
    """A piece of a job sent here by its home, for the user whose proof it carries (peer/auth.py)."""
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
            raise BadRequest("each input needs name, path, size and sha256 (and its index in the job)")
        if "index" in item and (not isinstance(item["index"], int) or isinstance(item["index"], bool)):
            raise BadRequest("an input's index must be an integer")
    exe = request.files.get("executable")
    if exe is None:
        raise BadRequest("missing the 'executable' file part")
    user = ANONYMOUS if _svc().config.insecure_http else relayed_user()  # the owner's proof, verified here
    if user.dn != meta["owner"]:
        raise Forbidden(f"the forwarded job's owner {meta['owner']!r} is not the user the entry peer proves "
                        f"({user.dn!r}): a peer submits only for the user it relays")
    summary = _svc().jobs.accept(meta, exe.read())
    return jsonify(summary), 201


@bp.post("/pieces/status")
def pieces_status():
    """Many pieces' statuses in one answer, for their home: ``{"pieces": {id: version-or-null}}``.

    Answers only the pieces whose version differs from the one sent
    (``{"pieces": {id: {version, state, procs, removal?}}, "missing": [ids]}``); with ``"history": true``
    each proc's past states too (its owner asked for them).  ``"origins": {origin key: home}``: which
    pieces this site made from those sends (``"found": {origin key: piece id}``): a new manager's question
    after a takeover.
    """
    body = request.get_json(silent=True)
    pieces = body.get("pieces") if isinstance(body, dict) else None
    if not isinstance(pieces, dict) or not all(
            isinstance(k, str) and (v is None or (isinstance(v, int) and not isinstance(v, bool)))
            for k, v in pieces.items()):
        raise BadRequest('expected {"pieces": {"<piece id>": <version seen, or null>}}')
    if len(pieces) > MAX_PIECES_PER_REQUEST:
        raise BadRequest(f"at most {MAX_PIECES_PER_REQUEST} pieces per request")
    history = body.get("history", False)
    if not isinstance(history, bool):
        raise BadRequest("'history' must be true or false")
    origins = body.get("origins", {})
    if not isinstance(origins, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in origins.items()):
        raise BadRequest('\'origins\' must map origin keys to the home that sent the piece: {"<key>": "<peer>"}')
    if len(origins) > MAX_PIECES_PER_REQUEST:
        raise BadRequest(f"at most {MAX_PIECES_PER_REQUEST} origins per request")
    answer = _svc().jobs.piece_statuses(pieces, history=history)
    if origins:
        answer["found"] = _svc().jobs.find_by_origin(origins)
    return jsonify(answer)


@bp.delete("/pieces/<piece>")
def remove_piece(piece: str):
    """Remove every unfinished proc of a piece (its job was killed); its directories stay.  The answer has
    ``removal`` when the executor could not yet (its schedd does not answer: it remembers the removal).

    ``?purge=1``: the job's record expired or was purged at its home: remove the piece whole (rows,
    directories, outputs).  ``{"state": "stopping"}`` while a proc still runs (ask again), then
    ``{"state": "purged"}``.
    """
    if request.args.get("purge") in {"1", "true"}:
        return jsonify({"id": piece, "state": _svc().retention.purge_piece(piece)})
    return jsonify(_svc().jobs.kill(piece))


@bp.post("/pieces/<piece>/release")
def release_piece(piece: str):
    """Release held inputs of a piece (its job's owner asked its home): ``{"inputs": [index, ...]}``.

    409 when none of them is held here (any more).
    """
    body = request.get_json(silent=True)
    inputs = body.get("inputs") if isinstance(body, dict) else None
    if not isinstance(inputs, list) or not inputs or not all(isinstance(i, int) and not isinstance(i, bool)
                                                              for i in inputs):
        raise BadRequest('expected {"inputs": [index, ...]} (the inputs\' indexes in the job)')
    return jsonify(_svc().jobs.release(piece, None, indexes=inputs))


@bp.post("/pieces/pin")
def pin_pieces():
    """Pin or unpin pieces, as their job was at its home: ``{"pieces": {"<piece id>": true|false}}``.
    A pinned piece is never expired here.  Answers ``{"pinned": [ids], "missing": [ids]}``."""
    body = request.get_json(silent=True)
    pieces = body.get("pieces") if isinstance(body, dict) else None
    if not isinstance(pieces, dict) or not all(isinstance(k, str) and isinstance(v, bool) for k, v in pieces.items()):
        raise BadRequest('expected {"pieces": {"<piece id>": true or false}}')
    if len(pieces) > MAX_PIECES_PER_REQUEST:
        raise BadRequest(f"at most {MAX_PIECES_PER_REQUEST} pieces per request")
    return jsonify(_svc().jobs.set_pinned(pieces))


@bp.delete("/pieces/<piece>/inputs/<int:index>")
def remove_piece_input(piece: str, index: int):
    """Remove one input of a piece and delete its directory (a lost or superseded attempt; idempotent).

    ``{"state": "stopping"}`` while its proc is being killed (ask again), then ``{"state": "deleted"}``.
    """
    return jsonify(_svc().jobs.remove_input(piece, index, "removed by the job's home (lost or superseded)"))


def _piece_owner() -> Identity:
    """The user a home relays for (the piece's owner must be that user: else 404)."""
    if _svc().config.insecure_http:
        return ANONYMOUS
    return relayed_user()


@bp.get("/pieces/<piece>/outputs")
def piece_outputs(piece: str):
    """A piece's output files (size, SHA-256), for its owner's request relayed by the job's home."""
    who = _piece_owner()
    return jsonify(_svc().jobs.outputs(piece, who.dn, is_admin=who.is_admin))


@bp.get("/pieces/<piece>/outputs/<int:index>/<path:name>")
def piece_output_file(piece: str, index: int, name: str):
    """One output of a piece (Range, If-Range, ETag), for its owner's download relayed by the job's home."""
    who = _piece_owner()
    svc = _svc()
    # held until the last byte is sent: the retention sweeper keeps the piece meanwhile
    return svc.in_use.serve(job_key(piece), lambda: send_ranged(
        svc.jobs.output_file(piece, who.dn, index, name, is_admin=who.is_admin)))


@bp.put("/records/<job_id>")
def put_record(job_id: str):
    """A job's manager pushes its record to the job's deputy: ``{"document": {"record", "attempts"}}``
    (peer/replicas.py).  Applied when its claim (manager epoch, then version) is newer than the copy here;
    409 with this peer's ``document`` when this copy's claim is newer (the pusher yields to it)."""
    body = request.get_json(silent=True)
    doc = body.get("document") if isinstance(body, dict) else None
    if not isinstance(doc, dict) or not isinstance(doc.get("record"), dict) \
            or not isinstance(doc.get("attempts"), list):
        raise BadRequest('expected {"document": {"record": {...}, "attempts": [...]}}')
    if doc["record"].get("id") != job_id:
        raise BadRequest(f"the document is the record of {doc['record'].get('id')!r}, not of {job_id!r}")
    cert = tls_client_certificate()
    if cert is not None and cert.cn and doc["record"].get("manager") != cert.cn:
        raise Forbidden(f"peer {cert.cn} pushes a record managed by {doc['record'].get('manager')!r}: "
                        "only a job's manager pushes its record")
    return jsonify(_svc().replicas.receive(doc))


@bp.get("/records/<job_id>")
def get_record(job_id: str):
    """Who holds a job's record here: ``{id, holder, home, manager, manager_epoch, deputy, version,
    copies}`` (404: no record of it here); ``?document=1`` adds the record itself (a returning home
    compares claims with its deputy)."""
    document = request.args.get("document") in {"1", "true"}
    return jsonify(_svc().replicas.describe(job_id, document=document))


@bp.get("/records/<job_id>/executable")
def record_executable(job_id: str):
    """The executable of a job whose record is held here (a deputy copying it)."""
    svc = _svc()
    return svc.in_use.serve(job_key(job_id), lambda: send_ranged(svc.replicas.executable_path(job_id)))


@bp.get("/records/<job_id>/inputs/<int:index>")
def record_input(job_id: str, index: int):
    """Input ``index`` of a job whose record is held here: the home's own file, or this peer's copy (a
    deputy copying it, or a site staging a piece of a job taken over).  Range, If-Range, ETag."""
    svc = _svc()
    return svc.in_use.serve(job_key(job_id), lambda: send_ranged(svc.replicas.input_path(job_id, index)))


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
