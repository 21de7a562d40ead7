"""The audit log: security-relevant actions with who did them and from where.

Every record goes to two places: the ``audit_events`` table (queryable by an
administrator through ``GET /api/v1/admin/audit``) and the
``pocketgrid.audit`` logger, so a site can ship it to its own log system.
Actions: ``login``, ``pair``, ``pairing-code``, ``pairing-redeem`` (a code
used up here for a phone that paired at another peer), ``logout``,
``token-revoke``, ``acl-allow``, ``acl-deny``, ``acl-remove``, ``submit``,
``upload`` (a resumable upload completed and verified), ``kill``,
``access-denied``, ``token-refused`` (a bearer token, cookie or relayed proof
that is garbage, forged, expired or revoked) and ``job-probe`` (a request for
a job that exists but is another user's: the caller gets the same 404 as for
an unknown job, the audit log says whose it was); outcome ``ok``, ``failed``
(bad credentials, a bad pairing code) or ``denied`` (an ACL rule refused it).
Not recorded: requests refused because a route is for hosts only, requests
without any credentials, and unknown job IDs.

Refusals are what an attacker can make at will, so they are **rate-limited**
(:class:`RefusalLimiter`): at most ``per_window`` records per action and
source address per minute; the rest are counted, and one summary record
("... and 523 more ... from 10.0.0.5") is written when the minute is over
(at the next refusal, when the log is read, or by the retention sweeper).
10,000 garbage requests from one address therefore add ``per_window + 1``
rows a minute, not 10,000.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from sqlalchemy import select

from .db import Database
from .models import AuditEvent

log = logging.getLogger("pocketgrid.audit")

#: Longest detail text kept; a client controls parts of it.
_MAX_DETAIL = 1000


@dataclass(frozen=True)
class AuditRecord:
    id: int
    at: float
    action: str
    outcome: str
    dn: str
    source: str
    detail: str

    def to_dict(self) -> dict[str, object]:
        return self.__dict__.copy()


@dataclass
class _Window:
    start: float
    outcome: str
    what: str
    admitted: int = 0
    suppressed: int = 0
    dn: str = ""


@dataclass(frozen=True)
class Summary:
    """Refusals counted but not recorded one by one in a window that is over."""

    action: str
    source: str
    outcome: str
    dn: str
    count: int
    what: str
    start: float
    end: float


@dataclass
class RefusalLimiter:
    """At most ``per_window`` records per (action, source) and ``window`` seconds; counts the rest.

    At most ``max_sources`` windows are tracked at once; refusals from further
    addresses share one window under the source ``"other addresses"``.
    """

    per_window: int = 10
    window: float = 60.0
    max_sources: int = 1000
    _windows: dict[tuple[str, str], _Window] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    OTHERS = "other addresses"

    def admit(self, action: str, source: str, *, now: float, outcome: str, what: str, dn: str) -> tuple[bool, list[Summary]]:
        """(record this one?, summaries of windows that ended and must be written now)."""
        with self._lock:
            ended = self._ended(now)
            key = (action, source)
            if key not in self._windows and len(self._windows) >= self.max_sources:
                key = (action, self.OTHERS)
            w = self._windows.get(key)
            if w is None:
                w = self._windows[key] = _Window(start=now, outcome=outcome, what=what)
            if w.admitted < self.per_window:
                w.admitted += 1
                return True, ended
            w.suppressed += 1
            w.dn = dn
            return False, ended

    def ended(self, now: float) -> list[Summary]:
        with self._lock:
            return self._ended(now)

    def _ended(self, now: float) -> list[Summary]:
        out = []
        for key in [k for k, w in self._windows.items() if w.start + self.window <= now]:
            w = self._windows.pop(key)
            if w.suppressed:
                out.append(Summary(key[0], key[1], w.outcome, w.dn, w.suppressed, w.what, w.start,
                                   w.start + self.window))
        return out


class AuditLog:
    def __init__(self, db: Database, *, refusals_per_minute: int = 10,
                 clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.clock = clock
        self.limiter = RefusalLimiter(per_window=max(1, refusals_per_minute))

    def refused(self, action: str, *, dn: str, source: str, detail: str, what: str, outcome: str = "failed") -> bool:
        """Record a refusal, rate-limited per source (see the module's docstring); True if recorded one by one."""
        admitted, ended = self.limiter.admit(action, source, now=self.clock(), outcome=outcome, what=what, dn=dn)
        self._write_summaries(ended)
        if admitted:
            self.record(action, dn=dn, source=source, outcome=outcome, detail=detail)
        return admitted

    def flush(self) -> int:
        """Write the summaries of rate-limit windows that are over; returns how many."""
        ended = self.limiter.ended(self.clock())
        self._write_summaries(ended)
        return len(ended)

    def _write_summaries(self, summaries: list[Summary]) -> None:
        for s in summaries:
            start, end = (time.strftime("%H:%M:%S", time.localtime(t)) for t in (s.start, s.end))
            self.record(s.action, dn=s.dn, source=s.source, outcome=s.outcome,
                        detail=f"... and {s.count} more {s.what} from {s.source} between {start} and {end} "
                               f"(not recorded one by one)")

    def record(self, action: str, *, dn: str, source: str, outcome: str = "ok", detail: str = "") -> None:
        detail = detail[:_MAX_DETAIL]
        log.info("%s %s dn=%r source=%s %s", action, outcome, dn, source, detail)
        with self.db.session() as s:
            s.add(AuditEvent(at=self.clock(), action=action, outcome=outcome, dn=dn[:500], source=source[:200], detail=detail))

    def recent(self, *, limit: int = 100, action: str | None = None, dn: str | None = None) -> list[AuditRecord]:
        """Newest first (summaries of rate-limit windows that are over written first)."""
        self.flush()
        query = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit)
        if action:
            query = query.where(AuditEvent.action == action)
        if dn:
            query = query.where(AuditEvent.dn == dn)
        with self.db.sessions() as s:
            return [
                AuditRecord(e.id, e.at, e.action, e.outcome, e.dn, e.source, e.detail)
                for e in s.scalars(query)
            ]
