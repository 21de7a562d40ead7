"""Finding a job's processes from outside its sandbox.

A job runs in a PID namespace of its own (peer/executors/sandbox.py), so the
``$$`` it writes is not a host PID.  Its processes (and bwrap's around them)
carry the proc directory in ``_CONDOR_SCRATCH_DIR``, which root can read.
"""
from __future__ import annotations

from pathlib import Path

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
