"""The systemd units in compose/systemd pass `systemd-analyze verify`.

verify checks that ExecStart's binary exists, so each unit is verified as a copy whose
/opt/pocketgrid/bin/pocketgrid is this test venv's pocketgrid (the only change made).
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parents[2] / "compose" / "systemd"
INSTALLED = "/opt/pocketgrid/bin/pocketgrid"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed here (Debian package systemd; .ci/run installs it)")
@pytest.mark.parametrize("unit", sorted(p.name for p in UNITS.glob("*.service")))
def test_unit_verifies(unit: str, tmp_path: Path) -> None:
    pocketgrid = Path(sys.executable).with_name("pocketgrid")
    assert pocketgrid.exists(), "the test venv has no pocketgrid script: pip install -e ."
    text = (UNITS / unit).read_text()
    assert INSTALLED in text
    copy = tmp_path / unit
    copy.write_text(text.replace(INSTALLED, str(pocketgrid)))
    result = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    # verify also warns without failing (unknown keys, bad values): none may appear for our unit
    assert unit not in result.stderr, result.stderr
