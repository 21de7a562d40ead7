"""Discrete-event simulation of placement: the broker's policies on a virtual grid.

What is modelled, and why it matches the broker:

* Each peer runs at most ``slots`` procs at a time, FIFO, each taking
  ``work / speed`` seconds.
* Each peer's agent reports every ``report_interval`` seconds (random phase per
  peer), with the real coefficient code (``ema_agent.coefficient``): pool
  figures for ``"pool"`` peers, host metrics only for ``"host"`` peers.
* The policy sees exactly what ``BrokerRole.place`` gives it: PeerStates
  built by ``broker.placement.peer_state_from_report`` from the last reports,
  plus the procs placed on each peer since its report (``in_flight``, reset
  by the peer's next report), plus bandwidth estimates learned from the
  transfers the simulation has completed (``update_bandwidth``, as the
  ``/api/v1/broker/transfers`` route folds real ones).
* Unless the workload says ``"runtime_reports": false``, each report also
  carries the peer's learned run times, built by ``broker.runtimes.summarize``
  as a peer's ``RunTimeCollector`` builds them from its event logs: the wall
  times of its last ``RUNTIME_SAMPLE`` completed procs (per program too),
  the ages of its running procs and its queue length (per program); and
  each placement request carries the job's program as its history key.
* A placed job first moves the inputs its target lacks, one holder after the
  other at the link's true bandwidth; only then does it join the queue (as a
  pocketgrid target stages before queueing).  Jobs being staged are in
  neither a report nor, after the next report, ``in_flight``: the same blind
  spot the real broker has.

* A job is placed ``"whole"`` (the ranking's first takes every proc, as a
  broker before issue 14 did) or ``"split"``: its home asks
  ``broker.split.split_inputs`` (the function the broker's split route
  runs) and each share becomes a piece of that site's procs, counted in
  flight there; the job completes when its last input does.
* A site can go down at a given time (``failures``): its running and queued
  procs and the pieces being sent to it are lost, it reports no more, and
  each job's home (the job manager of peer/job_manager.py, at the job's
  entry peer) finds out as that manager does: pieces being sent fail at its
  next round with the site, everything else once the site has not answered
  its status rounds (every ``monitor_interval``) for ``site_lost_after``.
  The lost attempts (and, while the job is unfinished, the results the site
  held: their outputs are out of reach) are followed by new ones after the
  backoff of peer/records.py, avoiding the site, at most ``max_attempts``
  per input, and split again over the sites left.

Not modelled: link contention (concurrent transfers each get the full
link), bans, report delivery delay, the entry peer's own forwarding time,
the delay (up to ``monitor_interval``) before a home sees a finished input.
"""
from __future__ import annotations

import heapq
import math
import random
from collections import deque
from dataclasses import dataclass, field
from dataclasses import replace as dc_replace
from typing import Any, Iterable, Sequence

from broker.placement import (
    JobRequest,
    LeastExpectedLoad,
    PeerState,
    Policy,
    Ranked,
    get_policy,
    hidden_backlog,
    peer_state_from_report,
    update_bandwidth,
)
from broker.runtimes import RunTimeStats, summarize
from broker.split import split_inputs, still_unseen, visible_at
from ema_agent.coefficient import load_coefficient
from ema_agent.metrics import HostMetrics

from .workload import PeerSpec, SimJob, Workload

#: Event kinds, in the order they are handled when simultaneous: a proc that
#: ends frees its slot before a site goes down, a report samples the peer or a
#: job arrives.
FINISH, STAGED, DOWN, LOST, REPORT, DISPATCH, ARRIVAL = range(7)
ORACLE = "oracle"
PLACEMENTS = ("whole", "split")
#: Completed procs per peer a report's run times are computed from (the most recent).
RUNTIME_SAMPLE = 500
#: The job manager's defaults (PeerConfig on the jobs-across-sites branch: monitor_interval,
#: site_lost_after, max_attempts, retry_backoff) and its loop's tick (peer/job_manager.py LOCAL_TICK).
MONITOR_INTERVAL = 2.0
SITE_LOST_AFTER = 120.0
MAX_ATTEMPTS = 4
RETRY_BACKOFF = 5.0
LOCAL_TICK = 0.5
#: Late binding: a site is given its free slots plus at most this many waves of queue per split
#: (PeerConfig.split_waves_ahead; None: every input given at once, as before late binding).
WAVES_AHEAD: float | None = None
#: Attempt states a site holds (or is being sent) and that may still change (peer/records.py ACTIVE).
ACTIVE = frozenset({"staging", "queued", "running"})
_EPS = 1e-9


