"""HTCondor *user job event log*: writing it, and reading it into per-proc status.

Why one format for everything
    Real HTCondor jobs get their history from the schedd/shadow as a user job
    event log (``log = ...`` in the submit description).  Our LocalExecutor
    writes the very same classic text format, so ONE reader
    (:class:`EventLogReader`, built on ``htcondor2.JobEventLog``) serves local
    runs and real Condor runs alike, and a log written by us can be inspected
    with ``condor_userlog``/``htcondor eventlog read``.

Writing (:class:`EventLogWriter`)
    Each event is rendered exactly as ``condor_event.cpp`` ``formatHeader()`` /
    ``formatBody()`` does (ISO date, local time, the default since 8.8), followed
    by the ``...`` sync line, and appended with ONE ``os.write`` on an
    ``O_APPEND`` descriptor while holding an exclusive ``flock`` - the same thing
    ``WriteUserLog::doWriteEvent`` does - so one runner process per proc can
    share a log without interleaving.

Reading (:class:`EventLogReader`)
    Incremental, in the style of htmap's ``state.py``: ``update()`` consumes only
    the events appended since the previous call and folds them into a
    :class:`ProcStatus` per ``(cluster, proc)``.  The position is persisted with
    ``JobEventLog``'s documented pickle protocol, so a restarted service resumes
    with :meth:`EventLogReader.from_state` instead of re-reading (and
    re-applying) old events.
"""

from __future__ import annotations

import dataclasses
import enum
import fcntl
import logging
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Callable

import htcondor2

logger = logging.getLogger(__name__)

__all__ = [
    "EventLogWriter",
    "ProcState",
    "TERMINAL_STATES",
    "HISTORY_MAX",
    "ProcStatus",
    "EventLogReader",
    "overall_state",
]


# ---------------------------------------------------------------------------
# Writer
# ---------------------------------------------------------------------------

#: Event numbers (ULogEventNumber in condor_event.h).
_SUBMIT = 0
_EXECUTE = 1
_JOB_EVICTED = 4
_JOB_TERMINATED = 5
_IMAGE_SIZE = 6
_SHADOW_EXCEPTION = 7
_JOB_ABORTED = 9
_JOB_HELD = 12
_JOB_RELEASED = 13

#: ``WriteUserLog``'s SynchDelimiter: the line that ends every event.
_SYNC_LINE = "...\n"


def _one_line(text: object) -> str:
    """Flatten ``text`` to a single line, the way Condor stores reasons.

    A body line that contained a newline would be read back as two lines (and a
    line that is exactly ``...`` would even end the event early), so newlines
    become ``|`` and carriage returns spaces - ``ULogEvent::set_reason_member``'s
    convention - and surrounding whitespace is trimmed as Condor's reader does.
    """
    return str(text).replace("\r", " ").replace("\n", "|").strip()


def _rusage(user_s: float, sys_s: float) -> str:
    """Render CPU times like ``ULogEvent::formatRusage`` (without its tab)."""

    def dhms(seconds: float) -> str:
        s = max(0, int(seconds))
        days, s = divmod(s, 86400)
        hours, s = divmod(s, 3600)
        minutes, s = divmod(s, 60)
        return f"{days} {hours:02d}:{minutes:02d}:{s:02d}"

    return f"Usr {dhms(user_s)}, Sys {dhms(sys_s)}"


