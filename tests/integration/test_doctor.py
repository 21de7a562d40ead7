"""`pocketgrid doctor` finds what breaks a deployment and says what to fix (exit 0/1/2)."""
from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from pocketgrid import pki
from tests.conftest import free_port, wait_until

POCKETGRID = [sys.executable, "-m", "pocketgrid.cli"]


def _doctor(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*POCKETGRID, "doctor", "--port", "0", *args], capture_output=True, text=True, timeout=120)


@pytest.fixture()
def site(tmp_path: Path) -> Path:
    pki.init_ca(tmp_path / "pki")
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    return tmp_path


def test_expired_certificate_is_a_failure_naming_the_file_and_the_fix(site: Path) -> None:
    pki.issue_host(site / "pki", "old", days=30, not_before=dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=60))
    result = _doctor("--name", "old", "--pki", str(site / "pki"), "--state", str(site / "state"))
    assert result.returncode == 2, result.stdout
    line = next(x for x in result.stdout.splitlines() if "certificate expiry" in x)
    assert line.startswith("FAIL") and str(site / "pki" / "hosts" / "old.pem") in line and "expired" in line
    assert "pocketgrid pki issue-host old" in result.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another account needs root (CI runs as root)")
def test_state_dir_owned_by_another_account_is_a_failure_with_the_fix(site: Path) -> None:
    pki.issue_host(site / "pki", "p")
    shutil.chown(site / "state", "nobody")
    result = _doctor("--name", "p", "--pki", str(site / "pki"), "--state", str(site / "state"), "--json")
    checks = {c["name"]: c for c in json.loads(result.stdout)}
    assert result.returncode == 2
    assert checks["state directory"]["status"] == "FAIL" and "nobody" in checks["state directory"]["detail"]
    assert checks["state directory"]["fix"].startswith("chown -R")


def test_healthy_setup_has_no_failure(site: Path) -> None:
    pki.issue_host(site / "pki", "good")
    result = _doctor("--name", "good", "--pki", str(site / "pki"), "--state", str(site / "state"), "--executor", "local")
    assert result.returncode in (0, 1), result.stdout
    assert "FAIL" not in result.stdout
    assert all(line.startswith(("OK", "WARN", "     fix")) for line in result.stdout.splitlines()), result.stdout


# ---- clock skew, schedd, job account ------------------------------------------------------------

@pytest.fixture(scope="module")
def broker(tmp_path_factory, site_pki):
    """A real TLS peer (the broker) whose clock doctor compares with its own."""
    from tests.conftest import start_secure

    p = start_secure(tmp_path_factory.mktemp("clock"), site_pki, "clock-broker")
    yield p
    p.stop()


def _config_joining(tmp_path: Path, site_pki, broker) -> "PeerConfig":
    from pocketgrid.config import PeerConfig

    site_pki.host("clock-peer")
    state = tmp_path / "clock-peer"
    state.mkdir(mode=0o700)
    # a peer that is not running yet (its port is free): doctor compares with the peers it joins
    return PeerConfig(name="clock-peer", port=free_port(), state_dir=str(state), pki_dir=str(site_pki.root),
                      join=[broker.url])


def test_a_clock_two_minutes_off_is_a_failure_and_a_few_seconds_a_warning(tmp_path: Path, site_pki, broker) -> None:
    """The broker is real and answers its real time; this side's clock is the one planted off."""
    from pocketgrid import doctor

    config = _config_joining(tmp_path, site_pki, broker)
    config.resolve_tls()
    behind = doctor.check_clock(config, clock=lambda: time.time() - 120)  # we are 2 min slow: the broker is ahead
    assert [c.status for c in behind] == ["FAIL"], behind
    assert broker.url in behind[0].detail and "ahead of this host's" in behind[0].detail
    assert "120" in behind[0].detail.split(" s ")[0] or "119" in behind[0].detail.split(" s ")[0]
    assert "timedatectl set-ntp true" in behind[0].fix
    ahead = doctor.check_clock(config, clock=lambda: time.time() + 10)
    assert [c.status for c in ahead] == ["WARN"] and "behind this host's" in ahead[0].detail
    assert [c.status for c in doctor.check_clock(config)] == ["OK"]


def test_doctor_compares_clocks_with_the_members_of_a_running_peer(tmp_path: Path, site_pki, broker) -> None:
    from tests.conftest import start_secure

    from tests.conftest import host_session, start_secure

    member = start_secure(tmp_path, site_pki, "clock-member", join=broker)
    try:
        as_host = host_session(site_pki, "clock-member")
        wait_until(lambda: {m["name"] for m in as_host.get(f"{member.url}/api/v1/broker", timeout=2).json()["members"]}
                   == {"clock-broker", "clock-member"}, 30, what="the member to know the broker")
        result = _doctor("--name", "clock-member", "--pki", str(site_pki.root), "--public-url", member.url,
                         "--state", str(member.state), "--json")
        clock = [c for c in json.loads(result.stdout) if c["name"] == "clock"]
        assert [c["status"] for c in clock] == ["OK"], clock
        assert "clock-broker's clock" in clock[0]["detail"] and "the members clock-member knows" in clock[0]["detail"]
    finally:
        member.stop()


@pytest.mark.skipif(os.geteuid() != 0, reason="the root refusal needs root (CI runs as root)")
def test_condor_as_root_is_a_failure_naming_the_service_account(site: Path) -> None:
    pki.issue_host(site / "pki", "cx")
    result = _doctor("--name", "cx", "--pki", str(site / "pki"), "--state", str(site / "state"),
                     "--executor", "condor", "--json")
    checks = {c["name"]: c for c in json.loads(result.stdout)}
    assert result.returncode == 2
    assert checks["job account"]["status"] == "FAIL" and "root" in checks["job account"]["detail"]
    assert "User=pocketgrid" in checks["job account"]["fix"]


@pytest.mark.skipif(os.geteuid() == 0, reason="as root the schedd is not even asked (see the root test)")
def test_condor_without_a_schedd_is_a_failure(site: Path) -> None:
    pki.issue_host(site / "pki", "cy")
    result = _doctor("--name", "cy", "--pki", str(site / "pki"), "--state", str(site / "state"),
                     "--executor", "condor", "--json")
    checks = {c["name"]: c for c in json.loads(result.stdout)}
    assert result.returncode == 2 and checks["schedd"]["status"] == "FAIL"
    assert "no HTCondor schedd answered" in checks["schedd"]["detail"] and "CONDOR_CONFIG" in checks["schedd"]["fix"]


@pytest.mark.skipif(os.geteuid() != 0, reason="the job account matters when the peer is root")
def test_a_missing_job_account_is_a_failure_with_the_useradd_line(site: Path) -> None:
    pki.issue_host(site / "pki", "lx")
    config = site / "peer.toml"
    config.write_text('[peer]\nexecutor = "local"\njob_user = "pocketgrid-no-such-account"\n')
    result = _doctor("--name", "lx", "--pki", str(site / "pki"), "--state", str(site / "state"),
                     "--config", str(config), "--json")
    checks = {c["name"]: c for c in json.loads(result.stdout)}
    assert result.returncode == 2 and checks["job isolation"]["status"] == "FAIL"
    assert checks["job isolation"]["fix"].startswith("create the account: useradd --system")
    assert "pocketgrid-no-such-account" in checks["job isolation"]["fix"]
