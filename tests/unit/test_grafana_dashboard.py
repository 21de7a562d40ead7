"""compose/grafana/pocketgrid.json is a valid dashboard whose queries use only what a peer exports.

The names and labels are read from the exposition of a real scrape of a peer app (prometheus_client's own
parser), after a little traffic so that every labelled family has series to show its label names.
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from peer.app import create_app
from pocketgrid.config import PeerConfig

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "compose" / "grafana" / "pocketgrid.json"
#: Names of series a family of each type exposes, from its family name.
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "summary": ("_count", "_sum"),
            "info": ("_info",), "gauge": ("",), "unknown": ("",)}
#: Labels Prometheus adds to every scraped series, and the histogram's bucket label.
ADDED_LABELS = {"instance", "job", "le"}
METRIC = re.compile(r"\b((?:pocketgrid|process|python)_[a-z0-9_]+)\b")
#: PromQL words that look like label names in ``by (...)`` / selectors but are not, and functions.
_BY = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
_SELECTOR = re.compile(r"\{([^{}]*)\}")
_MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")


@pytest.fixture(scope="module")
def exported(tmp_path_factory, site_pki) -> dict[str, set[str]]:
    """Series name -> the label names it carries, from one scrape after some traffic."""
    site_pki.host("dash")
    app = create_app(PeerConfig(name="dash", state_dir=str(tmp_path_factory.mktemp("dash")), agent=False,
                                pki_dir=str(site_pki.root)), start_services=False)
    svc = app.extensions["pocketgrid"]
    try:
        client = app.test_client()
        client.get("/healthz")
        client.get("/api/v1/jobs", headers={"Authorization": "Bearer not-a-token"})  # a refused token
        svc.broker_role.ingest_report({"peer": "dash", "url": svc.config.url, "coefficient": 0.2,
                                       "sampled_at": time.time(), "interval": 15})
        svc.split("dashboard-test", 1, [0], [])  # a placement decision (a split of one input)
        r = client.get("/metrics")
        assert r.status_code == 200
        series: dict[str, set[str]] = {}
        for family in text_string_to_metric_families(r.get_data(as_text=True)):
            labels = set().union(*(set(s.labels) for s in family.samples)) if family.samples else set()
            for suffix in SUFFIXES[family.type]:
                series.setdefault(family.name + suffix, set()).update(labels)
            for s in family.samples:
                series.setdefault(s.name, set()).update(s.labels)
        return series
    finally:
        svc.stop()


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def _queries(dashboard: dict) -> list[str]:
    """Every PromQL expression: panel targets and template variable queries."""
    out = []
    for panel in dashboard["panels"]:
        out += [t["expr"] for t in panel.get("targets", [])]
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            out.append(var["definition"])
    return out


def test_the_dashboard_is_a_grafana_dashboard(dashboard):
    assert dashboard["uid"] == "pocketgrid" and dashboard["title"]
    assert {v["name"] for v in dashboard["templating"]["list"]} >= {"datasource", "instance"}
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    graphs = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len(graphs) >= 8
    for p in graphs:
        assert p["title"] and p["targets"], p
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert set(p["gridPos"]) == {"h", "w", "x", "y"} and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24
        assert all(t["expr"].strip() and t["refId"] for t in p["targets"])


def test_the_queries_use_only_exported_metrics_and_labels(dashboard, exported):
    for query in _queries(dashboard):
        names = METRIC.findall(query)
        assert names, f"no pocketgrid metric in {query!r}"
        unknown = [n for n in names if n not in exported]
        assert not unknown, f"{query!r} uses {unknown}, which a peer does not export"
        labels = set().union(*(exported[n] for n in names)) | ADDED_LABELS
        used = {name.strip() for group in _BY.findall(query) for name in group.split(",") if name.strip()}
        used |= {m for selector in _SELECTOR.findall(query) for m in _MATCHER.findall(selector)}
        assert used <= labels, f"{query!r} uses labels {sorted(used - labels)} that {names} do not carry"


def test_the_panels_cover_what_issue_15_asks_for(dashboard):
    """Request rate and p95 by route, jobs and inputs by state, placements and in flight per peer,
    load-report age, bytes moved, logins and token refusals, the broker epoch."""
    queries = " ".join(_queries(dashboard))
    for name in ("pocketgrid_http_requests_total", "pocketgrid_http_request_duration_seconds_bucket",
                 "pocketgrid_jobs", "pocketgrid_job_inputs", "pocketgrid_placements_total",
                 "pocketgrid_broker_in_flight_procs", "pocketgrid_broker_load_report_age_seconds",
                 "pocketgrid_staged_bytes_total", "pocketgrid_uploaded_bytes_total",
                 "pocketgrid_downloaded_bytes_total", "pocketgrid_logins_total", "pocketgrid_token_refusals_total",
                 "pocketgrid_broker_epoch", "pocketgrid_elections_total"):
        assert re.search(rf"\b{name}\b", queries), f"no panel shows {name}"
    assert "histogram_quantile(0.95" in queries
