"""HTTP face of the broker role, under ``/api/v1/broker``.

Every peer mounts these routes; only the peer holding the role answers them.
Others answer 409 with the current broker so callers retarget at once.
Hosts only (mutual TLS, peer/access.py); a peer or agent registers,
heartbeats and reports only under the name in its own host certificate.
"""
from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any, Callable

from flask import Blueprint, current_app, jsonify, request

from pocketgrid.client_certificate import require_host_name, tls_client_certificate
from pocketgrid.errors import BadRequest, Conflict, NotFound

from .placement import JobRequest
from .role import BrokerRole, NameConflict, UnknownPeer

bp = Blueprint("broker", __name__, url_prefix="/api/v1/broker")


def _role() -> BrokerRole:
    """The active role, or a 409 naming who holds it."""
    ext = current_app.extensions["pocketgrid"]
    role: BrokerRole | None = ext.broker_role
    if role is None:
        raise Conflict("this peer is not the broker", broker=ext.current_broker(), epoch=ext.membership.epoch)
    return role


def _json_body(required: dict[str, type | tuple[type, ...]]) -> dict[str, Any]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise BadRequest("expected a JSON object body")
    for key, kind in required.items():
        if key not in body:
            raise BadRequest(f"missing field {key!r}")
        if not isinstance(body[key], kind) or isinstance(body[key], bool) and kind is not bool:
            raise BadRequest(f"field {key!r} has the wrong type")
    return body


def _host_pem() -> str | None:
    """The caller's host certificate (PEM) from the handshake: never taken from the request body."""
    cert = tls_client_certificate()
    return cert.pem if cert is not None and cert.is_host else None


@bp.post("/register")
def register():
    body = _json_body({"name": str, "url": str})
    require_host_name(body["name"])
    try:
        return jsonify(_role().register(body["name"], body["url"], _host_pem()))
    except NameConflict as exc:
        raise Conflict(str(exc)) from None


@bp.post("/heartbeat")
def heartbeat():
    """A peer's heartbeat; a non-broker answers 409 naming the broker it knows."""
    body = _json_body({"name": str, "url": str})
    require_host_name(body["name"])
    role = _role()
    try:
        return jsonify(role.heartbeat(body["name"], body["url"], _host_pem()))
    except NameConflict as exc:
        raise Conflict(str(exc), broker={"name": role.name, "url": role.url}, epoch=role.epoch) from None


@bp.post("/reports")
def reports():
    body = _json_body({"peer": str, "url": str, "coefficient": (int, float)})
    require_host_name(body["peer"])
    role = _role()
    role.ingest_report(body)
    return jsonify({"accepted": True, "broker": {"name": role.name, "url": role.url}, "epoch": role.epoch})


@bp.post("/placements")
def placements():
    """Rank peers for a job; with ``"split": true`` also split its inputs over them (broker/split.py).

    ``input_sizes``: bytes per input; ``avoid``: peers to give inputs to only when nothing else can
    take them; ``exclude``: peers to give none (they refused these inputs for good); ``refused_all``
    in the answer: the split is empty because every live peer is excluded.  Answers ``{"ranking": [...]}``, plus ``"shares": [{name, url, count, est_seconds,
    reason, detail}]`` for a split (each share counted as in flight on its site).
    """
    body = _json_body({"job_key": str, "n_procs": int})
    if body["n_procs"] < 1:
        raise BadRequest("n_procs must be at least 1")
    input_bytes = body.get("input_bytes") or {}
    if not isinstance(input_bytes, dict) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in input_bytes.values()
    ):
        raise BadRequest("field 'input_bytes' must map peer names to byte counts (integers >= 0)")
    history_key = body.get("history_key")
    if history_key is not None and not (isinstance(history_key, str) and 0 < len(history_key) <= 64):
        raise BadRequest("field 'history_key' must be a string of 1 to 64 characters")
    job = JobRequest(
        n_procs=body["n_procs"],
        input_bytes={str(k): v for k, v in input_bytes.items()},
        entry_peer=str(body.get("entry_peer", "")),
        history_key=history_key,
    )
    if "split" in body and not isinstance(body["split"], bool):
        raise BadRequest("field 'split' must be true or false")
    if not body.get("split"):
        decision = _role().decide(body["job_key"], job)
        return jsonify({**decision, "ranking": [r.__dict__ for r in decision["ranking"]]})
    sizes = body.get("input_sizes") or []
    if not isinstance(sizes, list) or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                                              for v in sizes):
        raise BadRequest("field 'input_sizes' must be a list of byte counts (integers >= 0), one per input")
    if sizes and len(sizes) != job.n_procs:
        raise BadRequest(f"field 'input_sizes' has {len(sizes)} entries for {job.n_procs} inputs: give one per input")
    avoid = body.get("avoid") or []
    if not isinstance(avoid, list) or not all(isinstance(v, str) for v in avoid):
        raise BadRequest("field 'avoid' must be a list of peer names")
    exclude = body.get("exclude") or []
    if not isinstance(exclude, list) or not all(isinstance(v, str) for v in exclude):
        raise BadRequest("field 'exclude' must be a list of peer names")
    decision = _role().split_decision(body["job_key"], job, input_sizes=sizes, avoid=frozenset(avoid),
                                      exclude=frozenset(exclude))
    return jsonify(decision)