class EventLogWriter:
    """Append HTCondor user-log events to ``path``, safely across processes.

    The file is opened for every event instead of once: ``flock`` locks belong
    to the *open file description*, so a descriptor inherited over ``fork()``
    would be shared by all runner processes and the lock would exclude nobody.
    Opening per event costs a few microseconds; events are rare.
    """

    def __init__(self, path: str | os.PathLike[str], *, fsync: bool = False) -> None:
        """``fsync=True`` makes every event durable before the lock is
        released (Condor's ``ENABLE_USERLOG_FSYNC``); off by default because
        local runs do not need to survive a power cut."""
        self.path = os.fspath(path)
        self.fsync = fsync

    # -- events ---------------------------------------------------------

    def submit(self, cluster: int, proc: int, host: str, *, when: float | None = None) -> None:
        """000: the proc entered the queue; ``host`` is the submitter's sinful string."""
        self._append(_SUBMIT, cluster, proc, when, f"Job submitted from host: {_one_line(host)}")

    def execute(self, cluster: int, proc: int, host: str, *, when: float | None = None) -> None:
        """001: the proc started running on ``host`` (a sinful string or name)."""
        self._append(_EXECUTE, cluster, proc, when, f"Job executing on host: {_one_line(host)}")

    def image_size(
        self,
        cluster: int,
        proc: int,
        image_kb: int,
        memory_mb: int | None,
        rss_kb: int | None,
        *,
        when: float | None = None,
    ) -> None:
        """006: memory update.  ``None`` omits a line, as Condor does for
        values an old starter did not report."""
        lines = [f"Image size of job updated: {int(image_kb)}"]
        if memory_mb is not None:
            lines.append(f"\t{int(memory_mb)}  -  MemoryUsage of job (MB)")
        if rss_kb is not None:
            lines.append(f"\t{int(rss_kb)}  -  ResidentSetSize of job (KB)")
        self._append(_IMAGE_SIZE, cluster, proc, when, *lines)

    def terminated(
        self,
        cluster: int,
        proc: int,
        *,
        return_value: int | None = None,
        signal: int | None = None,
        core_file: bool | str = False,
        usage: tuple[float, float] | None = None,
        when: float | None = None,
    ) -> None:
        """005: the proc left the machine for good.

        Exactly one of ``return_value`` (normal exit) or ``signal`` (killed)
        must be given.  ``core_file`` may be the core's path; ``True`` means
        "a core was dumped" without a known path and is written as ``core``.
        ``usage`` is ``(user_seconds, system_seconds)`` of the job, written to
        the Run/Total *Remote* usage lines (the job's side; "local" is the
        shadow's, which we do not have).
        """
        if (return_value is None) == (signal is None):
            raise ValueError("terminated() needs exactly one of return_value or signal")
        remote = _rusage(*usage) if usage else _rusage(0, 0)
        local = _rusage(0, 0)
        if signal is None:
            lines = [
                "Job terminated.",
                f"\t(1) Normal termination (return value {int(return_value)})",  # type: ignore[arg-type]
            ]
        else:
            lines = ["Job terminated.", f"\t(0) Abnormal termination (signal {int(signal)})"]
            if core_file:
                path = core_file if isinstance(core_file, str) else "core"
                lines.append(f"\t(1) Corefile in: {_one_line(path)}")
            else:
                lines.append("\t(0) No core file")
        lines += [
            f"\t\t{remote}  -  Run Remote Usage",
            f"\t\t{local}  -  Run Local Usage",
            f"\t\t{remote}  -  Total Remote Usage",
            f"\t\t{local}  -  Total Local Usage",
            "\t0  -  Run Bytes Sent By Job",
            "\t0  -  Run Bytes Received By Job",
            "\t0  -  Total Bytes Sent By Job",
            "\t0  -  Total Bytes Received By Job",
        ]
        self._append(_JOB_TERMINATED, cluster, proc, when, *lines)

    def evicted(self, cluster: int, proc: int, reason: str, *, when: float | None = None) -> None:
        """004: the proc was kicked off its machine, not checkpointed; Condor
        will run it again."""
        zero = _rusage(0, 0)
        lines = [
            "Job was evicted.",
            "\t(0) CPU times",
            f"\t\t{zero}  -  Run Remote Usage",
            f"\t\t{zero}  -  Run Local Usage",
            "\t0  -  Run Bytes Sent By Job",
            "\t0  -  Run Bytes Received By Job",
        ]
        if _one_line(reason):
            lines.append(f"\tReason: {_one_line(reason)}")
        self._append(_JOB_EVICTED, cluster, proc, when, *lines)

    def requeued(self, cluster: int, proc: int, *, return_value: int | None = None, signal: int | None = None,
                 reason: str = "", when: float | None = None) -> None:
        """004 with "Job terminated and was requeued": the proc ended, and its own policy (the submit
        file's ``max_retries``) runs it again, as the shadow logs it (``JobEvictedEvent``)."""
        if (return_value is None) == (signal is None):
            raise ValueError("requeued() needs exactly one of return_value or signal")
        zero = _rusage(0, 0)
        lines = [
            "Job was evicted.",
            "\t(0) Job terminated and was requeued",
            f"\t\t{zero}  -  Run Remote Usage",
            f"\t\t{zero}  -  Run Local Usage",
            "\t0  -  Run Bytes Sent By Job",
            "\t0  -  Run Bytes Received By Job",
        ]
        if signal is None:
            lines.append(f"\t(1) Normal termination (return value {int(return_value)})")  # type: ignore[arg-type]
        else:
            lines += [f"\t(0) Abnormal termination (signal {int(signal)})", "\t(0) No core file"]
        if _one_line(reason):
            lines.append(f"\t{_one_line(reason)}")
        self._append(_JOB_EVICTED, cluster, proc, when, *lines)

    def aborted(self, cluster: int, proc: int, reason: str, *, when: float | None = None) -> None:
        """009: the proc was removed (``condor_rm`` or a remove policy)."""
        lines = ["Job was aborted."]
        if _one_line(reason):
            lines.append(f"\t{_one_line(reason)}")
        self._append(_JOB_ABORTED, cluster, proc, when, *lines)

    def held(
        self,
        cluster: int,
        proc: int,
        reason: str,
        code: int = 0,
        subcode: int = 0,
        *,
        when: float | None = None,
    ) -> None:
        """012: the proc was put on hold; ``code`` is a HoldReasonCode."""
        text = _one_line(reason) or "Reason unspecified"
        self._append(
            _JOB_HELD, cluster, proc, when,
            "Job was held.", f"\t{text}", f"\tCode {int(code)} Subcode {int(subcode)}",
        )

    def released(self, cluster: int, proc: int, reason: str, *, when: float | None = None) -> None:
        """013: the hold was lifted; the proc is idle again."""
        lines = ["Job was released."]
        if _one_line(reason):
            lines.append(f"\t{_one_line(reason)}")
        self._append(_JOB_RELEASED, cluster, proc, when, *lines)

    def shadow_exception(
        self, cluster: int, proc: int, message: str, *, when: float | None = None
    ) -> None:
        """007: the shadow failed (e.g. input missing); Condor requeues the proc."""
        self._append(
            _SHADOW_EXCEPTION, cluster, proc, when,
            "Shadow exception!", f"\t{_one_line(message)}",
            "\t0  -  Run Bytes Sent By Job", "\t0  -  Run Bytes Received By Job",
        )

    # -- plumbing -------------------------------------------------------

    @staticmethod
    def _render(event: int, cluster: int, proc: int, when: float | None, lines: tuple[str, ...]) -> bytes:
        """Header (``%03d (%03d.%03d.%03d) YYYY-MM-DD HH:MM:SS``) + body + sync line."""
        if cluster < 0 or proc < 0:
            raise ValueError(f"bad job id {cluster}.{proc}")
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(time.time() if when is None else when))
        header = f"{event:03d} ({int(cluster):03d}.{int(proc):03d}.000) {stamp} "
        return (header + "\n".join(lines) + "\n" + _SYNC_LINE).encode("utf-8", "replace")

    def _append(self, event: int, cluster: int, proc: int, when: float | None, *lines: str) -> None:
        data = self._render(event, cluster, proc, when, lines)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            written = os.write(fd, data)
            if written != len(data):
                # A short write on a regular file means the disk is (nearly)
                # full.  We still hold the lock, so finishing the event here
                # cannot interleave with another writer.
                logger.warning("short write to %s (%d of %d bytes)", self.path, written, len(data))
                view = memoryview(data)[written:]
                while view:
                    view = view[os.write(fd, view):]
            if self.fsync:
                os.fdatasync(fd)
        finally:
            os.close(fd)  # closing releases the flock


