"""Per-user quotas on staged bytes, on two real TLS peers: a full site refuses and the entry peer moves on;
when every site refuses, the user gets 413 with each site's numbers and what to remove; uploads too."""
from __future__ import annotations

import os

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
    assert first["peer"] == "site-b"  # site-a ranks first but is over alice's 50 kB there
    final = c.wait(first["id"], timeout=60)
    assert final["state"] == "completed"

    with pytest.raises(ApiError) as err:
        c.submit("second", COUNT_SH, "job.sub", ["large.dat"], executable_name="count.sh", submit_text=SUB)
    refusal = err.value
    assert refusal.status == 413
    assert "no site can take this job within your storage quota" in refusal.message
    assert "site-a: job 'second' needs 195.4 KiB, more than your whole quota of 48.8 KiB" in refusal.message
    assert "site-b: job 'second' needs 195.4 KiB, and you already use" in refusal.message
    assert "pocketgrid purge" in refusal.message and first["id"] in refusal.message  # what to remove, by name
    quota = {q["peer"]: q for q in refusal.body["quota"]}
    assert quota["site-a"]["limit_bytes"] == 50_000 and quota["site-b"]["limit_bytes"] == 250_000
    assert quota["site-b"]["used_bytes"] >= 100_000 and quota["site-b"]["needed_bytes"] >= 200_000
    assert quota["site-b"]["largest"][0]["name"] == first["id"]
    assert c.job_list()["jobs"][0]["id"] == first["id"]  # nothing was created by the refused submission

    # the user frees space as the message says, and the same submission now fits on site-b
    assert c.purge(first["id"])["bytes"] >= 100_000
    second = c.submit("second", COUNT_SH, "job.sub", ["large.dat"], executable_name="count.sh", submit_text=SUB)
    assert second["peer"] == "site-b"
    c.wait(second["id"], timeout=60)


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
