"""The audit log: security-relevant actions with who did them and from where.

Every record goes to two places: the ``audit_events`` table (queryable by an
administrator through ``GET /api/v1/admin/audit``) and the
``pocketgrid.audit`` logger, so a site can ship it to its own log system.
Actions: ``login``, ``pair``, ``pairing-code``, ``pairing-redeem`` (a code
used up here for a phone that paired at another peer), ``logout``,
``token-revoke``, ``acl-allow``, ``acl-deny``, ``acl-remove``, ``submit``,
``upload`` (a resumable upload completed and verified), ``kill`` and
``access-denied``; outcome ``ok``, ``failed`` (bad credentials, a bad pairing
code) or ``denied`` (an ACL rule refused it).  Not recorded: requests
refused because a route is for hosts only, and other users' jobs answered
with 404 (those look like any unknown job, on purpose).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

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


class AuditLog:
    def __init__(self, db: Database) -> None:
        self.db = db

    def record(self, action: str, *, dn: str, source: str, outcome: str = "ok", detail: str = "") -> None:
        detail = detail[:_MAX_DETAIL]
        log.info("%s %s dn=%r source=%s %s", action, outcome, dn, source, detail)
        with self.db.session() as s:
            s.add(AuditEvent(action=action, outcome=outcome, dn=dn[:500], source=source[:200], detail=detail))

    def recent(self, *, limit: int = 100, action: str | None = None, dn: str | None = None) -> list[AuditRecord]:
        """Newest first."""
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
