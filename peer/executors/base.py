"""The executor seam: one interface, a local and an HTCondor implementation.

Both write (or have Condor write) a standard HTCondor user log per job, so the
status path (``peer.event_log``) is the same for both.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable, Mapping, Sequence

from sqlalchemy.orm import Session

from ..models import Job, Proc
from ..staging import StagedJob
from ..submit_description import ParsedSubmit


class RemovalPending(Exception):
    """A kill that cannot be carried out now (the schedd does not answer); it is remembered and carried
    out later.  ``message`` is the short text the client sees."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Executor(ABC):
    #: Short name stored with each job ("local", "condor").
    name: str
    #: Called (by the executor, from any thread) when :meth:`site_counts` may have changed, so the
    #: in-process agent reports at once instead of at its next interval.
    on_site_change: Callable[[], None] | None = None

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
        """Remove every proc of the job (a piece) that has not finished; returns how many."""

    @abstractmethod
    def remove_proc(self, job_id: str, index: int, reason: str) -> str:
        """Remove the proc of input ``index`` of piece ``job_id`` (idempotent).

        ``"stopping"``: it was asked to stop and still runs (ask again later);
        ``"stopped"``: it no longer runs (or never did: queued procs are
        aborted); ``"gone"``: no such proc here.
        """

    def release(self, job_id: str, indexes: Sequence[int]) -> int:
        """Release the held procs of the job among the inputs ``indexes``; returns how many.

        The caller (the job service) has checked from the event log that they
        are held; an executor that cannot release answers 0.
        """
        return 0

    def describe(self) -> dict[str, object]:
        """What ``/healthz`` says about this executor."""
        return {"name": self.name}

    def annotate(self, job: Job, states: Mapping[int, str]) -> dict[str, Any]:
        """What the executor adds to a job's status (``states``: input index -> its state): ``removal``
        (a kill not carried out yet) and ``procs`` (index -> extra fields, e.g. ``match`` for an idle
        proc).  Cheap: computed from what the executor keeps, never by asking a daemon."""
        return {}

    def annotation_stamp(self) -> int:
        """Changes whenever :meth:`annotate` may answer differently for a job whose log did not grow."""
        return 0

    def site_counts(self) -> dict[str, int] | None:
        """This site's procs that are not about to use a slot: ``held`` and ``unmatchable`` (no slot
        matches them), and ``idle`` (for reference); None when unknown.  Sent with the load report."""
        return None

    def _site_changed(self) -> None:
        callback = self.on_site_change
        if callback is not None:
            try:
                callback()
            except Exception:  # noqa: BLE001 - a report is best effort
                pass


def cluster_procs(procs: Sequence[Proc]) -> list[str]:
    return [f"{p.cluster}.{p.proc}" for p in procs]
