"""Condor pool figures for the load coefficient on a head node (the Reporter's ``pool_source``).

What is reported (``None`` when no pool answers: the agent then reports host
figures only)::

    {"total_slots", "claimed_slots", "idle_slots",      # slot equivalents, see below
     "total_cores", "claimed_cores", "idle_cores",
     "slot_ads",                                          # startd ads as condor_status counts them
     "idle_jobs", "running_jobs", "held_jobs",            # every schedd of the pool
     "local_idle_jobs", "local_running_jobs",             # this host's schedd (fresh)
     "schedds", "collector"}

Slots.  ``ema_agent.coefficient.pool_demand`` divides claimed slots plus idle
jobs by total slots, i.e. it counts places a (single-core) job can run.  A
static slot is one such place.  A partitionable slot is as many places as it
has cores (``TotalSlotCpus``; its dynamic slots hold the claimed ones), so
counting its ad as one slot would make an 8-core machine with 3 one-core
jobs look 75 % full instead of 37.5 %.  Claimed = every place not idle; idle
= unclaimed (or backfill) static slots plus the free cores of partitionable
slots.  A machine in the Owner or Drained state is therefore busy, which is
what it is for a new job.

Jobs.  ``idle_jobs`` is what competes for those slots: the local schedd's
counts come from a summary query (``QueryOpt.SummaryOnly``: the schedd's own
counters, not a scan of its queue), the other schedds' from their ads in the
collector (``TotalIdleJobs`` etc., as fresh as ``SCHEDD_INTERVAL``).

Why a child process.  ``htcondor2`` keeps the GIL while it waits for a
daemon (a collector that accepts and never answers stalls every thread of
the process for ~20 s), and the agent usually runs as a thread inside the
peer.  :func:`pool_figures` therefore runs ``python -m ema_agent.pool`` with
a deadline and reads its JSON; :func:`query_pool` is the in-process query it
runs.  ``htcondor2`` is imported only inside functions: the base install has
no HTCondor and ``ema_agent`` imports no server code.

Command line: ``python -m ema_agent.pool`` prints the figures as JSON (exit 0),
or ``null`` with the reason on stderr (exit 1).
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sys
from typing import Any, Callable, Iterable, Mapping

log = logging.getLogger(__name__)

#: Startd ad attributes used by :func:`summarise_startds`.
STARTD_PROJECTION = ["Name", "Machine", "State", "Activity", "Cpus", "TotalSlotCpus", "PartitionableSlot",
                     "DynamicSlot", "SlotType"]
#: Schedd ad attributes used by :func:`summarise_schedds`.
SCHEDD_PROJECTION = ["Name", "TotalIdleJobs", "TotalRunningJobs", "TotalHeldJobs"]

_IDLE_STATES = {"unclaimed", "backfill"}


def _num(ad: Mapping[str, Any], key: str, default: float = 0) -> float:
    value = ad.get(key)
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(str(value))
    except (TypeError, ValueError):
        return float(default)


def _flag(ad: Mapping[str, Any], key: str) -> bool:
    value = ad.get(key)
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() == "true"


def _kind(ad: Mapping[str, Any]) -> str:
    slot_type = str(ad.get("SlotType") or "").strip().lower()
    if _flag(ad, "PartitionableSlot") or slot_type == "partitionable":
        return "partitionable"
    if _flag(ad, "DynamicSlot") or slot_type == "dynamic":
        return "dynamic"
    return "static"


def summarise_startds(ads: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Slots and cores from startd ads (``condor_status -l``), as described in the module docstring."""
    total = idle = 0.0
    total_cores = idle_cores = 0.0
    slot_ads = 0
    for ad in ads:
        slot_ads += 1
        kind = _kind(ad)
        cpus = max(0.0, _num(ad, "Cpus"))
        state = str(ad.get("State") or "").strip().lower()
        if kind == "partitionable":
            # Cpus = cores not yet carved into dynamic slots; TotalSlotCpus = all of them.
            all_cores = max(cpus, _num(ad, "TotalSlotCpus", cpus))
            total += all_cores
            total_cores += all_cores
            idle += cpus
            idle_cores += cpus
        elif kind == "dynamic":
            continue  # its cores are counted in its partitionable parent's TotalSlotCpus
        else:
            total += 1
            total_cores += cpus
            if state in _IDLE_STATES:
                idle += 1
                idle_cores += cpus
    return {
        "total_slots": int(total),
        "claimed_slots": int(total - idle),
        "idle_slots": int(idle),
        "total_cores": int(total_cores),
        "claimed_cores": int(total_cores - idle_cores),
        "idle_cores": int(idle_cores),
        "slot_ads": slot_ads,
    }


