"""Health, the system view (``/api/v1/broker``) and the OpenAPI document."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from typing import Any

import requests
import yaml
from flask import Blueprint, Response, current_app, jsonify, request

from pocketgrid.errors import BadRequest, Unavailable

from .auth import identity
from .front.headers import ENVIRON_WAITS_HELD
from .proxy import relay

bp = Blueprint("system", __name__)


def _svc():
    return current_app.extensions["pocketgrid"]


@bp.get("/healthz")
def healthz():
    svc = _svc()
    return jsonify(
        {
            "status": "ok",
            "peer": svc.config.name,
            "url": svc.config.url,
            "executor": svc.executor.describe(),
            "broker": svc.membership.broker,
            "is_broker": svc.broker_role is not None,
            "max_body_bytes": svc.config.max_body_bytes,
            "tls": not svc.config.insecure_http,
            "parked_requests": svc.parking.parked,  # event streams and relayed long-polls holding a thread now
            "max_parked_requests": svc.parking.limit,
            # status long-polls the front holds on its event loop (None: the request did not come through it)
            "front_waits": request.environ.get(ENVIRON_WAITS_HELD),
            "time": time.time(),  # this peer's clock: `pocketgrid doctor` compares it with its own (tokens expire)
        }
    )


@bp.get("/api/v1/broker")
def broker():
    """The current broker, its epoch and the membership, as this peer knows them."""
    svc = _svc()
    view = svc.membership.describe()
    if svc.broker_role is not None:
        view["members"] = [{k: v for k, v in m.items() if k != "cert"} for m in svc.broker_role.membership()["members"]]
        view["load"] = svc.broker_role.load_table()
        view["policy"] = svc.broker_role.policy_name
    if request.args.get("detail") in {"1", "true"}:
        view = _detailed(svc, view)
    return jsonify(view)


@bp.get("/api/v1/broker/placements")
def placements():
    """Administrators: the broker's recent placement decisions, newest first (``?limit=N``, at most 500).

    Each: the ranking (score, reason and its parts per candidate), the policy,
    when, and the outcome the entry peer reported (who took the job, its ID,
    the candidates that failed first).  A peer that does not hold the broker
    role relays the request to the broker, with the caller's proof.
    """
    svc = _svc()
    raw = request.args.get("limit", "50")
    try:
        limit = int(raw)
    except ValueError:
        raise BadRequest(f"limit must be a whole number, got {raw!r}") from None
    if not 1 <= limit <= 500:
        raise BadRequest("limit must be between 1 and 500")
    role = svc.broker_role
    if role is None:
        broker = svc.membership.broker
        if broker is None:
            raise Unavailable("this peer knows no broker yet; retry shortly", retry_after=2)
        return relay(svc.http, svc.membership, broker["name"], timeout=svc.config.peer_timeout)
    return jsonify({"broker": {"name": role.name, "url": role.url}, "epoch": role.epoch, "policy": role.policy_name,
                    "placements": role.recent_placements(limit)})


def _detailed(svc: Any, view: dict[str, Any]) -> dict[str, Any]:
    """``?detail=1``, for a person (``pocketgrid status --system``): each member's liveness and
    last heartbeat age (the broker's view), load coefficient, report age and executor.  A peer
    that does not hold the role asks the broker; if the broker does not answer, ``detail_error`` says so."""
    if svc.broker_role is None:
        broker = svc.membership.broker
        if broker is None or identity().kind == "host":  # no broker known, or a relay: never relay twice
            view["detail_error"] = "this peer knows no broker yet" if broker is None else "not the broker"
            return view
        try:
            r = svc.http.get(f"{broker['url']}/api/v1/broker", params={"detail": 1}, timeout=svc.config.peer_timeout)
            r.raise_for_status()
            answer = r.json()
        except (requests.RequestException, ValueError) as exc:
            view["detail_error"] = f"the broker {broker['name']} ({broker['url']}) did not answer ({type(exc).__name__})"
            return view
        answer["self"] = view["self"]
        answer["via"] = svc.config.name
        return answer
    health = svc.broker_role.member_health()
    load = {row["peer"]: row for row in view.get("load", [])}

    def executor(member: dict[str, Any]) -> str | None:
        if member["name"] == svc.config.name:
            return svc.executor.describe().get("name")
        try:
            r = svc.http.get(f"{member['url']}/healthz", timeout=min(3.0, svc.config.peer_timeout))
            return (r.json().get("executor") or {}).get("name")
        except (requests.RequestException, ValueError, AttributeError):
            return None

    members = view.get("members", [])
    with ThreadPoolExecutor(max_workers=max(1, min(8, len(members)))) as pool:
        executors = list(pool.map(executor, members))
    for m, exe in zip(members, executors):
        row = load.get(m["name"]) or {}
        m.update(health.get(m["name"], {"alive": None, "last_seen_age": None}))
        m.update(coefficient=row.get("coefficient"), report_age=row.get("report_age"), executor=exe)
    return view


def openapi_document() -> dict:
    text = resources.files("peer").joinpath("openapi.yaml").read_text()
    return yaml.safe_load(text)


@bp.get("/api/v1/openapi.json")
def openapi_json():
    return jsonify(openapi_document())


@bp.get("/api/v1/openapi.yaml")
def openapi_yaml():
    return Response(resources.files("peer").joinpath("openapi.yaml").read_text(), mimetype="application/yaml")