@dataclass(frozen=True)
class Manager:
    """How a job's home watches the sites and runs lost inputs again (peer/job_manager.py, peer/records.py)."""

    monitor_interval: float = MONITOR_INTERVAL
    site_lost_after: float = SITE_LOST_AFTER
    max_attempts: int = MAX_ATTEMPTS
    retry_backoff: float = RETRY_BACKOFF
    #: Lose the results a lost site held while their job is unfinished (records.lose_site does).
    lose_results: bool = True
    #: The broker's split gives a site its free slots plus at most this many waves of queue; the rest
    #: stay pending at the home and are split again at its next rounds (None: no cap).
    waves_ahead: float | None = WAVES_AHEAD

    def __post_init__(self) -> None:
        if self.monitor_interval <= 0 or self.site_lost_after < 0 or self.max_attempts < 1 or self.retry_backoff < 0:
            raise ValueError("monitor_interval > 0, site_lost_after >= 0, max_attempts >= 1, retry_backoff >= 0")
        if self.waves_ahead is not None and self.waves_ahead < 0:
            raise ValueError("waves_ahead >= 0, or None (no cap)")

    @property
    def tick(self) -> float:
        return min(self.monitor_interval, LOCAL_TICK)

    def backoff(self, n: int) -> float:
        """Seconds the n-th attempt of an input waits before it is sent (records.Limits.backoff)."""
        return 0.0 if n < 2 else self.retry_backoff * 2 ** (n - 2)

    def detection(self, phase: float, down_at: float) -> float:
        """When a home whose status rounds run at ``phase + k * monitor_interval`` declares a site
        lost that answered every round before ``down_at`` and none from then on: the first round
        more than ``site_lost_after`` after the last answer."""
        mi = self.monitor_interval
        last_ok = phase + (math.ceil((down_at - phase) / mi - _EPS) - 1) * mi
        return last_ok + (math.floor(self.site_lost_after / mi + _EPS) + 1) * mi

    def next_round(self, phase: float, t: float) -> float:
        """The home's first status round at or after ``t``."""
        return phase + math.ceil((t - phase) / self.monitor_interval - _EPS) * self.monitor_interval

    def next_tick(self, phase: float, t: float) -> float:
        """The home's first loop tick at or after ``t`` (when a pending attempt is sent)."""
        return phase + math.ceil((t - phase) / self.tick - _EPS) * self.tick


@dataclass(eq=False)
class _Attempt:
    """One run of one input of a job (a ``JobAttempt`` at its home)."""

    job: SimJob
    index: int
    number: int
    not_before: float
    avoid: tuple[str, ...] = ()
    #: pending, staging, queued, running, completed, lost (an input whose latest attempt is lost has failed)
    state: str = "pending"
    site: str | None = None
    result: bool = False
    started: float | None = None
    ended: float | None = None

    @property
    def work(self) -> float:
        return self.job.works[self.index]


@dataclass(eq=False)
class _Piece:
    """The procs of one job sent to one site at once."""

    job: SimJob
    site: str
    attempts: list[_Attempt]
    staged_at: float
    moves: list[tuple[str, int, float]]  #: (from, bytes, seconds)
    lost: bool = False


@dataclass
class _Peer:
    spec: PeerSpec
    running: dict[_Attempt, float] = field(default_factory=dict)  #: attempt -> end time
    started: dict[_Attempt, tuple[float, str]] = field(default_factory=dict)  #: attempt -> (start time, program)
    done: deque[tuple[float, str]] = field(default_factory=lambda: deque(maxlen=RUNTIME_SAMPLE))  #: (wall s, program)
    queue: deque[_Attempt] = field(default_factory=deque)
    in_transit: list[_Piece] = field(default_factory=list)
    busy_seconds: float = 0.0
    placed: int = 0  #: jobs (split: pieces) sent here
    inputs_placed: int = 0
    alive: bool = True

    @property
    def free(self) -> int:
        return self.spec.slots - len(self.running)


