"""Status of a CondorExecutor job from its event log, in HTCondor's exact text format.

tests/unit/test_event_log.py covers each event kind on real logs (submit,
execute, evicted, terminated normally and by a signal, image size, shadow
exception, reconnect failed, held, aborted).  What the CondorExecutor adds is
the *sequence* a pocketgrid job goes through on a real schedd, and the one
event kind only written by our own writer there: **released**.

* submitted with ``hold = true``: the schedd's held event carries HoldReason
  "submitted on hold at user's request" and Code 15 (SetJobStatus() in
  submit_utils.cpp; CONDOR_HOLD_CODE::SubmittedOnHold), then our release;
* a hold while running (input transfer failed, code 13), ``condor_release``,
  a second run, normal termination;
* a proc removed while held (``Schedd.act(Remove)`` with pocketgrid's reason).

Every log is first read with htcondor2.JobEventLog, to prove the text is what
HTCondor itself parses, then through pocketgrid's reader.
"""
from __future__ import annotations

from pathlib import Path

import htcondor2
import pytest

from peer.event_log import EventLogReader, ProcState, overall_state

SCHEDD = "<172.18.0.3:9618?addrs=172.18.0.3-9618&alias=site-a&noUDP&sock=schedd_81_5f2c>"
STARTD = "<172.18.0.3:9618?addrs=172.18.0.3-9618&alias=site-a&noUDP&sock=startd_83_77d1>"


def ev(code: int, proc: int, when: str, *body: str) -> str:
    return f"{code:03d} (2345.{proc:03d}.000) 2025-03-04 {when} " + "\n".join(body) + "\n...\n"


SUBMITTED_ON_HOLD = "".join(
    ev(0, p, "10:00:00", f"Job submitted from host: {SCHEDD}")
    + ev(12, p, "10:00:00", "Job was held.", "\tsubmitted on hold at user's request", "\tCode 15 Subcode 0")
    for p in (0, 1)
)
RELEASED = "".join(ev(13, p, "10:00:01", "Job was released.", "\tpocketgrid: job accepted (by user condoruser)")
                   for p in (0, 1))
RUN_0 = (
    ev(40, 0, "10:00:03", "Started transferring input files", f"\tTransferring to host: {STARTD}")
    + ev(40, 0, "10:00:03", "Finished transferring input files")
    + ev(1, 0, "10:00:04", f"Job executing on host: {STARTD}", "\tSlotName: slot1_1@site-a",
         '\tCondorScratchDir = "/var/lib/condor/execute/dir_412"', "\tCpus = 1", "\tDisk = 4096", "\tMemory = 128")
    + ev(6, 0, "10:00:09", "Image size of job updated: 10624", "\t11  -  MemoryUsage of job (MB)",
         "\t10624  -  ResidentSetSize of job (KB)")
)
HELD_1 = ev(
    12, 1, "10:00:05", "Job was held.",
    "\tTransfer input files failure at execution point slot1_2@site-a while receiving files from access point "
    "site-a. Details: reading from file /srv/pocketgrid/stage/site-a.65f1/1/run1.txt: (errno 13) Permission denied",
    "\tCode 13 Subcode 13",
)
RELEASED_1 = ev(13, 1, "10:02:00", "Job was released.", "\tvia condor_release (by user condoruser)")
DONE_0 = ev(
    5, 0, "10:00:12", "Job terminated.", "\t(1) Normal termination (return value 0)",
    "\t\tUsr 0 00:00:01, Sys 0 00:00:00  -  Run Remote Usage",
    "\t\tUsr 0 00:00:00, Sys 0 00:00:00  -  Run Local Usage",
    "\t\tUsr 0 00:00:01, Sys 0 00:00:00  -  Total Remote Usage",
    "\t\tUsr 0 00:00:00, Sys 0 00:00:00  -  Total Local Usage",
    "\t2104  -  Run Bytes Sent By Job", "\t160411  -  Run Bytes Received By Job",
    "\t2104  -  Total Bytes Sent By Job", "\t160411  -  Total Bytes Received By Job",
    "\tPartitionable Resources :    Usage  Request Allocated ",
    "\t   Cpus                 :     0.05        1         1 ",
    "\t   Disk (KB)            :      312     4096      4096 ",
    "\t   Memory (MB)          :       11      128       128 ",
    "",
    "\tJob terminated of its own accord at 2025-03-04T10:00:12Z with exit-code 0.",
)
REMOVED_1 = ev(9, 1, "10:03:00", "Job was aborted.", "\tvia pocketgrid (removed by its owner) (by user condoruser)")


