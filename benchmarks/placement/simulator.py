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

Not modelled: link contention (concurrent transfers each get the full
link), failures and bans, report delivery delay, the entry peer's own
forwarding time.
"""
from __future__ import annotations

import heapq
import math
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Sequence

from broker.placement import (
    JobRequest,
    PeerState,
    Policy,
    Ranked,
    get_policy,
    hidden_backlog,
    peer_state_from_report,
    update_bandwidth,
)
from broker.runtimes import RunTimeStats, summarize
from ema_agent.coefficient import load_coefficient
from ema_agent.metrics import HostMetrics

from .workload import PeerSpec, SimJob, Workload

#: Event kinds, in the order they are handled when simultaneous: a proc that
#: ends frees its slot before a report samples the peer or a job arrives.
FINISH, STAGED, REPORT, ARRIVAL = range(4)
ORACLE = "oracle"
#: Completed procs per peer a report's run times are computed from (the most recent).
RUNTIME_SAMPLE = 500


@dataclass
class _Peer:
    spec: PeerSpec
    running: dict[int, float] = field(default_factory=dict)  #: proc key -> end time
    started: dict[int, tuple[float, str]] = field(default_factory=dict)  #: proc key -> (start time, program)
    done: deque[tuple[float, str]] = field(default_factory=lambda: deque(maxlen=RUNTIME_SAMPLE))  #: (wall s, program)
    queue: deque[tuple[int, int, float, str]] = field(default_factory=deque)  #: (job, proc, work, program)
    in_transit: list[tuple[float, SimJob]] = field(default_factory=list)  #: (staged at, job)
    busy_seconds: float = 0.0
    placed: int = 0

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
    def __init__(self, workload: Workload, policy: str, seed: int, **policy_options: Any) -> None:
        """``policy_options`` go to the policy's constructor (to explore its knobs)."""
        self.workload = workload
        self.policy_name = policy
        self.seed = seed
        self.policy: Policy = (
            Oracle(self) if policy == ORACLE else get_policy(policy, seed=seed, **policy_options)
        )
        self.peers = {p.name: _Peer(p) for p in workload.peers}
        self.jobs = workload.jobs(seed)
        self.current_job: SimJob | None = None
        # the broker's view
        self.reports: dict[str, dict[str, Any]] = {}
        self.in_flight = {name: 0 for name in self.peers}
        self.backlog = {name: 0.0 for name in self.peers}
        self.bandwidth_estimates: dict[tuple[str, str], float] = {}
        # bookkeeping
        self._events: list[tuple[float, int, int, Any]] = []
        self._seq = 0
        self._left: dict[int, int] = {}
        self.completed: dict[int, float] = {}
        self.bytes_moved = 0
        self.now = 0.0

    # ---- event queue ---------------------------------------------------------
    def _push(self, t: float, kind: int, data: Any) -> None:
        self._seq += 1
        heapq.heappush(self._events, (t, kind, self._seq, data))

    def run(self) -> dict[str, Any]:
        for job in self.jobs:
            self._push(job.arrival, ARRIVAL, job)
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
                self._staged(*data)
            elif kind == FINISH:
                self._finish(*data)
            else:
                self._report(data, self.now)
        return self.summary()

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
            for *_, program in peer.queue:
                waiting[program] = waiting.get(program, 0) + 1
            report["runtimes"] = RunTimeStats.parse(summarize(
                (seconds for seconds, _ in peer.done),
                by_key={p: by_program[p] for p in sorted(last, key=last.get)},  # latest programs last
                running_by_key=ages,
                idle_by_key=waiting,
            ))
        self.reports[name] = report
        current = peer_state_from_report(name, url, report, t)
        self.backlog[name] = hidden_backlog(previous, current, self.in_flight[name])
        self.in_flight[name] = 0
        self._push(t + self.workload.report_interval, REPORT, name)

    def _arrive(self, job: SimJob) -> None:
        self.current_job = job
        request = JobRequest(n_procs=len(job.works), input_bytes=job.input_bytes, entry_peer=job.entry,
                             history_key=job.program or None)
        ranking = self.policy(self.peer_states(self.now), request, self.now)
        target = ranking[0].name
        self.in_flight[target] += len(job.works)
        peer = self.peers[target]
        peer.placed += 1
        moves = [(src, nbytes, nbytes / self.workload.bandwidth(src, target))
                 for src, nbytes in job.inputs if src != target and nbytes > 0]
        self.bytes_moved += sum(m[1] for m in moves)
        staged_at = self.now + sum(m[2] for m in moves)
        peer.in_transit.append((staged_at, job))
        self._left[job.id] = len(job.works)
        self._push(staged_at, STAGED, (target, job, moves))

    # ---- the peers ---------------------------------------------------------------
    def _staged(self, target: str, job: SimJob, moves: list[tuple[str, int, float]]) -> None:
        for src, nbytes, seconds in moves:
            key = (src, target)
            estimate = update_bandwidth(self.bandwidth_estimates.get(key), nbytes, seconds)
            if estimate is not None:
                self.bandwidth_estimates[key] = estimate
        peer = self.peers[target]
        peer.in_transit.remove(next(e for e in peer.in_transit if e[1] is job))
        for k, work in enumerate(job.works):
            peer.queue.append((job.id, k, work, job.program))
        self._fill(peer)

    def _fill(self, peer: _Peer) -> None:
        while peer.queue and peer.free > 0:
            job_id, k, work, program = peer.queue.popleft()
            duration = work / peer.spec.speed
            key = job_id * 100_000 + k
            peer.running[key] = self.now + duration
            peer.started[key] = (self.now, program)
            peer.busy_seconds += duration
            self._push(self.now + duration, FINISH, (peer.spec.name, job_id, key))

    def _finish(self, name: str, job_id: int, key: int) -> None:
        peer = self.peers[name]
        del peer.running[key]
        start, program = peer.started.pop(key)
        peer.done.append((self.now - start, program))
        self._left[job_id] -= 1
        if self._left[job_id] == 0:
            self.completed[job_id] = self.now
        self._fill(peer)

    # ---- the oracle's crystal ball -------------------------------------------------
    def completion_if_placed(self, name: str, job: SimJob, now: float) -> float:
        """When ``job`` would finish if placed on ``name`` now (true state, FIFO replay)."""
        peer = self.peers[name]
        speed = peer.spec.speed
        slots = list(peer.running.values()) + [now] * peer.free
        heapq.heapify(slots)

        def run(ready: float, work: float) -> float:
            end = max(heapq.heappop(slots), ready) + work / speed
            heapq.heappush(slots, end)
            return end

        for _, _, work, _ in peer.queue:
            run(now, work)
        staged = now + sum(nbytes / self.workload.bandwidth(src, name)
                           for src, nbytes in job.inputs if src != name and nbytes > 0)
        for at, other in sorted(peer.in_transit, key=lambda e: (e[0], e[1].id)):
            if at > staged:
                break
            for work in other.works:
                run(at, work)
        return max(run(staged, work) for work in job.works)

    # ---- results -----------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        responses = sorted(self.completed[j.id] - j.arrival for j in self.jobs)
        start = min((j.arrival for j in self.jobs), default=0.0)
        end = max(self.completed.values(), default=start)
        makespan = end - start
        return {
            "policy": self.policy_name,
            "workload": self.workload.name,
            "seed": self.seed,
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


def simulate(workload: Workload, policy: str, seed: int, **policy_options: Any) -> dict[str, Any]:
    """Run one workload under one policy and seed; returns the summary dict."""
    return Simulation(workload, policy, seed, **policy_options).run()