class Oracle:
    """Minimum completion time with perfect, current information (simulator only).

    For every peer it replays the FIFO queue from the true remaining run
    times, the jobs still being staged there, the true link bandwidth and
    the new job's own run time, and picks the peer where this job would
    finish first.  Greedy (it ignores what its choice does to later jobs),
    so it is a strong reference, not an optimum.
    """

    def __init__(self, sim: "Simulation") -> None:
        self.sim = sim

    def __call__(self, peers: Sequence[PeerState], job: JobRequest, now: float) -> list[Ranked]:
        sim_job = self.sim.current_job
        if sim_job is None:
            raise RuntimeError("the oracle only places jobs inside its own simulation")
        finishes = [(self.sim.completion_if_placed(p.name, sim_job, now), p.name) for p in peers]
        return [Ranked(name, f"sim://{name}", round(t - now, 3), "oracle") for t, name in sorted(finishes)]


class Simulation:
    def __init__(self, workload: Workload, policy: str, seed: int, *, placement: str = "whole",
                 failures: Iterable[tuple[str, float]] = (), manager: Manager | None = None,
                 jobs: Sequence[SimJob] | None = None, **policy_options: Any) -> None:
        """``policy_options`` go to the policy's constructor (to explore its knobs).

        ``placement``: ``"whole"`` or ``"split"`` (see the module's docstring);
        ``failures``: (site, time) pairs, the site going down for good at that
        time; ``manager``: how the jobs' homes watch sites and run lost inputs
        again; ``jobs``: these jobs instead of the workload's streams.
        """
        if placement not in PLACEMENTS:
            raise ValueError(f"unknown placement {placement!r}; choose one of {', '.join(PLACEMENTS)}")
        self.workload = workload
        self.policy_name = policy
        self.seed = seed
        self.placement = placement
        self.manager = manager or Manager()
        self.policy: Policy = (
            Oracle(self) if policy == ORACLE else get_policy(policy, seed=seed, **policy_options)
        )
        #: The estimate a split uses: the policy itself when it is the default one (as BrokerRole.estimator).
        self.estimator = self.policy if isinstance(self.policy, LeastExpectedLoad) else LeastExpectedLoad(seed)
        self.peers = {p.name: _Peer(p) for p in workload.peers}
        self.jobs = list(jobs) if jobs is not None else workload.jobs(seed)
        self.failures = sorted((str(site), float(t)) for site, t in failures)
        homes = {j.entry for j in self.jobs}
        for site, _ in self.failures:
            if site not in self.peers:
                raise ValueError(f"cannot fail {site!r}: no such peer (peers: {', '.join(self.peers)})")
            if site in homes:
                raise ValueError(f"cannot fail {site!r}: it is a job's home (its entry peer); a home going down "
                                 f"is not modelled")
        self.current_job: SimJob | None = None
        # the broker's view
        self.reports: dict[str, dict[str, Any]] = {}
        self.in_flight = {name: 0 for name in self.peers}
        self.unseen: dict[str, list[tuple[float, int]]] = {name: [] for name in self.peers}
        self.backlog = {name: 0.0 for name in self.peers}
        self.bandwidth_estimates: dict[tuple[str, str], float] = {}
        # the jobs' homes: each one's status rounds and loop ticks have their own phase
        phases = random.Random(f"managers:{workload.name}:{seed}")
        self.home_phase = {h: phases.uniform(0, self.manager.monitor_interval) for h in sorted(homes)}
        # bookkeeping
        self._events: list[tuple[float, int, int, Any]] = []
        self._seq = 0
        self._left: dict[int, int] = {}
        self.attempts: dict[int, list[list[_Attempt]]] = {}  #: job id -> per input, its attempts in order
        self.shares: dict[int, list[dict[str, int]]] = {}  #: job id -> per dispatch round, inputs per site
        self.round_times: dict[int, list[float]] = {}  #: job id -> when each of those rounds was
        #: jobs with due attempts a split left unassigned -> the home's next round that splits them again
        self._unassigned: dict[int, float | None] = {}
        #: such a job's home asks again no sooner than this (peer/job_manager.py holds it a monitor interval)
        self._held_until: dict[int, float] = {}
        self.losses: list[dict[str, Any]] = []
        self.completed: dict[int, float] = {}
        self.bytes_moved = 0
        self.now = 0.0

    # ---- event queue ---------------------------------------------------------
    def _push(self, t: float, kind: int, data: Any) -> None:
        self._seq += 1
        heapq.heappush(self._events, (t, kind, self._seq, data))

    def run(self, per_job: bool = False) -> dict[str, Any]:
        """Play the workload out; the summary (``per_job``: with :meth:`job_report` of every job)."""
        for job in self.jobs:
            self._push(job.arrival, ARRIVAL, job)
        for site, t in self.failures:
            self._push(t, DOWN, site)
        # Report phases have their own random stream: the same for every policy.
        phases = random.Random(f"phases:{self.workload.name}:{self.seed}")
        interval = self.workload.report_interval
        first = min((j.arrival for j in self.jobs), default=0.0)
        for name in self.peers:
            # every peer has reported once before the first job, as in a running grid
            self._report(name, first - phases.uniform(0, interval))
        while self._events and self._pending_work():
            t, kind, _, data = heapq.heappop(self._events)
            self.now = max(self.now, t)
            if kind == ARRIVAL:
                self._arrive(data)
            elif kind == STAGED:
                self._staged(data)
            elif kind == FINISH:
                self._finish(*data)
            elif kind == DOWN:
                self._down(data)
            elif kind == LOST:
                self._lost(*data)
            elif kind == DISPATCH:
                self._dispatch(data)
            else:
                self._report(data, self.now)
        return self.summary(per_job)

    def _pending_work(self) -> bool:
        return len(self.completed) < len(self.jobs)

    # ---- the broker ------------------------------------------------------------
    def peer_states(self, now: float) -> list[PeerState]:
        """What BrokerRole.peer_states would return at ``now``."""
        rates: dict[str, dict[str, float]] = {}
        for (src, dst), rate in self.bandwidth_estimates.items():
            rates.setdefault(dst, {})[src] = rate
        return [
            peer_state_from_report(
                name, f"sim://{name}", self.reports.get(name), now,
                in_flight=self.in_flight[name], bandwidth_in=rates.get(name), backlog=self.backlog[name],
            )
            for name in self.peers
        ]

    def _report(self, name: str, t: float) -> None:
        """The peer's agent samples and reports; the broker ingests it as BrokerRole.ingest_report does."""
        peer = self.peers[name]
        if not peer.alive:
            return  # a site that is down reports no more: its last report goes stale
        url = f"sim://{name}"
        old = self.reports.get(name)
        previous = None
        if old is not None:
            previous = peer_state_from_report(name, url, old, t, backlog=self.backlog[name])
        spec = peer.spec
        running, queued = len(peer.running), len(peer.queue)
        if spec.reports == "pool":
            metrics = _metrics(cpu=5.0, clock=2000.0, cores=4, load=0.2, now=t)
            pool = {"total_slots": spec.slots, "claimed_slots": running, "idle_slots": spec.slots - running,
                    "idle_jobs": queued, "running_jobs": running}
        else:
            metrics = _metrics(cpu=100.0 * running / spec.slots, clock=2000.0 * spec.speed, cores=spec.slots,
                               load=float(running), now=t)
            pool = None
        report = {
            "coefficient": load_coefficient(metrics, pool=pool),
            "metrics": metrics.to_dict(),
            "pool": pool,
            "sampled_at": t,
            "interval": self.workload.report_interval,
        }
        if self.workload.runtime_reports:
            by_program: dict[str, list[float]] = {}
            last: dict[str, int] = {}
            for k, (seconds, program) in enumerate(peer.done):
                by_program.setdefault(program, []).append(seconds)
                last[program] = k
            # parsed once here, as the broker would on each placement: the simulator asks thousands of times
            ages: dict[str, list[float]] = {}
            for start, program in peer.started.values():
                ages.setdefault(program, []).append(t - start)
            waiting: dict[str, int] = {}
            for a in peer.queue:
                waiting[a.job.program] = waiting.get(a.job.program, 0) + 1
            report["runtimes"] = RunTimeStats.parse(summarize(
                (seconds for seconds, _ in peer.done),
                by_key={p: by_program[p] for p in sorted(last, key=last.get)},  # latest programs last
                running_by_key=ages,
                idle_by_key=waiting,
            ))
        self.reports[name] = report
        current = peer_state_from_report(name, url, report, t)
        # the split shares it probably does not show yet stay in flight (BrokerRole.ingest_report)
        unseen = self.unseen[name] = still_unseen(self.unseen[name], t)
        carried = min(self.in_flight[name], sum(n for _, n in unseen))
        self.backlog[name] = hidden_backlog(previous, current, self.in_flight[name] - carried)
        self.in_flight[name] = carried
        self._push(t + self.workload.report_interval, REPORT, name)
        self._resplit_after_report()

    def _resplit_after_report(self) -> None:
        """Homes holding unassigned inputs split them again at their next loop tick.

        The job manager asks again at its first tick a monitor interval after a split left inputs
        unassigned; between two reports the broker's view only shrinks (its own placements count in
        flight), so asking before the next report gives nothing new: the simulator asks at the first
        such tick after each report (and after each loss) instead.
        """
        for job_id, when in self._unassigned.items():
            if when is not None and when >= self.now - _EPS:
                continue  # already due at a tick that sees this report
            job = self.jobs[job_id] if self.jobs[job_id].id == job_id else next(j for j in self.jobs if j.id == job_id)
            t = self.manager.next_tick(self.home_phase[job.entry],
                                       max(self.now + _EPS, self._held_until.get(job_id, 0.0)))
            self._unassigned[job_id] = t
            self._push(t, DISPATCH, job)

    def _arrive(self, job: SimJob) -> None:
        self.attempts[job.id] = [[_Attempt(job, k, 1, job.arrival)] for k in range(len(job.works))]
        self._left[job.id] = len(job.works)
        self.shares[job.id] = []
        self.round_times[job.id] = []
        self._dispatch(job)  # the home's manager wakes on a submit

    # ---- the job's home ------------------------------------------------------------
    def _dispatch(self, job: SimJob) -> None:
        """Send the job's pending attempts that are due: per set of sites to avoid, placed whole or split."""
        self._unassigned.pop(job.id, None)
        if job.id in self.completed:
            return
        due: dict[tuple[str, ...], list[_Attempt]] = {}
        for atts in self.attempts[job.id]:
            a = atts[-1]
            if a.state == "pending" and a.not_before <= self.now + _EPS:
                due.setdefault(a.avoid, []).append(a)
        for avoid, atts in due.items():
            placed = self._split(job, atts, avoid) if self.placement == "split" else self._whole(job, atts, avoid)
            if sum(len(chunk) for _, chunk in placed) < len(atts):
                self._unassigned.setdefault(job.id, None)  # split again after the next report
                self._held_until[job.id] = self.now + self.manager.monitor_interval
            if not placed:
                continue  # the home records no round that sent nothing (peer/job_manager.py)
            self.shares[job.id].append({site: len(chunk) for site, chunk in placed})
            self.round_times[job.id].append(round(self.now, 3))
            for site, chunk in placed:
                self._send(job, site, chunk)

    def _whole(self, job: SimJob, atts: list[_Attempt], avoid: tuple[str, ...]) -> list[tuple[str, list[_Attempt]]]:
        """The ranking's first (not avoided, unless nothing else is ranked) takes every attempt."""
        sub = _part(job, [a.index for a in atts])
        self.current_job = sub
        request = JobRequest(n_procs=len(atts), input_bytes=sub.input_bytes, entry_peer=job.entry,
                             history_key=job.program or None)
        ranking = self.policy(self.peer_states(self.now), request, self.now)
        target = next((r.name for r in ranking if r.name not in avoid), ranking[0].name)
        self.in_flight[target] += len(atts)
        return [(target, atts)]

    def _split(self, job: SimJob, atts: list[_Attempt], avoid: tuple[str, ...]) -> list[tuple[str, list[_Attempt]]]:
        """broker.split.split_inputs over the sites; each share counted in flight (BrokerRole.split)."""
        atts = sorted(atts, key=lambda a: a.index)
        sub = _part(job, [a.index for a in atts])
        request = JobRequest(n_procs=len(atts), input_bytes=sub.input_bytes, entry_peer=job.entry,
                             history_key=job.program or None)
        sizes = [sum(nbytes for _, nbytes in job.own_inputs(a.index)) for a in atts]
        shares = split_inputs(self.peer_states(self.now), request, self.now, estimator=self.estimator,
                              avoid=frozenset(avoid), input_sizes=sizes, waves_ahead=self.manager.waves_ahead)
        out, start = [], 0
        for share in shares:
            chunk = atts[start:start + share.count]
            start += len(chunk)
            if chunk:
                self.in_flight[share.name] += share.count
                if self.manager.waves_ahead is not None:  # as BrokerRole does with late binding
                    self.unseen[share.name].append((visible_at(self.now, share), share.count))
                out.append((share.name, chunk))
        return out

    def _send(self, job: SimJob, site: str, atts: list[_Attempt]) -> None:
        """The piece goes to ``site``: it stages the files it lacks, then queues the procs."""
        peer = self.peers[site]
        for a in atts:
            a.state, a.site = "staging", site
        if not peer.alive:  # never reached: a definite failure, the attempts are lost at once
            self._lose(atts, f"cannot reach {site}")
            return
        peer.placed += 1
        peer.inputs_placed += len(atts)
        sub = _part(job, [a.index for a in atts])
        moves = [(src, nbytes, nbytes / self.workload.bandwidth(src, site))
                 for src, nbytes in sub.all_inputs if src != site and nbytes > 0]
        self.bytes_moved += sum(m[1] for m in moves)
        piece = _Piece(job, site, atts, self.now + sum(m[2] for m in moves), moves)
        peer.in_transit.append(piece)
        self._push(piece.staged_at, STAGED, piece)

    def _lose(self, atts: Iterable[_Attempt], reason: str) -> list[_Attempt]:
        """Declare attempts lost (records.lose): each is followed by a new one, after the backoff and
        avoiding the sites its input was lost on, unless its input has had ``max_attempts``."""
        new: list[_Attempt] = []
        for a in atts:
            job = a.job
            a.state = "lost"
            if a.result:  # its output is out of reach: the input is not done any more
                a.result = False
                self._left[job.id] += 1
            history = self.attempts[job.id][a.index]
            n = len(history) + 1
            if n > self.manager.max_attempts:  # the input has failed, for this attempt's reason
                self._input_done(job)
                continue
            lost_at = tuple(sorted({x.site for x in history if x.state == "lost" and x.site}))
            successor = _Attempt(job, a.index, a.number + 1, self.now + self.manager.backoff(n), lost_at)
            history.append(successor)
            new.append(successor)
        due: dict[int, tuple[SimJob, float]] = {}
        for a in new:
            job, t = due.get(a.job.id, (a.job, a.not_before))
            due[a.job.id] = (job, min(t, a.not_before))
        for job, t in due.values():
            self._push(self.manager.next_tick(self.home_phase[job.entry], t), DISPATCH, job)
        return new

    # ---- a site going down ----------------------------------------------------------------
    def _down(self, site: str) -> None:
        """The site stops: what runs, waits or is being staged there is gone; the homes find out later."""
        peer = self.peers[site]
        if not peer.alive:
            return
        peer.alive = False
        for a, end in peer.running.items():
            peer.busy_seconds -= end - self.now  # the rest never runs
        peer.running.clear()
        peer.started.clear()
        peer.queue.clear()
        sending, peer.in_transit = peer.in_transit, []
        for home in sorted(self.home_phase):
            phase = self.home_phase[home]
            # a piece being sent fails; sent again at the home's next round, the site cannot be reached
            pieces = [p for p in sending if p.job.entry == home]
            if pieces:
                self._push(self.manager.next_round(phase, self.now), LOST, (site, home, pieces))
            self._push(self.manager.detection(phase, self.now), LOST, (site, home, None))

    def _lost(self, site: str, home: str, pieces: list[_Piece] | None) -> None:
        """The home declares attempts at ``site`` lost: the pieces it could not send, or (``None``) everything
        there that may still change and, while its job is unfinished, the results (records.lose_site)."""
        if pieces is not None:
            lost = []
            for piece in pieces:
                piece.lost = True
                lost += [a for a in piece.attempts if a.state == "staging"]
            reason = f"cannot reach {site}"
        else:
            lost = []
            for job in self.jobs:
                if job.entry != home or job.id in self.completed or job.id not in self.attempts:
                    continue
                for atts in self.attempts[job.id]:
                    a = atts[-1]
                    if a.site == site and (a.state in ACTIVE or (a.result and self.manager.lose_results)):
                        lost.append(a)
            reason = f"{site} did not answer for {self.manager.site_lost_after:g} s"
        if not lost:
            return
        down_at = next(t for s, t in self.failures if s == site)
        self.losses.append({
            "site": site, "home": home, "down_at": round(down_at, 3), "declared_at": round(self.now, 3),
            "delay_s": round(self.now - down_at, 3), "why": reason,
            "inputs": len(lost), "results": sum(1 for a in lost if a.result),
            "jobs": sorted({a.job.id for a in lost}),
        })
        self._lose(lost, reason)

    # ---- the peers ---------------------------------------------------------------
    def _staged(self, piece: _Piece) -> None:
        if piece.lost or piece not in self.peers[piece.site].in_transit:
            return  # its site went down while it was being sent: the home finds out at its next round
        target = piece.site
        for src, nbytes, seconds in piece.moves:
            key = (src, target)
            estimate = update_bandwidth(self.bandwidth_estimates.get(key), nbytes, seconds)
            if estimate is not None:
                self.bandwidth_estimates[key] = estimate
        peer = self.peers[target]
        peer.in_transit.remove(piece)
        for a in piece.attempts:
            a.state = "queued"
            peer.queue.append(a)
        self._fill(peer)

    def _fill(self, peer: _Peer) -> None:
        while peer.queue and peer.free > 0:
            a = peer.queue.popleft()
            duration = a.work / peer.spec.speed
            peer.running[a] = self.now + duration
            peer.started[a] = (self.now, a.job.program)
            a.state, a.started = "running", self.now
            peer.busy_seconds += duration
            self._push(self.now + duration, FINISH, (peer.spec.name, a))

    def _finish(self, name: str, a: _Attempt) -> None:
        peer = self.peers[name]
        if a not in peer.running:
            return  # its site went down
        del peer.running[a]
        start, program = peer.started.pop(a)
        peer.done.append((self.now - start, program))
        a.state, a.ended, a.result = "completed", self.now, True
        self._input_done(a.job)
        self._fill(peer)

    def _input_done(self, job: SimJob) -> None:
        self._left[job.id] -= 1
        if self._left[job.id] == 0:
            self.completed[job.id] = self.now

    # ---- the oracle's crystal ball -------------------------------------------------
    def completion_if_placed(self, name: str, job: SimJob, now: float) -> float:
        """When ``job`` would finish if placed on ``name`` now (true state, FIFO replay; never on a site down)."""
        peer = self.peers[name]
        if not peer.alive:
            return math.inf
        speed = peer.spec.speed
        slots = list(peer.running.values()) + [now] * peer.free
        heapq.heapify(slots)

        def run(ready: float, work: float) -> float:
            end = max(heapq.heappop(slots), ready) + work / speed
            heapq.heappush(slots, end)
            return end

        for a in peer.queue:
            run(now, a.work)
        staged = now + sum(nbytes / self.workload.bandwidth(src, name)
                           for src, nbytes in job.all_inputs if src != name and nbytes > 0)
        for piece in sorted(peer.in_transit, key=lambda p: (p.staged_at, p.job.id)):
            if piece.staged_at > staged:
                break
            for a in piece.attempts:
                run(piece.staged_at, a.work)
        return max(run(staged, work) for work in job.works)

    # ---- results -----------------------------------------------------------------------
    def summary(self, per_job: bool = False) -> dict[str, Any]:
        responses = sorted(self.completed[j.id] - j.arrival for j in self.jobs)
        start = min((j.arrival for j in self.jobs), default=0.0)
        end = max(self.completed.values(), default=start)
        makespan = end - start
        out = {
            "policy": self.policy_name,
            "workload": self.workload.name,
            "seed": self.seed,
            "placement": self.placement,
            "jobs": len(self.jobs),
            "procs": sum(len(j.works) for j in self.jobs),
            "mean_response_s": round(sum(responses) / len(responses), 3) if responses else None,
            "p95_response_s": round(_percentile(responses, 0.95), 3) if responses else None,
            "makespan_s": round(makespan, 3),
            "bytes_moved": self.bytes_moved,
            "utilisation": {
                name: round(p.busy_seconds / (p.spec.slots * makespan), 4) if makespan > 0 else 0.0
                for name, p in self.peers.items()
            },
            "jobs_placed": {name: p.placed for name, p in self.peers.items()},
            **self._by_program(),
        }
        if self.placement == "split":
            out["inputs_placed"] = {name: p.inputs_placed for name, p in self.peers.items()}
        if self.failures:
            out["failures"] = [{"site": s, "at": t} for s, t in self.failures]
            out["losses"] = list(self.losses)
            out["failed_inputs"] = sum(1 for job_atts in self.attempts.values() for atts in job_atts
                                       if atts[-1].state == "lost")
        if per_job:
            out["per_job"] = [self.job_report(j.id) for j in self.jobs]
        return out

    def job_report(self, job_id: int) -> dict[str, Any]:
        """One job: its makespan (submission to its last input's end), where its inputs went in each
        dispatch round, and what a site going down cost it: the inputs lost, and their run times."""
        job = self.jobs[job_id] if self.jobs[job_id].id == job_id else next(j for j in self.jobs if j.id == job_id)
        atts = self.attempts.get(job_id, [])
        lost = [k for k, history in enumerate(atts) if any(a.state == "lost" for a in history)]
        out: dict[str, Any] = {
            "id": job_id,
            "entry": job.entry,
            "procs": len(job.works),
            "submitted_at": round(job.arrival, 3),
            "makespan_s": round(self.completed[job_id] - job.arrival, 3) if job_id in self.completed else None,
            "shares": self.shares.get(job_id, []),
            "round_times": self.round_times.get(job_id, []),
            "placed": _totals(self.shares.get(job_id, [])),
            "attempts": sum(len(history) for history in atts),
            "lost_inputs": len(lost),
            "failed_inputs": sum(1 for history in atts if history[-1].state == "lost"),
        }
        if lost:
            reruns = [atts[k][-1] for k in lost if atts[k][-1].state == "completed"]
            out["lost_work_s"] = round(sum(job.works[k] for k in lost), 3)  # at speed 1
            #: the time the longest lost input took to run again where it ran (no wait counted)
            out["lost_longest_rerun_s"] = round(max((a.ended - a.started for a in reruns), default=0.0), 3)
            out["lost_indexes"] = lost
        return out

    def _by_program(self) -> dict[str, Any]:
        """With several programs: each one's jobs, mean and p95 response (``programs``)."""
        programs = sorted({j.program for j in self.jobs})
        if len(programs) < 2:
            return {}
        out = {}
        for program in programs:
            responses = sorted(self.completed[j.id] - j.arrival for j in self.jobs if j.program == program)
            out[program] = {"jobs": len(responses), "mean_response_s": round(sum(responses) / len(responses), 3),
                            "p95_response_s": round(_percentile(responses, 0.95), 3)}
        return {"programs": out}


