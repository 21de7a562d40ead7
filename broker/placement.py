"""Placement policies: pure functions of (peer table, job, clock) -> ranked peers.

No I/O here, so policies can be unit-tested and driven, unchanged, by the
simulator in ``benchmarks/placement``.  A policy returns every known peer, best
first; the entry peer forwards to the first and falls back to the next when a
peer fails.  Every policy orders the peers it cannot vouch for last, in this
order: peers without a fresh report, then peers banned for failing
submissions (a last resort beats a failed submission).

Convention (see ema_agent.coefficient): a LOWER load coefficient means a LESS
loaded peer.

Policies (``get_policy(name)``):

* ``random`` and ``round-robin``: baselines that ignore load;
* ``min-coefficient``: the paper's, the minimum last-reported coefficient.
  With reports every 15 s, every job of a burst lands on the same peer;
* ``least-expected-load`` (the default): estimates each peer's response time
  for the job from its last report *plus the work placed on it since*, adds
  the time to move the inputs it lacks, charges a peer that already got its
  cap of procs this report interval, and breaks near-ties with the power of
  two choices.  Run times are learned from what the sites report
  (``broker/runtimes.py``) where they report them, else nominal.  See
  :class:`LeastExpectedLoad`;
* ``least-expected-load-nominal``: the same, learning nothing (every proc
  takes the nominal 60 s at speed 1.0): the policy before run times were
  learned, kept for comparison and as a fallback.

Policies that need state (a seeded random generator, the round-robin turn)
are small classes with the policy call signature; given the same seed and
the same calls they make the same decisions.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from .runtimes import MIN_KEY_SAMPLES, PRIOR_SAMPLES, RunTimeStats, expected_start

#: ema_agent's default reference clock: a peer at this clock has speed 1.0.
REFERENCE_CLOCK_MHZ = 2000.0
#: ema_agent's default weights of the CPU-busy and load1-per-core terms: a host
#: whose every core is busy scores about ``CPU_WEIGHT / speed + LOAD1_WEIGHT``.
CPU_WEIGHT = 1.0
LOAD1_WEIGHT = 1.0
#: Bandwidth assumed between two peers before any transfer between them was
#: measured: 100 Mbit/s, a campus LAN or a good WAN path.  A guess, so it only
#: has to order "move 2 GB" far behind "move 2 MB"; measured rates replace it.
DEFAULT_BANDWIDTH = 12.5e6  # bytes/s
#: Transfers smaller than this say more about latency than bandwidth: ignored.
MIN_MEASURED_BYTES = 256 * 1024
#: A nominal job run time (s) at speed 1.0: converts procs queued ahead into
#: waiting time, comparable with the time to move inputs.  Used where no run
#: times were learned (a site that reports none, or too few; an executable
#: never seen): a stated assumption, not a fact.
NOMINAL_JOB_SECONDS = 60.0


@dataclass(frozen=True)
class PeerState:
    """What the broker knows of one peer at decision time."""

    name: str
    url: str
    coefficient: float | None  #: None: no report yet
    report_age: float | None  #: seconds since the report was sampled
    interval: float = 15.0
    in_flight: int = 0  #: procs placed since the report
    pool: dict | None = None
    metrics: Mapping[str, Any] | None = None  #: the agent's host metrics (cores, clock_mhz, cpu_percent, load1...)
    slots: int | None = None  #: procs it runs at once (pool slots, else cores); None: unknown
    speed: float | None = None  #: per-slot speed relative to the reference clock; None: unknown
    banned_until: float | None = None  #: skipped (placed last) until this time
    #: Measured bytes/s from another peer (key) to this one.
    bandwidth_in: Mapping[str, float] = field(default_factory=dict)
    #: Procs probably queued on a host that reports no pool figures, which its
    #: report cannot show (see :func:`hidden_backlog`).
    backlog: float = 0.0
    #: The peer's own procs that are not about to use a slot, as its report says: held, and idle
    #: but matched by no slot (they stay idle).  Neither is load (see :func:`reported_busy`).
    held: int = 0
    unmatchable: int = 0
    #: Run times the peer learned from its jobs' event logs (None: it reports none).
    runtimes: RunTimeStats | None = None

    def banned(self, now: float) -> bool:
        return self.banned_until is not None and now < self.banned_until


@dataclass(frozen=True)
class JobRequest:
    """What placement needs to know of a job."""

    n_procs: int
    input_bytes: dict[str, int] = field(default_factory=dict)  #: bytes of inputs per holding peer
    entry_peer: str = ""
    #: The owner's executable, hashed (``runtimes.history_key``): its past run times, where sites report them.
    history_key: str | None = None


@dataclass(frozen=True)
class Ranked:
    name: str
    url: str
    score: float | None  #: lower is better; None when the peer was not scored
    reason: str
    detail: dict[str, Any] | None = None  #: the score's parts, for the decision record


Policy = Callable[[Sequence[PeerState], JobRequest, float], list[Ranked]]


# ---- reading a report (shared by the broker and the simulator) -------------
def slots_from_report(metrics: Mapping[str, Any] | None, pool: Mapping[str, Any] | None) -> int | None:
    """How many procs a peer runs at once: its pool's slots, else its cores."""
    if pool:
        total = _positive(pool.get("total_slots"))
        if total:
            return int(total)
    cores = _positive((metrics or {}).get("cores"))
    return int(cores) if cores else None


