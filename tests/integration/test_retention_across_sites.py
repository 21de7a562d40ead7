"""Retention when a job's inputs ran at another site, on real TLS peers: the job's home owns its life.

* A finished job expires at its home, and the home removes its pieces at the site that ran them (the
  site itself keeps pieces for ever here: whatever goes, the home removed); a site that does not answer
  is asked again when it is back, the job being gone for its owner at once.
* A pin at the home reaches the site: the site expires other homes' unpinned pieces by age (its safety
  net), never a pinned one; unpinned again, it goes.

Short retention times in each peer's configuration (seconds, not days), and a sweep every second.
"""
from __future__ import annotations

import signal
from pathlib import Path

import pytest

from mobile_client import ApiError
from tests.conftest import host_session, login_client, report_load, start_secure, wait_until
from tests.job_processes import with_history

pytestmark = pytest.mark.integration

OK = b"#!/bin/sh\necho out > out.txt\n"
SUB = "executable = ok.sh\nqueue\n"


def configured(root: Path, name: str, retention: int) -> Path:
    path = root / f"{name}.toml"
    path.write_text(f"[peer]\njob_retention_seconds = {retention}\nretention_sweep_interval = 1\n")
    return path


def pair(root: Path, site_pki, *, home_retention: int, site_retention: int):
    home = start_secure(root, site_pki, "home", "--config", str(configured(root, "home", home_retention)))
    site = start_secure(root, site_pki, "site", "--config", str(configured(root, "site", site_retention)), join=home)
    host = host_session(site_pki, "home")
    wait_until(lambda: len(host.get(f"{home.url}/api/v1/broker", timeout=2).json()["members"]) == 2, 30,
               what="the site to join")
    (home.publish / "in.txt").write_text("1\n")
    return home, site


def run_at_site(home, site, site_pki, client, name: str) -> tuple[str, Path]:
    """A job submitted at ``home`` whose input runs at ``site`` (it reports itself idle, the home busy);
    its ID and its piece's directory at the site, once it finished."""
    for p, load in ((home, 5.0), (site, 0.0)):
        report_load(home.url, p, load, session=host_session(site_pki, p.name))
    job = client.submit(name, OK, "ok.sub", ["in.txt"], executable_name="ok.sh", submit_text=SUB)
    final = client.wait(job["id"], timeout=60)
    assert final["state"] == "completed" and final["inputs"][0]["site"] == "site", final
    piece = with_history(client, job["id"])["inputs"][0]["attempts"][-1]["piece"]
    where = site.state / "stage" / piece
    assert (where / "0" / "out.txt").is_file()
    return job["id"], where


def gone(client, job_id: str) -> bool:
    try:
        client.status(job_id)
    except ApiError as exc:
        return exc.status == 404
    return False


def test_the_home_removes_an_expired_jobs_pieces_at_their_site_also_after_a_silence(tmp_path, site_pki):
    home, site = pair(tmp_path, site_pki, home_retention=2, site_retention=0)  # the site never expires anything
    try:
        alice = login_client(home, site_pki, "alice")
        first, first_dir = run_at_site(home, site, site_pki, alice, "first")
        wait_until(lambda: gone(alice, first), 30, what="the job to expire at its home")
        wait_until(lambda: not first_dir.exists(), 30, what="its home to remove its piece at the site")
        assert first not in {j["id"] for j in alice.jobs()}

        second, second_dir = run_at_site(home, site, site_pki, alice, "second")
        site.stop(signal.SIGTERM)  # silent when the job expires
        wait_until(lambda: gone(alice, second), 30, what="the job to expire while its site is down")
        assert second_dir.exists()  # nobody could remove it there
        site.start()
        wait_until(lambda: not second_dir.exists(), 60, what="the home to remove the piece once the site answers")
        assert "every piece removed; its record is gone" in home.log_tail(100_000)
    finally:
        site.stop()
        home.stop()


def test_a_pin_at_the_home_keeps_the_pieces_at_their_site(tmp_path, site_pki):
    # the home keeps its records for ever; the site expires other homes' pieces 2 x 1 s after they finished
    home, site = pair(tmp_path, site_pki, home_retention=0, site_retention=1)
    try:
        alice = login_client(home, site_pki, "alice")
        for p, load in ((home, 5.0), (site, 0.0)):
            report_load(home.url, p, load, session=host_session(site_pki, p.name))
        kept = alice.submit("kept", OK, "ok.sub", ["in.txt"], executable_name="ok.sh", submit_text=SUB)
        assert alice.pin(kept["id"])["pinned"] is True  # before its piece exists: the piece is sent pinned
        alice.wait(kept["id"], timeout=60)
        kept_dir = site.state / "stage" / with_history(alice, kept["id"])["inputs"][0]["attempts"][-1]["piece"]
        plain, plain_dir = run_at_site(home, site, site_pki, alice, "plain")
        wait_until(lambda: not plain_dir.exists(), 30, what="the site to expire the unpinned piece by its age")
        assert (kept_dir / "0" / "out.txt").is_file()  # pinned: kept, and its outputs still readable
        assert alice.fetch_all(kept["id"], tmp_path / "got", overwrite=True)

        # unpinned at the home after its piece finished: the home tells the site, which then expires it
        assert alice.unpin(kept["id"])["pinned"] is False
        wait_until(lambda: not kept_dir.exists(), 30, what="the site to expire the piece once unpinned")
        assert alice.status(kept["id"])[0]["state"] == "completed"  # the record stays at its home (kept for ever)
    finally:
        site.stop()
        home.stop()

