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

Which collector: ``--collector HOST[:PORT]`` (``pocketgrid agent --collector``),
else ``COLLECTOR_HOST`` of HTCondor's configuration (``CONDOR_CONFIG``), as for
``condor_status``; with neither, there is no pool and the agent says so.

Command line: ``python -m ema_agent.pool [--collector HOST[:PORT]]`` prints the
figures as JSON (exit 0), or ``null`` with ``no pool: <reason>`` on stderr (exit 1).
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sys
from typing import Any, Iterable, Mapping

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


class NoPool(RuntimeError):
    """No pool figures; the message says why (for the agent's log)."""


def query_pool(collector_host: str | None = None) -> dict[str, Any] | None:
    """Ask the collector and the local schedd, in this process; None when there is no pool.

    ``collector_host`` (``host[:port]``) names the collector; without it, the
    one HTCondor's configuration names (``COLLECTOR_HOST``), as for
    ``condor_status``.  Blocks (holding the GIL) while a daemon is slow: call
    it in a process of its own, as :func:`pool_figures` does.
    """
    try:
        return _query_pool(collector_host)
    except NoPool as exc:
        log.debug("no pool figures: %s", exc)
        return None


def _query_pool(collector_host: str | None) -> dict[str, Any]:
    """:func:`query_pool`, raising NoPool with the reason."""
    try:
        import htcondor2
    except ImportError:
        raise NoPool("htcondor2 is not installed (pip install \"pocketgrid[server]\")") from None
    configured = htcondor2.param.get("COLLECTOR_HOST")
    where = collector_host or configured
    if not where:
        raise NoPool("HTCondor's configuration names no collector (COLLECTOR_HOST) and none was given "
                     "(--collector HOST[:PORT])")
    collector = htcondor2.Collector(collector_host) if collector_host else htcondor2.Collector()
    try:
        startds = collector.query(htcondor2.AdType.Startd, projection=STARTD_PROJECTION)
    except htcondor2.HTCondorException as exc:
        raise NoPool(f"the collector {where} did not answer: {_short(str(exc))}") from None
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
    figures["collector"] = str(where)
    return figures


def _short(text: str, limit: int = 200) -> str:
    """One line, at most ``limit`` characters: HTCondor's errors can be long."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def pool_query(timeout: float = 5.0, *, collector: str | None = None,
               python: str | None = None) -> tuple[dict[str, Any] | None, str | None]:
    """:func:`query_pool` in a child process with a deadline: ``(figures, None)`` or ``(None, why not)``."""
    if importlib.util.find_spec("htcondor2") is None:
        return None, "htcondor2 is not installed (pip install \"pocketgrid[server]\")"
    env = dict(os.environ)
    env.pop("PYTHONSTARTUP", None)
    command = [python or sys.executable, "-m", "ema_agent.pool"] + (["--collector", collector] if collector else [])
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                              env=env)
    except subprocess.TimeoutExpired:
        return None, f"the pool query did not finish within {timeout:g} s"
    except OSError as exc:
        return None, f"cannot run the pool query: {exc}"
    try:
        figures = json.loads(done.stdout or "null")
    except ValueError:
        return None, f"unreadable answer from the pool query: {done.stdout[:200]!r}"
    if isinstance(figures, dict):
        return figures, None
    reason = next((ln for ln in reversed(done.stderr.splitlines()) if ln.startswith("no pool: ")), "")
    return None, _short(reason[len("no pool: "):] or done.stderr.strip() or "no pool figures")


def pool_figures(timeout: float = 5.0, *, collector: str | None = None,
                 python: str | None = None) -> dict[str, Any] | None:
    """:func:`pool_query` without the reason; None on any failure or timeout."""
    figures, reason = pool_query(timeout, collector=collector, python=python)
    if figures is None:
        log.debug("no pool figures: %s", reason)
    return figures


class PoolSource:
    """A ``pool_source`` for :class:`ema_agent.reporter.Reporter`: the figures, and why there are none.

    ``last_reason`` says why the last call returned None (the reporter logs
    it when the kind of figures it sends changes).
    """

    def __init__(self, timeout: float = 5.0, *, collector: str | None = None) -> None:
        self.timeout = timeout
        self.collector = collector or None
        self.last_reason: str | None = None

    def __call__(self) -> dict[str, Any] | None:
        figures, self.last_reason = pool_query(self.timeout, collector=self.collector)
        return figures


def make_pool_source(timeout: float = 5.0, *, collector: str | None = None) -> PoolSource:
    """A ``pool_source`` for :class:`ema_agent.reporter.Reporter` (see :class:`PoolSource`)."""
    return PoolSource(timeout, collector=collector)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m ema_agent.pool", description="print the pool figures as JSON")
    parser.add_argument("--collector", metavar="HOST[:PORT]", help="default: COLLECTOR_HOST of HTCondor's configuration")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if os.environ.get("POCKETGRID_POOL_DEBUG") else logging.WARNING,
                        stream=sys.stderr, format="%(levelname)s: %(message)s")
    try:
        figures = _query_pool(args.collector)
    except NoPool as exc:
        print(f"no pool: {exc}", file=sys.stderr)
        figures = None
    except Exception as exc:  # noqa: BLE001 - report, never a traceback on the agent's stderr
        print(f"no pool: the pool query failed: {type(exc).__name__}: {_short(str(exc))}", file=sys.stderr)
        figures = None
    print(json.dumps(figures))
    return 0 if figures is not None else 1


if __name__ == "__main__":
    sys.exit(main())
