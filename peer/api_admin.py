"""``/api/v1/admin``: ACL rules, the audit log and retention (the ``admin`` group only, see peer/access.py).

The audit log is kept where each event happened; ``GET /audit`` gathers every
member's (peer/fanout.py) unless asked for one peer's (``?local=1``).  The same
for ``/gc``: each peer removes its own expired jobs and uploads (peer/retention.py).
"""
from __future__ import annotations

import math

from flask import Blueprint, current_app, jsonify, request

from pocketgrid.errors import BadRequest

from .auth import identity
from .fanout import ask_others, grid_view

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
    if isinstance(position, float) and position.is_integer():  # 3.0 is an integer in JSON
        position = int(position)
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
    """The whole grid's audit log, newest first, each event tagged with its ``peer``.

    ``?limit=`` (at most 1000, over the merged list), ``?action=``, ``?dn=``;
    ``?local=1``: this peer's events only.  ``unreachable_peers`` names the
    members that did not answer (their events are missing).
    """
    raw = request.args.get("limit", "100")
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= 1000:  # "²" is a digit int() refuses
        raise BadRequest("limit must be a whole number from 1 to 1000")
    limit = int(raw)
    action, dn = request.args.get("action"), request.args.get("dn")
    mine = [r.to_dict() for r in _security().audit.recent(limit=limit, action=action, dn=dn)]
    params = {"limit": limit, **({"action": action} if action else {}), **({"dn": dn} if dn else {})}
    events, unreachable = grid_view(current_app.extensions["pocketgrid"], identity(), "/api/v1/admin/audit",
                                    key="events", records=mine, params=params,
                                    local_only=request.args.get("local") in {"1", "true"})
    events.sort(key=lambda e: e.get("at") or 0, reverse=True)
    return jsonify({"events": events[:limit], "unreachable_peers": unreachable})


@bp.get("/gc")
def gc_plan():
    """What the retention sweeper would remove now (or at ``?at=`` epoch seconds) on every peer, and what it
    keeps past its time and why; nothing is removed.  ``?local=1``: this peer only."""
    raw = request.args.get("at")
    at = None
    if raw is not None:
        try:
            at = float(raw)
        except ValueError:
            raise BadRequest(f"at must be a time in seconds since the epoch, got {raw[:40]!r}") from None
        if not math.isfinite(at) or at < 0:
            raise BadRequest("at must be a finite, non-negative time in seconds since the epoch")
    return _gc(dry_run=True, at=at)


@bp.post("/gc")
def gc_run():
    """Run the retention sweep now on every peer (``?local=1``: this peer only); answers what went."""
    return _gc(dry_run=False, at=None)


def _gc(*, dry_run: bool, at: float | None):
    svc = current_app.extensions["pocketgrid"]
    who = identity()
    mine = {"peer": svc.config.name, **svc.retention.sweep(at, dry_run=dry_run)}
    if not dry_run:
        svc.security.audit.record("gc", dn=who.dn, source=who.source,
                                  detail=f"removed {len(mine['remove'])} items, {mine['bytes']} bytes")
    peers, unreachable = [mine], []
    if request.args.get("local") not in {"1", "true"} and who.kind == "user" and who.via is None:
        params = {"local": 1, **({"at": at} if at is not None else {})}
        replies, unreachable = ask_others(svc.http, svc.membership, request.method, "/api/v1/admin/gc",
                                          timeout=max(svc.config.peer_timeout, 60.0), params=params, for_user=who)
        for reply in replies:
            theirs = reply.body.get("peers") if reply.status == 200 and isinstance(reply.body, dict) else None
            if isinstance(theirs, list):
                peers += [p for p in theirs if isinstance(p, dict)]
            else:
                unreachable.append(reply.peer)
    return jsonify({"peers": peers, "unreachable_peers": sorted(unreachable)})