def _totals(rounds: Iterable[dict[str, int]]) -> dict[str, int]:
    """Inputs per site over dispatch rounds, most first."""
    out: dict[str, int] = {}
    for shares in rounds:
        for site, n in shares.items():
            out[site] = out.get(site, 0) + n
    return dict(sorted(out.items(), key=lambda kv: (-kv[1], kv[0])))


def _part(job: SimJob, indexes: Sequence[int]) -> SimJob:
    """The procs ``indexes`` of ``job`` as a job of their own: their runs, their own files and the
    job's shared ones (what a piece of them moves)."""
    if list(indexes) == list(range(len(job.works))):
        return job
    return dc_replace(job, works=tuple(job.works[k] for k in indexes),
                      inputs=job.shared_inputs(),
                      proc_inputs=tuple(job.own_inputs(k) for k in indexes))


def _metrics(*, cpu: float, clock: float, cores: int, load: float, now: float) -> HostMetrics:
    """Host metrics of a simulated host: memory and processes at a typical idle level."""
    return HostMetrics(
        cpu_percent=min(100.0, cpu), clock_mhz=clock, cores=cores, memory_percent=30.0,
        load1=load, load5=load, load15=load, disk_io_mbps=0.0, processes=150 + int(load),
        sampled_at=now, clock_source="simulated",
    )


def _percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


def simulate(workload: Workload, policy: str, seed: int, *, per_job: bool = False, **options: Any) -> dict[str, Any]:
    """Run one workload under one policy and seed; returns the summary dict.

    ``options``: :class:`Simulation`'s (``placement``, ``failures``, ``manager``, ``jobs``), else the
    policy's constructor options.
    """
    return Simulation(workload, policy, seed, **options).run(per_job)
