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
     "by_key": {"<history key>": {"n": 5, "median_s": 880.0, "p90_s": 960.0}}}

A *history key* names one user's executable (a hash of the owner's DN and
the executable's SHA-256, see ``history_key``): the entry peer sends it with
the placement request, so the broker can look up how long that very program
ran before, on any site.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

#: Quantile points reported: 0, 5, ..., 100 %.
QUANTILE_STEP = 5
#: Ages of running procs reported at most (oldest first).
MAX_AGES = 256
#: History keys reported at most (the most recently finished).
MAX_KEYS = 64
#: Completed procs a site must report before its figures replace the nominal run time.
MIN_SAMPLES = 5
#: Completed procs of one executable before its own median is trusted.
MIN_KEY_SAMPLES = 3


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
    window_s: float | None = None,
) -> dict[str, Any]:
    """The ``runtimes`` report field from raw samples (seconds)."""
    done = sorted(float(d) for d in durations if _ok(d))
    ages = sorted((float(a) for a in running_ages if _ok(a)), reverse=True)
    waits = [float(w) for w in queue_waits if _ok(w)]
    out: dict[str, Any] = {"completed": len(done), "running": len(ages), "idle": max(0, int(idle))}
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
    for key, values in list((by_key or {}).items())[-MAX_KEYS:]:
        mine = sorted(float(v) for v in values if _ok(v))
        if mine:
            keys[key] = {"n": len(mine), "median_s": round(quantile(mine, 0.5), 3),
                         "p90_s": round(quantile(mine, 0.9), 3)}
    if keys:
        out["by_key"] = keys
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
    by_key: Mapping[str, Mapping[str, float]] = field(default_factory=dict)

    @classmethod
    def parse(cls, raw: Any) -> "RunTimeStats | None":
        if not isinstance(raw, Mapping):
            return None
        completed = _count(raw.get("completed"))
        quantiles = _floats(raw.get("quantiles_s"))
        if quantiles and quantiles != sorted(quantiles):
            quantiles = []
        by_key = {}
        if isinstance(raw.get("by_key"), Mapping):
            for key, v in raw["by_key"].items():
                if isinstance(key, str) and isinstance(v, Mapping) and _count(v.get("n")) and _ok(v.get("median_s")):
                    by_key[key] = {"n": _count(v.get("n")), "median_s": float(v["median_s"])}
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
        )

    @property
    def usable(self) -> bool:
        """Enough completed procs to say how long this site's slots stay busy."""
        return self.completed >= MIN_SAMPLES and bool(self.quantiles) and self.mean is not None

    def remaining(self, age: float) -> float:
        """Expected seconds left for a proc running for ``age`` s: E[T - age | T > age].

        Estimated from the quantile points beyond ``age`` (equally likely, so
        their mean is the conditional mean).  A proc older than every
        completed one gets its own age again (for heavy tails, the longer a
        job has run, the longer it is likely to go on).
        """
        beyond = [q - age for q in self.quantiles if q > age]
        if not beyond:
            return max(age, 0.0)
        return sum(beyond) / len(beyond)

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


def slot_free_times(stats: RunTimeStats, slots: int, running: int) -> list[float]:
    """Seconds until each slot frees, soonest first: free slots 0, running procs their expected rest.

    ``running`` procs occupy slots (at most ``slots``); the reported ages
    cover the site's own procs, the rest (e.g. other users' jobs on a pool)
    get the distribution's mean residual life.
    """
    running = max(0, min(slots, running))
    known = [stats.remaining(a) for a in stats.running_ages[:running]]
    unknown = [stats.mean_residual()] * (running - len(known))
    return sorted([0.0] * (slots - running) + known + unknown)


def start_of(position: int, free_times: Sequence[float], proc_seconds: float) -> float:
    """When the proc at queue ``position`` (0 = next) starts, FIFO over slots freeing at ``free_times``
    (sorted) and every proc ahead taking ``proc_seconds``.

    Procs take slots in turn: position ``k`` gets the ``k mod S``-th slot to
    free, after ``k div S`` procs before it on that slot (exact when every
    proc ahead takes the same time; it takes the mean).
    """
    slots = len(free_times)
    if slots == 0:
        return math.inf
    waves, k = divmod(max(0, position), slots)
    return free_times[k] + waves * proc_seconds