@pytest.fixture
def log(tmp_path: Path) -> Path:
    return tmp_path / "job.log"


def htcondor_reads(path: Path) -> list[tuple[str, int, int]]:
    """(event type name, cluster, proc) of every event, as htcondor2 itself reads the file."""
    return [(e.type.name, e.cluster, e.proc) for e in htcondor2.JobEventLog(str(path)).events(stop_after=0)]


def append(path: Path, text: str) -> None:
    with path.open("a") as fh:
        fh.write(text)


def test_submitted_on_hold_then_released_is_idle_with_no_hold_left(log: Path) -> None:
    append(log, SUBMITTED_ON_HOLD)
    assert [t for t, _, _ in htcondor_reads(log)] == ["SUBMIT", "JOB_HELD", "SUBMIT", "JOB_HELD"]
    reader = EventLogReader(log)
    assert reader.update()
    st = reader.procs[(2345, 0)]
    assert st.state is ProcState.HELD and st.hold_code == 15
    assert st.hold_reason == "submitted on hold at user's request"

    append(log, RELEASED)
    assert htcondor_reads(log)[-1] == ("JOB_RELEASED", 2345, 1)
    assert reader.update()
    for p in (0, 1):
        st = reader.procs[(2345, p)]
        assert st.state is ProcState.IDLE and (st.hold_reason, st.hold_code, st.hold_subcode) == (None, None, None)
    assert overall_state(reader.procs.values()) == "idle"


def test_hold_while_running_release_and_completion(log: Path) -> None:
    append(log, SUBMITTED_ON_HOLD + RELEASED + RUN_0 + HELD_1)
    types = [t for t, _, _ in htcondor_reads(log)]
    assert types[-4:] == ["FILE_TRANSFER", "EXECUTE", "IMAGE_SIZE", "JOB_HELD"]
    reader = EventLogReader(log)
    reader.update()
    running, held = reader.procs[(2345, 0)], reader.procs[(2345, 1)]
    assert running.state is ProcState.RUNNING and running.memory_mb == 11 and running.image_size_kb == 10624
    assert "alias=site-a" in (running.execute_host or "")
    assert held.state is ProcState.HELD and (held.hold_code, held.hold_subcode) == (13, 13)
    assert "Permission denied" in (held.hold_reason or "")
    assert overall_state(reader.procs.values()) == "running"

    append(log, RELEASED_1 + DONE_0)
    assert [t for t, _, _ in htcondor_reads(log)][-2:] == ["JOB_RELEASED", "JOB_TERMINATED"]
    assert reader.update()
    done, again = reader.procs[(2345, 0)], reader.procs[(2345, 1)]
    assert done.state is ProcState.COMPLETED and done.exit_code == 0 and done.memory_mb == 11
    assert again.state is ProcState.IDLE and again.hold_reason is None
    assert overall_state(reader.procs.values()) == "running"  # one finished, one waiting for a slot


def test_removed_while_held_is_removed_with_the_reason(log: Path) -> None:
    append(log, SUBMITTED_ON_HOLD + RELEASED + RUN_0 + HELD_1 + DONE_0 + REMOVED_1)
    assert htcondor_reads(log)[-1] == ("JOB_ABORTED", 2345, 1)
    reader = EventLogReader(log)
    reader.update()
    st = reader.procs[(2345, 1)]
    assert st.state is ProcState.REMOVED
    assert st.note == "via pocketgrid (removed by its owner) (by user condoruser)"
    assert overall_state(reader.procs.values()) == "removed"


def test_resume_from_saved_state_reads_only_the_new_condor_events(log: Path) -> None:
    append(log, SUBMITTED_ON_HOLD + RELEASED)
    first = EventLogReader(log)
    first.update()
    state = first.state_dict()
    append(log, RUN_0)
    resumed = EventLogReader.from_state(log, state)
    assert resumed.offset == state["offset"]
    assert resumed.update()
    assert resumed.procs[(2345, 0)].state is ProcState.RUNNING
    assert resumed.procs[(2345, 1)].state is ProcState.IDLE
