"""The broker role: peer registry, load table and placement.

Exactly one peer holds the role at a time (the paper's "central JClarens
server").  Its state is soft: registrations and load reports are rebuilt from
the peers' next reports, so losing the broker loses no job.  This class is
plain Python over a session factory; ``broker.api`` exposes it over HTTP.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict
from typing import Any, Callable

import requests
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from .models import LoadReport, Placement, Registration
from .placement import JobRequest, PeerState, Ranked, get_policy

log = logging.getLogger(__name__)


class NameConflict(ValueError):
    """A different live peer already registered under that name."""


class BrokerRole:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        *,
        name: str,
        url: str,
        epoch: int = 1,
        policy: str = "min-coefficient",
        stale_factor: float = 3.0,
        http: requests.Session | None = None,
        clock: Callable[[], float] = time.time,
        on_change: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.sessions = sessions
        self.name = name
        self.url = url
        self.epoch = epoch
        self.policy_name = policy
        self.policy = get_policy(policy)
        self.stale_factor = stale_factor
        self.http = http or requests.Session()
        self.clock = clock
        #: Called with the new membership on every change (the holding peer's own view).
        self.on_change = on_change
        self._lock = threading.Lock()

    # ---- membership -------------------------------------------------------
    def register(self, name: str, url: str) -> dict[str, Any]:
        """Register (or re-register) a peer; returns its sequence number and the membership."""
        with self._lock, self.sessions.begin() as s:
            reg = s.get(Registration, name)
            if reg is not None and reg.url != url:
                load = s.get(LoadReport, name)
                live = load is not None and self.clock() - load.received_at < self.stale_factor * load.interval
                if live:
                    raise NameConflict(
                        f"peer name {name!r} is already registered by {reg.url}, which is still reporting; "
                        "choose another --name"
                    )
                reg.url = url
            elif reg is None:
                seq = (s.scalar(select(func.max(Registration.seq))) or 0) + 1
                reg = Registration(name=name, url=url, seq=seq, registered_at=self.clock())
                s.add(reg)
            seq = reg.seq
        members = self._changed()
        return {"seq": seq, **members}

    def ensure_self_registered(self) -> None:
        with self.sessions.begin() as s:
            if s.get(Registration, self.name) is None:
                seq = (s.scalar(select(func.max(Registration.seq))) or 0) + 1
                s.add(Registration(name=self.name, url=self.url, seq=seq, registered_at=self.clock()))

    def membership(self) -> dict[str, Any]:
        with self.sessions() as s:
            regs = s.scalars(select(Registration).order_by(Registration.seq)).all()
            members = [{"name": r.name, "url": r.url, "seq": r.seq} for r in regs]
        return {"broker": {"name": self.name, "url": self.url}, "epoch": self.epoch, "members": members}

    def _changed(self) -> dict[str, Any]:
        members = self.membership()
        if self.on_change is not None:
            self.on_change(members)
        self._push_async(members)
        return members

    def _push_async(self, membership: dict[str, Any]) -> None:
        """Tell every member of the new membership; best effort, off the request path."""

        def push() -> None:
            for m in membership["members"]:
                if m["name"] == self.name:
                    continue
                try:
                    self.http.post(f"{m['url']}/api/v1/peer/membership", json=membership, timeout=5)
                except requests.RequestException as exc:
                    log.info("membership push to %s failed: %s", m["name"], exc)

        threading.Thread(target=push, name="membership-push", daemon=True).start()

    # ---- load reports -----------------------------------------------------
    def ingest_report(self, report: dict[str, Any]) -> None:
        """Store a peer's latest load report; it resets that peer's in-flight count."""
        now = self.clock()
        with self.sessions.begin() as s:
            row = s.get(LoadReport, report["peer"])
            if row is None:
                row = LoadReport(peer=report["peer"])
                s.add(row)
            row.url = report["url"]
            row.coefficient = float(report["coefficient"])
            row.paper_coefficient = report.get("paper_coefficient")
            row.metrics = report.get("metrics") or {}
            row.pool = report.get("pool")
            row.sampled_at = float(report.get("sampled_at") or now)
            row.received_at = now
            row.interval = float(report.get("interval") or 15.0)
            row.in_flight = 0
            joined = s.get(Registration, report["peer"]) is None
            if joined:
                seq = (s.scalar(select(func.max(Registration.seq))) or 0) + 1
                s.add(Registration(name=report["peer"], url=report["url"], seq=seq, registered_at=now))
        if joined:  # a peer known only from its agent's report is a member too
            self._changed()

    def peer_states(self) -> list[PeerState]:
        now = self.clock()
        with self.sessions() as s:
            regs = {r.name: r for r in s.scalars(select(Registration))}
            loads = {l.peer: l for l in s.scalars(select(LoadReport))}
        states = []
        for name, reg in regs.items():
            load = loads.get(name)
            states.append(
                PeerState(
                    name=name,
                    url=load.url if load else reg.url,
                    coefficient=load.coefficient if load else None,
                    report_age=(now - load.sampled_at) if load else None,
                    interval=load.interval if load else 15.0,
                    in_flight=load.in_flight if load else 0,
                    pool=load.pool if load else None,
                )
            )
        return states

    def load_table(self) -> list[dict[str, Any]]:
        now = self.clock()
        with self.sessions() as s:
            rows = s.scalars(select(LoadReport).order_by(LoadReport.peer)).all()
            return [
                {
                    "peer": r.peer,
                    "url": r.url,
                    "coefficient": r.coefficient,
                    "paper_coefficient": r.paper_coefficient,
                    "metrics": r.metrics,
                    "pool": r.pool,
                    "report_age": round(now - r.sampled_at, 3),
                    "in_flight": r.in_flight,
                }
                for r in rows
            ]

    # ---- placement --------------------------------------------------------
    def place(self, job_key: str, job: JobRequest) -> list[Ranked]:
        """Rank peers for a job and count it as in flight on the first one."""
        with self._lock:
            ranking = self.policy(self.peer_states(), job, self.clock())
            if not ranking:
                return []
            chosen = ranking[0]
            with self.sessions.begin() as s:
                s.execute(
                    update(LoadReport)
                    .where(LoadReport.peer == chosen.name)
                    .values(in_flight=LoadReport.in_flight + job.n_procs)
                )
                s.add(
                    Placement(
                        job_key=job_key,
                        chosen=chosen.name,
                        ranking=[asdict(r) for r in ranking],
                        policy=self.policy_name,
                        decided_at=self.clock(),
                    )
                )
        return ranking
