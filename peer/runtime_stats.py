"""The site's learned run times, from its own jobs' event logs, for the load report.

The in-process agent calls :meth:`RunTimeCollector.collect` before each
report (``ema_agent.reporter.Reporter(runtimes_source=...)``) and sends the
result as the report's optional ``runtimes`` field (schema:
``broker/runtimes.py``); the broker's default policy then estimates how long
this site's slots stay busy from what its jobs really did, instead of the
nominal 60 s.

What is read: the pieces run here (``jobs`` rows) created within ``window``
seconds (at most ``max_jobs``, newest first), each through its own incremental
:class:`~peer.event_log.EventLogReader` (seeded from the job's saved reader
state, so a restarted peer does not re-read old logs; a job whose procs have
all finished is not read again).  From each proc:

* completed or failed after running (a terminate event): its wall time,
  execute to terminate, if it finished within the window; per history key
  (owner + executable, ``jobs.history_key``: the job's home sends it with the
  piece) as well;
* running: its age (now - execute), per history key where the job has one;
* idle: counted (waiting for a slot here), per history key too;
* started: its queue wait (submit to the last execute).

Removed procs say nothing about run times (they were cut short) and are left
out.  Event-log timestamps have one-second resolution.
"""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable

from sqlalchemy import select

from broker.runtimes import summarize

from .db import Database
from .event_log import EventLogReader, ProcState
from .models import Job

log = logging.getLogger(__name__)

#: Jobs looked at, at most (the newest in the window).
MAX_JOBS = 500


class RunTimeCollector:
    def __init__(self, db: Database, stage_root: Path, *, window: float = 86400.0, max_jobs: int = MAX_JOBS,
                 clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.stage_root = Path(stage_root)
        self.window = float(window)
        self.max_jobs = max_jobs
        self.clock = clock
        self._readers: dict[str, EventLogReader] = {}
        self._keys: dict[str, str | None] = {}
        self._final: set[str] = set()
        self._lock = threading.Lock()

    def collect(self) -> dict[str, Any]:
        """The ``runtimes`` report field now (see broker/runtimes.py)."""
        with self._lock:
            return self._collect()

    def _collect(self) -> dict[str, Any]:
        now = self.clock()
        since = now - self.window
        with self.db.sessions() as s:
            rows = s.execute(
                select(Job.id, Job.history_key)
                .where(Job.created_at >= since)
                .order_by(Job.created_at.desc())
                .limit(self.max_jobs)
            ).all()
            new = [job_id for job_id, _ in rows if job_id not in self._readers]
            saved = dict(s.execute(select(Job.id, Job.reader_state).where(Job.id.in_(new))).all()) if new else {}
        current = {job_id for job_id, _ in rows}
        for gone in set(self._readers) - current:  # out of the window: forget
            self._readers.pop(gone, None)
            self._keys.pop(gone, None)
            self._final.discard(gone)
        durations: list[float] = []
        ages: list[float] = []
        waits: list[float] = []
        by_key: dict[str, list[float]] = {}
        ages_by_key: dict[str, list[float]] = {}
        idle_by_key: dict[str, int] = {}
        idle = 0
        for job_id, key in reversed(rows):  # oldest first: by_key keeps the most recently finished keys last
            self._keys[job_id] = key
            reader = self._reader(job_id, saved.get(job_id))
            if job_id not in self._final:
                try:
                    reader.update()
                finally:
                    reader.close()  # keep no descriptor open per job; the next update re-opens at its offset
            procs = list(reader.procs.values())
            if procs and all(st.state.is_terminal for st in procs):
                self._final.add(job_id)
            for st in procs:
                if st.started_at is not None and st.submitted_at is not None and st.started_at >= since:
                    waits.append(max(0.0, st.started_at - st.submitted_at))
                if st.state is ProcState.RUNNING and st.started_at is not None:
                    age = max(0.0, now - st.started_at)
                    if key:
                        ages_by_key.setdefault(key, []).append(age)
                    else:
                        ages.append(age)
                elif st.state is ProcState.IDLE:
                    if key:
                        idle_by_key[key] = idle_by_key.get(key, 0) + 1
                    else:
                        idle += 1
                elif (st.state in (ProcState.COMPLETED, ProcState.FAILED) and st.started_at is not None
                      and st.finished_at is not None and st.finished_at >= since
                      and (st.exit_code is not None or st.signal is not None)):
                    d = max(0.0, st.finished_at - st.started_at)
                    durations.append(d)
                    if key:
                        by_key[key] = [*by_key.pop(key, []), d]  # to the end: summarize keeps the latest keys
        return summarize(durations, running_ages=ages, idle=idle, queue_waits=waits, by_key=by_key,
                         running_by_key=ages_by_key, idle_by_key=idle_by_key, window_s=self.window)

    def _reader(self, job_id: str, state: dict[str, Any] | None) -> EventLogReader:
        reader = self._readers.get(job_id)
        if reader is None:
            path = self.stage_root / job_id / "job.log"
            try:
                reader = EventLogReader.from_state(path, state) if state else EventLogReader(path)
            except (ValueError, KeyError, TypeError):
                reader = EventLogReader(path)  # a state saved by another version: read the log itself
            self._readers[job_id] = reader
        return reader

    def source(self) -> dict[str, Any] | None:
        """For the agent: the figures, or None (logged) when collecting failed: the report still goes out."""
        try:
            return self.collect()
        except Exception:  # noqa: BLE001 - a report without run times is better than none
            log.exception("could not collect run-time statistics for the load report")
            return None
