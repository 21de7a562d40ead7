"""peer/metrics.py and the ``/metrics`` access rule (peer/access.py), on real peer apps in this process.

Who may scrape under each ``metrics_access`` value, from loopback and other addresses, with no
credentials, a user's, a paired device's and an administrator's token; what "loopback" means; the
setting's validation; the reason a refused token is counted under; one registry per app; a failing
collector leaves the rest of the scrape standing.
"""
from __future__ import annotations

import os
import secrets
import time

import jwt
import pytest
from prometheus_client.parser import text_string_to_metric_families

from peer.access import loopback, metrics_open_to
from peer.app import create_app
from peer.metrics import JobCounts, Metrics, refusal_reason
from pocketgrid.config import PeerConfig


def _app(tmp_path_factory, site_pki, name: str):
    site_pki.host(name)
    config = PeerConfig(name=name, state_dir=str(tmp_path_factory.mktemp(name)), agent=False,
                        pki_dir=str(site_pki.root), admins=[site_pki.dn("carol")])
    return create_app(config, start_services=False)


@pytest.fixture(scope="module")
def app(tmp_path_factory, site_pki):
    app = _app(tmp_path_factory, site_pki, "unit-metrics")
    yield app
    app.extensions["pocketgrid"].stop()


def _samples(text: str) -> dict[tuple[str, frozenset], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _scrape(app, addr: str = "127.0.0.1", token: str | None = None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return app.test_client().get("/metrics", headers=headers, environ_base={"REMOTE_ADDR": addr})


@pytest.mark.parametrize("address", ["127.0.0.1", "127.0.0.2", "127.255.255.254", "::1", "::ffff:127.0.0.1",
                                     " 127.0.0.1 "])
def test_loopback_is_127_0_0_0_8_and_ipv6_loopback(address):
    assert loopback(address)


@pytest.mark.parametrize("address", ["10.0.0.5", "192.0.2.2", "128.0.0.1", "0.0.0.0", "::", "::ffff:10.0.0.1",
                                     "fd00::2", "fe80::1", "", None, "localhost", "127.0.0.1.example.org"])
def test_anything_else_is_not_loopback(address):
    assert not loopback(address)


def test_the_rule_without_an_administrator():
    assert metrics_open_to("open", "192.0.2.2", credentials=False)
    assert metrics_open_to("open", "192.0.2.2", credentials=True)
    assert metrics_open_to("loopback-or-admin", "127.0.0.1", credentials=False)
    assert metrics_open_to("loopback-or-admin", "::1", credentials=False)
    assert not metrics_open_to("loopback-or-admin", "192.0.2.2", credentials=False)
    assert not metrics_open_to("loopback-or-admin", "127.0.0.1", credentials=True)  # judged by its credential
    assert not metrics_open_to("admin", "127.0.0.1", credentials=False)
    assert not metrics_open_to("Open", "127.0.0.1", credentials=False)  # an unknown value fails closed


@pytest.mark.parametrize("mode, addr, who, status", [
    ("loopback-or-admin", "127.0.0.1", None, 200),
    ("loopback-or-admin", "127.0.0.9", None, 200),
    ("loopback-or-admin", "192.0.2.2", None, 403),
    ("loopback-or-admin", "192.0.2.2", "carol", 200),
    ("loopback-or-admin", "127.0.0.1", "alice", 403),
    ("loopback-or-admin", "192.0.2.2", "carol-phone", 403),
    ("loopback-or-admin", "127.0.0.1", "garbage", 401),
    ("admin", "127.0.0.1", None, 403),
    ("admin", "127.0.0.1", "alice", 403),
    ("admin", "192.0.2.2", "carol", 200),
    ("open", "192.0.2.2", None, 200),
    ("open", "192.0.2.2", "alice", 200),
])
def test_who_may_scrape_under_each_setting(app, site_pki, monkeypatch, mode, addr, who, status):
    svc = app.extensions["pocketgrid"]
    monkeypatch.setattr(svc.config, "metrics_access", mode)
    tokens = {
        "alice": lambda: svc.security.tokens.issue(site_pki.dn("alice"), "cms").token,
        "carol": lambda: svc.security.tokens.issue(site_pki.dn("carol"), "cms").token,
        "carol-phone": lambda: svc.security.tokens.issue(site_pki.dn("carol"), "cms", kind="device",
                                                         device="phone").token,
        "garbage": lambda: "not-a-token",
    }
    r = _scrape(app, addr, tokens[who]() if who else None)
    assert r.status_code == status, r.get_data(as_text=True)
    if status == 200:
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        assert ("pocketgrid_broker_role_held", frozenset()) in _samples(r.get_data(as_text=True))
    elif status == 403:
        assert f"metrics_access = {mode}" in r.get_json()["error"]  # the message names the setting


def test_openmetrics_when_the_scraper_asks_for_it(app):
    r = app.test_client().get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
    assert r.get_data(as_text=True).rstrip().endswith("# EOF")


def test_the_setting_takes_three_words(tmp_path):
    assert PeerConfig.load(environ={}).metrics_access == "loopback-or-admin"
    assert PeerConfig.load(environ={"POCKETGRID_METRICS_ACCESS": "admin"}).metrics_access == "admin"
    toml = tmp_path / "peer.toml"
    toml.write_text('[peer]\nmetrics_access = "open"\n')
    assert PeerConfig.load(toml, environ={}).metrics_access == "open"
    with pytest.raises(ValueError, match="metrics_access: expected one of loopback-or-admin, admin, open, got 'public'"):
        PeerConfig.load(environ={"POCKETGRID_METRICS_ACCESS": "public"})


def test_the_reason_a_token_is_refused_for():
    now = time.time()

    def token(**claims) -> str:
        return jwt.encode({"sub": "CN=x", "jti": "j1", **claims}, "k" * 32, algorithm="HS256")

    assert refusal_reason("not-a-token", lambda jti: False) == "invalid"
    assert refusal_reason("", lambda jti: False) == "invalid"
    assert refusal_reason(token(exp=now - 5), lambda jti: True) == "expired"  # expiry is checked first
    assert refusal_reason(token(exp=now + 60), lambda jti: jti == "j1") == "revoked"
    assert refusal_reason(token(exp=now + 60), lambda jti: False) == "invalid"  # e.g. a forged signature


def test_each_app_has_its_own_registry(app, tmp_path_factory, site_pki):
    other = _app(tmp_path_factory, site_pki, "unit-metrics-other")
    try:
        route = ("pocketgrid_http_requests_total", frozenset({"method": "GET", "route": "/healthz",
                                                              "status": "200"}.items()))
        before = _samples(_scrape(other).get_data(as_text=True)).get(route, 0.0)
        for _ in range(3):
            assert app.test_client().get("/healthz").status_code == 200
        assert _samples(_scrape(other).get_data(as_text=True)).get(route, 0.0) == before
        assert other.extensions["pocketgrid"].metrics.registry is not app.extensions["pocketgrid"].metrics.registry
    finally:
        other.extensions["pocketgrid"].stop()


def test_a_failing_collector_leaves_the_rest_of_the_scrape(app):
    from prometheus_client import generate_latest

    svc = app.extensions["pocketgrid"]
    metrics = Metrics(peer="x")

    def broken() -> JobCounts:
        raise OSError("the database is down")

    metrics.watch(svc, broken)
    errors = ("pocketgrid_metrics_collector_errors_total", frozenset({"collector": "jobs"}.items()))
    first = _samples(generate_latest(metrics.registry).decode())
    assert ("pocketgrid_broker_role_held", frozenset()) in first  # the other collectors answered
    assert not any(name == "pocketgrid_jobs" for name, _ in first)
    assert first[errors] == 1  # the scrape that failed says so
    assert _samples(generate_latest(metrics.registry).decode())[errors] == 2


def test_routes_are_rules_and_unknown_methods_are_other(app):
    client = app.test_client()
    client.get("/api/v1/jobs/site.123abc")  # 401: no credentials, but the route matched
    client.open("/healthz", method="BREW")
    client.get("/no/such/route/at/all/x.js")
    samples = _samples(_scrape(app).get_data(as_text=True))
    requests = {dict(labels)["route"] for name, labels in samples if name == "pocketgrid_http_requests_total"}
    assert "/api/v1/jobs/<job_id>" in requests
    assert not any("site.123abc" in r or "/no/such" in r for r in requests)
    methods = {dict(labels)["method"] for name, labels in samples if name == "pocketgrid_http_requests_total"}
    assert "BREW" not in methods and "other" in methods


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request):
    """SQLite (the default: empty URL), and a fresh database on the PostgreSQL server .ci/run starts."""
    if request.param == "sqlite":
        yield ""
        return
    url = os.environ.get("POCKETGRID_TEST_PG_URL")
    if not url:
        pytest.skip("POCKETGRID_TEST_PG_URL is not set: no PostgreSQL server (bash .ci/run starts one)")
    import sqlalchemy as sa

    name = f"pocketgrid_{secrets.token_hex(4)}"
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    yield url.rsplit("/", 1)[0] + f"/{name}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def test_jobs_and_inputs_by_state_follow_the_records(tmp_path, database_url):
    """records_counts: the jobs whose home is this peer, by the state their owners see, and their inputs;
    a change the user sees moves the counts; a purged record no longer counts."""
    from peer import records
    from peer.app import build_services
    from peer.metrics import records_counts
    from peer.models import JobRecord

    svc = build_services(PeerConfig(name="counts", state_dir=str(tmp_path), insecure_http=True, agent=False,
                                    executor="local", database_url=database_url))
    store = svc.retention.store
    now = time.time()

    def record(job_id: str, n: int) -> JobRecord:
        r = JobRecord(id=job_id, name="j", owner="CN=x", created_at=now, executable_name="x.sh",
                      submit_name="x.sub", submit_text="executable = x.sh\nqueue\n",
                      inputs=[{"name": f"in{i}", "path": f"in{i}", "size": 1, "sha256": "0" * 64} for i in range(n)],
                      warnings=[], home="counts", manager="counts", manager_epoch=1)
        r.attempts.extend(records.first_attempts(r, now))
        return r

    try:
        counts = records_counts(svc)
        assert counts() == JobCounts(jobs={}, inputs={})
        with store.session() as s:
            a, b = record("counts.1", 2), record("counts.2", 3)
            a.attempts[0].state = "running"
            s.add_all([a, b])
            store.touch(s, a)
            store.touch(s, b)
        got = counts()
        assert got.jobs == {"running": 1, "idle": 1}
        assert got.inputs == {"running": 1, "idle": 4}

        with store.session() as s:
            a = s.get(JobRecord, "counts.1")
            for att, state in zip(a.attempts, ("completed", "failed")):
                att.state, att.finished_at = state, now
                att.result = state == "completed"
            b = s.get(JobRecord, "counts.2")
            b.attempts[2].state = "running"
            store.touch(s, a)
            store.touch(s, b)
        got = counts()
        assert got.jobs == {"failed": 1, "running": 1}
        assert got.inputs == {"completed": 1, "failed": 1, "running": 1, "idle": 2}

        with store.session() as s:  # the finished job expires (retention, purge): so does its count
            s.get(JobRecord, "counts.1").purged_at = now
        got = counts()
        assert got.jobs == {"running": 1} and got.inputs == {"running": 1, "idle": 2}
    finally:
        svc.stop()
