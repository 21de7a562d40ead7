"""``/api/v1/admin``: ACL rules and the audit log (the ``admin`` group only, see peer/access.py)."""
from __future__ import annotations

from flask import Blueprint, current_app, jsonify, request

from pocketgrid.errors import BadRequest

from .auth import identity

bp = Blueprint("admin", __name__, url_prefix="/api/v1/admin")


def _security():
    return current_app.extensions["pocketgrid"].security


@bp.get("/acl")
def acl_list():
    acl = _security().acl
    return jsonify({"version": acl.version(), "rules": [r.to_dict() for r in acl.rules()]})


@bp.post("/acl")
def acl_add():
    """Add ``{effect: allow|deny, group, match: dn|dn-substring|vo|any, value, position?}``."""
    sec = _security()
    who = identity()
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise BadRequest("expected a JSON object {effect, group, match, value, position?}")
    position = body.get("position")
    if position is not None and (not isinstance(position, int) or isinstance(position, bool)):
        raise BadRequest("'position' must be an integer")
    fields = {k: body.get(k, "") for k in ("effect", "group", "match", "value")}
    if not all(isinstance(v, str) for v in fields.values()):
        raise BadRequest("effect, group, match and value must be strings")
    rule = sec.acl.add(fields["effect"], fields["group"], fields["match"], fields["value"],
                       created_by=who.dn, position=position)
    sec.audit.record(f"acl-{rule.effect}", dn=who.dn, source=who.source,
                     detail=f"rule {rule.id}: {rule.effect} {rule.group} {rule.match}={rule.value!r}")
    sec.sync.push_acl()
    return jsonify(rule.to_dict()), 201


@bp.delete("/acl/<int:rule_id>")
def acl_remove(rule_id: int):
    sec = _security()
    who = identity()
    rule = sec.acl.remove(rule_id)
    sec.audit.record("acl-remove", dn=who.dn, source=who.source,
                     detail=f"rule {rule.id}: {rule.effect} {rule.group} {rule.match}={rule.value!r}")
    sec.sync.push_acl()
    return jsonify(rule.to_dict())


@bp.get("/audit")
def audit():
    """Newest first; ``?limit=`` (at most 1000), ``?action=``, ``?dn=``."""
    raw = request.args.get("limit", "100")
    if not raw.isdigit() or not 1 <= int(raw) <= 1000:
        raise BadRequest("limit must be a whole number from 1 to 1000")
    records = _security().audit.recent(limit=int(raw), action=request.args.get("action"), dn=request.args.get("dn"))
    return jsonify({"events": [r.to_dict() for r in records]})
