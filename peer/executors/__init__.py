"""Executors: choose one for this peer."""
from __future__ import annotations

import logging
from pathlib import Path

from ..db import Database
from .base import Executor
from .local import LocalExecutor

log = logging.getLogger(__name__)


class ExecutorUnavailable(RuntimeError):
    """The requested executor cannot run here; the message says why."""


def choose_executor(kind: str, db: Database, stage_root: Path, *, peer_name: str, slots: int, max_restarts: int) -> Executor:
    """``local``, ``condor`` or ``auto`` (Condor when a schedd answers, else local)."""
    if kind not in {"auto", "local", "condor"}:
        raise ExecutorUnavailable(f"unknown executor {kind!r}: use auto, local or condor")
    if kind == "condor":
        raise ExecutorUnavailable(
            "the HTCondor executor is not part of this version yet; use --executor local (or auto)"
        )
    if kind == "auto":
        log.info("executor auto: no HTCondor executor in this version, using the local executor")
    return LocalExecutor(db, stage_root, peer_name=peer_name, slots=slots, max_restarts=max_restarts)
