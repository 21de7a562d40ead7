"""Learned run times: what a site's recent jobs say about how long a slot stays busy.

A peer summarises its jobs' event logs (``peer/runtime_stats.py``) and its
agent adds the summary to each load report as the optional ``runtimes``
field; the broker keeps the latest one per peer and the default placement
policy uses it instead of the nominal 60 s per proc.  The simulator
(``benchmarks/placement``) builds the same summary from its simulated
procs.  Everything here is pure (no I/O), shared by the three.

The ``runtimes`` field (every part optional but ``completed``)::

    {"window_s": 86400,              # completed procs that finished this recently
     "completed": 37,                # how many: the sample behind the figures below
     "quantiles_s": [q0, q5, ..., q100],  # their wall times (execute -> terminate), every 5 %
     "mean_s": 912.0, "median_s": 900.0, "p90_s": 1500.0,
     "running": 4,                   # the site's pocketgrid procs running now
     "running_ages_s": [850.0, ...], # their ages, oldest first (at most MAX_AGES)
     "idle": 3,                      # its pocketgrid procs waiting for a slot
     "mean_queue_wait_s": 12.0,      # submit -> execute of the procs above
     "by_key": {"<history key>": {"n": 5, "mean_s": 905.0, "median_s": 880.0, "p90_s": 960.0,
                                  "quantiles_s": [...],        # every 10 %, with MIN_SAMPLES or more
                                  "running_ages_s": [...],     # its procs running now (among the above)
                                  "idle": 2}}}                 # its procs waiting for a slot

A *history key* names one user's executable (a hash of the owner's DN and
the executable's SHA-256, see ``history_key``): the entry peer sends it with
the placement request, so the broker can look up how long that very program
ran before, on any site.  Which program holds each slot matters as much: a
site whose slots hold three-hour simulations frees none soon, even if most
of the procs it ran were one-minute analyses.
"""
from __future__ import annotations

import bisect
import hashlib
import heapq
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

#: Quantile points reported: 0, 5, ..., 100 % (per history key: every 10 %).
QUANTILE_STEP = 5
KEY_QUANTILE_STEP = 10
#: Ages of running procs reported at most (oldest first).
MAX_AGES = 256
#: History keys reported at most (the most recently finished).
MAX_KEYS = 64
#: Completed procs a site must report before its figures replace the nominal run time.
MIN_SAMPLES = 5
#: Completed procs of one executable (on all peers) before its figures are used at all.
MIN_KEY_SAMPLES = 3
#: What the executable's history elsewhere counts for against a peer's own, at most (in procs).
PRIOR_SAMPLES = 20


def history_key(owner: str, executable_sha256: str) -> str:
    """The key under which one user's executable's run times are learned (32 hex digits)."""
    return hashlib.sha256(f"{owner}\x00{executable_sha256}".encode()).hexdigest()[:32]


