"""Refused tokens and probes of other users' jobs are in the audit log, and a flood of them cannot flood it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import jwt
import pytest
from werkzeug.test import EnvironBuilder
from cryptography.hazmat.primitives.asymmetric import ec

from peer.app import create_app
from peer.models import AuditEvent
from pocketgrid.config import PeerConfig
from tests.conftest import ROOT, login_client, report_load, host_session, start_secure

pytestmark = pytest.mark.integration

SH = b"#!/bin/sh\ntrue\n"
SUB = "executable = t.sh\narguments = $(input)\nqueue\n"


def _forged(dn: str, issuer: str) -> str:
    """A well-formed token naming a real peer as issuer, signed with a key that is not that peer's."""
    key = ec.generate_private_key(ec.SECP256R1())
    return jwt.encode({"iss": issuer, "sub": dn, "jti": "forged-1", "exp": time.time() + 3600, "knd": "login"},
                      key, algorithm="ES256", headers={"kid": issuer})


def test_a_forged_token_and_a_probe_show_up_in_pocketgrid_audit(tmp_path, site_pki):
    p = start_secure(tmp_path, site_pki, "audited")
    try:
        report_load(p.url, p, 0.1, session=host_session(site_pki, "audited"))
        (p.publish / "in.txt").write_text("x\n")
        alice = login_client(p, site_pki, "alice")
        job = alice.submit("secret", SH, "job.sub", ["in.txt"], executable_name="t.sh", submit_text=SUB)["id"]
        bob = login_client(p, site_pki, "bob")
        probe = bob.session.get(f"{p.url}/api/v1/jobs/{job}", timeout=10)
        unknown = bob.session.get(f"{p.url}/api/v1/jobs/audited.0000000000000000", timeout=10)
        assert probe.status_code == unknown.status_code == 404
        assert probe.json()["error"] == f"no such job {job!r}"  # the same answer as for a job that does not exist
        forged = bob.session.get(f"{p.url}/api/v1/jobs", timeout=10,
                                 headers={"Authorization": f"Bearer {_forged(site_pki.dn('carol'), 'audited')}"})
        assert forged.status_code == 401

        carol = login_client(p, site_pki, "carol")
        env = {**os.environ, "POCKETGRID_TOKEN": carol.token, "POCKETGRID_HOME": str(tmp_path / "home")}
        out = subprocess.run([sys.executable, "-m", "pocketgrid.cli", "audit", "--peer", p.url, "--ca", site_pki.ca,
                              "--json"], capture_output=True, text=True, timeout=60, env=env, cwd=ROOT)
        assert out.returncode == 0, out.stderr
        events = json.loads(out.stdout)
        probes = [e for e in events if e["action"] == "job-probe"]
        refused = [e for e in events if e["action"] == "token-refused"]
        assert len(probes) == 1 and probes[0]["dn"] == site_pki.dn("bob") and probes[0]["outcome"] == "denied"
        assert f"job {job} belongs to {site_pki.dn('alice')}" in probes[0]["detail"]
        assert len(refused) == 1 and refused[0]["dn"] == site_pki.dn("carol")  # what the forgery claimed to be
        assert "signature does not verify" in refused[0]["detail"] and "the DN is the token's claim" in refused[0]["detail"]
        text = subprocess.run([sys.executable, "-m", "pocketgrid.cli", "audit", "--peer", p.url, "--ca", site_pki.ca],
                              capture_output=True, text=True, timeout=60, env=env, cwd=ROOT).stdout
        assert "job-probe" in text and "token-refused" in text
    finally:
        p.stop()


def test_ten_thousand_garbage_tokens_add_a_bounded_number_of_rows(tmp_path, site_pki):
    """In process (Flask's test client), with the audit clock moved by hand: 10,000 refusals from one
    address in a minute are 10 records and one summary, and the next minute starts counting again."""
    site_pki.host("flooded")
    config = PeerConfig(name="flooded", state_dir=str(tmp_path / "state"), agent=False, pki_dir=str(site_pki.root),
                        access_log=False, audit_refusals_per_minute=10)
    app = create_app(config, start_services=False)
    svc = app.extensions["pocketgrid"]
    now = [1_000_000.0]
    svc.security.audit.clock = lambda: now[0]
    client = app.test_client()
    # the flood goes straight into the WSGI app (a test client per request would cost more than the peer)
    base = EnvironBuilder(path="/api/v1/jobs", environ_base={"REMOTE_ADDR": "10.0.0.5"}).get_environ()
    statuses: set[str] = set()

    def start_response(status, headers, exc_info=None):
        statuses.add(status)

    try:
        for i in range(10_000):
            body = app({**base, "HTTP_AUTHORIZATION": f"Bearer garbage{i}"}, start_response)
            b"".join(body)
            getattr(body, "close", lambda: None)()
            now[0] += 0.005  # the whole flood within 50 s
        assert statuses == {"401 UNAUTHORIZED"}
        client.get("/api/v1/jobs", headers={"Authorization": "Bearer other"}, environ_base={"REMOTE_ADDR": "10.0.0.9"})

        def rows() -> list[AuditEvent]:
            with svc.db.sessions() as s:
                return list(s.query(AuditEvent).filter(AuditEvent.action == "token-refused").order_by(AuditEvent.id))

        assert len(rows()) == 11  # 10 from 10.0.0.5, 1 from 10.0.0.9
        now[0] += 60
        summary = [e for e in svc.security.audit.recent(action="token-refused") if "more" in e.detail]
        assert len(summary) == 1 and summary[0].source == "10.0.0.5"
        assert "... and 9990 more refused credentials from 10.0.0.5" in summary[0].detail
        assert len(rows()) == 12
        client.get("/api/v1/jobs", headers={"Authorization": "Bearer again"}, environ_base={"REMOTE_ADDR": "10.0.0.5"})
        assert len(rows()) == 13  # a new minute: recorded again
    finally:
        svc.stop()
