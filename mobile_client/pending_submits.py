"""Idempotency-Keys of submits that have not been answered yet, kept across runs of the CLI.

A submit interrupted after its request left (Ctrl-C, a dropped link, a
crash) may or may not have created the job.  Running the same command again
must not create a second one, so the key is chosen per *submission*, not per
run: the first attempt stores a new key under a fingerprint of what is
submitted (name, executable bytes, submit text, inputs) in
``$POCKETGRID_HOME/pending-submits/``; a rerun of the same submission finds
and re-sends it, and the peer answers with the job it already made.  Once a
submit is answered the entry is removed, so submitting the same thing again
on purpose later makes a new job.  Entries older than a day are ignored
(the peers keep keys longer than that).
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
import uuid
from pathlib import Path

from .credentials import home

MAX_AGE = 86400.0


def fingerprint(name: str, executable: bytes, submit_text: str, inputs: list[str]) -> str:
    h = hashlib.sha256()
    for part in (name.encode(), hashlib.sha256(executable).digest(), submit_text.encode(),
                 json.dumps(inputs).encode()):
        h.update(len(part).to_bytes(8, "big") + part)
    return h.hexdigest()


def _path(fp: str) -> Path:
    return home() / "pending-submits" / f"{fp}.json"


def key_for(fp: str) -> tuple[str, bool]:
    """The key for this submission and whether it is a retry of an unanswered one."""
    path = _path(fp)
    try:
        data = json.loads(path.read_text())
        if time.time() - float(data["created"]) < MAX_AGE and isinstance(data.get("key"), str):
            return data["key"], True
    except (OSError, ValueError, KeyError, TypeError):
        pass
    key = str(uuid.uuid4())
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".pending.")
    with os.fdopen(fd, "w") as fh:
        json.dump({"key": key, "created": time.time()}, fh)
    os.replace(tmp, path)
    return key, False


def answered(fp: str) -> None:
    """The peer answered this submission (a job, or a refusal): forget its key."""
    _path(fp).unlink(missing_ok=True)
