"""The load coefficient: one number per site, LOWER = LESS LOADED.

The paper (JClarens + Condor for handhelds, CHEP 2004) computes, every 15 s,

    paper = (1 - cpu/100) * clock_rate + sum(a_i * M_i)

with M_i = memory used %, disk I/O Mbit/s, load1 and number of processes, and
sends each job to the peer with the *minimum* coefficient. That formula points
both ways at once: its first term grows with FREE capacity (an idle fast host
scores high, so "minimum" would pick the busiest CPU), while every a_i*M_i term
grows with load. It is also not comparable across hosts: load1 = 4 is saturation
on 2 cores and light on 16, and raw MHz swamps every other term.

pocketgrid keeps the paper's shape (a CPU/clock term plus a weighted sum of the
same four parameters) but fixes a convention:

* **direction**: every term grows with load, so lower = less loaded and the
  broker's "pick the minimum" is right;
* **non-negative**: 0 is a perfectly idle host; inputs are clamped at 0;
* **normalised**: each M_i is divided by a capacity, so values compare across
  a Pi, a laptop and a 64-core head node:

    host = a_cpu  * (cpu/100) * (ref_clock_mhz / clock_mhz)
         + a_mem  * (memory_percent/100)
         + a_load * (load1 / cores)
         + a_disk * (disk_io_mbps / ref_disk_mbps)
         + a_proc * (processes / (cores * ref_processes_per_core))

  The CPU term keeps the paper's two inputs (usage and clock) but inverts
  them: busy fraction times reference-clock/clock, so at equal usage a faster
  host scores lower (its remaining cycles finish a job sooner), where the paper
  multiplied the idle fraction by the clock. Load and process counts are per
  core, so a 16-core host with load1 = 4 scores 0.25 on that term and a
  2-core host with load1 = 4 scores 2.0.

**Condor head nodes.** On a head node the host's own CPU says little about the
site: the work runs on the pool's execute nodes. When the agent has pool
figures (``pool`` dict from the collector/schedd: total_slots, claimed_slots,
idle_slots, idle_jobs, running_jobs) the coefficient is driven by the pool:

    demand = (claimed_slots + idle_jobs) / total_slots     (total_slots > 0)
           = 1 + idle_jobs                                   (no slots at all)
    coeff  = a_pool * demand + a_head * host

``demand`` is the pool's analogue of load1/cores: slots busy plus jobs already
queued for them (they will get freed slots before a newcomer), per slot. A
pool with no slots cannot start anything, so it counts as full plus its queue.
idle_slots and running_jobs are reported but not used: idle slots are implied
by total - claimed, and running_jobs counts only the local schedd's jobs. The
host term is kept, scaled down, because a swamped head node still stages and
submits slowly.

The default weights are a starting point, not the paper's (it never published
its a_i): CPU and load carry weight 1 as the direct measures of contention;
memory 0.5 because used memory only hurts near exhaustion (and Linux counts
caches generously); disk 0.25 and processes 0.1 because both are weak, noisy
proxies (most processes sleep). a_pool = 2 makes a full pool (demand 1) score
like a host with 100 % CPU at the reference clock and load1 = cores, so a
pool site and a single host compare sensibly; a_head = 0.25 keeps the head
node's own state a tie-breaker, never the driver.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

from .metrics import HostMetrics

#: Keys the optional pool dict may carry (missing keys count as 0).
POOL_KEYS = ("total_slots", "claimed_slots", "idle_slots", "idle_jobs", "running_jobs")


@dataclass(frozen=True)
class Weights:
    """The a_i of the formula and the reference capacities that normalise the M_i.

    Build from configuration with :meth:`from_dict` (values may be strings,
    e.g. from environment variables or ``--weights k=v``). See the module
    docstring for why each default is what it is.
    """

    cpu: float = 1.0
    """Weight of the CPU busy term (the paper's implicit 1 in ``* 1 * Clock_Rate``)."""
    memory: float = 0.5
    """Weight of used memory, as a fraction 0..1."""
    load1: float = 1.0
    """Weight of the 1-minute load average per logical core."""
    disk_io: float = 0.25
    """Weight of disk read+write throughput relative to ``reference_disk_mbps``."""
    processes: float = 0.1
    """Weight of the process count relative to ``cores * reference_processes_per_core``."""
    reference_clock_mhz: float = 2000.0
    """Clock at which the CPU term equals the plain busy fraction."""
    reference_disk_mbps: float = 800.0
    """Disk throughput that counts as 1.0 (about 100 MB/s, a spinning disk's streaming rate)."""
    reference_processes_per_core: float = 100.0
    """Processes per core that count as 1.0 (a desktop idles at ~100-300 in total)."""
    pool: float = 2.0
    """Weight of the pool demand on a Condor head node."""
    head_node: float = 0.25
    """Scale of the host coefficient when pool figures are present."""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise ValueError(f"weight {f.name!r} must be a finite number, got {value!r}")
            if f.name.startswith("reference_"):
                if value <= 0:
                    raise ValueError(f"{f.name} must be > 0, got {value!r}")
            elif value < 0:
                raise ValueError(f"weight {f.name!r} must be >= 0, got {value!r}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> "Weights":
        """Defaults overridden by ``values``; unknown keys are an error (catches typos)."""
        if not values:
            return cls()
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown weight(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        converted: dict[str, float] = {}
        for key, value in values.items():
            try:
                converted[key] = float(value)
            except (TypeError, ValueError):
                raise ValueError(f"weight {key!r} must be a number, got {value!r}") from None
        return cls(**converted)

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def _nonneg(value: Any) -> float:
    """Float >= 0; NaN, negatives and junk become 0 so the result stays non-negative."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return 0.0
    return number if math.isfinite(number) and number > 0 else 0.0


def host_terms(metrics: HostMetrics, weights: Weights) -> dict[str, float]:
    """The weighted, normalised host terms (each >= 0); their sum is the host coefficient.

    Exposed so the broker UI, logs and tests can show *why* a host scores
    what it scores.
    """
    cores = max(1, int(_nonneg(metrics.cores)))
    clock = _nonneg(metrics.clock_mhz) or weights.reference_clock_mhz  # unknown clock: neutral
    cpu_fraction = min(1.0, _nonneg(metrics.cpu_percent) / 100.0)
    memory_fraction = min(1.0, _nonneg(metrics.memory_percent) / 100.0)
    return {
        "cpu": weights.cpu * cpu_fraction * (weights.reference_clock_mhz / clock),
        "memory": weights.memory * memory_fraction,
        "load1": weights.load1 * _nonneg(metrics.load1) / cores,
        "disk_io": weights.disk_io * _nonneg(metrics.disk_io_mbps) / weights.reference_disk_mbps,
        "processes": weights.processes
        * _nonneg(metrics.processes)
        / (cores * weights.reference_processes_per_core),
    }


def pool_demand(pool: Mapping[str, Any]) -> float:
    """(claimed slots + idle jobs) per slot; ``1 + idle_jobs`` for a pool with no slots."""
    total = _nonneg(pool.get("total_slots"))
    claimed = _nonneg(pool.get("claimed_slots"))
    idle_jobs = _nonneg(pool.get("idle_jobs"))
    if total <= 0:
        return 1.0 + idle_jobs
    return (claimed + idle_jobs) / total


def load_coefficient(
    metrics: HostMetrics,
    weights: Weights | None = None,
    pool: Mapping[str, Any] | None = None,
) -> float:
    """The coefficient used for placement: >= 0, lower = less loaded.

    Host only when ``pool`` is None; pool-driven (see module docstring) when
    pool figures are given.
    """
    weights = weights or Weights()
    host = sum(host_terms(metrics, weights).values())
    if pool is None:
        return host
    return weights.pool * pool_demand(pool) + weights.head_node * host


def paper_coefficient(metrics: HostMetrics, weights: Weights | None = None) -> float:
    """The paper's literal formula, for reference only (reported, never used to place jobs).

    ``(1 - cpu/100) * clock_mhz + a_mem*memory% + a_disk*disk_Mbps + a_load*load1
    + a_proc*processes`` with raw, unnormalised M_i and the same a_i as
    :class:`Weights` (the paper never published its values). Its first term
    grows with free capacity, so do not rank by it.
    """
    weights = weights or Weights()
    return (
        (1.0 - metrics.cpu_percent / 100.0) * metrics.clock_mhz
        + weights.memory * metrics.memory_percent
        + weights.disk_io * metrics.disk_io_mbps
        + weights.load1 * metrics.load1
        + weights.processes * metrics.processes
    )
