"""Health, the system view (``/api/v1/broker``) and the OpenAPI document."""
from __future__ import annotations

from importlib import resources

import yaml
from flask import Blueprint, Response, current_app, jsonify

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
    return jsonify(view)


def openapi_document() -> dict:
    text = resources.files("peer").joinpath("openapi.yaml").read_text()
    return yaml.safe_load(text)


@bp.get("/api/v1/openapi.json")
def openapi_json():
    return jsonify(openapi_document())


@bp.get("/api/v1/openapi.yaml")
def openapi_yaml():
    return Response(resources.files("peer").joinpath("openapi.yaml").read_text(), mimetype="application/yaml")
