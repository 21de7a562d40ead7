"""Choosing this peer's executor: ``local``, ``condor`` or ``auto`` (see :mod:`peer.executors`)."""
from __future__ import annotations

import logging
from pathlib import Path

from ..db import Database
from .base import Executor
from .local import LocalExecutor
from .sandbox import SandboxSettings

log = logging.getLogger(__name__)

#: Seconds ``auto``/``condor`` wait for a schedd to answer at start-up.
PROBE_TIMEOUT = 5.0


class ExecutorUnavailable(RuntimeError):
    """The requested executor cannot run here; the message says why."""


class _AutoLocalExecutor(LocalExecutor):
    """The LocalExecutor chosen by ``auto``; /healthz also says why Condor was not used."""

    def __init__(self, *args, auto_reason: str, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.auto_reason = auto_reason

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "chosen_by": "auto", "condor": self.auto_reason}


def require_condor(*, probe_timeout: float = PROBE_TIMEOUT, keep_client: bool = False):
    """Fail fast unless the Condor executor can work here; returns the ScheddProbe.

    Raises ExecutorUnavailable as root (the schedd never lets root own jobs)
    or when no schedd answers within ``probe_timeout`` seconds.
    """
    from .condor import ROOT_REFUSAL, probe_schedd, running_as_root

    if running_as_root():
        raise ExecutorUnavailable(f"--executor condor: {ROOT_REFUSAL}")
    probe = probe_schedd(probe_timeout, keep_client=keep_client)
    if not probe.ok:
        raise ExecutorUnavailable(
            f"--executor condor: {probe.describe()}. Check that the schedd runs on this host (or that "
            "CONDOR_CONFIG / _CONDOR_SCHEDD_HOST point at it) and that this account may submit; or use "
            "--executor local (or auto)"
        )
    return probe


def choose_executor(
    kind: str,
    db: Database,
    stage_root: Path,
    *,
    peer_name: str,
    slots: int,
    max_restarts: int,
    probe_timeout: float = PROBE_TIMEOUT,
    sandbox: SandboxSettings | None = None,
    condor_options: dict | None = None,
) -> Executor:
    """``local``, ``condor`` or ``auto`` (Condor when a schedd answers, else local)."""
    if kind not in {"auto", "local", "condor"}:
        raise ExecutorUnavailable(f"unknown executor {kind!r}: use auto, local or condor")
    if kind == "local":
        return LocalExecutor(db, stage_root, peer_name=peer_name, slots=slots, max_restarts=max_restarts,
                             sandbox=sandbox)

    from .condor import CondorExecutor, probe_schedd, running_as_root

    if kind == "condor":
        probe = require_condor(probe_timeout=probe_timeout, keep_client=True)
        log.info("executor condor: %s", probe.describe())
        return CondorExecutor(db, stage_root, peer_name=peer_name, probe=probe, chosen_by="condor",
                              **(condor_options or {}))

    if running_as_root():
        reason = "not tried: the peer runs as root, and the schedd never lets root own jobs"
    else:
        probe = probe_schedd(probe_timeout, keep_client=True)
        if probe.ok:
            log.info("executor auto: %s; using the HTCondor executor", probe.describe())
            return CondorExecutor(db, stage_root, peer_name=peer_name, probe=probe, chosen_by="auto",
                                  **(condor_options or {}))
        reason = probe.describe()
    log.info("executor auto: %s; using the local executor", reason)
    return _AutoLocalExecutor(db, stage_root, peer_name=peer_name, slots=slots, max_restarts=max_restarts,
                              auto_reason=reason, sandbox=sandbox)


__all__ = ["ExecutorUnavailable", "PROBE_TIMEOUT", "choose_executor", "require_condor"]
