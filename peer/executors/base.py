"""The executor seam: one interface, a local and an HTCondor implementation.

Both write (or have Condor write) a standard HTCondor user log per job, so the
status path (``peer.event_log``) is the same for both.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Sequence

from sqlalchemy.orm import Session

from ..models import Job, Proc
from ..staging import StagedJob
from ..submit_description import ParsedSubmit


class Executor(ABC):
    #: Short name stored with each job ("local", "condor").
    name: str

    def start(self) -> None:
        """Start background work (recovery, scheduling).  Called once per peer."""

    def stop(self) -> None:
        """Stop background work at peer shutdown."""

    @abstractmethod
    def prepare(self, session: Session, job: Job, staged: StagedJob, parsed: ParsedSubmit) -> list[Proc]:
        """Queue every input of ``job`` inside ``session``'s transaction.

        Returns the Proc rows (cluster/proc -> input mapping).  Runs before
        the job row is committed; nothing may start running before
        :meth:`committed` is called.
        """

    def committed(self, job_id: str) -> None:
        """The job's rows are durable: the executor may start it."""

    @abstractmethod
    def remove(self, job_id: str) -> int:
        """Remove every proc of the job that has not finished; returns how many."""

    def release(self, job_id: str, indexes: Sequence[int]) -> int:
        """Release the held procs of the job among the inputs ``indexes``; returns how many.

        The caller (the job service) has checked from the event log that they
        are held; an executor that cannot release answers 0.
        """
        return 0

    def describe(self) -> dict[str, object]:
        """What ``/healthz`` says about this executor."""
        return {"name": self.name}


def cluster_procs(procs: Sequence[Proc]) -> list[str]:
    return [f"{p.cluster}.{p.proc}" for p in procs]
