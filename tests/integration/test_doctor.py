"""`pocketgrid doctor` finds what breaks a deployment and says what to fix (exit 0/1/2)."""
from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pocketgrid import pki

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