# ---------------------------------------------------------------------------
# Status model
# ---------------------------------------------------------------------------


class ProcState(str, enum.Enum):
    """What a user sees for one proc (a job's ``cluster.proc``)."""

    IDLE = "idle"
    RUNNING = "running"
    HELD = "held"
    COMPLETED = "completed"  # exited with 0
    FAILED = "failed"  # non-zero exit code, killed by a signal, or could not execute
    REMOVED = "removed"  # aborted (condor_rm, policy)

    @property
    def is_terminal(self) -> bool:
        """True once the proc will not change any more (barring a resubmit)."""
        return self in TERMINAL_STATES


TERMINAL_STATES: frozenset[ProcState] = frozenset(
    {ProcState.COMPLETED, ProcState.FAILED, ProcState.REMOVED}
)

#: Entries kept in :attr:`ProcStatus.history` (the most recent ones).
HISTORY_MAX = 20


@dataclass
class ProcStatus:
    """Everything the event log tells us about one proc, as of the last update."""

    cluster: int
    proc: int
    state: ProcState = ProcState.IDLE
    exit_code: int | None = None
    signal: int | None = None
    hold_reason: str | None = None
    hold_code: int | None = None
    #: Last noteworthy message: abort reason, eviction reason, shadow
    #: exception, reconnect trouble, executable error.
    note: str | None = None
    submitted_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    execute_host: str | None = None
    memory_mb: int | None = None
    image_size_kb: int | None = None
    evictions: int = 0
    hold_subcode: int | None = None
    #: Times the proc ended and its own policy (``max_retries``) ran it again: not evictions.
    retries: int = 0
    #: What happened to the proc, oldest first: ``{"at", "event", "state", "reason"?}``
    #: per event (image-size updates excepted), the last :data:`HISTORY_MAX`
    #: only.  ``note`` and ``hold_*`` describe the current state alone; the
    #: reasons of earlier states live here.  Replaced, never mutated in place.
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    @property
    def reason(self) -> str | None:
        """Why the proc is in its current state (None when nothing says why)."""
        return self.hold_reason if self.state is ProcState.HELD else self.note

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (the state as its string value)."""
        d = dataclasses.asdict(self)
        d["state"] = self.state.value
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ProcStatus:
        """Inverse of :meth:`to_dict`; unknown keys are ignored so that state
        saved by a newer version still loads.

        State saved by versions that kept reasons across transitions is
        cleaned on load: hold fields only while held, no note on a completed
        proc (nothing explains a success).
        """
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        kwargs["state"] = ProcState(kwargs.get("state", ProcState.IDLE))
        kwargs["history"] = list(kwargs.get("history") or [])
        st = cls(**kwargs)
        if st.state is not ProcState.HELD:
            st.hold_reason = st.hold_code = st.hold_subcode = None
        if st.state is ProcState.COMPLETED:
            st.note = None
        return st


# ---------------------------------------------------------------------------
# Reader
# ---------------------------------------------------------------------------

_ET = htcondor2.JobEventType


def _event_time(event: htcondor2.JobEvent) -> float | None:
    try:
        return float(event.timestamp)
    except (KeyError, ValueError, TypeError):
        return None


def _text(event: htcondor2.JobEvent, key: str) -> str | None:
    value = event.get(key)
    if value is None:
        return None
    value = str(value).strip()
    return value or None


def _int(event: htcondor2.JobEvent, key: str) -> int | None:
    value = event.get(key)
    try:
        return None if value is None else int(value)
    except (ValueError, TypeError):
        return None


def _enter(st: ProcStatus, state: ProcState, note: str | None = None) -> None:
    """Move to ``state``: the reasons of the state left behind go (they stay in the history)."""
    st.state = state
    st.note = note
    st.hold_reason = st.hold_code = st.hold_subcode = None


def _on_submit(st: ProcStatus, ev: htcondor2.JobEvent) -> None:
    # A (re)submission of this cluster.proc starts a fresh history.
    fresh = ProcStatus(st.cluster, st.proc, submitted_at=_event_time(ev))
    for f in dataclasses.fields(ProcStatus):
        setattr(st, f.name, getattr(fresh, f.name))


def _on_execute(st: ProcStatus, ev: htcondor2.JobEvent) -> None:
    _enter(st, ProcState.RUNNING)  # a new run: whatever stopped the last one is history
    st.execute_host = _text(ev, "ExecuteHost") or st.execute_host
    st.started_at = _event_time(ev)


def _on_evicted(st: ProcStatus, ev: htcondor2.JobEvent) -> None:
    if ev.get("TerminatedAndRequeued"):  # it ended; its submit file's policy runs it again
        st.retries += 1
        if ev.get("TerminatedNormally"):
            how = f"exited with code {_int(ev, 'ReturnValue')}"
        else:
            how = f"was killed by signal {_int(ev, 'TerminatedBySignal')}"
        _enter(st, ProcState.IDLE, f"{how}; runs again (its submit file's max_retries)")
        return
    _enter(st, ProcState.IDLE, _text(ev, "Reason") or "evicted")
    st.evictions += 1


def _on_held(st: ProcStatus, ev: htcondor2.JobEvent) -> None:
    _enter(st, ProcState.HELD)
    st.hold_reason = _text(ev, "HoldReason") or "Reason unspecified"
    st.hold_code = _int(ev, "HoldReasonCode")
    st.hold_subcode = _int(ev, "HoldReasonSubCode")


def _on_released(st: ProcStatus, ev: htcondor2.JobEvent) -> str | None:
    # Idle again and waiting for a slot: the release says nothing about the new state
    # (for a CondorExecutor job it is pocketgrid's own "job accepted"); the history keeps it.
    _enter(st, ProcState.IDLE)
    return _text(ev, "Reason") or "released"


def _on_aborted(st: ProcStatus, ev: htcondor2.JobEvent) -> None:
    _enter(st, ProcState.REMOVED, _text(ev, "Reason") or "removed")
    st.finished_at = _event_time(ev)


def _on_terminated(st: ProcStatus, ev: htcondor2.JobEvent) -> None:
    st.finished_at = _event_time(ev)
    if ev.get("TerminatedNormally"):
        st.exit_code = _int(ev, "ReturnValue")
        st.signal = None
        _enter(st, ProcState.COMPLETED if st.exit_code == 0 else ProcState.FAILED)
    else:
        st.exit_code = None
        st.signal = _int(ev, "TerminatedBySignal")
        _enter(st, ProcState.FAILED, f"core dumped: {_text(ev, 'CoreFile')}" if ev.get("CoreFile") else None)
    # Real schedds append the resource table; its MemoryUsage is the peak.
    memory = _int(ev, "MemoryUsage")
    if memory is not None:
        st.memory_mb = memory


def _on_image_size(st: ProcStatus, ev: htcondor2.JobEvent) -> None:
    memory = _int(ev, "MemoryUsage")
    if memory is not None:
        st.memory_mb = memory
    size = _int(ev, "Size")
    if size is not None:
        st.image_size_kb = size


def _on_shadow_exception(st: ProcStatus, ev: htcondor2.JobEvent) -> None:
    # Condor requeues the job after a shadow exception
    _enter(st, ProcState.IDLE, _text(ev, "Message") or "shadow exception")


def _on_reconnect_failed(st: ProcStatus, ev: htcondor2.JobEvent) -> None:
    reason = _text(ev, "Reason") or "reconnect failed"
    _enter(st, ProcState.IDLE, f"reconnect failed: {reason}")  # "Can not reconnect to ..., rescheduling job"


def _on_disconnected(st: ProcStatus, ev: htcondor2.JobEvent) -> None:
    reason = _text(ev, "DisconnectReason") or "connection lost"
    st.note = f"disconnected: {reason}"  # still running, as far as anyone knows


def _on_reconnected(st: ProcStatus, ev: htcondor2.JobEvent) -> None:
    st.note = f"reconnected to {_text(ev, 'StartdName') or 'execute host'}"


def _on_executable_error(st: ProcStatus, ev: htcondor2.JobEvent) -> None:
    kind = {1: "job file not executable", 2: "job not properly linked"}
    _enter(st, ProcState.FAILED, f"executable error: {kind.get(_int(ev, 'ExecuteErrorType') or 0, 'unknown error')}")
    st.finished_at = _event_time(ev)


#: A handler changes the proc; it may return the event's own reason for the history
#: when that is not the new state's (a release); else the history takes the state's reason.
_Handler = Callable[[ProcStatus, "htcondor2.JobEvent"], "str | None"]

#: Event type -> how it changes a proc.  Anything not listed is ignored.
_HANDLERS: dict[htcondor2.JobEventType, _Handler] = {
    _ET.SUBMIT: _on_submit,
    _ET.EXECUTE: _on_execute,
    _ET.EXECUTABLE_ERROR: _on_executable_error,
    _ET.JOB_EVICTED: _on_evicted,
    _ET.JOB_TERMINATED: _on_terminated,
    _ET.IMAGE_SIZE: _on_image_size,
    _ET.SHADOW_EXCEPTION: _on_shadow_exception,
    _ET.JOB_ABORTED: _on_aborted,
    _ET.JOB_HELD: _on_held,
    _ET.JOB_RELEASED: _on_released,
    _ET.JOB_DISCONNECTED: _on_disconnected,
    _ET.JOB_RECONNECTED: _on_reconnected,
    _ET.JOB_RECONNECT_FAILED: _on_reconnect_failed,
}

#: Events still applied to a proc that already finished: a resubmission, and
#: late resource numbers (they never change the state).
_AFTER_TERMINAL: frozenset[htcondor2.JobEventType] = frozenset({_ET.SUBMIT, _ET.IMAGE_SIZE})

_STATE_VERSION = 1


class EventLogReader:
    """Fold a user job event log into one :class:`ProcStatus` per proc, incrementally.

    The log may not exist yet (the job is still being submitted); ``update()``
    then simply reports no change and tries again next time.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._jel: htcondor2.JobEventLog | None = None
        self._start_offset = 0  # where to open the log when it appears
        self._procs: dict[tuple[int, int], ProcStatus] = {}

    @property
    def procs(self) -> dict[tuple[int, int], ProcStatus]:
        """Status per ``(cluster, proc)`` as of the last :meth:`update`."""
        return self._procs

    @property
    def offset(self) -> int:
        """Byte offset just past the last event consumed."""
        if self._jel is None:
            return self._start_offset
        return int(self._jel.__getstate__()[1])

    def update(self) -> bool:
        """Read the events appended since the last call; True if any proc changed.

        We call ``events(stop_after=-1)``, not ``0``: htcondor2 turns
        ``stop_after`` into a deadline in whole seconds, and just after a
        second boundary a deadline of "now" still lies ahead for the C side,
        which then waits up to a second for a new event, holding a lock every
        reader in the process shares (measured: a 1 s stall about once per
        second of continuous polling).  A deadline in the past never waits.

        ``events(stop_after=-1)`` ends its iteration not only at EOF but also
        when it steps over a line that is not an event (a stray newline, a
        corrupt line), one such line per iteration.  So we iterate again as
        long as an iteration moved the offset; we stop once one does not.
        An event whose header line is complete but whose body is still being
        written (possible only with writers that do not take our lock) is not
        returned and the offset stays before it, so a later call reads it whole.
        """
        if self._jel is None and not self._open():
            return False
        assert self._jel is not None
        try:
            lock_fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        changed = False
        try:
            # Shared lock against EventLogWriter's exclusive one: we never see
            # half of one of our own events.  That matters beyond the obvious:
            # when the file ends in just the digits of an event number
            # ("012"), htcondor2 consumes them and the event is lost once the
            # rest arrives; and a started-but-unfinished first line makes it
            # sleep(1) inside the C++ reader.  (Condor's own daemons do not
            # take this lock, so logs written by a real schedd keep those
            # hazards, as they do for every Condor log reader.)
            fcntl.flock(lock_fd, fcntl.LOCK_SH)
            while True:
                before = self.offset
                try:
                    for event in self._jel.events(stop_after=-1):
                        changed |= self._apply(event)
                except htcondor2.HTCondorException:
                    # Not seen in practice (the reader skips garbage), but a
                    # read error must not take the status service down: keep
                    # what we have and retry from this offset next time.
                    logger.exception("error reading event log %s at offset %d", self.path, self.offset)
                    break
                if self.offset == before:
                    break
        finally:
            os.close(lock_fd)  # releases the shared lock
        return changed

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable snapshot: the log offset and every proc's status."""
        return {
            "version": _STATE_VERSION,
            "offset": self.offset,
            "procs": [st.to_dict() for st in self._procs.values()],
        }

    @classmethod
    def from_state(cls, path: str | os.PathLike[str], state: Mapping[str, Any]) -> EventLogReader:
        """Resume from :meth:`state_dict` output without re-reading old events.

        If the log is now shorter than the saved offset it was replaced (e.g.
        the job directory was recreated); the saved statuses describe another
        log, so we start over from the beginning rather than wait forever for
        bytes that will never come.
        """
        reader = cls(path)
        version = state.get("version")
        if version != _STATE_VERSION:
            raise ValueError(f"unsupported event log reader state version {version!r}")
        offset = int(state["offset"])
        try:
            size: int | None = os.path.getsize(reader.path)
        except FileNotFoundError:
            size = None
        if size is not None and size < offset:
            logger.warning(
                "event log %s is shorter (%d bytes) than the saved offset %d; re-reading it",
                reader.path, size, offset,
            )
            return reader
        if size is None and offset > 0:
            logger.warning("event log %s vanished; statuses kept, waiting for it to reappear", reader.path)
        reader._start_offset = offset
        for item in state.get("procs", []):
            st = ProcStatus.from_dict(item)
            reader._procs[(st.cluster, st.proc)] = st
        return reader

    def close(self) -> None:
        """Release the log's file descriptor; a later update() re-opens it
        where this reader stopped."""
        if self._jel is not None:
            self._start_offset = self.offset
            self._jel.close()
            self._jel = None

    def __enter__(self) -> EventLogReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- internals ------------------------------------------------------

    def _open(self) -> bool:
        """Create the JobEventLog positioned at ``_start_offset`` if the file exists.

        The position is restored through JobEventLog's documented pickle
        protocol (``__getstate__`` -> ``(dict, offset)``, ``__setstate__``),
        which re-opens the file and seeks, instead of private ``_impl`` calls.
        """
        if not os.path.exists(self.path):
            return False
        try:
            if self._start_offset == 0:
                jel = htcondor2.JobEventLog(self.path)
            else:
                jel = htcondor2.JobEventLog.__new__(htcondor2.JobEventLog)
                jel.__setstate__(({"_filename": self.path, "_deadline": 0}, self._start_offset))
        except htcondor2.HTCondorException as exc:  # e.g. removed between exists() and open
            logger.debug("cannot open event log %s yet: %s", self.path, exc)
            return False
        self._jel = jel
        return True

    def _apply(self, event: htcondor2.JobEvent) -> bool:
        """Fold one event into its proc's status; True if that status changed."""
        try:
            kind = event.type
        except ValueError:  # an event number this binding has no name for
            return False
        handler = _HANDLERS.get(kind)
        if handler is None or event.cluster < 0:
            return False
        key = (int(event.cluster), max(0, int(event.proc)))
        st = self._procs.get(key)
        if st is None:
            # Normally SUBMIT comes first; tolerate logs that start later.
            st = self._procs[key] = ProcStatus(*key)
            _record(st, event, kind, handler(st, event))
            return True
        if st.state.is_terminal and kind not in _AFTER_TERMINAL:
            logger.debug("ignoring %s for finished proc %d.%d", kind.name, *key)
            return False
        before = dataclasses.replace(st)  # shallow: history is replaced below, never appended to
        _record(st, event, kind, handler(st, event))
        return st != before


