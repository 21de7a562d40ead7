"""Job records in the database, and their versions in memory for the status long-poll and event stream.

A record's ``version`` is its status ETag: every change of what the user
sees bumps it (:meth:`RecordStore.touch`, inside the transaction that made
the change).  After the commit the new version is published in memory and
every waiter is woken (:meth:`RecordStore.wait`) and every listener is told
(the front's change feed, peer/front/changes.py: the front holds the waiting
long-polls), so a long-poll or an event
stream waits on a condition, not on a file, and an unchanged poll is
answered from memory (the owner is kept with the version: nobody learns of
another's job).  One process per peer (docs/architecture.md), so memory is
the peer's.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from typing import Callable, Iterator

from sqlalchemy.orm import Session

from .db import Database
from .models import JobRecord
from . import records

log = logging.getLogger(__name__)


class RecordStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._cond = threading.Condition()
        #: Every change of a record happens under this lock: each reads the attempts afresh and writes
        #: them back before the next one reads (a kill and a site's answer never overwrite each other).
        self._write = threading.RLock()
        #: job ID -> (owner, version) of records read or changed lately (the oldest forgotten beyond
        #: ``max_known``: a forgotten one is read from the database again).
        self._versions: OrderedDict[str, tuple[str, int]] = OrderedDict()
        self.max_known = 100_000
        #: Called after each commit that changed records, with job ID -> (owner, version), outside every lock
        #: (the app's change feed to the front, peer/front/changes.py).  Must not block.
        self.listeners: list[Callable[[dict[str, tuple[str, int]]], None]] = []

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits on success, one at a time; versions touched in it are published after
        the commit.  Make no network call inside it."""
        touched: dict[str, tuple[str, int]] = {}
        with self._write, self.db.session() as s:
            s.info["touched"] = touched
            yield s
        if touched:
            with self._cond:
                for job_id, seen in touched.items():
                    self._keep(job_id, seen)
                self._cond.notify_all()
            for listener in self.listeners:
                try:
                    listener(touched)
                except Exception:  # noqa: BLE001 - a listener's failure must not fail a committed change
                    log.exception("record store listener failed")

    def _keep(self, job_id: str, seen: tuple[str, int]) -> None:
        self._versions[job_id] = seen
        self._versions.move_to_end(job_id)
        while len(self._versions) > self.max_known:
            self._versions.popitem(last=False)

    def touch(self, s: Session, record: JobRecord) -> None:
        """What the user sees of ``record`` changed: bump its version, refresh its summary."""
        record.version = (record.version or 0) + 1
        record.summary = records.summary(record)
        if records.record_finished(record):
            # when its last input reached its final state (as the sites' event logs say), else now
            ended = [a.finished_at for atts in records.by_input(record.attempts).values()
                     for a in (records.shown_attempt(atts),) if a.finished_at]
            record.finished_at = record.finished_at or (max(ended) if ended else time.time())
        else:
            record.finished_at = None
        s.info.setdefault("touched", {})[record.id] = (record.owner, record.version)

    def known(self, job_id: str) -> tuple[str, int] | None:
        """(owner, version) as last published, or None when this process has not seen the record."""
        with self._cond:
            return self._versions.get(job_id)

    def remember(self, record: JobRecord) -> None:
        with self._cond:
            seen = self._versions.get(record.id)
            if seen is None or seen[1] < record.version:
                self._keep(record.id, (record.owner, record.version))

    def wait(self, job_id: str, version: int, timeout: float) -> int | None:
        """Block until the record's version is not ``version`` (or ``timeout`` passes); the version then."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                seen = self._versions.get(job_id)
                if seen is not None and seen[1] != version:
                    return seen[1]
                left = deadline - time.monotonic()
                if left <= 0:
                    return None if seen is None else seen[1]
                self._cond.wait(left)
