"""Pool figures for the coefficient (ema_agent/pool.py), from ads in HTCondor's own format.

The ads below are ``condor_status -l`` / ``condor_q -totals -l`` text cut
down to the attributes pool.py projects, parsed with classad2 (HTCondor's
ClassAd library).  Where no collector answers (the ``no_schedd`` fixture's
own HTCondor configuration, whatever the host runs), pool_figures() must say
None quickly, and the coefficient falls back to host figures.
"""
from __future__ import annotations

import subprocess
import sys
import time

import classad2

from ema_agent.coefficient import load_coefficient, pool_demand
from ema_agent.metrics import HostMetrics
from ema_agent.pool import pool_figures, summarise_schedds, summarise_startds
from tests.conftest import ROOT

# One 8-core machine with a partitionable slot (3 one-core jobs running in
# dynamic slots), and a 2-slot static machine (one claimed, one unclaimed),
# and a desktop in the Owner state.
STARTDS = """
Name = "slot1@worker1.example.org"
Machine = "worker1.example.org"
SlotType = "Partitionable"
PartitionableSlot = true
State = "Unclaimed"
Activity = "Idle"
Cpus = 5
TotalSlotCpus = 8

Name = "slot1_1@worker1.example.org"
Machine = "worker1.example.org"
SlotType = "Dynamic"
DynamicSlot = true
State = "Claimed"
Activity = "Busy"
Cpus = 1

Name = "slot1_2@worker1.example.org"
SlotType = "Dynamic"
DynamicSlot = true
State = "Claimed"
Activity = "Busy"
Cpus = 1

Name = "slot1_3@worker1.example.org"
SlotType = "Dynamic"
DynamicSlot = true
State = "Claimed"
Activity = "Busy"
Cpus = 1

Name = "slot1@worker2.example.org"
SlotType = "Static"
State = "Claimed"
Activity = "Busy"
Cpus = 1

Name = "slot2@worker2.example.org"
SlotType = "Static"
State = "Unclaimed"
Activity = "Idle"
Cpus = 1

Name = "slot1@desktop3.example.org"
SlotType = "Static"
State = "Owner"
Activity = "Idle"
Cpus = 4
"""

SCHEDD_ADS = """
Name = "site-a.example.org"
TotalIdleJobs = 40
TotalRunningJobs = 4
TotalHeldJobs = 1

Name = "other.example.org"
TotalIdleJobs = 6
TotalRunningJobs = 1
TotalHeldJobs = 0
"""

# condor_q -totals -l (Schedd.query(opts=QueryOpt.SummaryOnly)): the local schedd's live counters.
SUMMARY = """
MyType = "Summary"
AllusersJobs = 9
AllusersIdle = 3
AllusersRunning = 4
AllusersHeld = 2
MyJobs = 9
"""


def ads(text: str) -> list[classad2.ClassAd]:
    return list(classad2.parseAds(text))


def test_partitionable_slots_count_their_cores() -> None:
    f = summarise_startds(ads(STARTDS))
    # 8 places on worker1 (3 claimed), 2 static on worker2 (1 claimed), 1 owner-state desktop (busy)
    assert (f["total_slots"], f["claimed_slots"], f["idle_slots"]) == (11, 5, 6)
    assert (f["total_cores"], f["claimed_cores"], f["idle_cores"]) == (14, 8, 6)  # the desktop's 4 are busy
    assert f["slot_ads"] == 7  # what condor_status would count


def test_jobs_over_every_schedd_with_the_local_one_live() -> None:
    f = summarise_schedds(ads(SCHEDD_ADS), ads(SUMMARY)[0], "site-a.example.org")
    # the local schedd's collector ad (40 idle, stale) is replaced by its live summary (3 idle)
    assert (f["idle_jobs"], f["running_jobs"], f["held_jobs"]) == (9, 5, 2)
    assert (f["local_idle_jobs"], f["local_running_jobs"], f["schedds"]) == (3, 4, 2)
    only_ads = summarise_schedds(ads(SCHEDD_ADS))
    assert (only_ads["idle_jobs"], only_ads["schedds"]) == (46, 2)


def test_the_coefficient_uses_the_figures() -> None:
    pool = {**summarise_startds(ads(STARTDS)), **summarise_schedds(ads(SCHEDD_ADS), ads(SUMMARY)[0],
                                                                   "site-a.example.org")}
    assert pool_demand(pool) == (5 + 9) / 11
    host = HostMetrics(cpu_percent=95, clock_mhz=2000, memory_percent=50, load1=4, load5=4, load15=4, disk_io_mbps=0,
                       processes=300, cores=2, sampled_at=time.time())
    quiet = {**summarise_startds(ads(STARTDS)), "idle_jobs": 0}
    # A busy head node in front of a half-empty pool ranks below the same host with no pool figures...
    assert load_coefficient(host, pool=quiet) < load_coefficient(host)
    # ...and queued jobs (9 waiting for 6 free places here) make the site look fuller.
    assert load_coefficient(host, pool=pool) > load_coefficient(host, pool=quiet)


def test_empty_or_odd_ads_do_not_break_the_sums() -> None:
    assert summarise_startds([])["total_slots"] == 0
    f = summarise_startds([{"Name": "x", "State": "Unclaimed", "Cpus": "junk"}])
    assert (f["total_slots"], f["idle_slots"], f["total_cores"]) == (1, 1, 0)


def test_no_pool_here_means_none_quickly(no_schedd: str) -> None:
    started = time.monotonic()
    assert pool_figures(timeout=20) is None
    assert time.monotonic() - started < 20
    out = subprocess.run([sys.executable, "-m", "ema_agent.pool"], capture_output=True, text=True, cwd=ROOT,
                         timeout=60)
    assert out.returncode == 1 and out.stdout.strip() == "null"


def test_importing_pool_does_not_import_htcondor() -> None:
    code = "import sys, ema_agent.pool; print('htcondor2' in sys.modules, 'flask' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.stdout.split() == ["False", "False"], out.stderr


def test_no_pool_says_why_naming_the_collector(no_schedd: str, tmp_path) -> None:
    """What the agent's log says when it sends host figures: the collector it asked and what went wrong."""
    from ema_agent.pool import pool_query
    from tests.conftest import condor_environment, refused_address

    figures, reason = pool_query(timeout=20)  # the configuration's COLLECTOR_HOST (this test's: nothing listens)
    assert figures is None and no_schedd in reason and "did not answer" in reason
    assert len(reason) <= 200  # HTCondor's own words, cut to one short line
    with refused_address() as other:  # --collector wins over the configuration
        figures, reason = pool_query(timeout=20, collector=other)
    assert figures is None and other in reason and no_schedd not in reason
    bare = tmp_path / "bare_config"
    bare.write_text("# no COLLECTOR_HOST\n")
    with condor_environment({"CONDOR_CONFIG": str(bare)}):
        figures, reason = pool_query(timeout=20)
    assert figures is None and "names no collector" in reason and "--collector" in reason
