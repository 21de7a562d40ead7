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
from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from .models import LinkRate, LoadReport, PeerHealth, Placement, PlacementOutcome, Registration, RunTimes
from .placement import (
    DEFAULT_POLICY,
    MIN_MEASURED_BYTES,
    Backoff,
    JobRequest,
    LeastExpectedLoad,
    PeerState,
    Ranked,
    expected_occupancy,
    get_policy,
    hidden_backlog,
    peer_state_from_report,
    update_bandwidth,
)
from .split import Share, split_inputs, still_unseen, visible_at

log = logging.getLogger(__name__)


class NameConflict(ValueError):
    """A different live peer already registered under that name."""


class UnknownPeer(LookupError):
    """An outcome or transfer report names a peer this broker does not know."""


class BrokerRole:
    #: Placement decisions kept for inspection (``GET /api/v1/broker/placements``); older ones are pruned.
    keep_placements = 1000

    def __init__(
        self,
        sessions: sessionmaker[Session],
        *,
        name: str,
        url: str,
        epoch: int = 1,
        policy: str = DEFAULT_POLICY,
        stale_factor: float = 3.0,
        seed: int | None = None,
        backoff: Backoff | None = None,
        http: requests.Session | None = None,
        clock: Callable[[], float] = time.time,
        on_change: Callable[[dict[str, Any]], None] | None = None,
        dead_after: float | None = None,
        cert: str | None = None,
        on_place: Callable[[str], None] | None = None,
        split_waves_ahead: float | None = None,
    ) -> None:
        self.sessions = sessions
        if split_waves_ahead is not None and split_waves_ahead < 0:
            raise ValueError("split_waves_ahead must be >= 0, or None (every input given at once)")
        #: Late binding (broker/split.py): a split gives a site its free slots plus at most this many waves
        #: of queue; the rest stay unassigned, pending at the job's home until a later split.  None: no cap.
        self.split_waves_ahead = split_waves_ahead
        #: Told the chosen peer's name after each placement decision (the holding peer's metrics).
        self.on_place = on_place
        #: The holding peer's own host certificate (PEM), listed in the membership like everyone's.
        self.cert = cert
        #: A peer not heard from (heartbeat, report) for this long is dead to placement.
        self.dead_after = dead_after
        self.name = name
        self.url = url
        self.epoch = epoch
        self.policy_name = policy
        #: One instance for the role's life: it keeps its random generator and turn.
        self.policy = get_policy(policy, seed=seed, stale_factor=stale_factor)
        #: The estimate a split uses (broker/split.py): the policy itself when it is the default one.
        self.estimator = self.policy if isinstance(self.policy, LeastExpectedLoad) else LeastExpectedLoad(
            seed, stale_factor=stale_factor)
        self.stale_factor = stale_factor
        self.backoff = backoff or Backoff()
        self.http = http or requests.Session()
        self.clock = clock
        #: Called with the new membership on every change (the holding peer's own view).
        self.on_change = on_change
        self._lock = threading.Lock()
        #: Estimated procs queued on host-only peers (placement.hidden_backlog).
        #: Soft state in memory: a new broker starts from zero, as it does for in_flight.
        self._backlog: dict[str, float] = {}
        #: Each peer's own procs that are not about to use a slot (the report's ``site``: held, unmatchable).
        self._site: dict[str, dict[str, int]] = {}
        #: With late binding: split shares per peer that its reports probably do not show yet, (visible_at,
        #: procs): they stay in flight past its next report (broker/split.py ``still_unseen``).  Soft state,
        #: like in_flight.
        self._unseen: dict[str, list[tuple[float, int]]] = {}

    # ---- membership -------------------------------------------------------
    def register(self, name: str, url: str, cert: str | None = None) -> dict[str, Any]:
        """Register (or re-register) a peer; returns its sequence number and the membership.

        ``cert``: the peer's host certificate (PEM) from the TLS handshake, passed on to every member.
        """
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
            reg.last_seen = self.clock()
            if cert:
                reg.cert = cert
            seq = reg.seq
        members = self._changed()
        return {"seq": seq, **members}

    def heartbeat(self, name: str, url: str, cert: str | None = None) -> dict[str, Any]:
        """A peer says it is alive; answers the membership (a new peer is registered)."""
        with self._lock, self.sessions.begin() as s:
            reg = s.get(Registration, name)
            if reg is not None and reg.url == url and (not cert or reg.cert == cert):
                reg.last_seen = self.clock()
                known = True
            else:
                known = False
        if not known:
            return self.register(name, url, cert)
        return self.membership()

    def seed(self, members: list[dict[str, Any]]) -> None:
        """Take over a membership list (after an election): same names, URLs and sequence numbers.

        Everyone counts as alive until the detection window passes without
        hearing from them: the new broker has not had time to hear anyone.
        """
        now = self.clock()
        with self._lock, self.sessions.begin() as s:
            for m in members:
                reg = s.get(Registration, m["name"])
                if reg is None:
                    s.add(Registration(name=m["name"], url=m["url"], seq=int(m["seq"]), registered_at=now, last_seen=now,
                                       cert=m.get("cert")))
                else:
                    reg.url, reg.seq, reg.last_seen = m["url"], int(m["seq"]), now
                    reg.cert = m.get("cert") or reg.cert

    def announce(self) -> dict[str, Any]:
        """Push the membership (with this role's epoch) to every member."""
        return self._changed()

    def _alive(self, reg: Registration, load: LoadReport | None, now: float) -> bool:
        if self.dead_after is None or reg.name == self.name:
            return True
        heard = max(reg.last_seen or reg.registered_at or 0.0, load.received_at if load is not None else 0.0)
        return now - heard <= self.dead_after

    def member_health(self) -> dict[str, dict[str, Any]]:
        """Per registered peer: ``alive`` (as placement sees it) and ``last_seen_age``, the
        seconds since it was last heard from (heartbeat, registration or load report)."""
        now = self.clock()
        with self.sessions() as s:
            loads = {l.peer: l for l in s.scalars(select(LoadReport))}
            health = {}
            for reg in s.scalars(select(Registration)):
                load = loads.get(reg.name)
                heard = max(reg.last_seen or reg.registered_at or 0.0, load.received_at if load is not None else 0.0)
                age = 0.0 if reg.name == self.name else round(max(0.0, now - heard), 1)
                health[reg.name] = {"alive": self._alive(reg, load, now), "last_seen_age": age}
        return health

    def ensure_self_registered(self) -> None:
        with self.sessions.begin() as s:
            reg = s.get(Registration, self.name)
            if reg is None:
                seq = (s.scalar(select(func.max(Registration.seq))) or 0) + 1
                s.add(Registration(name=self.name, url=self.url, seq=seq, registered_at=self.clock(), cert=self.cert))
            elif self.cert:
                reg.cert = self.cert

    def membership(self) -> dict[str, Any]:
        with self.sessions() as s:
            regs = s.scalars(select(Registration).order_by(Registration.seq)).all()
            members = [{"name": r.name, "url": r.url, "seq": r.seq, "cert": r.cert} for r in regs]
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
        """Store a peer's latest load report; it resets that peer's in-flight count to the split shares
        it probably does not show yet (decided too shortly before it was sampled to be staged there).

        For a peer without pool figures, the procs it probably still holds
        queued (invisible in host metrics) are carried over as its backlog
        (``placement.hidden_backlog``).
        """
        now = self.clock()
        name = report["peer"]
        with self._lock, self.sessions.begin() as s:
            row = s.get(LoadReport, name)
            previous, placed = None, 0
            if row is None:
                row = LoadReport(peer=name)
                s.add(row)
            else:
                previous = peer_state_from_report(
                    name, row.url, _report_of(row, self._site.get(name)), now, backlog=self._backlog.get(name, 0.0)
                )
                placed = row.in_flight or 0
            row.url = report["url"]
            row.coefficient = float(report["coefficient"])
            row.paper_coefficient = report.get("paper_coefficient")
            row.metrics = report.get("metrics") or {}
            row.pool = report.get("pool")
            row.sampled_at = float(report.get("sampled_at") or now)
            row.received_at = now
            row.interval = float(report.get("interval") or 15.0)
            unseen = still_unseen(self._unseen.pop(name, []), row.sampled_at)
            if unseen:
                self._unseen[name] = unseen
            carried = min(placed, sum(n for _, n in unseen))
            placed -= carried  # the rest is in the report now (or, for a host, in its hidden backlog)
            row.in_flight = carried
            site = report.get("site")
            self._site[name] = dict(site) if isinstance(site, dict) else {}
            current = peer_state_from_report(name, row.url, _report_of(row, self._site[name]), now)
            self._backlog[name] = hidden_backlog(previous, current, placed)
            if isinstance(report.get("runtimes"), dict):  # optional: older peers and bare agents send none
                times = s.get(RunTimes, name)
                if times is None:
                    times = RunTimes(peer=name)
                    s.add(times)
                times.stats, times.received_at = report["runtimes"], now
            joined = s.get(Registration, name) is None
            if joined:
                seq = (s.scalar(select(func.max(Registration.seq))) or 0) + 1
                s.add(Registration(name=name, url=report["url"], seq=seq, registered_at=now))
        if joined:  # a peer known only from its agent's report is a member too
            self._changed()

    def peer_states(self) -> list[PeerState]:
        """The policy's view of every registered peer, at this instant."""
        now = self.clock()
        with self.sessions() as s:
            regs = {r.name: r for r in s.scalars(select(Registration))}
            loads = {l.peer: l for l in s.scalars(select(LoadReport))}
            bans = {h.peer: h.banned_until for h in s.scalars(select(PeerHealth))}
            times = {t.peer: t for t in s.scalars(select(RunTimes))}
            rates: dict[str, dict[str, float]] = {}
            for link in s.scalars(select(LinkRate)):
                rates.setdefault(link.dst, {})[link.src] = link.bytes_per_second
        states = []
        for name, reg in regs.items():
            load = loads.get(name)
            if not self._alive(reg, load, now):
                continue  # silent past the detection window: no new work goes there
            states.append(
                peer_state_from_report(
                    name,
                    load.url if load else reg.url,
                    _report_of(load, self._fresh_runtimes(times.get(name), load, now), self._site.get(name))
                    if load else None,
                    now,
                    in_flight=load.in_flight if load else 0,
                    banned_until=bans.get(name),
                    bandwidth_in=rates.get(name),
                    backlog=self._backlog.get(name, 0.0) if load else 0.0,
                )
            )
        return states

    def _fresh_runtimes(self, times: RunTimes | None, load: LoadReport | None, now: float) -> dict[str, Any] | None:
        """A peer's run-time figures, unless they are older than a report may be (then: not reported)."""
        if times is None or load is None:
            return None
        return times.stats if now - times.received_at <= self.stale_factor * (load.interval or 15.0) else None

    def load_table(self) -> list[dict[str, Any]]:
        """One row per reporting peer: its report, report age, in-flight procs,
        expected occupancy (what the default policy believes) and ban state."""
        now = self.clock()
        states = {p.name: p for p in self.peer_states()}
        with self.sessions() as s:
            rows = s.scalars(select(LoadReport).order_by(LoadReport.peer)).all()
            health = {h.peer: h for h in s.scalars(select(PeerHealth))}
            regs = {r.name: r for r in s.scalars(select(Registration))}
            table = []
            for r in rows:
                state = states.get(r.peer)
                occupancy = expected_occupancy(state) if state is not None else None
                table.append(
                    {
                        "peer": r.peer,
                        "url": r.url,
                        "coefficient": r.coefficient,
                        "paper_coefficient": r.paper_coefficient,
                        "metrics": r.metrics,
                        "pool": r.pool,
                        "report_age": round(now - r.sampled_at, 3),
                        "in_flight": r.in_flight,
                        "backlog": round(self._backlog.get(r.peer, 0.0), 3),
                        "site": self._site.get(r.peer) or None,
                        "slots": state.slots if state else None,
                        "expected_occupancy": None if occupancy is None else round(occupancy, 3),
                        "ban": self._ban_view(health.get(r.peer), now),
                        "alive": r.peer in regs and self._alive(regs[r.peer], r, now),
                        "runtimes": _runtimes_view(state.runtimes if state is not None else None),
                    }
                )
            return table

    @staticmethod
    def _ban_view(h: PeerHealth | None, now: float) -> dict[str, Any]:
        banned_for = max(0.0, (h.banned_until or 0.0) - now) if h is not None else 0.0
        return {
            "banned": banned_for > 0,
            "banned_for": round(banned_for, 3),
            "banned_until": h.banned_until if h is not None and banned_for > 0 else None,
            "failures": (h.failures or 0) if h is not None else 0,
        }

    # ---- submission outcomes and transfer rates --------------------------
    def report_failure(self, peer: str) -> dict[str, Any]:
        """An entry peer could not hand a job to ``peer``: count it; ban with backoff.

        ``Backoff.threshold`` consecutive failures ban the peer (it is ranked
        last) for ``base`` seconds, doubling with each further failure.
        """
        now = self.clock()
        with self._lock, self.sessions.begin() as s:
            h = self._health_row(s, peer)
            if h.last_failure_at is not None and now - h.last_failure_at > self.backoff.forget_after:
                h.failures = 0
            h.failures = (h.failures or 0) + 1
            h.last_failure_at = now
            ban = self.backoff.ban_seconds(h.failures)
            if ban > 0:
                h.banned_until = now + ban
                log.warning("peer %s failed %d submissions in a row: banned for %.0f s", peer, h.failures, ban)
            return {"peer": peer, **self._ban_view(h, now)}

    def report_success(self, peer: str) -> dict[str, Any]:
        """A submission to ``peer`` worked: forget its failures and lift any ban."""
        now = self.clock()
        with self._lock, self.sessions.begin() as s:
            h = self._health_row(s, peer)
            h.failures = 0
            h.banned_until = None
            return {"peer": peer, **self._ban_view(h, now)}

    def report_transfer(self, src: str, dst: str, nbytes: int, seconds: float) -> float | None:
        """Fold one measured transfer ``src`` -> ``dst`` into the bandwidth table.

        Returns the new estimate in bytes/s (None while no transfer was large
        enough to measure; see ``placement.MIN_MEASURED_BYTES``).
        """
        if src == dst:
            raise ValueError("src and dst are the same peer; local copies say nothing about the network")
        now = self.clock()
        with self._lock, self.sessions.begin() as s:
            for name in (src, dst):
                if s.get(Registration, name) is None:
                    raise UnknownPeer(f"unknown peer {name!r}")
            link = s.get(LinkRate, (src, dst))
            old = link.bytes_per_second if link else None
            if nbytes < MIN_MEASURED_BYTES:
                return old  # too small to measure: latency, not bandwidth
            estimate = update_bandwidth(old, nbytes, seconds)
            if estimate is None:
                return None
            if link is None:
                link = LinkRate(src=src, dst=dst, bytes_per_second=estimate, samples=0, updated_at=now)
                s.add(link)
            link.bytes_per_second = estimate
            link.samples = (link.samples or 0) + 1
            link.updated_at = now
            return estimate

    @staticmethod
    def _health_row(s: Session, peer: str) -> PeerHealth:
        if s.get(Registration, peer) is None:
            raise UnknownPeer(f"unknown peer {peer!r}")
        h = s.get(PeerHealth, peer)
        if h is None:
            h = PeerHealth(peer=peer, failures=0)
            s.add(h)
        return h

    # ---- placement --------------------------------------------------------
    def place(self, job_key: str, job: JobRequest) -> list[Ranked]:
        """Rank peers for a job and count it as in flight on the first one."""
        return self.decide(job_key, job)["ranking"]

    def decide(self, job_key: str, job: JobRequest) -> dict[str, Any]:
        """:meth:`place`, answering the whole decision: ``id``, ``ranking`` (Ranked), ``policy``, ``decided_at``."""
        with self._lock:
            now = self.clock()
            ranking = self.policy(self.peer_states(), job, now)
            decision: dict[str, Any] = {"id": None, "ranking": ranking, "policy": self.policy_name, "decided_at": now}
            if not ranking:
                return decision
            chosen = ranking[0]
            with self.sessions.begin() as s:
                s.execute(
                    update(LoadReport)
                    .where(LoadReport.peer == chosen.name)
                    .values(in_flight=LoadReport.in_flight + job.n_procs)
                )
                row = Placement(
                    job_key=job_key,
                    chosen=chosen.name,
                    ranking=[asdict(r) for r in ranking],
                    policy=self.policy_name,
                    decided_at=now,
                )
                s.add(row)
                s.flush()
                decision["id"] = row.id
                if row.id % 100 == 0:  # now and then: keep the most recent decisions only
                    s.execute(delete(PlacementOutcome).where(PlacementOutcome.placement_id <= row.id - self.keep_placements))
                    s.execute(delete(Placement).where(Placement.id <= row.id - self.keep_placements))
        if self.on_place is not None:
            self.on_place(chosen.name)
        return decision

    def record_outcome(self, job_key: str, accepted_by: str, *, job_id: str | None = None,
                       failed: list[dict[str, Any]] | None = None) -> bool:
        """The entry peer says who took the job of the latest decision for ``job_key`` and who failed first.

        False when no decision for that key is kept (pruned, or made by an earlier broker).
        """
        with self._lock, self.sessions.begin() as s:
            placement_id = s.scalar(select(func.max(Placement.id)).where(Placement.job_key == job_key))
            if placement_id is None:
                return False
            row = s.get(PlacementOutcome, placement_id)
            if row is None:
                row = PlacementOutcome(placement_id=placement_id, accepted_by=accepted_by, failed=[])
                s.add(row)
            else:  # a split: each site that took its share says so
                sites = [n for n in row.accepted_by.split(",") if n]
                row.accepted_by = ",".join(sites + ([accepted_by] if accepted_by not in sites else []))[:200]
            row.job_id = job_id
            row.failed = [*(row.failed or []), *(f for f in failed or [] if f not in (row.failed or []))]
            row.reported_at = self.clock()
            return True

    def recent_placements(self, limit: int = 50) -> list[dict[str, Any]]:
        """The most recent decisions, newest first, with their outcome where the entry peer reported it."""
        with self.sessions() as s:
            rows = s.scalars(select(Placement).order_by(Placement.id.desc()).limit(max(1, limit))).all()
            outcomes = {o.placement_id: o for o in s.scalars(
                select(PlacementOutcome).where(PlacementOutcome.placement_id.in_([r.id for r in rows])))}
            out = []
            for r in rows:
                o = outcomes.get(r.id)
                out.append({
                    "id": r.id,
                    "job_key": r.job_key,
                    "chosen": r.chosen,
                    "policy": r.policy,
                    "decided_at": r.decided_at,
                    "ranking": [{k: v for k, v in c.items() if k != "url"} for c in r.ranking],
                    "outcome": None if o is None else {"accepted_by": o.accepted_by, "job_id": o.job_id,
                                                       "failed": o.failed, "reported_at": o.reported_at},
                })
            return out

    def split(self, job_key: str, job: JobRequest, *, input_sizes: list[int] | None = None,
              avoid: frozenset[str] = frozenset(),
              exclude: frozenset[str] = frozenset()) -> tuple[list[Ranked], list[Share]]:
        """Rank peers and split the job's inputs over them (broker/split.py); each share is counted
        as in flight on its site until that site's next report.  ``exclude``: sites that refused these
        inputs for good (they get none)."""
        decision = self._split(job_key, job, input_sizes=input_sizes, avoid=avoid, exclude=exclude)
        return decision["ranking"], decision["shares"]

    def split_decision(self, job_key: str, job: JobRequest, *, input_sizes: list[int] | None = None,
                       avoid: frozenset[str] = frozenset(), exclude: frozenset[str] = frozenset()) -> dict[str, Any]:
        """:meth:`split` as the home keeps it: ``id``, ``ranking`` (dicts, with each candidate's score
        parts), ``shares``, ``policy``, ``decided_at``, ``unassigned`` (inputs given to no site now: late
        binding holds them back for a later split, or no site can take them) and ``refused_all`` (the split
        is empty because every live site is excluded: no site will take these inputs)."""
        decision = self._split(job_key, job, input_sizes=input_sizes, avoid=avoid, exclude=exclude)
        return {**decision, "ranking": [asdict(r) for r in decision["ranking"]],
                "shares": [asdict(share) for share in decision["shares"]]}

    def _split(self, job_key: str, job: JobRequest, *, input_sizes: list[int] | None,
               avoid: frozenset[str], exclude: frozenset[str]) -> dict[str, Any]:
        with self._lock:
            now = self.clock()
            states = self.peer_states()
            ranking = self.policy([p for p in states if p.name not in exclude], job, now)
            shares = split_inputs(states, job, now, estimator=self.estimator, avoid=frozenset(avoid),
                                  input_sizes=input_sizes or (), exclude=frozenset(exclude),
                                  waves_ahead=self.split_waves_ahead)
            policy = self.policy_name  # a split: its ranking entries say which sites got shares
            decision: dict[str, Any] = {"id": None, "ranking": ranking, "shares": shares, "policy": policy,
                                        "decided_at": now,
                                        "unassigned": max(0, job.n_procs - sum(share.count for share in shares)),
                                        "refused_all": bool(exclude) and not shares and bool(states)}
            if not shares:
                return decision
            given = {share.name: share for share in shares}
            with self.sessions.begin() as s:
                for share in shares:
                    s.execute(
                        update(LoadReport)
                        .where(LoadReport.peer == share.name)
                        .values(in_flight=LoadReport.in_flight + share.count)
                    )
                    if self.split_waves_ahead is not None:  # late binding asks again after every report
                        unseen = [u for u in self._unseen.get(share.name, []) if u[0] > now - 3600]  # a silent peer's
                        self._unseen[share.name] = [*unseen, (visible_at(now, share), share.count)]
                row = Placement(
                    job_key=job_key,
                    chosen=",".join(share.name for share in shares)[:200],
                    # the ranking with scores; each site given inputs says how many, and when they finish
                    ranking=[{**asdict(r), **({"share": _share_view(given[r.name])} if r.name in given else {})}
                             for r in ranking]
                    + [{"name": share.name, "url": share.url, "score": None, "reason": share.reason,
                        "share": _share_view(share)} for share in shares if share.name not in {r.name for r in ranking}],
                    policy=policy,
                    decided_at=now,
                )
                s.add(row)
                s.flush()
                decision["id"] = row.id
                if row.id % 100 == 0:  # now and then: keep the most recent decisions only
                    s.execute(delete(PlacementOutcome).where(PlacementOutcome.placement_id <= row.id - self.keep_placements))
                    s.execute(delete(Placement).where(Placement.id <= row.id - self.keep_placements))
        if self.on_place is not None:
            for share in shares:
                self.on_place(share.name)
        return decision


def _share_view(share: Share) -> dict[str, Any]:
    return {"count": share.count, "est_seconds": share.est_seconds, "reason": share.reason}


def _runtimes_view(stats: Any) -> dict[str, Any] | None:
    """What the load table shows of a peer's learned run times (None: it reports none)."""
    if stats is None:
        return None
    return {"completed": stats.completed, "median_s": stats.median, "mean_s": stats.mean,
            "running": stats.running, "idle": stats.idle, "mean_queue_wait_s": stats.mean_queue_wait,
            "executables": len(stats.by_key), "used": stats.usable}


def _report_of(row: LoadReport, runtimes: dict[str, Any] | None = None,
               site: dict[str, int] | None = None) -> dict[str, Any]:
    """A stored report in the agent's report shape (for ``peer_state_from_report``); ``site`` (held and
    unmatchable procs) is kept in memory (soft state, like the backlog)."""
    return {
        "coefficient": row.coefficient,
        "metrics": row.metrics,
        "pool": row.pool,
        "site": site or {},
        "sampled_at": row.sampled_at,
        "interval": row.interval,
        "runtimes": runtimes,
    }
