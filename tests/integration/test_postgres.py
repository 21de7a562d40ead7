"""The same job path, and the security tables, with PostgreSQL as the peer's database (a real server
that .ci/run starts); TLS and a logged-in user as everywhere."""
from __future__ import annotations

import os
import secrets

import pytest

from mobile_client import ApiError, Client

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

PG_URL = os.environ.get("POCKETGRID_TEST_PG_URL")


@pytest.fixture
def pg_database():
    if not PG_URL:
        pytest.skip("POCKETGRID_TEST_PG_URL is not set: no PostgreSQL server (bash .ci/run starts one)")
    import sqlalchemy as sa

    name = f"pocketgrid_{secrets.token_hex(4)}"
    admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    yield PG_URL.rsplit("/", 1)[0] + f"/{name}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def login(p, site_pki, user: str) -> Client:
    issued = site_pki.users[user]
    c = Client(p.url, ca=site_pki.ca)
    c.login(issued.cert_path, issued.key_path)
    return c


def test_job_path_and_restart_on_postgresql(peers, pg_database, site_pki):
    p = peers("pg-site", extra=["--no-agent", "--database-url", pg_database], site_pki=site_pki)
    p.publish.mkdir(parents=True, exist_ok=True)
    (p.publish / "a.txt").write_text("1\n2\n")
    (p.publish / "b.txt").write_text("3\n")
    client = login(p, site_pki, "alice")
    carol, bob = login(p, site_pki, "carol"), login(p, site_pki, "bob")
    rule = carol.acl_add("deny", "jobs-submit", "vo", "atlas")
    bob_token = bob.token
    kw = dict(executable_name="wc.sh", submit_text="executable = wc.sh\narguments = $(input)\noutput = n.txt\nqueue\n",
              idempotency_key="pg-1")
    job = client.submit("pg", b"#!/bin/sh\nwc -l < \"$1\"\n", "s.sub", ["a.txt", "b.txt"], **kw)
    assert client.submit("pg", b"#!/bin/sh\nwc -l < \"$1\"\n", "s.sub", ["a.txt", "b.txt"], **kw)["id"] == job["id"]
    final = client.wait(job["id"], timeout=60)
    assert [i["state"] for i in final["inputs"]] == ["completed", "completed"]
    bob.logout()
    p.stop()
    p.start()  # state (jobs, reader offsets, digests, rules, revocations, audit) comes back from PostgreSQL
    again, _ = client.status(job["id"])  # alice's token still verifies after the restart
    assert again["state"] == "completed" and again["inputs"] == final["inputs"]
    outs = client.outputs(job["id"])["outputs"]
    assert [f["size"] for o in outs for f in o["files"] if f["name"] == "n.txt"] == [2, 2]
    assert [r["id"] for r in carol.acl()["rules"]] == [rule["id"]]
    r = Client(p.url, ca=site_pki.ca, token=bob_token, retries=0)
    with pytest.raises(ApiError) as err:  # revoked before the restart, still revoked
        r.whoami()
    assert err.value.status == 401 and "revoked" in err.value.message
    with pytest.raises(ApiError) as err:  # the rule survived the restart too
        login(p, site_pki, "bob").submit("no", b"x", "s.sub", ["a.txt"], executable_name="x.sh",
                                         submit_text="executable = x.sh\nqueue\n")
    assert err.value.status == 403
    actions = {e["action"] for e in carol.audit(limit=100)}
    assert {"login", "submit", "acl-deny", "logout", "access-denied"} <= actions


def test_placement_record_decisions_and_learned_run_times_on_postgresql(peers, pg_database, site_pki):
    p = peers("pg-learner", extra=["--agent-interval", "0.3", "--database-url", pg_database], site_pki=site_pki)
    p.publish.mkdir(parents=True, exist_ok=True)
    for i in range(3):
        (p.publish / f"x{i}.txt").write_text("1\n")
    alice, carol = login(p, site_pki, "alice"), login(p, site_pki, "carol")
    kw = dict(executable_name="w.sh", submit_text="executable = w.sh\narguments = $(input)\nqueue\n")
    job = alice.submit("pg-learn", b"#!/bin/sh\nwc -l < \"$1\"\n", "s.sub", [f"x{i}.txt" for i in range(3)], **kw)
    assert alice.wait(job["id"], timeout=60)["state"] == "completed"
    status, _ = alice.status(job["id"], history=True)
    assert status["placement"]["chosen"] == "pg-learner"
    assert [h["event"] for h in status["inputs"][0]["history"]] == ["submit", "execute", "job_terminated"]
    decisions = carol.placements(limit=5)["placements"]
    assert decisions[0]["outcome"]["job_id"] == job["id"]

    def learned():
        row = next((r for r in alice.system()["load"] if r["peer"] == "pg-learner"), {})
        return (row.get("runtimes") or {}).get("completed", 0) >= 3

    from tests.conftest import wait_until
    wait_until(learned, 30, what="the agent's report to carry the run times read from the event logs")
    again = alice.submit("pg-again", b"#!/bin/sh\nwc -l < \"$1\"\n", "s.sub", ["x0.txt"], **kw)
    status = wait_until(lambda: (st := alice.status(again["id"], placement=True)[0]).get("placement") and st, 30,
                        what="the job's first placement round")
    assert status["placement"]["ranking"][0]["detail"]["run_source"].startswith("learned: median of 3 procs")