def quantile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile (``q`` in 0..1) of an already sorted, non-empty list."""
    if not sorted_values:
        raise ValueError("no values")
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summarize(
    durations: Iterable[float],
    *,
    running_ages: Iterable[float] = (),
    idle: int = 0,
    queue_waits: Iterable[float] = (),
    by_key: Mapping[str, Iterable[float]] | None = None,
    running_by_key: Mapping[str, Iterable[float]] | None = None,
    idle_by_key: Mapping[str, int] | None = None,
    window_s: float | None = None,
) -> dict[str, Any]:
    """The ``runtimes`` report field from raw samples (seconds).

    ``durations``: every completed proc; ``by_key``: those of each history
    key again.  ``running_ages`` and ``idle``: procs of no known key;
    ``running_by_key`` and ``idle_by_key``: the others, per key.
    """
    done = sorted(_clean(durations))
    keyed_ages = {k: sorted(_clean(v), reverse=True) for k, v in (running_by_key or {}).items()}
    keyed_idle = {k: max(0, int(n)) for k, n in (idle_by_key or {}).items() if n}
    ages = sorted([*_clean(running_ages), *(a for v in keyed_ages.values() for a in v)], reverse=True)
    waits = _clean(queue_waits)
    out: dict[str, Any] = {"completed": len(done), "running": len(ages),
                           "idle": max(0, int(idle)) + sum(keyed_idle.values())}
    if window_s is not None:
        out["window_s"] = float(window_s)
    if done:
        out["quantiles_s"] = [round(quantile(done, k / 100), 3) for k in range(0, 101, QUANTILE_STEP)]
        out["mean_s"] = round(sum(done) / len(done), 3)
        out["median_s"] = round(quantile(done, 0.5), 3)
        out["p90_s"] = round(quantile(done, 0.9), 3)
    if ages:
        out["running_ages_s"] = [round(a, 1) for a in ages[:MAX_AGES]]
    if waits:
        out["mean_queue_wait_s"] = round(sum(waits) / len(waits), 3)
    keys: dict[str, Any] = {}
    completed = dict(by_key or {})
    active = [k for k in {**completed, **keyed_ages, **keyed_idle} if keyed_ages.get(k) or keyed_idle.get(k)]
    for key in [*(k for k in completed if k not in active), *active][-MAX_KEYS:]:  # keep the busy keys
        mine = sorted(_clean(completed.get(key, ())))
        entry: dict[str, Any] = {"n": len(mine)}
        if mine:
            entry.update(mean_s=round(sum(mine) / len(mine), 3), median_s=round(quantile(mine, 0.5), 3),
                         p90_s=round(quantile(mine, 0.9), 3))
        if len(mine) >= MIN_SAMPLES:
            entry["quantiles_s"] = [round(quantile(mine, k / 100), 3) for k in range(0, 101, KEY_QUANTILE_STEP)]
        if keyed_ages.get(key):
            entry["running_ages_s"] = [round(a, 1) for a in keyed_ages[key][:MAX_AGES]]
        if keyed_idle.get(key):
            entry["idle"] = keyed_idle[key]
        if mine or len(entry) > 1:
            keys[key] = entry
    if keys:
        out["by_key"] = keys
    return out


def _clean(values: Iterable[Any]) -> list[float]:
    """The finite, non-negative numbers among ``values``, as floats."""
    out = []
    for v in values:
        try:
            f = float(v)
        except (TypeError, ValueError):
            continue
        if f >= 0 and f != math.inf:  # NaN fails >= 0
            out.append(f)
    return out


def _ok(value: Any) -> bool:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return False
    return math.isfinite(v) and v >= 0


@dataclass(frozen=True)
class RunTimeStats:
    """A peer's ``runtimes`` report, checked (junk from a peer counts as "not reported")."""

    completed: int
    quantiles: tuple[float, ...] = ()
    mean: float | None = None
    median: float | None = None
    running_ages: tuple[float, ...] = ()
    running: int = 0
    idle: int = 0
    mean_queue_wait: float | None = None
    #: Per history key with completed procs: ``n``, ``mean_s``, ``median_s``.
    by_key: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    #: Per history key with a distribution of its own here (MIN_SAMPLES procs), as a RunTimeStats.
    key_stats: Mapping[str, "RunTimeStats"] = field(default_factory=dict)
    #: Per history key with procs here now: (their running ages, how many wait).
    key_procs: Mapping[str, tuple[tuple[float, ...], int]] = field(default_factory=dict)

    @classmethod
    def parse(cls, raw: Any) -> "RunTimeStats | None":
        """The checked figures of a report's ``runtimes`` (already parsed ones pass through)."""
        if isinstance(raw, RunTimeStats):
            return raw
        if not isinstance(raw, Mapping):
            return None
        completed = _count(raw.get("completed"))
        quantiles = _floats(raw.get("quantiles_s"))
        if quantiles and quantiles != sorted(quantiles):
            quantiles = []
        by_key = {}
        key_stats = {}
        key_procs = {}
        if isinstance(raw.get("by_key"), Mapping):
            for key, v in raw["by_key"].items():
                if not (isinstance(key, str) and isinstance(v, Mapping)):
                    continue
                if _count(v.get("n")) and _ok(v.get("median_s")):
                    # the mean where reported (an expected time is what the policy adds up), else the median
                    by_key[key] = {"n": _count(v.get("n")), "median_s": float(v["median_s"]),
                                   "mean_s": float(v["mean_s"]) if _ok(v.get("mean_s")) else float(v["median_s"])}
                    own = cls.parse({"completed": v.get("n"), "quantiles_s": v.get("quantiles_s"),
                                     "mean_s": v.get("mean_s"), "median_s": v.get("median_s")})
                    if own is not None and own.usable:
                        key_stats[key] = own
                ages_here, idle_here = tuple(_floats(v.get("running_ages_s"))), _count(v.get("idle"))
                if ages_here or idle_here:
                    key_procs[key] = (ages_here, idle_here)
        ages = sorted(_floats(raw.get("running_ages_s")), reverse=True)
        return cls(
            completed=completed,
            quantiles=tuple(quantiles),
            mean=float(raw["mean_s"]) if _ok(raw.get("mean_s")) else (sum(quantiles) / len(quantiles) if quantiles else None),
            median=float(raw["median_s"]) if _ok(raw.get("median_s")) else None,
            running_ages=tuple(ages),
            running=max(_count(raw.get("running")), len(ages)),
            idle=_count(raw.get("idle")),
            mean_queue_wait=float(raw["mean_queue_wait_s"]) if _ok(raw.get("mean_queue_wait_s")) else None,
            by_key=by_key,
            key_stats=key_stats,
            key_procs=key_procs,
        )

    @property
    def usable(self) -> bool:
        """Enough completed procs to say how long this site's slots stay busy."""
        return self.completed >= MIN_SAMPLES and bool(self.quantiles) and self.mean is not None

    def scaled(self, ratio: float) -> "RunTimeStats":
        """This distribution with every run time times ``ratio`` (another peer's, at this one's speed)."""
        if ratio == 1.0:
            return self
        return RunTimeStats(completed=self.completed, quantiles=tuple(q * ratio for q in self.quantiles),
                            mean=None if self.mean is None else self.mean * ratio,
                            median=None if self.median is None else self.median * ratio)

    def draw(self, u: float) -> float:
        """The run time at quantile level ``u`` (0..1) of the reported distribution (linear between points)."""
        q = self.quantiles
        if not q:
            return self.mean or 0.0
        last = len(q) - 1
        pos = (u if u < 1.0 else 1.0) * last if u > 0.0 else 0.0
        lo = int(pos)
        if lo >= last:
            return q[last]
        return q[lo] + (q[lo + 1] - q[lo]) * (pos - lo)

    def cdf(self, t: float) -> float:
        """P(T <= t) of the reported distribution (the inverse of :meth:`draw`)."""
        q = self.quantiles
        if not q or t < q[0]:
            return 0.0
        if t >= q[-1]:
            return 1.0
        k = bisect.bisect_right(q, t) - 1
        width = q[k + 1] - q[k]
        frac = (t - q[k]) / width if width > 0 else 1.0
        return (k + frac) / (len(q) - 1)

    def rest(self, age: float, u: float) -> float:
        """The remaining run time of a proc running for ``age`` s, at quantile level ``u`` of T given T > age.

        A proc older than every completed one gets between half and one and a
        half times its age again (on average its age: for heavy tails, the
        longer a job has run, the longer it is likely to go on).
        """
        f = self.cdf(age)
        if f >= 1.0:
            return age * (0.5 + u)
        return max(0.0, self.draw(f + u * (1.0 - f)) - age)

    def mean_residual(self) -> float:
        """Seconds left of a running proc whose age is unknown (another user's job on a shared pool):
        the mean residual life E[T^2] / (2 E[T]) of the reported distribution."""
        if not self.quantiles:
            return self.mean or 0.0
        s1 = sum(self.quantiles)
        s2 = sum(q * q for q in self.quantiles)
        return s2 / (2 * s1) if s1 > 0 else 0.0