def speed_from_report(metrics: Mapping[str, Any] | None, pool: Mapping[str, Any] | None) -> float | None:
    """Per-slot speed from the host clock, for a peer that runs jobs itself.

    None for a pool: the head node's clock says nothing about its execute
    nodes.  The clock is a weak proxy (no IPC, turbo, or contention), the same
    one the coefficient's CPU term uses.
    """
    if pool:
        return None
    clock = _positive((metrics or {}).get("clock_mhz"))
    return clock / REFERENCE_CLOCK_MHZ if clock else None


def peer_state_from_report(
    name: str,
    url: str,
    report: Mapping[str, Any] | None,
    now: float,
    *,
    in_flight: int = 0,
    banned_until: float | None = None,
    bandwidth_in: Mapping[str, float] | None = None,
    backlog: float = 0.0,
) -> PeerState:
    """The policy's view of a peer from its last report (``None``: none yet).

    ``report`` has the agent's fields: coefficient, metrics, pool, sampled_at,
    interval and (optional) runtimes.  The broker and the simulator both
    build PeerStates here, so the simulator's policies see exactly what the
    broker's would.
    """
    report = report or {}
    metrics, pool, site = report.get("metrics"), report.get("pool"), report.get("site")
    metrics = metrics if isinstance(metrics, Mapping) else None  # junk from an agent is "not reported"
    pool = pool if isinstance(pool, Mapping) else None
    site = site if isinstance(site, Mapping) else {}
    sampled_at = report.get("sampled_at")
    return PeerState(
        name=name,
        url=url,
        coefficient=report.get("coefficient"),
        report_age=(now - sampled_at) if sampled_at is not None else None,
        interval=float(report.get("interval") or 15.0),
        in_flight=in_flight,
        pool=pool,
        metrics=metrics,
        slots=slots_from_report(metrics, pool),
        speed=speed_from_report(metrics, pool),
        banned_until=banned_until,
        bandwidth_in=dict(bandwidth_in or {}),
        backlog=backlog,
        held=int(_positive(site.get("held"))),
        unmatchable=int(_positive(site.get("unmatchable"))),
        runtimes=RunTimeStats.parse(report.get("runtimes")),
    )


def _reports_pool(peer: PeerState) -> bool:
    return bool(peer.pool) and _positive((peer.pool or {}).get("total_slots")) > 0


