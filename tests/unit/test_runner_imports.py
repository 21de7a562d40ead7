"""Each proc of the LocalExecutor starts a fresh ``python -m peer.executors.local_runner``: it must load
what running one proc needs, not the peer's server stack.  Importing the executors' package there used to
pull in the database layer and SQLAlchemy, about a second of CPU per proc: 40 seconds of a two-core
site's CPU when a 40-input job landed, enough to starve the peer's own answers (its broker heartbeats)."""
from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT

HEAVY = {"sqlalchemy", "flask", "werkzeug", "alembic", "requests", "psutil", "gunicorn", "aiohttp", "broker"}


def test_the_proc_runner_imports_no_server_stack() -> None:
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", "import peer.executors.local_runner"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    names = {line.rsplit("|", 1)[1].strip() for line in out.stderr.splitlines()
             if line.startswith("import time:") and line.count("|") == 2}
    assert "peer.executors.local_runner" in names and "peer.event_log" in names  # the listing is real
    assert {n.split(".")[0] for n in names} & HEAVY == set()
    assert not {"peer.db", "peer.executors.base", "peer.executors.local"} & names
