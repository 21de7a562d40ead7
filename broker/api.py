"""HTTP face of the broker role, under ``/api/v1/broker``.

Every peer mounts these routes; only the peer holding the role answers them.
Others answer 409 with the current broker so callers retarget at once.
"""
from __future__ import annotations

from typing import Any, Callable

from flask import Blueprint, current_app, jsonify, request

from pocketgrid.errors import BadRequest, Conflict

from .placement import JobRequest
from .role import BrokerRole, NameConflict

bp = Blueprint("broker", __name__, url_prefix="/api/v1/broker")


def _role() -> BrokerRole:
    """The active role, or a 409 naming who holds it."""
    ext = current_app.extensions["pocketgrid"]
    role: BrokerRole | None = ext.broker_role
    if role is None:
        raise Conflict("this peer is not the broker", broker=ext.current_broker())
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


@bp.post("/register")
def register():
    body = _json_body({"name": str, "url": str})
    try:
        return jsonify(_role().register(body["name"], body["url"]))
    except NameConflict as exc:
        raise Conflict(str(exc)) from None


@bp.post("/reports")
def reports():
    body = _json_body({"peer": str, "url": str, "coefficient": (int, float)})
    role = _role()
    role.ingest_report(body)
    return jsonify({"accepted": True, "broker": {"name": role.name, "url": role.url}, "epoch": role.epoch})


@bp.post("/placements")
def placements():
    body = _json_body({"job_key": str, "n_procs": int})
    if body["n_procs"] < 1:
        raise BadRequest("n_procs must be at least 1")
    job = JobRequest(
        n_procs=body["n_procs"],
        input_bytes={str(k): int(v) for k, v in (body.get("input_bytes") or {}).items()},
        entry_peer=str(body.get("entry_peer", "")),
    )
    ranking = _role().place(body["job_key"], job)
    return jsonify({"ranking": [r.__dict__ for r in ranking]})


@bp.get("/table")
def table():
    role = _role()
    return jsonify({"policy": role.policy_name, "peers": role.load_table()})
