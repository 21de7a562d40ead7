"""Host sampling for the End-host Monitoring Agent.

The paper's EMA gathers "the CPU clock rate, CPU usage, Memory Usage and Last
1, 5 and 15-minute average load values", plus the disk I/O rate and the number
of processes that its load coefficient weighs. :class:`HostSampler` collects
exactly those through psutil.

Two properties matter more than precision here:

* **It never raises.** The agent runs on laptops, Raspberry Pis and inside
  containers where some counters do not exist (no ``/proc/diskstats``, no
  cpufreq, ``getloadavg`` missing on old Windows builds). A missing counter
  degrades to 0 (or to a configured nominal value for the clock) with a debug
  log line, because a monitoring agent that crashes takes its site out of
  placement entirely, which is worse than a slightly pessimistic or optimistic
  figure.
* **It never blocks for long.** Rates (CPU %, disk Mbit/s) are deltas between
  consecutive samples, so a sample costs a few syscalls, not a sleep.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import psutil

log = logging.getLogger(__name__)

#: Clock used when neither psutil nor /proc/cpuinfo know it (many ARM boards,
#: VMs and containers). 2 GHz is a middle-of-the-road modern core; it is only
#: used to scale the CPU term, so an error here shifts one host's coefficient
#: by a constant factor, it does not break the agent.
DEFAULT_NOMINAL_CLOCK_MHZ = 2000.0

#: Where Linux publishes per-core "cpu MHz" lines.
DEFAULT_CPUINFO_PATH = "/proc/cpuinfo"

#: How long the first CPU reading in a thread blocks. psutil keeps its
#: "previous CPU times" per thread, so the first non-blocking call in a new
#: thread would return a meaningless 0.0 (which would make a busy host look
#: idle in its first report). A short blocking read gives a real value once.
DEFAULT_PRIME_SECONDS = 0.1


@dataclass
class HostMetrics:
    """One sample of the host, in the units the coefficient expects.

    ``clock_source`` says where ``clock_mhz`` came from ("psutil",
    "cpuinfo" or "nominal"), so an operator can tell a measured clock from a
    guessed one when comparing coefficients across sites.
    """

    cpu_percent: float
    """System-wide CPU utilisation since the previous sample, 0..100."""
    clock_mhz: float
    """Current (or best known) CPU clock in MHz, > 0."""
    cores: int
    """Logical CPUs, >= 1."""
    memory_percent: float
    """Used memory (psutil's ``virtual_memory().percent``), 0..100."""
    load1: float
    load5: float
    load15: float
    disk_io_mbps: float
    """Disk read+write throughput since the previous sample, Mbit/s."""
    processes: int
    """Number of processes on the host (the paper's "currently executing")."""
    sampled_at: float
    """Wall-clock time of the sample, seconds since the epoch."""
    clock_source: str = "unknown"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: the ``metrics`` object of a broker report."""
        return asdict(self)


def _safe(what: str, func: Callable[[], Any], default: Any) -> Any:
    """Call ``func``; on any error psutil/the OS can raise, log and return ``default``.

    psutil signals a missing counter with OSError (incl. FileNotFoundError,
    PermissionError), NotImplementedError, RuntimeError or psutil.Error
    depending on platform; some functions do not exist at all (AttributeError).
    """
    try:
        return func()
    except (OSError, NotImplementedError, RuntimeError, AttributeError, ValueError, psutil.Error) as exc:
        log.debug("cannot read %s (%s: %s); using %r", what, type(exc).__name__, exc, default)
        return default


class HostSampler:
    """Samples the local host with psutil; one instance per agent.

    Keep one sampler alive across samples: the disk I/O rate is computed from
    the previous sample's counters (the first sample reports 0 Mbit/s), and
    the CPU percentage is psutil's non-blocking "since the previous call".
    Not meant to be shared by several threads at once.
    """

    def __init__(
        self,
        nominal_clock_mhz: float = DEFAULT_NOMINAL_CLOCK_MHZ,
        cpuinfo_path: str | os.PathLike[str] = DEFAULT_CPUINFO_PATH,
        prime_seconds: float = DEFAULT_PRIME_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if nominal_clock_mhz <= 0:
            raise ValueError("nominal_clock_mhz must be > 0")
        self.nominal_clock_mhz = float(nominal_clock_mhz)
        self.cpuinfo_path = Path(cpuinfo_path)
        self.prime_seconds = max(0.0, float(prime_seconds))
        self.clock_source = "unknown"
        self._monotonic = clock
        self._cpu_thread: int | None = None
        self._last_disk_bytes: int | None = None
        self._last_disk_at: float | None = None

    # -- public ---------------------------------------------------------------

    def sample(self) -> HostMetrics:
        """Take one sample. Never raises for a missing counter."""
        clock_mhz, source = self.clock_rate()
        self.clock_source = source
        load1, load5, load15 = self._loadavg()
        return HostMetrics(
            cpu_percent=self._cpu_percent(),
            clock_mhz=clock_mhz,
            cores=self._cores(),
            memory_percent=_clamp_percent(_safe("memory", lambda: psutil.virtual_memory().percent, 0.0)),
            load1=load1,
            load5=load5,
            load15=load15,
            disk_io_mbps=self._disk_io_mbps(),
            processes=int(_safe("process count", lambda: len(psutil.pids()), 0)),
            sampled_at=time.time(),
            clock_source=source,
        )

    def clock_rate(self) -> tuple[float, str]:
        """Best known CPU clock in MHz and where it came from.

        psutil.cpu_freq() returns None (or 0) in many VMs/containers and on
        boards without cpufreq; /proc/cpuinfo often still has "cpu MHz"
        there; failing both, the configured nominal clock is used.
        """
        freq = _safe("cpu_freq", lambda: psutil.cpu_freq(), None)
        current = float(getattr(freq, "current", 0.0) or 0.0) if freq is not None else 0.0
        if current > 0:
            return current, "psutil"
        mhz = self._cpuinfo_mhz()
        if mhz > 0:
            return mhz, "cpuinfo"
        log.debug("CPU clock unknown; using nominal %.0f MHz", self.nominal_clock_mhz)
        return self.nominal_clock_mhz, "nominal"

    # -- parts ----------------------------------------------------------------

    def _cpuinfo_mhz(self) -> float:
        """Mean of the "cpu MHz" lines of /proc/cpuinfo, 0.0 when absent."""
        text = _safe("cpuinfo", lambda: self.cpuinfo_path.read_text(encoding="utf-8", errors="replace"), "")
        values: list[float] = []
        for line in text.splitlines():
            key, sep, value = line.partition(":")
            if sep and key.strip().lower() == "cpu mhz":
                try:
                    mhz = float(value.strip())
                except ValueError:
                    continue
                if mhz > 0:
                    values.append(mhz)
        return sum(values) / len(values) if values else 0.0

    def _cpu_percent(self) -> float:
        """Non-blocking CPU % since the previous sample in this thread.

        psutil (>= 5.9.6) remembers the previous CPU times per thread, so the
        first reading in a thread (e.g. when the reporter moves into its own
        thread) is taken with a short blocking interval to get a real value.
        """
        tid = threading.get_ident()
        if self._cpu_thread != tid:
            self._cpu_thread = tid
            interval: float | None = self.prime_seconds or None
        else:
            interval = None
        return _clamp_percent(_safe("cpu_percent", lambda: psutil.cpu_percent(interval=interval), 0.0))

    @staticmethod
    def _cores() -> int:
        """Logical CPUs of the host.

        Host-wide (not the container's affinity/quota) on purpose: load
        averages and cpu_percent are host-wide too, and the ratio must
        compare like with like.
        """
        count = _safe("cpu_count", lambda: psutil.cpu_count(logical=True), None) or os.cpu_count() or 1
        return max(1, int(count))

    @staticmethod
    def _loadavg() -> tuple[float, float, float]:
        """1/5/15-minute load averages; psutil emulates them where the OS has none."""
        values = _safe("getloadavg", lambda: psutil.getloadavg(), None)
        if values is None:
            values = _safe("os.getloadavg", lambda: os.getloadavg(), (0.0, 0.0, 0.0))
        one, five, fifteen = (max(0.0, float(v)) for v in values)
        return one, five, fifteen

    def _disk_io_mbps(self) -> float:
        """Read+write Mbit/s since the previous sample (0 on the first sample).

        A counter that went backwards (device removed, counters reset) also
        yields 0 and restarts the baseline rather than a negative rate.
        """
        counters = _safe("disk_io_counters", lambda: psutil.disk_io_counters(), None)
        now = self._monotonic()
        if counters is None:
            self._last_disk_bytes = None
            self._last_disk_at = None
            return 0.0
        total = int(counters.read_bytes) + int(counters.write_bytes)
        previous, previous_at = self._last_disk_bytes, self._last_disk_at
        self._last_disk_bytes, self._last_disk_at = total, now
        if previous is None or previous_at is None:
            return 0.0
        elapsed = now - previous_at
        delta = total - previous
        if elapsed <= 0 or delta < 0:
            return 0.0
        return delta * 8 / 1e6 / elapsed


def _clamp_percent(value: Any) -> float:
    """Coerce to a float within 0..100 (psutil may report 100.1 on some kernels)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return 0.0
    return min(100.0, max(0.0, number))
