"""The OpenAPI document is valid, matches the routes the peer really has, is served, and docs/api.md is current."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import yaml
from openapi_spec_validator import validate

from peer.access import audience
from peer.app import create_app
from pocketgrid.config import PeerConfig

ROOT = Path(__file__).resolve().parents[2]
SPEC_PATH = ROOT / "peer" / "openapi.yaml"
GENERATOR_PATH = ROOT / "scripts" / "gen_api_docs.py"

HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
#: Flask adds these to every rule by itself; the spec documents real operations only.
IMPLICIT_METHODS = {"HEAD", "OPTIONS"}
#: ``<path:x>``, ``<int:x>``, ``<x>`` -> ``{x}``
_CONVERTER = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")


def _load_generator():
    spec = importlib.util.spec_from_file_location("gen_api_docs", GENERATOR_PATH)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def flask_rule_to_openapi(rule: str) -> str:
    return _CONVERTER.sub(r"{\1}", rule)


@pytest.fixture(scope="module")
def spec() -> dict:
    return yaml.safe_load(SPEC_PATH.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def app(tmp_path_factory, site_pki):
    site_pki.host("docs")
    config = PeerConfig(name="docs", state_dir=str(tmp_path_factory.mktemp("openapi-peer")), agent=False,
                        pki_dir=str(site_pki.root))
    app = create_app(config, start_services=False)
    yield app
    app.extensions["pocketgrid"].stop()


def _app_operations(app) -> set[tuple[str, str]]:
    ops = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        for method in (rule.methods or set()) - IMPLICIT_METHODS:
            ops.add((flask_rule_to_openapi(rule.rule), method.lower()))
    return ops


def _spec_operations(spec: dict) -> set[tuple[str, str]]:
    return {
        (path, method)
        for path, item in spec["paths"].items()
        for method in item
        if method in HTTP_METHODS
    }


def test_flask_rule_conversion():
    assert flask_rule_to_openapi("/api/v1/files/<path:path>") == "/api/v1/files/{path}"
    assert (
        flask_rule_to_openapi("/api/v1/jobs/<job_id>/outputs/<int:index>/<path:name>")
        == "/api/v1/jobs/{job_id}/outputs/{index}/{name}"
    )
    assert flask_rule_to_openapi("/healthz") == "/healthz"


def test_spec_is_valid_openapi(spec):
    validate(spec)


def test_every_app_route_is_documented(app, spec):
    missing = _app_operations(app) - _spec_operations(spec)
    assert not missing, "routes the peer serves but peer/openapi.yaml does not document: " + ", ".join(
        f"{m.upper()} {p}" for p, m in sorted(missing)
    )


def test_every_documented_operation_exists(app, spec):
    extra = _spec_operations(spec) - _app_operations(app)
    assert not extra, "operations in peer/openapi.yaml that the peer does not serve: " + ", ".join(
        f"{m.upper()} {p}" for p, m in sorted(extra)
    )


def test_path_parameters_match_the_route(spec):
    """Every ``{x}`` in a path has a declared path parameter, and vice versa."""
    for path, item in spec["paths"].items():
        in_path = set(re.findall(r"{([^}]+)}", path))
        shared = {p["name"] for p in item.get("parameters", []) if p.get("in") == "path"}
        for method, op in item.items():
            if method not in HTTP_METHODS:
                continue
            declared = shared | {p["name"] for p in op.get("parameters", []) if p.get("in") == "path"}
            assert declared == in_path, f"{method.upper()} {path}: path parameters {sorted(declared)} != {sorted(in_path)}"


def test_api_docs_are_up_to_date():
    generator = _load_generator()
    problem = generator.check()
    assert problem is None, problem


def test_api_docs_are_deterministic(spec):
    generator = _load_generator()
    assert generator.render(spec) == generator.render(yaml.safe_load(SPEC_PATH.read_text(encoding="utf-8")))


def test_peer_serves_the_spec(app, spec):
    client = app.test_client()
    r = client.get("/api/v1/openapi.json")
    assert r.status_code == 200
    assert r.mimetype == "application/json"
    assert r.get_json() == spec

    r = client.get("/api/v1/openapi.yaml")
    assert r.status_code == 200
    assert yaml.safe_load(r.get_data(as_text=True)) == spec


def test_every_route_has_an_access_rule(app):
    """peer/access.py refuses routes it does not know (fail closed): each real route must be listed."""
    missing = sorted(r.endpoint for r in app.url_map.iter_rules() if r.endpoint != "static" and audience(r.endpoint) is None)
    assert missing == []
