"""The same job path with PostgreSQL as the peer's database (a real server that .ci/run starts)."""
from __future__ import annotations

import os
import secrets

import pytest

from mobile_client import Client

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


def test_job_path_and_restart_on_postgresql(peers, pg_database):
    p = peers("pg-site", extra=["--no-agent", "--database-url", pg_database])
    p.publish.mkdir(parents=True, exist_ok=True)
    (p.publish / "a.txt").write_text("1\n2\n")
    (p.publish / "b.txt").write_text("3\n")
    client = Client(p.url)
    kw = dict(executable_name="wc.sh", submit_text="executable = wc.sh\narguments = $(input)\noutput = n.txt\nqueue\n",
              idempotency_key="pg-1")
    job = client.submit("pg", b"#!/bin/sh\nwc -l < \"$1\"\n", "s.sub", ["a.txt", "b.txt"], **kw)
    assert client.submit("pg", b"#!/bin/sh\nwc -l < \"$1\"\n", "s.sub", ["a.txt", "b.txt"], **kw)["id"] == job["id"]
    final = client.wait(job["id"], timeout=60)
    assert [i["state"] for i in final["inputs"]] == ["completed", "completed"]
    p.stop()
    p.start()  # state (jobs, reader offsets, digests) comes back from PostgreSQL
    again, _ = Client(p.url).status(job["id"])
    assert again["state"] == "completed" and again["inputs"] == final["inputs"]
    outs = Client(p.url).outputs(job["id"])["outputs"]
    assert [f["size"] for o in outs for f in o["files"] if f["name"] == "n.txt"] == [2, 2]
