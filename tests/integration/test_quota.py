"""Per-user quotas on staged bytes, on two real TLS peers: a full site refuses a job's inputs and its home
sends them to the next; when every site refuses, the input fails with each site's numbers and what to
remove (the submit itself is answered at once); uploads are refused with 413."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from mobile_client import ApiError
from tests.conftest import host_session, login_client, report_load, start_secure, wait_until

pytestmark = pytest.mark.integration

COUNT_SH = b"#!/bin/sh\nwc -c < \"$1\" > n.txt\n"
SUB = "executable = count.sh\narguments = $(input)\noutput = out.txt\nerror = err.txt\nqueue\n"


@pytest.fixture(scope="module")
def sites(tmp_path_factory, site_pki):
    """site-a (the broker, 50 kB quota, preferred by placement) and site-b (250 kB quota)."""
    root = tmp_path_factory.mktemp("quota")
    configs = {}
    for name, quota in (("site-a", 50_000), ("site-b", 250_000)):
        configs[name] = root / f"{name}.toml"
        configs[name].write_text(f"[peer]\nuser_quota_bytes = {quota}\n")
    a = start_secure(root, site_pki, "site-a", "--config", str(configs["site-a"]))
    b = start_secure(root, site_pki, "site-b", "--config", str(configs["site-b"]), join=a)
    host = host_session(site_pki, "site-a")
    wait_until(lambda: len(host.get(f"{a.url}/api/v1/broker", timeout=2).json()["members"]) == 2, 30,
               what="site-b to join")
    for p, load in ((a, 0.1), (b, 5.0)):  # placement ranks site-a first
        report_load(a.url, p, load, session=host_session(site_pki, p.name))
    for name, size in (("small.dat", 100_000), ("large.dat", 200_000)):
        (a.publish / name).write_bytes(os.urandom(size))
    yield a, b
    b.stop()
    a.stop()


def test_a_full_site_refuses_and_the_next_takes_the_job_until_every_site_is_full(sites, site_pki):
    a, b = sites
    c = login_client(a, site_pki, "alice")
    first = c.submit("first", COUNT_SH, "job.sub", ["small.dat"], executable_name="count.sh", submit_text=SUB)
    assert first["peer"] == "site-a"  # its home: the peer it was submitted to
    final = c.wait(first["id"], timeout=60)
    # site-a ranks first but is over alice's 50 kB there: it refused the input, and site-b ran it
    assert final["state"] == "completed" and final["inputs"][0]["site"] == "site-b"
    assert final["inputs"][0]["attempt"] == 1  # a refusal is no failed attempt

    second = c.submit("second", COUNT_SH, "job.sub", ["large.dat"], executable_name="count.sh", submit_text=SUB)
    failed = c.wait(second["id"], timeout=60)  # answered at once (201); the refusals show in the status
    assert failed["state"] == "failed"
    why = failed["inputs"][0]["note"]
    assert why.startswith("no site will take this input: ")
    assert "site-a: job 'second' needs 195.4 KiB, more than your whole quota of 48.8 KiB" in why
    assert "site-b: job 'second' needs 195.4 KiB, and you already use" in why
    assert "pocketgrid purge" in why and first["id"] in why  # what to remove, by the job's name
    quota = {q["peer"]: q for q in failed["inputs"][0]["quota"]}
    assert quota["site-a"]["limit_bytes"] == 50_000 and quota["site-b"]["limit_bytes"] == 250_000
    assert quota["site-b"]["used_bytes"] >= 100_000 and quota["site-b"]["needed_bytes"] >= 200_000
    assert quota["site-b"]["largest"][0]["name"] == first["id"]  # the job, not its piece at site-b
    assert not list((b.state / "stage").glob(f"*/{0}/large.dat"))  # refused before staging: nothing copied
    assert cli_status(c, a, second["id"]).count("no site will take this input") == 1  # the CLI prints it

    # the user frees space as the message says, and the same input now fits on site-b
    assert c.purge(first["id"])["bytes"] > 0
    wait_until(lambda: not any((b.state / "stage").iterdir()), 30, what="site-b to remove the purged job's piece")
    c.retry(second["id"], failed=True)
    done = c.wait(second["id"], timeout=60)
    assert done["state"] == "completed" and done["inputs"][0]["site"] == "site-b"


def cli_status(c, peer, job_id: str) -> str:
    """``pocketgrid status JOB`` as the user runs it (the same token and CA), its output."""
    env = {**os.environ, "POCKETGRID_PEERS": peer.url, "POCKETGRID_CA": str(peer.ca),
           "POCKETGRID_TOKEN": c.token}
    out = subprocess.run([sys.executable, "-m", "pocketgrid.cli", "status", job_id], capture_output=True, text=True,
                         env=env, timeout=60, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_an_upload_over_the_quota_is_refused_before_any_byte(sites, site_pki, tmp_path, monkeypatch):
    a, _ = sites
    monkeypatch.setenv("POCKETGRID_HOME", str(tmp_path / "home"))
    c = login_client(a, site_pki, "bob")
    local = tmp_path / "big.bin"
    local.write_bytes(os.urandom(60_000))
    with pytest.raises(ApiError) as err:
        c.upload(local)
    assert err.value.status == 413
    assert "site-a: the upload 'big.bin' needs 58.6 KiB" in err.value.message
    assert "more than your whole quota of 48.8 KiB on this site" in err.value.message
    assert err.value.body["quota"][0]["needed_bytes"] == 60_000
    assert not (a.state / "uploads-incoming").exists() or not list((a.state / "uploads-incoming").iterdir())
    # the raw PUT is held to the same quota
    r = c.session.put(f"{a.url}/api/v1/files/uploads/raw.bin", data=os.urandom(60_000), timeout=10)
    assert r.status_code == 413 and r.json()["quota"][0]["limit_bytes"] == 50_000