@bp.post("/placements/outcome")
def placement_outcome():
    """An entry peer tells how handing a job to ``peer`` went.

    ``{"peer": name, "ok": false}`` after a failed forward (connection error
    or 5xx) counts towards the peer's ban; ``"ok": true`` clears it.  With
    ``"ok": true`` and ``job_key`` (the placement's), optionally ``job_id``
    and ``failed`` (``[{"name", "error"}]``, the candidates tried before),
    the decision's outcome is recorded for ``GET /api/v1/broker/placements``.
    Answers the peer's ban state.
    """
    body = _json_body({"peer": str, "ok": bool})
    if not body["peer"]:
        raise BadRequest("field 'peer' must not be empty")
    failed = body.get("failed") or []
    if not isinstance(failed, list) or not all(
            isinstance(f, dict) and isinstance(f.get("name"), str) and isinstance(f.get("error", ""), str)
            for f in failed):
        raise BadRequest("field 'failed' must be a list of {\"name\": peer, \"error\": text}")
    role = _role()
    try:
        state = role.report_success(body["peer"]) if body["ok"] else role.report_failure(body["peer"])
    except UnknownPeer as exc:
        raise NotFound(str(exc)) from None
    if body["ok"] and isinstance(body.get("job_key"), str):
        job_id = body.get("job_id") if isinstance(body.get("job_id"), str) else None
        state["recorded"] = role.record_outcome(
            body["job_key"], body["peer"], job_id=job_id,
            failed=[{"name": f["name"], "error": f.get("error", "")[:500]} for f in failed[:20]])
    return jsonify(state)


@bp.post("/transfers")
def transfers():
    """A peer measured a transfer of ``bytes`` from peer ``src`` to peer ``dst`` in ``seconds``.

    Feeds the bandwidth table the default policy uses to price moving inputs
    (a smoothed estimate per direction; transfers under 256 KiB are ignored).
    """
    body = _json_body({"src": str, "dst": str, "bytes": int, "seconds": (int, float)})
    if body["bytes"] < 0:
        raise BadRequest("field 'bytes' must be >= 0")
    if not (math.isfinite(body["seconds"]) and body["seconds"] > 0):
        raise BadRequest("field 'seconds' must be a finite number > 0")
    if body["src"] == body["dst"]:
        raise BadRequest("fields 'src' and 'dst' name the same peer")
    try:
        estimate = _role().report_transfer(body["src"], body["dst"], body["bytes"], float(body["seconds"]))
    except UnknownPeer as exc:
        raise NotFound(str(exc)) from None
    return jsonify({"src": body["src"], "dst": body["dst"], "bytes_per_second": estimate})


@bp.get("/table")
def table():
    role = _role()
    return jsonify({"policy": role.policy_name, "peers": role.load_table()})