def _count(value: Any) -> int:
    if isinstance(value, bool):
        return 0
    try:
        n = int(value)
    except (TypeError, ValueError):
        return 0
    return max(0, n)


def _floats(value: Any) -> list[float]:
    if not isinstance(value, (list, tuple)):
        return []
    return [float(v) for v in value if _ok(v) and not isinstance(v, bool)]


#: Scenarios averaged by :func:`expected_start` (deterministic, evenly spread quantile levels).
SCENARIOS = 8
#: Queue positions played out by :func:`expected_start`; further ones are extrapolated at the site's rate.
MAX_PLAYED = 512
_GOLDEN = 0.6180339887498949


def _level(scenario: int, item: int) -> float:
    """A quantile level in (0, 1) for ``item`` in ``scenario``: evenly spread, the same on every call."""
    return ((item + 1) * _GOLDEN + (scenario + 0.5) / SCENARIOS) % 1.0


def expected_start(stats: RunTimeStats, slots: int, running: int, position: int,
                   programs: Mapping[str, RunTimeStats] | None = None) -> float:
    """Seconds until the proc at queue ``position`` (0 = next) starts on a site of ``slots`` slots.

    ``running`` procs occupy slots: the site's own with their reported ages,
    each under its program's distribution (``programs``, by history key;
    default: the ones the site reported, ``stats.key_stats``), else the
    site's; others (e.g. other users' jobs on a pool) of unknown age.  The
    procs queued ahead run fresh draws: the reported queued procs of each
    program from that program's distribution, the rest (and the procs
    placed since the report) from the site's.  The queue is played out FIFO
    in :data:`SCENARIOS` scenarios, each drawing every proc's (remaining)
    run time at its own evenly spread quantile level (conditional on its age
    for a running proc), and the start times are averaged.  Averaging whole
    scenarios, not run times, matters: on a site of many slots the first
    one frees far sooner than the shortest *expected* rest (in development,
    expected rests made busy pools look ~80 s away when the next slot freed
    within seconds).  Which program holds a slot matters as much: a host
    that ran hundreds of 30 s analyses but whose slots hold simulations of
    hours frees none soon.  Beyond :data:`MAX_PLAYED` positions, slots free
    at the site's rate (``slots / mean``).
    """
    slots = max(1, slots)
    running = max(0, min(slots, running))
    if position < slots - running:
        return 0.0
    programs = stats.key_stats if programs is None else programs
    mean = stats.mean or 0.0
    held: list[tuple[RunTimeStats | None, float]] = []  # (distribution, age); None: the site's
    unattributed = Counter(stats.running_ages)
    played = min(position, MAX_PLAYED)
    queue: list[RunTimeStats] = []
    for key, (ages, idle) in stats.key_procs.items():
        dist = programs.get(key)
        if dist is None:
            continue
        for age in ages:
            if unattributed[age] > 0:
                unattributed[age] -= 1
                held.append((dist, age))
        queue += [dist] * min(idle, played)
    for age in stats.running_ages:
        if unattributed[age] > 0:
            unattributed[age] -= 1
            held.append((None, age))
    held = held[:running]
    unknown = running - len(held)
    queue = _interleave(queue)[:played]
    queue += [stats] * (played - len(queue))
    residual = stats.mean_residual()
    total = 0.0
    for d in range(SCENARIOS):
        heap = [0.0] * (slots - running)
        for i, (dist, age) in enumerate(held):
            heap.append((dist or stats).rest(age, _level(d, i)))
        heap += [2.0 * _level(d, running + i) * residual for i in range(unknown)]
        heapq.heapify(heap)
        offset = (d + 0.5) / SCENARIOS
        for k, dist in enumerate(queue, running + 1):
            heapq.heapreplace(heap, heap[0] + dist.draw((k * _GOLDEN + offset) % 1.0))
        total += heap[0]
    start = total / SCENARIOS
    if position > played and mean > 0:
        start += (position - played) * mean / slots
    return start


def _interleave(items: list[RunTimeStats]) -> list[RunTimeStats]:
    """The queued procs of several programs in turn (their FIFO order is not reported)."""
    groups: dict[int, list[RunTimeStats]] = {}
    for item in items:
        groups.setdefault(id(item), []).append(item)
    out: list[RunTimeStats] = []
    lists = list(groups.values())
    while any(lists):
        for group in lists:
            if group:
                out.append(group.pop())
    return out