def _record(st: ProcStatus, event: htcondor2.JobEvent, kind: htcondor2.JobEventType, reason: str | None) -> None:
    """Append one history entry (bounded) for ``event``; image-size updates are not history."""
    if kind is _ET.IMAGE_SIZE:
        return
    entry: dict[str, Any] = {"at": _event_time(event), "event": kind.name.lower(), "state": st.state.value}
    reason = reason or st.reason
    if reason:
        entry["reason"] = reason
    st.history = [*st.history, entry][-HISTORY_MAX:]


def overall_state(statuses: Iterable[ProcStatus | ProcState | str]) -> str:
    """Derive a job's overall state from its procs' states.

    Rules, first match wins:

    1. no procs at all                        -> ``"idle"``
    2. every proc terminal:
       any removed -> ``"removed"`` (a removal is a deliberate act and explains
       the rest), else any failed -> ``"failed"``, else ``"completed"``
    3. any proc running                       -> ``"running"``
    4. any proc held (none running)           -> ``"held"``
    5. some procs finished, the others idle   -> ``"running"`` (the job is
       under way, just waiting for slots)
    6. otherwise (none started yet)           -> ``"idle"``

    Accepts :class:`ProcStatus` objects, :class:`ProcState` members or their
    string values.
    """
    states = [
        s.state if isinstance(s, ProcStatus) else ProcState(s) for s in statuses
    ]
    if not states:
        return ProcState.IDLE.value
    if all(s.is_terminal for s in states):
        if ProcState.REMOVED in states:
            return ProcState.REMOVED.value
        if ProcState.FAILED in states:
            return ProcState.FAILED.value
        return ProcState.COMPLETED.value
    if ProcState.RUNNING in states:
        return ProcState.RUNNING.value
    if ProcState.HELD in states:
        return ProcState.HELD.value
    if any(s.is_terminal for s in states):
        return ProcState.RUNNING.value
    return ProcState.IDLE.value
