"""Finding a job's inputs and processes from outside: where each input runs, and its processes.

A job's inputs run in pieces at sites (docs/architecture.md, *Jobs across
sites*): input ``i``'s current attempt is in ``<site state>/stage/<piece>/<i>/``,
and the status with ``?history=1`` names the site and the piece.

A job runs in a PID namespace of its own (peer/executors/sandbox.py), so the
``$$`` it writes is not a host PID.  Its processes (and bwrap's around them)
carry the proc directory in ``_CONDOR_SCRATCH_DIR``, which root can read.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import psutil


def job_pids(proc_dir: Path) -> list[int]:
    """Host PIDs of the live (not zombie) processes running the proc in ``proc_dir``."""
    found = []
    for p in psutil.process_iter():
        try:
            if p.environ().get("_CONDOR_SCRATCH_DIR") == str(proc_dir) and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p.pid)
        except psutil.Error:
            continue
    return found


def attempt_dir(peers: Iterable[Any], status: dict[str, Any], index: int, attempt: int | None = None) -> Path | None:
    """The directory of input ``index``'s attempt (default: its latest sent to a site) at its site.

    ``status``: the job's status with ``?history=1``; ``peers``: objects with
    ``name`` and ``state`` (tests/conftest.py ``PeerProcess``).  None while the
    attempt has no piece yet.
    """
    by_name = {p.name: p for p in peers}
    attempts = [a for a in status["inputs"][index]["attempts"] if a["piece"]]
    if attempt is not None:
        attempts = [a for a in attempts if a["attempt"] == attempt]
    if not attempts:
        return None
    a = attempts[-1]
    return by_name[a["site"]].state / "stage" / a["piece"] / str(index)


def with_history(client: Any, job_id: str) -> dict[str, Any]:
    """The job's status with each input's attempts (``Client.status(..., history=True)``)."""
    status, _ = client.status(job_id, history=True)
    return status
