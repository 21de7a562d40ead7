"""A proc's standard error: which file it is, and its last lines for a failed or held input.

The executors know each proc's error file when they queue the job (the
submit file's ``error = ...``, or HTCondor's default ``_condor_stderr``) and
record the names, relative to each proc's directory, in the job's meta
directory (:func:`record_names`).  The job status shows, for an input that
failed or is held, the name and the last lines of that file
(:func:`stderr_fields`).  Under HTCondor with file transfer the starter's
``_condor_stderr`` is what comes back when the named file is not there.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Sequence

log = logging.getLogger(__name__)

#: File in the job's meta directory (``<job>/.pocketgrid/``) with each proc's stderr name.
NAMES_FILE = "stderr.json"
#: HTCondor's name for a job's stderr in its sandbox (and pocketgrid's default).
CONDOR_DEFAULT = "_condor_stderr"
#: Largest tail shown, in bytes (before decoding).
TAIL_BYTES = 2048
#: Most lines shown.
TAIL_LINES = 20


def record_names(meta_dir: Path, proc_dirs: Sequence[str | os.PathLike[str]], paths: Sequence[str | None]) -> None:
    """Write each proc's stderr file (an absolute path, or None when discarded) relative to its directory."""
    names: list[str | None] = []
    for proc_dir, path in zip(proc_dirs, paths):
        names.append(None if path is None else os.path.relpath(path, proc_dir))
    meta_dir.mkdir(parents=True, exist_ok=True)
    (meta_dir / NAMES_FILE).write_text(json.dumps(names))


def recorded_names(meta_dir: Path) -> list[str | None] | None:
    """The names :func:`record_names` wrote, or None for a job queued before they were recorded."""
    try:
        names = json.loads((meta_dir / NAMES_FILE).read_text())
    except (OSError, ValueError):
        return None
    return names if isinstance(names, list) else None


def tail(path: Path, *, max_bytes: int = TAIL_BYTES, max_lines: int = TAIL_LINES) -> str:
    """The last lines of ``path``: at most ``max_bytes`` bytes and ``max_lines`` lines, UTF-8 with replacement."""
    with open(path, "rb") as fh:
        size = fh.seek(0, os.SEEK_END)
        start = max(0, size - max_bytes)
        fh.seek(start)
        data = fh.read(max_bytes)
    if start > 0:  # drop the partial first line (unless the tail is one long line)
        cut = data.find(b"\n")
        if 0 <= cut < len(data) - 1:
            data = data[cut + 1:]
    lines = data.decode("utf-8", "replace").splitlines()
    return "\n".join(lines[-max_lines:])


def stderr_fields(proc_dir: Path, name: str | None) -> dict[str, Any]:
    """``stderr_file`` and ``stderr_tail`` for a failed or held input (empty when there is nothing to show).

    ``name`` is the recorded name (None: unknown or discarded).  When that
    file does not exist, HTCondor's ``_condor_stderr`` in the proc's
    directory is used if it does.
    """
    candidates = [n for n in (name, CONDOR_DEFAULT) if n]
    for candidate in dict.fromkeys(candidates):
        path = proc_dir / candidate
        try:
            inside = path.resolve().is_relative_to(proc_dir.resolve())
            if inside and path.is_file():
                return {"stderr_file": candidate, "stderr_tail": tail(path)}
        except OSError as exc:
            log.info("cannot read %s: %s", path, exc)
    return {"stderr_file": name, "stderr_tail": None} if name else {}