def reported_busy(peer: PeerState) -> float | None:
    """Procs running or queued on the peer as its report shows them.

    Exact from pool figures (claimed slots + idle jobs, less this peer's own
    idle procs that no slot matches: they wait forever, they will never take
    a slot; held jobs are not idle jobs).  For a host, the
    busy share of its slots from its metrics: the larger of CPU use and
    load1 per core.  Without those metrics, inverted from the coefficient
    with ema_agent's default weights (a fully busy host scores about
    ``CPU_WEIGHT / speed + LOAD1_WEIGHT``; the memory, disk and process
    terms make that a slight over-count).  Procs a LocalExecutor keeps
    queued are not processes yet, so a host's report cannot show them: see
    :func:`hidden_backlog`.
    """
    if _reports_pool(peer):
        pool = peer.pool or {}
        waiting = max(0.0, _positive(pool.get("idle_jobs")) - peer.unmatchable)
        return _positive(pool.get("claimed_slots")) + waiting
    if peer.coefficient is None:
        return None
    slots = peer.slots or 1
    metrics = peer.metrics or {}
    cores = _positive(metrics.get("cores"))
    if cores and "cpu_percent" in metrics and "load1" in metrics:
        share = max(_positive(metrics.get("cpu_percent")) / 100.0, _positive(metrics.get("load1")) / cores)
        return share * slots
    per_busy_slot = CPU_WEIGHT / (peer.speed or 1.0) + LOAD1_WEIGHT
    return max(0.0, peer.coefficient) / per_busy_slot * slots


def busy_procs(peer: PeerState) -> float | None:
    """Procs running or queued at the report: what it shows plus the estimated hidden backlog."""
    busy = reported_busy(peer)
    return None if busy is None else busy + peer.backlog


def hidden_backlog(previous: PeerState | None, new: PeerState, placed: int) -> float:
    """Procs a host-only peer probably still holds queued when its new report arrives.

    A LocalExecutor queues procs beyond its slots, and a host's metrics show
    only the running ones, so resetting ``in_flight`` on each report would
    forget work the broker itself sent, and the broker would keep feeding a
    host whose queue grows out of sight.  So, for a peer without pool
    figures, procs placed since the last report that did not fit in the
    slots that were free then are carried over as a backlog, until a report
    shows a free slot (a LocalExecutor starts a queued proc as soon as a slot
    frees, so a free slot means an empty queue).

    The backlog does not drain while the host stays full: how fast it would
    drain depends on job run times the broker does not know, and guessing
    too fast rebuilds the hidden queue (in development runs, draining at the
    nominal 60 s per proc let a fast host's queue regrow and made mean
    response times at 50 % load several times worse).
    Over-estimating only sends work elsewhere until the host shows a free
    slot.  Peers with pool figures show their queue: zero.
    """
    if _reports_pool(new) or new.coefficient is None:
        return 0.0
    slots = new.slots or 1
    if (reported_busy(new) or 0.0) < slots - 0.5:
        return 0.0
    if previous is None or previous.coefficient is None:
        return 0.0
    free_before = max(0.0, slots - (reported_busy(previous) or 0.0) - previous.backlog)
    # Procs that went on hold or match nothing here since the last report wait for no slot: not backlog.
    stuck = max(0, (new.held + new.unmatchable) - (previous.held + previous.unmatchable))
    return max(0.0, previous.backlog + max(0, placed - stuck) - free_before)


def expected_occupancy(peer: PeerState) -> float | None:
    """(procs busy at the report + procs placed since) per slot; 1.0 = every slot taken."""
    busy = busy_procs(peer)
    if busy is None:
        return None
    return (busy + peer.in_flight) / (peer.slots or 1)


def update_bandwidth(old: float | None, nbytes: int, seconds: float, *, alpha: float = 0.3) -> float | None:
    """A new bandwidth estimate (bytes/s) after one measured transfer.

    Exponentially weighted so one slow transfer moves the estimate but does
    not replace it.  Transfers too small to measure (or with no duration)
    leave ``old`` unchanged.
    """
    if nbytes < MIN_MEASURED_BYTES or not (seconds > 0 and math.isfinite(seconds)):
        return old
    rate = nbytes / seconds
    return rate if old is None else (1 - alpha) * old + alpha * rate


