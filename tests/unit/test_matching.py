"""pocketgrid/matching.py: "why is my job idle?" with HTCondor's own ClassAd matching (classad2).

The slot and job ads are written as ``condor_status -l`` / ``condor_q -l``
print them (old ClassAd syntax) and parsed by classad2; the Requirements of
the job ads are what condor_submit stores (the user's requirements and the
clauses it adds).  Nothing here imitates a daemon: the ads are inputs.
"""
from __future__ import annotations

import classad2
import pytest

from pocketgrid.matching import (
    Match,
    analyze,
    capacity_ads,
    conjuncts,
    host_machine_ad,
    job_ad_from_submit,
    quantity,
)

# A 4-core partitionable slot with one 1-core job running in a dynamic slot (what is left: 3 cores,
# 5852 MB), as HTCondor 25 advertises a personal pool.
SLOTS = """
Name = "slot1@pool.example.org"
Machine = "pool.example.org"
SlotType = "Partitionable"
PartitionableSlot = true
State = "Unclaimed"
Arch = "X86_64"
OpSys = "LINUX"
Cpus = 3
TotalSlotCpus = 4
Memory = 5852
TotalSlotMemory = 7900
Disk = 40000000
TotalSlotDisk = 41000000
HasFileTransfer = true
Start = true
Requirements = START

Name = "slot1_1@pool.example.org"
Machine = "pool.example.org"
SlotType = "Dynamic"
DynamicSlot = true
State = "Claimed"
Arch = "X86_64"
OpSys = "LINUX"
Cpus = 1
Memory = 2048
Disk = 1000000
HasFileTransfer = true
Start = true
Requirements = START
"""

# condor_q -l of a job submitted with request_memory = 99999999 (condor_submit's own clauses appended)
BIG_JOB = """
ClusterId = 12
ProcId = 0
RequestCpus = 1
RequestDisk = DiskUsage
DiskUsage = 1
RequestMemory = 99999999
Requirements = (TARGET.Arch == "X86_64") && (TARGET.OpSys == "LINUX") && (TARGET.Disk >= RequestDisk) && (TARGET.Memory >= RequestMemory) && (TARGET.HasFileTransfer)
"""

NOPE_JOB = """
ClusterId = 13
ProcId = 0
RequestCpus = 1
RequestDisk = DiskUsage
DiskUsage = 1
RequestMemory = 128
Requirements = (Arch == "NOPE") && (TARGET.OpSys == "LINUX") && (TARGET.Disk >= RequestDisk) && (TARGET.Memory >= RequestMemory) && (TARGET.HasFileTransfer)
"""


def ads(text: str) -> list[classad2.ClassAd]:
    return list(classad2.parseAds(text, classad2.ParserType.Old))


def job(text: str) -> classad2.ClassAd:
    return ads(text)[0]


def test_request_memory_no_machine_has_is_named_with_the_values() -> None:
    slots = capacity_ads(ads(SLOTS))
    got = analyze(job(BIG_JOB), slots)
    assert (got.slots, got.of) == (0, 1)  # the dynamic slot is part of the partitionable one
    assert "TARGET.Memory >= RequestMemory" in got.failing
    assert "request_memory = 99999999" in got.failing and "Memory = 7900" in got.failing  # the whole machine


def test_a_requirement_on_an_attribute_names_the_slots_values() -> None:
    got = analyze(job(NOPE_JOB), capacity_ads(ads(SLOTS)))
    assert got.slots == 0 and got.failing.startswith('Arch == "NOPE"') and '"X86_64"' in got.failing


def test_a_job_that_fits_the_machine_matches_even_when_its_cores_are_busy_now() -> None:
    fits = job(BIG_JOB.replace("RequestMemory = 99999999", "RequestMemory = 7000"))
    assert analyze(fits, capacity_ads(ads(SLOTS))) == Match(1, 1)
    # Against what is free right now (5852 MB) it would not: capacity, not business, decides "never".
    assert analyze(fits, ads(SLOTS)[:1]).slots == 0


def test_the_slots_own_start_expression_is_reported() -> None:
    refusing = capacity_ads(ads(SLOTS.replace("Start = true", "Start = false", 1)))
    got = analyze(job(BIG_JOB.replace("99999999", "128")), refusing)
    assert got.slots == 0 and "START" in got.failing


def test_requirements_each_met_somewhere_but_never_together() -> None:
    a = host_machine_ad(name="a", cpus=2, memory_mb=8000, disk_kb=10**7, arch="X86_64", opsys="LINUX")
    b = host_machine_ad(name="b", cpus=16, memory_mb=1000, disk_kb=10**7, arch="X86_64", opsys="LINUX")
    j = job_ad_from_submit({"request_memory": "5000", "request_cpus": "8"})
    got = analyze(j, [a, b])
    assert (got.slots, got.of) == (0, 2) and "no slot meets all of them" in got.failing


def test_counts_every_matching_slot() -> None:
    hosts = [host_machine_ad(name=f"h{i}", cpus=4, memory_mb=m, disk_kb=10**7, arch="X86_64", opsys="LINUX")
             for i, m in enumerate((1000, 4000, 16000))]
    assert analyze(job_ad_from_submit({"request_memory": "3G"}), hosts) == Match(2, 3)


def test_job_ad_from_a_submit_file_for_a_site_that_runs_jobs_itself() -> None:
    host = host_machine_ad(name="laptop", cpus=4, memory_mb=7900, disk_kb=10**8, arch="X86_64", opsys="LINUX")
    assert analyze(job_ad_from_submit({"executable": "x.sh"}), [host]) == Match(1, 1)
    big = analyze(job_ad_from_submit({"request_memory": "99999999"}), [host])
    assert big.slots == 0 and "request_memory = 99999999" in big.failing and "Memory = 7900" in big.failing
    nope = analyze(job_ad_from_submit({"requirements": '(Arch == "NOPE")'}), [host])
    assert nope.slots == 0 and 'Arch == "NOPE"' in nope.failing
    # the user's own attributes are in the ad, as condor_submit puts them there
    mine = job_ad_from_submit({"+Wanted": "16000", "requirements": "TARGET.Memory >= MY.Wanted"})
    assert analyze(mine, [host]).slots == 0
    with pytest.raises(ValueError, match="requirements"):
        job_ad_from_submit({"requirements": "(Arch == "})


def test_quantities_with_units() -> None:
    mib, kib = 1 << 20, 1 << 10
    assert quantity("99999999", mib) == 99999999
    assert quantity("2G", mib) == 2048 and quantity("2 GB", mib) == 2048 and quantity("512M", mib) == 512
    assert quantity("1.5G", mib) == 1536 and quantity("100K", mib) == 1  # rounded up
    assert quantity("10M", kib) == 10240 and quantity("4096", kib) == 4096
    assert quantity("ifThenElse(x, 1, 2)", mib) is None  # an expression: kept as one


def test_conjuncts_split_only_the_top_level() -> None:
    assert conjuncts('(Arch == "NOPE") && (TARGET.Memory >= RequestMemory)') == [
        'Arch == "NOPE"', "TARGET.Memory >= RequestMemory"]
    assert conjuncts('(a && b)') == ["a", "b"]
    assert conjuncts('(a) || (b && c)') == ["(a) || (b && c)"]
    assert conjuncts('s == "x && y" && t') == ['s == "x && y"', "t"]
    assert conjuncts('member(x, {1, 2}) && ((y))') == ["member(x, {1, 2})", "y"]
    for part in conjuncts(job(NOPE_JOB).lookup("Requirements").__str__()):
        classad2.ExprTree(part)  # every part parses again