def summarise_schedds(schedd_ads: Iterable[Mapping[str, Any]], local: Mapping[str, Any] | None = None,
                      local_name: str | None = None) -> dict[str, int]:
    """Idle/running/held jobs over every schedd; ``local`` (a SummaryOnly ad) replaces the local schedd's ad."""
    idle = running = held = 0.0
    schedds = 0
    for ad in schedd_ads:
        if local is not None and local_name is not None and ad.get("Name") == local_name:
            continue
        schedds += 1
        idle += _num(ad, "TotalIdleJobs")
        running += _num(ad, "TotalRunningJobs")
        held += _num(ad, "TotalHeldJobs")
    out: dict[str, int] = {}
    if local is not None:
        schedds += 1
        local_idle = _num(local, "AllusersIdle")
        local_running = _num(local, "AllusersRunning")
        idle += local_idle
        running += local_running
        held += _num(local, "AllusersHeld")
        out.update({"local_idle_jobs": int(local_idle), "local_running_jobs": int(local_running)})
    out.update({"idle_jobs": int(idle), "running_jobs": int(running), "held_jobs": int(held), "schedds": schedds})
    return out


def query_pool() -> dict[str, Any] | None:
    """Ask the collector and the local schedd, in this process; None when there is no pool.

    Blocks (holding the GIL) while a daemon is slow: call it in a process of
    its own, as :func:`pool_figures` does.
    """
    try:
        import htcondor2
    except ImportError:
        log.debug("no pool figures: htcondor2 is not installed")
        return None
    collector = htcondor2.Collector()
    try:
        startds = collector.query(htcondor2.AdType.Startd, projection=STARTD_PROJECTION)
    except htcondor2.HTCondorException as exc:
        log.debug("no pool figures: the collector did not answer: %s", exc)
        return None
    figures: dict[str, Any] = summarise_startds(startds)
    try:
        schedd_ads = collector.query(htcondor2.AdType.Schedd, projection=SCHEDD_PROJECTION)
    except htcondor2.HTCondorException as exc:
        log.debug("schedd ads unavailable: %s", exc)
        schedd_ads = []
    local = local_name = None
    try:
        location = collector.locate(htcondor2.DaemonType.Schedd)
        local_name = location.get("Name")
        summary = htcondor2.Schedd(location).query(opts=htcondor2.QueryOpt.SummaryOnly)
        local = summary[0] if summary else None
    except htcondor2.HTCondorException as exc:
        log.debug("local schedd summary unavailable: %s", exc)
    figures.update(summarise_schedds(schedd_ads, local, local_name))
    figures["collector"] = str(htcondor2.param.get("COLLECTOR_HOST") or "local")
    return figures


def pool_figures(timeout: float = 5.0, *, python: str | None = None) -> dict[str, Any] | None:
    """:func:`query_pool` in a child process with a deadline; None on any failure or timeout."""
    if importlib.util.find_spec("htcondor2") is None:
        return None
    env = dict(os.environ)
    env.pop("PYTHONSTARTUP", None)
    try:
        done = subprocess.run(
            [python or sys.executable, "-m", "ema_agent.pool"], capture_output=True, text=True,
            timeout=timeout, stdin=subprocess.DEVNULL, env=env,
        )
    except subprocess.TimeoutExpired:
        log.debug("no pool figures: the query did not finish within %g s", timeout)
        return None
    except OSError as exc:
        log.debug("no pool figures: %s", exc)
        return None
    try:
        figures = json.loads(done.stdout or "null")
    except ValueError:
        log.debug("no pool figures: unreadable answer %r", done.stdout[:200])
        return None
    return figures if isinstance(figures, dict) else None


def make_pool_source(timeout: float = 5.0) -> Callable[[], dict[str, Any] | None]:
    """A ``pool_source`` for :class:`ema_agent.reporter.Reporter`."""

    def source() -> dict[str, Any] | None:
        return pool_figures(timeout)

    return source


def main() -> int:
    logging.basicConfig(level=logging.DEBUG if os.environ.get("POCKETGRID_POOL_DEBUG") else logging.WARNING,
                        stream=sys.stderr, format="%(levelname)s: %(message)s")
    try:
        figures = query_pool()
    except Exception as exc:  # noqa: BLE001 - report, never a traceback on the agent's stderr
        print(f"pool query failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        figures = None
    print(json.dumps(figures))
    return 0 if figures is not None else 1


if __name__ == "__main__":
    sys.exit(main())