@dataclass(frozen=True)
class Backoff:
    """Exponential ban of a peer that keeps failing submissions.

    ``threshold`` consecutive failures ban it for ``base`` seconds (one report
    interval); each further failure doubles the ban, up to ``maximum``.  A
    failure more than ``forget_after`` seconds after the previous one starts
    the count again, so a peer that failed once an hour ago is not punished
    for today's first hiccup.
    """

    threshold: int = 2
    base: float = 15.0
    factor: float = 2.0
    maximum: float = 900.0
    forget_after: float = 600.0

    def ban_seconds(self, failures: int) -> float:
        if failures < self.threshold:
            return 0.0
        return min(self.maximum, self.base * self.factor ** (failures - self.threshold))


def _positive(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return 0.0
    return number if math.isfinite(number) and number > 0 else 0.0


# ---- shared ordering --------------------------------------------------------
def _is_fresh(peer: PeerState, stale_factor: float) -> bool:
    return peer.report_age is not None and peer.report_age <= stale_factor * peer.interval


def _split(
    peers: Sequence[PeerState], now: float, stale_factor: float
) -> tuple[list[PeerState], list[PeerState], list[PeerState]]:
    """(fresh and usable, without a fresh report, banned), each sorted by name."""
    usable, stale, banned = [], [], []
    for p in sorted(peers, key=lambda p: p.name):
        if p.banned(now):
            banned.append(p)
        elif _is_fresh(p, stale_factor) and p.coefficient is not None:
            usable.append(p)
        else:
            stale.append(p)
    return usable, stale, banned


def _last_resorts(stale: list[PeerState], banned: list[PeerState], now: float) -> list[Ranked]:
    """Peers ranked after every usable one: a peer that just joined (no report)
    should not make a submission fail, and a banned one beats none at all."""
    ranked = [Ranked(p.name, p.url, None, "no fresh report") for p in stale]
    ranked += [
        Ranked(p.name, p.url, None, f"banned for {p.banned_until - now:.0f} s more")  # type: ignore[operator]
        for p in sorted(banned, key=lambda p: (p.banned_until, p.name))
    ]
    return ranked


# ---- the baselines ------------------------------------------------------------
def min_coefficient(
    peers: Sequence[PeerState], job: JobRequest, now: float, *, stale_factor: float = 3.0
) -> list[Ranked]:
    """The paper's policy: the minimum last-reported coefficient wins.

    Peers whose report is stale (older than ``stale_factor`` intervals) or
    missing are still returned, after all fresh ones, as a last resort.
    """
    usable, stale, banned = _split(peers, now, stale_factor)
    ranked = [
        Ranked(p.name, p.url, float(p.coefficient), "min coefficient")  # type: ignore[arg-type]
        for p in sorted(usable, key=lambda p: (p.coefficient, p.name))
    ]
    return ranked + _last_resorts(stale, banned, now)


class MinCoefficient:
    """:func:`min_coefficient` with the policy-class constructor."""

    def __init__(self, seed: int | None = None, *, stale_factor: float = 3.0) -> None:
        self.stale_factor = stale_factor

    def __call__(self, peers: Sequence[PeerState], job: JobRequest, now: float) -> list[Ranked]:
        return min_coefficient(peers, job, now, stale_factor=self.stale_factor)


class RandomPolicy:
    """Uniformly random order of the usable peers (seeded: reproducible)."""

    def __init__(self, seed: int | None = None, *, stale_factor: float = 3.0) -> None:
        self.rng = random.Random(seed)
        self.stale_factor = stale_factor

    def __call__(self, peers: Sequence[PeerState], job: JobRequest, now: float) -> list[Ranked]:
        usable, stale, banned = _split(peers, now, self.stale_factor)
        self.rng.shuffle(usable)
        return [Ranked(p.name, p.url, None, "random") for p in usable] + _last_resorts(stale, banned, now)


class RoundRobin:
    """The usable peers by name, starting one further at every call."""

    def __init__(self, seed: int | None = None, *, stale_factor: float = 3.0) -> None:
        self.turn = 0
        self.stale_factor = stale_factor

    def __call__(self, peers: Sequence[PeerState], job: JobRequest, now: float) -> list[Ranked]:
        usable, stale, banned = _split(peers, now, self.stale_factor)
        if usable:
            k = self.turn % len(usable)
            usable = usable[k:] + usable[:k]
            self.turn += 1
        return [Ranked(p.name, p.url, None, "round robin") for p in usable] + _last_resorts(stale, banned, now)


# ---- the default --------------------------------------------------------------
@dataclass(frozen=True)
class _Scored:
    peer: PeerState
    score: float
    over_cap: bool
    detail: dict[str, Any]


class LeastExpectedLoad:
    """Rank by estimated response time: wait for a slot + run + move the inputs.

    Why each part (measurements: ``benchmarks/README.md``, *Placement*):

    * **Stale reports.**  A report is up to one interval old and the broker
      itself is the main source of change in between, so the procs it placed
      since (``in_flight``) are added to the procs the report showed busy or
      queued (:func:`busy_procs`, including a host's hidden backlog).  This
      alone stops a burst from herding onto the peer that looked idlest
      (DIRAC counts jobs matched since its cached counts the same way).
    * **Load in time units.**  The procs ahead of the job's last proc beyond
      the peer's slots, in whole waves of ``slots`` procs, times
      ``job_seconds / speed``, is the expected wait; ``job_seconds / speed``
      the run time.  Whole waves, not a fluid share, because procs placed
      together start and end together: the fifth job on a 4-slot peer waits
      for a whole run, not a quarter of one (in development runs, fluid
      estimates piled second waves onto small slow peers and stretched a
      burst's makespan by about 30 %).  Pool figures give free slots exactly; a bare host's come from
      its metrics; a pool's speed is unknown and taken as 1.0.
    * **Data.**  Inputs held by other peers cost ``bytes / bandwidth`` seconds
      (measured rates from ``PeerState.bandwidth_in``, else
      ``default_bandwidth``), so a peer that holds the inputs wins unless
      the wait elsewhere is shorter than the move (GridWay weighs the network
      the same way).
    * **Cap.**  A peer that has received ``cap_factor * slots`` procs (at
      least one job) since its report is charged ``cap_slack`` nominal job
      runs more, so every comparable peer under its cap goes first: a guard
      against a report that flatters a peer, as GridWay caps dispatches per
      resource per cycle.  Soft, because the broker cannot hold a job back
      until the next interval as GridWay does: a hard cap sends the rest of a
      burst to whichever peers are under their cap, however slow (in
      development runs, a hard cap of one wave per interval made a burst's
      makespan about 35 % longer, and two waves per interval twice as long,
      as the cap kept refilling after each report).
    * **Near-ties.**  Estimates within ``tie_fraction * job_seconds`` of the
      best are noise from the report's age; among them the better of two
      picked at random goes first (power of two choices, Mitzenmacher), so
      equal peers share work instead of the alphabetically first taking all.
    * **Occupancy.**  Below saturation a peer's occupancy adds a little
      (``spread * job_seconds`` at most), keeping headroom for the next burst.
    * **Learned run times** (``learn``, on by default).  Where a peer reports
      the run times of its completed procs (``PeerState.runtimes``, at least
      ``runtimes.MIN_SAMPLES``), its wait is no longer whole waves of the
      nominal run: each slot frees after the rest of the proc on it (drawn
      from its program's distribution given its age), each proc queued
      ahead runs a fresh draw, played out over a few deterministic scenarios
      (``runtimes.expected_start``).  A site full of 900 s jobs then costs
      the rest of those jobs, not 60 s.  The job's own run time is the median
      of its program's earlier procs (``JobRequest.history_key``) on that
      peer, shrunk towards their median elsewhere (scaled by the two speeds,
      a pool's taken as 1.0), else nominal.  Where the figures came from is
      in the ranking's detail (``run_source``, ``wait_source``).  Without
      reports it is the nominal policy exactly.  (In development runs,
      trusting a peer's few heavy-tailed procs over hundreds elsewhere kept
      an idle pool out of use for an hour; means instead of medians, and a
      host's exact queue count instead of its conservative backlog estimate,
      each made mean response times at 80 % load 3-5 % worse.)
    """

    def __init__(
        self,
        seed: int | None = None,
        *,
        stale_factor: float = 3.0,
        job_seconds: float = NOMINAL_JOB_SECONDS,
        cap_factor: float = 1.0,
        cap_slack: float = 1.0,
        default_bandwidth: float = DEFAULT_BANDWIDTH,
        tie_fraction: float = 0.1,
        spread: float = 0.1,
        learn: bool = True,
    ) -> None:
        if job_seconds <= 0 or cap_factor <= 0 or default_bandwidth <= 0 or cap_slack < 0:
            raise ValueError("job_seconds, cap_factor and default_bandwidth must be > 0, cap_slack >= 0")
        self.rng = random.Random(seed)
        self.stale_factor = stale_factor
        self.job_seconds = job_seconds
        self.cap_factor = cap_factor
        self.cap_slack = cap_slack
        self.default_bandwidth = default_bandwidth
        self.tie_fraction = tie_fraction
        self.tie_margin = tie_fraction * job_seconds
        self.spread = spread
        self.learn = bool(learn)

    def cap(self, peer: PeerState) -> int:
        """Procs a peer may receive per report interval before it is charged ``cap_slack``."""
        return max(1, math.ceil(self.cap_factor * (peer.slots or 1)))

    def move_seconds(self, peer: PeerState, job: JobRequest) -> tuple[float, int]:
        """(seconds, bytes) to bring the inputs the peer does not hold, one holder after another."""
        seconds, moved = 0.0, 0
        for holder, nbytes in job.input_bytes.items():
            if holder == peer.name or nbytes <= 0:
                continue
            rate = peer.bandwidth_in.get(holder) or self.default_bandwidth
            seconds += nbytes / rate
            moved += nbytes
        return seconds, moved

    @staticmethod
    def programs(peer: PeerState, peers: Sequence[PeerState]) -> dict[str, RunTimeStats]:
        """The run-time distribution of each program with procs on ``peer``: its own there, else
        the one of the peer that ran it most, scaled by the two speeds (a pool's taken as 1.0)."""
        stats = peer.runtimes
        if stats is None:
            return {}
        out = dict(stats.key_stats)
        for key in stats.key_procs:
            if key in out:
                continue
            elsewhere = [(p.runtimes.key_stats[key], p) for p in peers
                         if p.name != peer.name and p.runtimes is not None and key in p.runtimes.key_stats]
            if elsewhere:
                dist, where = max(elsewhere, key=lambda e: (e[0].completed, e[1].name))
                out[key] = dist.scaled((where.speed or 1.0) / (peer.speed or 1.0))
        return out

    def knows_queue(self, peer: PeerState) -> bool:
        """A host (no pool figures) that reports its procs' states: its queue is known, not guessed."""
        return self.learn and peer.runtimes is not None and not _reports_pool(peer)

    @staticmethod
    def known_busy(peer: PeerState) -> float:
        """Procs running or queued on a host, as its event logs counted them (its hidden backlog is then moot)."""
        stats = peer.runtimes
        return float(stats.running + stats.idle) if stats is not None else 0.0

    def ahead(self, peer: PeerState) -> float:
        """Procs running or waiting at the peer as this estimate counts them: its known queue (a host
        reporting its procs' states) or what its report shows (plus a host's hidden backlog), plus the
        procs placed there since the report."""
        busy = self.known_busy(peer) if self.knows_queue(peer) else busy_procs(peer) or 0.0
        return busy + peer.in_flight

    def learned(self, peer: PeerState) -> RunTimeStats | None:
        """The peer's reported run times, when learning is on and there are enough of them."""
        stats = peer.runtimes
        return stats if self.learn and stats is not None and stats.usable else None

    def job_run(self, peer: PeerState, job: JobRequest, peers: Sequence[PeerState] = ()) -> tuple[float, str]:
        """(seconds, where the figure comes from) the job's procs run on ``peer``.

        The median of the executable's earlier procs on this peer, shrunk
        towards their median elsewhere (each peer's scaled by the two speeds, a
        pool's taken as 1.0, as everywhere in this policy), which counts as
        at most ``PRIOR_SAMPLES`` procs: a peer's own history wins once it
        has many procs, a few heavy-tailed ones do not decide alone.
        Without history anywhere: nominal.
        """
        speed = peer.speed or 1.0
        key = job.history_key
        if not (self.learn and key):
            return self.job_seconds / speed, f"nominal {self.job_seconds:g} s at speed 1"
        own = peer.runtimes.by_key.get(key) if peer.runtimes is not None else None
        others = [(p.runtimes.by_key[key], p) for p in peers
                  if p.name != peer.name and p.runtimes is not None and key in p.runtimes.by_key]
        n_own = own["n"] if own is not None else 0
        n_else = sum(o["n"] for o, _ in others)
        if n_own + n_else < MIN_KEY_SAMPLES:
            return self.job_seconds / speed, f"nominal {self.job_seconds:g} s at speed 1 (no history of this executable)"
        elsewhere = sum(o["n"] * o["median_s"] * (p.speed or 1.0) / speed for o, p in others) / n_else if n_else else 0.0
        weight = min(n_else, PRIOR_SAMPLES)
        seconds = ((own["median_s"] * n_own if own is not None else 0.0) + elsewhere * weight) / (n_own + weight)
        names = ", ".join(p.name for _, p in sorted(others, key=lambda e: -e[0]["n"])[:2])
        names += ", ..." if len(others) > 2 else ""
        if not n_else:
            source = f"learned: median of {n_own} procs of this executable on {peer.name}"
        elif not n_own:
            source = f"learned: median of {n_else} procs of this executable on {names}, scaled by speed"
        else:
            source = (f"learned: median of {n_own} procs of this executable on {peer.name} and "
                      f"{n_else} on {names} (scaled by speed)")
        return seconds, source

    def score(self, peer: PeerState, job: JobRequest, peers: Sequence[PeerState] = ()) -> _Scored:
        slots = peer.slots or 1
        speed = peer.speed or 1.0
        ahead = self.ahead(peer)
        run, run_source = self.job_run(peer, job, peers)
        stats = self.learned(peer)
        if stats is None:
            # procs that must wait for a slot, to the nearest proc (estimates are fractional)
            overflow = math.floor(max(0.0, ahead + job.n_procs - slots) + 0.5)
            waves = math.ceil(overflow / slots)
            wait = waves / speed * self.job_seconds
            wait_source = "nominal: whole waves of the nominal run time"
        else:
            busy = math.floor(ahead + 0.5)
            running = min(slots, busy)
            queued = busy - running
            wait = expected_start(stats, slots, running, queued + job.n_procs - 1, self.programs(peer, peers))
            oldest = f", oldest {stats.running_ages[0]:.0f} s" if stats.running_ages else ""
            wait_source = (f"learned: {running}/{slots} slots busy{oldest}, {queued} queued; procs there take "
                           f"{stats.median:.0f} s (median), {stats.mean:.0f} s (mean) of {stats.completed} completed")
        # the headroom term and the cap's charge count in runs of this job (nominal ones unless its own are known):
        # in runs of the site's mean, a site busy with long jobs was charged hundreds of seconds for a short one
        unit = run if run_source.startswith("learned") else self.job_seconds
        spread = self.spread * unit * min(1.0, ahead / slots)
        move, moved = self.move_seconds(peer, job)
        cap = self.cap(peer)
        detail = {
            "wait_s": round(wait, 3),
            "run_s": round(run, 3),
            "move_s": round(move, 3),
            "move_bytes": moved,
            "occupancy": round(ahead / slots, 3),
            "in_flight": peer.in_flight,
            "cap": cap,
            "run_source": run_source,
            "wait_source": wait_source,
        }
        over_cap = peer.in_flight >= cap
        penalty = self.cap_slack * unit if over_cap else 0.0
        return _Scored(peer, wait + run + spread + move + penalty, over_cap, detail)

    def __call__(self, peers: Sequence[PeerState], job: JobRequest, now: float) -> list[Ranked]:
        usable, stale, banned = _split(peers, now, self.stale_factor)
        scored = sorted((self.score(p, job, usable) for p in usable), key=lambda s: (s.score, s.peer.name))
        picked = self._two_choices(scored)
        if picked is not None:
            scored.remove(picked)
            scored.insert(0, picked)
        ranked = [self._ranked(s, s is picked) for s in scored]
        return ranked + _last_resorts(stale, banned, now)

    def _margin(self, best: _Scored) -> float:
        """Scores this close to the best are a tie: a fraction of the run time (the learned one if longer)."""
        if best.detail["run_source"].startswith("learned"):
            return max(self.tie_margin, self.tie_fraction * best.detail["run_s"])
        return self.tie_margin

    def _two_choices(self, tier: list[_Scored]) -> _Scored | None:
        """The better of two random near-best peers, or None when there is no near-tie."""
        if len(tier) < 2:
            return None
        near = [s for s in tier if s.score <= tier[0].score + self._margin(tier[0])]
        if len(near) < 2:
            return None
        a, b = self.rng.sample(near, 2)
        return min(a, b, key=lambda s: (s.score, s.peer.name))

    def _ranked(self, s: _Scored, picked: bool) -> Ranked:
        d = s.detail
        reason = (
            f"est {s.score:.1f} s (wait {_secs(d['wait_s'])} + run {_secs(d['run_s'])} + move {d['move_s']:.1f});"
            f" {d['in_flight']}/{d['cap']} in flight"
        )
        if d["run_source"].startswith("learned") or d["wait_source"].startswith("learned"):
            reason += "; learned " + " and ".join(
                what for what, src in (("run", d["run_source"]), ("wait", d["wait_source"])) if src.startswith("learned"))
        if s.over_cap:
            reason += ", over cap"
        if picked:
            reason += ", two-choices pick"
        return Ranked(s.peer.name, s.peer.url, round(s.score, 3), reason, d)


def _secs(value: float) -> str:
    """Seconds for a reason: whole ones, or one decimal below 10 s."""
    return f"{value:.1f}" if value < 10 else f"{value:.0f}"


class NominalExpectedLoad(LeastExpectedLoad):
    """:class:`LeastExpectedLoad` that learns nothing: every proc takes the nominal run time."""

    def __init__(self, seed: int | None = None, **options: Any) -> None:
        options["learn"] = False
        super().__init__(seed, **options)


DEFAULT_POLICY = "least-expected-load"

#: name -> factory ``(seed=None, *, stale_factor=...) -> Policy``
POLICIES: dict[str, Callable[..., Policy]] = {
    "random": RandomPolicy,
    "round-robin": RoundRobin,
    "min-coefficient": MinCoefficient,
    "least-expected-load": LeastExpectedLoad,
    "least-expected-load-nominal": NominalExpectedLoad,
}


def get_policy(name: str, *, seed: int | None = None, stale_factor: float = 3.0, **options: Any) -> Policy:
    """A new instance of the named policy (its own random generator and turn).

    ``options`` go to the policy's constructor (e.g. ``job_seconds`` for
    ``least-expected-load``); the broker uses the defaults.
    """
    try:
        factory = POLICIES[name]
    except KeyError:
        raise ValueError(
            f"unknown placement policy {name!r}; choose one of {', '.join(sorted(POLICIES))}"
        ) from None
    return factory(seed, stale_factor=stale_factor, **options)
