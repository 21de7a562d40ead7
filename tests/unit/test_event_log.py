"""Tests for peer.event_log: HTCondor user job event log writer and reader.

The writer's output is checked against the real parser (``htcondor2.JobEventLog``),
and the reader against hand-written logs in the exact text a schedd/shadow
writes (``src/condor_utils/condor_event.cpp`` formatBody(), as seen in real logs).
"""

from __future__ import annotations

import fcntl
import json
import multiprocessing
import os
import time
from pathlib import Path

import htcondor2
import pytest

from peer.event_log import (
    TERMINAL_STATES,
    EventLogReader,
    EventLogWriter,
    ProcState,
    ProcStatus,
    overall_state,
)

ET = htcondor2.JobEventType
WHEN = 1_795_318_200.0  # a fixed instant, so timestamps are deterministic
HOST = "<127.0.0.1:0?alias=pocketgrid>"


def parse(path: Path) -> list[htcondor2.JobEvent]:
    """All events in ``path`` according to HTCondor's own reader."""
    return list(htcondor2.JobEventLog(str(path)).events(stop_after=0))


@pytest.fixture
def log(tmp_path: Path) -> Path:
    return tmp_path / "job.log"


# ---------------------------------------------------------------------------
# Writer
# ---------------------------------------------------------------------------


def test_header_is_condor_classic_format(log: Path) -> None:
    EventLogWriter(log).submit(7, 0, HOST, when=WHEN)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(WHEN))
    assert log.read_text() == f"000 (007.000.000) {stamp} Job submitted from host: {HOST}\n...\n"


def test_large_ids_are_not_truncated(log: Path) -> None:
    EventLogWriter(log).execute(123456, 1234, HOST, when=WHEN)
    assert log.read_text().startswith("001 (123456.1234.000) ")
    (event,) = parse(log)
    assert (event.cluster, event.proc) == (123456, 1234)


# (writer call, expected type, expected fields of the parsed event)
ROUND_TRIPS = [
    (lambda w: w.submit(7, 0, HOST, when=WHEN), ET.SUBMIT, {"SubmitHost": HOST}),
    (lambda w: w.execute(7, 1, "<10.0.0.2:9618>", when=WHEN), ET.EXECUTE,
     {"ExecuteHost": "<10.0.0.2:9618>"}),
    (lambda w: w.image_size(7, 2, 2048, 12, 11500, when=WHEN), ET.IMAGE_SIZE,
     {"Size": 2048, "MemoryUsage": 12, "ResidentSetSize": 11500}),
    (lambda w: w.terminated(7, 3, return_value=0, when=WHEN), ET.JOB_TERMINATED,
     {"TerminatedNormally": True, "ReturnValue": 0}),
    (lambda w: w.terminated(7, 4, return_value=42, usage=(3725, 2), when=WHEN), ET.JOB_TERMINATED,
     {"TerminatedNormally": True, "ReturnValue": 42,
      "RunRemoteUsage": "Usr 0 01:02:05, Sys 0 00:00:02"}),
    (lambda w: w.terminated(7, 5, signal=9, when=WHEN), ET.JOB_TERMINATED,
     {"TerminatedNormally": False, "TerminatedBySignal": 9}),
    (lambda w: w.terminated(7, 6, signal=11, core_file="/scratch/core.77", when=WHEN),
     ET.JOB_TERMINATED, {"TerminatedBySignal": 11, "CoreFile": "/scratch/core.77"}),
    (lambda w: w.evicted(7, 7, "machine draining", when=WHEN), ET.JOB_EVICTED,
     {"Reason": "machine draining", "Checkpointed": False, "TerminatedAndRequeued": False}),
    (lambda w: w.aborted(7, 8, "via condor_rm (by user alice)", when=WHEN), ET.JOB_ABORTED,
     {"Reason": "via condor_rm (by user alice)"}),
    (lambda w: w.held(7, 9, "Failed to execute 'run.sh': Permission denied", 6, 13, when=WHEN),
     ET.JOB_HELD, {"HoldReason": "Failed to execute 'run.sh': Permission denied",
                   "HoldReasonCode": 6, "HoldReasonSubCode": 13}),
    (lambda w: w.released(7, 10, "via condor_release (by user alice)", when=WHEN), ET.JOB_RELEASED,
     {"Reason": "via condor_release (by user alice)"}),
    (lambda w: w.shadow_exception(7, 11, "input file vanished", when=WHEN), ET.SHADOW_EXCEPTION,
     {"Message": "input file vanished"}),
]


@pytest.mark.parametrize("write, etype, fields", ROUND_TRIPS)
def test_every_written_event_parses_with_htcondor(log: Path, write, etype, fields) -> None:
    write(EventLogWriter(log))
    (event,) = parse(log)
    assert event.type == etype
    assert event.cluster == 7
    assert event.timestamp == int(WHEN)
    for key, value in fields.items():
        assert event[key] == value, key


def test_all_events_in_one_log_parse_in_order(log: Path) -> None:
    w = EventLogWriter(log)
    for write, _, _ in ROUND_TRIPS:
        write(w)
    events = parse(log)
    assert [(e.type, e.proc) for e in events] == [(t, i) for i, (_, t, _) in enumerate(ROUND_TRIPS)]


def test_multiline_text_is_flattened_and_cannot_end_the_event(log: Path) -> None:
    w = EventLogWriter(log)
    w.held(1, 0, "first line\n...\nthird\r\nfourth", code=13, when=WHEN)
    w.aborted(1, 0, "\n...\n", when=WHEN)  # would be a sync line if not flattened
    w.released(1, 1, "ok", when=WHEN)
    held, aborted, released = parse(log)
    assert held["HoldReason"] == "first line|...|third |fourth"
    assert held["HoldReasonCode"] == 13
    assert aborted["Reason"] == "|...|"
    assert (released.type, released.proc) == (ET.JOB_RELEASED, 1)


def test_empty_hold_reason_is_condors_reason_unspecified(log: Path) -> None:
    EventLogWriter(log).held(1, 0, "", when=WHEN)
    assert "\tReason unspecified\n\tCode 0 Subcode 0\n" in log.read_text()


def test_terminated_needs_exactly_one_outcome(log: Path) -> None:
    w = EventLogWriter(log)
    with pytest.raises(ValueError):
        w.terminated(1, 0)
    with pytest.raises(ValueError):
        w.terminated(1, 0, return_value=0, signal=9)
    assert not log.exists()


# ---------------------------------------------------------------------------
# Reader on logs as a real schedd/shadow writes them
# ---------------------------------------------------------------------------

RUSAGE4 = (
    "\t\tUsr 0 00:00:01, Sys 0 00:00:00  -  Run Remote Usage\n"
    "\t\tUsr 0 00:00:00, Sys 0 00:00:00  -  Run Local Usage\n"
    "\t\tUsr 0 00:00:01, Sys 0 00:00:00  -  Total Remote Usage\n"
    "\t\tUsr 0 00:00:00, Sys 0 00:00:00  -  Total Local Usage\n"
)
BYTES4 = (
    "\t1415  -  Run Bytes Sent By Job\n"
    "\t821  -  Run Bytes Received By Job\n"
    "\t1415  -  Total Bytes Sent By Job\n"
    "\t821  -  Total Bytes Received By Job\n"
)

# A complete successful run, including the events we ignore (file transfer 040).
REAL_COMPLETED = (
    "000 (5739.000.000) 2024-07-10 10:44:20 Job submitted from host: <128.104.100.43:9618?addrs=128.104.100.43-9618&alias=ap40.uw.osg-htc.org&noUDP&sock=schedd_35391_dc5c>\n"
    "...\n"
    "040 (5739.000.000) 2024-07-10 10:45:10 Started transferring input files\n"
    "\tTransferring to host: <128.104.55.42:9618?addrs=128.104.55.42-9618&alias=e2337.chtc.wisc.edu&noUDP&sock=slot1_4_1883_7a2c_61241>\n"
    "...\n"
    "001 (5739.000.000) 2024-07-10 10:45:11 Job executing on host: <128.104.55.42:9618?addrs=128.104.55.42-9618&alias=e2337.chtc.wisc.edu&noUDP&sock=startd_1433_4ac5>\n"
    "\tSlotName: slot1_4@e2337.chtc.wisc.edu\n"
    "\tCondorScratchDir = \"/var/lib/condor/execute/dir_3290519\"\n"
    "\tCpus = 1\n"
    "\tDisk = 1048576\n"
    "\tMemory = 1024\n"
    "...\n"
    "006 (5739.000.000) 2024-07-10 10:45:20 Image size of job updated: 72\n"
    "\t1  -  MemoryUsage of job (MB)\n"
    "\t72  -  ResidentSetSize of job (KB)\n"
    "...\n"
    "006 (5739.000.000) 2024-07-10 10:46:11 Image size of job updated: 4072\n"
    "\t4  -  MemoryUsage of job (MB)\n"
    "\t4072  -  ResidentSetSize of job (KB)\n"
    "...\n"
    "005 (5739.000.000) 2024-07-10 10:46:11 Job terminated.\n"
    "\t(1) Normal termination (return value 0)\n"
    + RUSAGE4 + BYTES4 +
    "\tPartitionable Resources :    Usage  Request Allocated \n"
    "\t   Cpus                 :     0.01        1         1 \n"
    "\t   Disk (KB)            :       40     1024   1048576 \n"
    "\t   Memory (MB)          :        4     1024      1024 \n"
    "\n"
    "\tJob terminated of its own accord at 2024-07-10T15:46:11Z with exit-code 0.\n"
    "...\n"
)

# Legacy "MM/DD" dates, as pre-8.8 schedds (and many archived logs) write them.
REAL_ABNORMAL = (
    "000 (085.000.000) 08/29 08:46:15 Job submitted from host: <10.178.6.3:43563>\n"
    "...\n"
    "001 (085.000.000) 08/29 08:46:18 Job executing on host: <10.178.7.46:42177>\n"
    "...\n"
    "005 (085.000.000) 08/29 08:46:20 Job terminated.\n"
    "\t(0) Abnormal termination (signal 11)\n"
    "\t(1) Corefile in: /var/lib/condor/execute/dir_1/core.4242\n"
    + RUSAGE4 + BYTES4 +
    "...\n"
)

REAL_HELD = (
    "000 (101.000.000) 2024-03-01 12:00:00 Job submitted from host: <10.0.0.1:9618>\n"
    "...\n"
    "012 (101.000.000) 2024-03-01 12:00:05 Job was held.\n"
    "\tError from slot1@worker.example.org: Failed to execute '/home/alice/run.sh': (errno=13: 'Permission denied')\n"
    "\tCode 6 Subcode 13\n"
    "...\n"
)

# A node vanished: disconnect, failed reconnect, eviction, requeue; then a
# second attempt dies in the shadow.
REAL_RECONNECT = (
    "000 (12116473.013.000) 2024-05-13 01:00:00 Job submitted from host: <10.0.0.1:9618>\n"
    "...\n"
    "001 (12116473.013.000) 2024-05-13 01:01:00 Job executing on host: <10.128.72.93:9618?addrs=10.128.72.93-9618&alias=bad-host.example.com>\n"
    "...\n"
    "022 (12116473.013.000) 2024-05-13 01:10:00 Job disconnected, attempting to reconnect\n"
    "    Socket between submit and execute hosts closed unexpectedly\n"
    "    Trying to reconnect to slot1_1@bad-host.example.com <10.128.72.93:9618?addrs=10.128.72.93-9618&alias=bad-host.example.com&noUDP&sock=startd_2951_b811>\n"
    "...\n"
    "024 (12116473.013.000) 2024-05-13 01:11:20 Job reconnection failed\n"
    "    Job not found at execution machine\n"
    "    Can not reconnect to slot1_1@bad-host.example.com, rescheduling job\n"
    "...\n"
)
REAL_EVICTED = (
    "004 (12116473.013.000) 2024-05-13 01:11:20 Job was evicted.\n"
    "\t(0) CPU times\n"
    "\t\tUsr 0 00:00:00, Sys 0 00:00:00  -  Run Remote Usage\n"
    "\t\tUsr 0 00:00:00, Sys 0 00:00:00  -  Run Local Usage\n"
    "\t0  -  Run Bytes Sent By Job\n"
    "\t0  -  Run Bytes Received By Job\n"
    "\tReason: Job not found at execution machine\n"
    "...\n"
)
REAL_SHADOW = (
    "001 (12116473.013.000) 2024-05-13 01:20:00 Job executing on host: <10.128.72.94:9618>\n"
    "...\n"
    "007 (12116473.013.000) 2024-05-13 01:20:01 Shadow exception!\n"
    "\tError from slot1@good-host.example.com: Failed to open '/home/alice/in.txt' as standard input: No such file or directory (errno 2)\n"
    "\t0  -  Run Bytes Sent By Job\n"
    "\t0  -  Run Bytes Received By Job\n"
    "...\n"
)
REAL_RECONNECTED = (
    "000 (55.000.000) 2024-05-13 02:00:00 Job submitted from host: <10.0.0.1:9618>\n"
    "...\n"
    "001 (55.000.000) 2024-05-13 02:00:10 Job executing on host: <10.0.0.7:9618>\n"
    "...\n"
    "022 (55.000.000) 2024-05-13 02:05:00 Job disconnected, attempting to reconnect\n"
    "    Socket between submit and execute hosts closed unexpectedly\n"
    "    Trying to reconnect to slot1@w7.example.org <10.0.0.7:9618?addrs=10.0.0.7-9618>\n"
    "...\n"
    "023 (55.000.000) 2024-05-13 02:05:30 Job reconnected to slot1@w7.example.org\n"
    "    startd address: <10.0.0.7:9618?addrs=10.0.0.7-9618>\n"
    "    starter address: <10.0.0.7:9618?addrs=10.0.0.7-9618&sock=starter_1_a>\n"
    "...\n"
)
REAL_REMOVED = (
    "000 (60.002.000) 2024-05-13 03:00:00 Job submitted from host: <10.0.0.1:9618>\n"
    "...\n"
    "009 (60.002.000) 2024-05-13 03:00:09 Job was aborted.\n"
    "\tvia condor_rm (by user alice)\n"
    "...\n"
)
REAL_EXEC_ERROR = (
    "000 (61.000.000) 2024-05-13 04:00:00 Job submitted from host: <10.0.0.1:9618>\n"
    "...\n"
    "002 (61.000.000) 2024-05-13 04:00:03 (1) Job file not executable.\n"
    "...\n"
)


def read_all(log: Path, text: str) -> EventLogReader:
    log.write_text(text)
    reader = EventLogReader(log)
    assert reader.update() is True
    return reader


def test_real_normal_termination(log: Path) -> None:
    st = read_all(log, REAL_COMPLETED).procs[(5739, 0)]
    assert st.state is ProcState.COMPLETED
    assert (st.exit_code, st.signal) == (0, None)
    assert st.execute_host is not None and "alias=e2337.chtc.wisc.edu" in st.execute_host
    assert st.image_size_kb == 4072
    assert st.memory_mb == 4  # from the last image-size event and the resource table
    assert st.submitted_at is not None and st.started_at is not None and st.finished_at is not None
    assert st.finished_at - st.started_at == 60
    assert st.started_at - st.submitted_at == 51


def test_real_abnormal_termination_legacy_dates(log: Path) -> None:
    st = read_all(log, REAL_ABNORMAL).procs[(85, 0)]
    assert st.state is ProcState.FAILED
    assert (st.exit_code, st.signal) == (None, 11)
    assert st.note == "core dumped: /var/lib/condor/execute/dir_1/core.4242"
    assert st.execute_host == "<10.178.7.46:42177>"


def test_real_held_with_code(log: Path) -> None:
    st = read_all(log, REAL_HELD).procs[(101, 0)]
    assert st.state is ProcState.HELD
    assert st.hold_code == 6 and st.hold_subcode == 13
    assert st.hold_reason is not None and "Permission denied" in st.hold_reason


def test_real_reconnect_failed_evicted_then_shadow_exception(log: Path) -> None:
    reader = read_all(log, REAL_RECONNECT)
    st = reader.procs[(12116473, 13)]
    assert st.state is ProcState.IDLE
    assert st.note == "reconnect failed: Job not found at execution machine"

    with log.open("a") as f:
        f.write(REAL_EVICTED)
    assert reader.update() is True
    assert st.state is ProcState.IDLE and st.evictions == 1
    assert st.note == "Job not found at execution machine"

    with log.open("a") as f:
        f.write(REAL_SHADOW)
    assert reader.update() is True
    assert st.state is ProcState.IDLE  # requeued by Condor
    assert st.note is not None and st.note.startswith("Error from slot1@good-host.example.com")
    assert st.execute_host == "<10.128.72.94:9618>"


def test_real_disconnect_then_reconnect_keeps_running(log: Path) -> None:
    st = read_all(log, REAL_RECONNECTED).procs[(55, 0)]
    assert st.state is ProcState.RUNNING
    assert st.note == "reconnected to slot1@w7.example.org"


def test_real_abort_and_executable_error(log: Path) -> None:
    reader = read_all(log, REAL_REMOVED + REAL_EXEC_ERROR)
    removed, broken = reader.procs[(60, 2)], reader.procs[(61, 0)]
    assert removed.state is ProcState.REMOVED
    assert removed.note == "via condor_rm (by user alice)"
    assert broken.state is ProcState.FAILED
    assert broken.note == "executable error: job file not executable"


def test_release_clears_hold_and_unknown_events_are_ignored(log: Path) -> None:
    reader = read_all(log, REAL_HELD)
    w = EventLogWriter(log)
    w.released(101, 0, "via condor_release (by user alice)", when=WHEN)
    with log.open("a") as f:  # events we do not map: file transfer, job ad information
        f.write("040 (101.000.000) 2024-03-01 12:01:00 Started transferring input files\n"
                "\tTransferring to host: <10.0.0.9:9618>\n...\n"
                "028 (101.000.000) 2024-03-01 12:01:01 Job ad information event triggered.\n"
                "Size = 4\n...\n")
    assert reader.update() is True
    st = reader.procs[(101, 0)]
    assert st.state is ProcState.IDLE
    assert (st.hold_reason, st.hold_code, st.hold_subcode) == (None, None, None)
    with log.open("a") as f:
        f.write("040 (101.000.000) 2024-03-01 12:02:00 Finished transferring input files\n...\n")
    assert reader.update() is False


def test_terminal_proc_is_not_flipped_back_except_by_resubmit(log: Path) -> None:
    w = EventLogWriter(log)
    w.submit(3, 0, HOST, when=WHEN)
    w.execute(3, 0, HOST, when=WHEN + 1)
    w.terminated(3, 0, return_value=0, when=WHEN + 2)
    reader = EventLogReader(log)
    reader.update()
    w.execute(3, 0, HOST, when=WHEN + 3)
    w.held(3, 0, "late", code=3, when=WHEN + 4)
    w.shadow_exception(3, 0, "late", when=WHEN + 5)
    w.evicted(3, 0, "late", when=WHEN + 6)
    assert reader.update() is False
    st = reader.procs[(3, 0)]
    assert (st.state, st.exit_code, st.evictions, st.note) == (ProcState.COMPLETED, 0, 0, None)

    w.image_size(3, 0, 900, 9, 800, when=WHEN + 7)  # late numbers are still recorded
    assert reader.update() is True
    assert st.state is ProcState.COMPLETED and st.memory_mb == 9

    w.submit(3, 0, HOST, when=WHEN + 8)
    assert reader.update() is True
    assert reader.procs[(3, 0)] == ProcStatus(3, 0, ProcState.IDLE, submitted_at=WHEN + 8,
                                              history=[{"at": WHEN + 8, "event": "submit", "state": "idle"}])


# ---------------------------------------------------------------------------
# Reasons belong to the current state; the history keeps the earlier ones
# ---------------------------------------------------------------------------


def test_held_then_removed_shows_the_removal_not_the_hold(log: Path) -> None:
    w = EventLogWriter(log)
    w.submit(7, 0, HOST, when=WHEN)
    w.execute(7, 0, HOST, when=WHEN + 1)
    w.held(7, 0, "held on exit by the submit file", code=3, subcode=42, when=WHEN + 2)
    reader = EventLogReader(log)
    reader.update()
    st = reader.procs[(7, 0)]
    assert (st.state, st.reason, st.hold_code) == (ProcState.HELD, "held on exit by the submit file", 3)

    w.aborted(7, 0, "removed by user", when=WHEN + 3)
    assert reader.update() is True
    st = reader.procs[(7, 0)]
    assert st.state is ProcState.REMOVED
    assert (st.hold_reason, st.hold_code, st.hold_subcode) == (None, None, None)
    assert st.reason == st.note == "removed by user"
    assert [(h["event"], h["state"], h.get("reason")) for h in st.history] == [
        ("submit", "idle", None),
        ("execute", "running", None),
        ("job_held", "held", "held on exit by the submit file"),
        ("job_aborted", "removed", "removed by user"),
    ]
    assert [h["at"] for h in st.history] == [WHEN, WHEN + 1, WHEN + 2, WHEN + 3]


def test_evicted_then_completed_has_no_reason(log: Path) -> None:
    w = EventLogWriter(log)
    w.submit(8, 0, HOST, when=WHEN)
    w.execute(8, 0, HOST, when=WHEN + 1)
    w.evicted(8, 0, "Startd was shutdown", when=WHEN + 2)
    reader = EventLogReader(log)
    reader.update()
    st = reader.procs[(8, 0)]
    assert (st.state, st.reason, st.evictions) == (ProcState.IDLE, "Startd was shutdown", 1)

    w.execute(8, 0, HOST, when=WHEN + 3)
    reader.update()
    assert (st.state, st.reason) == (ProcState.RUNNING, None)  # running again: the eviction is over
    w.terminated(8, 0, return_value=0, when=WHEN + 4)
    reader.update()
    assert (st.state, st.exit_code, st.note, st.evictions) == (ProcState.COMPLETED, 0, None, 1)
    assert ("job_evicted", "idle", "Startd was shutdown") in [
        (h["event"], h["state"], h.get("reason")) for h in st.history]
    assert st.history[-1] == {"at": WHEN + 4, "event": "job_terminated", "state": "completed"}


def test_released_proc_is_idle_without_a_reason_and_the_release_is_history(log: Path) -> None:
    w = EventLogWriter(log)
    w.submit(9, 0, HOST, when=WHEN)
    w.held(9, 0, "interpreter missing", code=6, when=WHEN + 1)
    w.released(9, 0, "released by its owner", when=WHEN + 2)
    st = EventLogReader(log)
    st.update()
    proc = st.procs[(9, 0)]
    assert (proc.state, proc.reason) == (ProcState.IDLE, None)
    assert proc.history[-1] == {"at": WHEN + 2, "event": "job_released", "state": "idle",
                                "reason": "released by its owner"}


def test_history_is_bounded_and_survives_a_resume(log: Path) -> None:
    from peer.event_log import HISTORY_MAX

    w = EventLogWriter(log)
    w.submit(4, 0, HOST, when=WHEN)
    for k in range(HISTORY_MAX):
        w.execute(4, 0, HOST, when=WHEN + 2 * k + 1)
        w.evicted(4, 0, f"preempted {k}", when=WHEN + 2 * k + 2)
    reader = EventLogReader(log)
    reader.update()
    history = reader.procs[(4, 0)].history
    assert len(history) == HISTORY_MAX
    assert history[-1]["reason"] == f"preempted {HISTORY_MAX - 1}"
    resumed = EventLogReader.from_state(log, json.loads(json.dumps(reader.state_dict())))
    assert resumed.procs[(4, 0)].history == history


def test_stale_reasons_saved_by_an_older_version_are_dropped_on_load() -> None:
    old = {"cluster": 1, "proc": 0, "state": "removed", "hold_reason": "held on exit", "hold_code": 3,
           "note": "removed by user"}
    st = ProcStatus.from_dict(old)
    assert (st.hold_reason, st.hold_code, st.reason) == (None, None, "removed by user")
    done = ProcStatus.from_dict({"cluster": 1, "proc": 1, "state": "completed", "exit_code": 0,
                                 "note": "Startd was shutdown", "evictions": 1})
    assert (done.note, done.evictions, done.history) == (None, 1, [])


# ---------------------------------------------------------------------------
# Incremental reading, partial events, resume
# ---------------------------------------------------------------------------


def test_missing_log_then_incremental_updates(log: Path) -> None:
    reader = EventLogReader(log)
    assert reader.update() is False and reader.procs == {}

    w = EventLogWriter(log)
    w.submit(9, 0, HOST, when=WHEN)
    w.submit(9, 1, HOST, when=WHEN)
    assert reader.update() is True
    assert {k: s.state for k, s in reader.procs.items()} == {
        (9, 0): ProcState.IDLE, (9, 1): ProcState.IDLE}
    assert reader.update() is False  # nothing new

    w.execute(9, 1, HOST, when=WHEN + 1)
    w.evicted(9, 1, "preempted", when=WHEN + 2)
    w.execute(9, 1, "<10.0.0.3:9618>", when=WHEN + 3)
    assert reader.update() is True
    st0, st1 = reader.procs[(9, 0)], reader.procs[(9, 1)]
    assert st0 == ProcStatus(9, 0, submitted_at=WHEN, history=[{"at": WHEN, "event": "submit", "state": "idle"}])  # untouched
    assert (st1.state, st1.evictions, st1.execute_host) == (ProcState.RUNNING, 1, "<10.0.0.3:9618>")
    assert st1.started_at == WHEN + 3
    assert reader.update() is False
    assert reader.offset == log.stat().st_size


def test_event_that_changes_nothing_reports_no_change(log: Path) -> None:
    w = EventLogWriter(log)
    w.submit(2, 0, HOST, when=WHEN)
    w.image_size(2, 0, 100, 1, 90, when=WHEN)
    reader = EventLogReader(log)
    assert reader.update() is True
    w.image_size(2, 0, 100, 1, 90, when=WHEN + 60)  # same numbers again
    assert reader.update() is False


def _append_raw(path: Path, data: str) -> None:
    with path.open("a") as f:
        f.write(data)


HELD_TEXT = EventLogWriter._render(
    12, 4, 0, WHEN, ("Job was held.", "\tsome reason", "\tCode 21 Subcode 2")).decode()


def test_partially_written_event_at_eof_is_read_once_complete(log: Path) -> None:
    """With its header line complete, a half-written event (as a writer that
    does not take our lock could leave it) is not returned; htcondor2 keeps
    its offset in front of it and the event is read whole once finished.

    (Cuts inside the header line are left out on purpose: there htcondor2
    sleep(1)s in C++ despite stop_after=0 - see the comment in
    EventLogReader.update() - which would make this test slow.)"""
    w = EventLogWriter(log)
    w.submit(4, 0, HOST, when=WHEN)
    reader = EventLogReader(log)
    assert reader.update() is True
    start = reader.offset
    text_before = log.read_text()
    first_line = HELD_TEXT.index("\n") + 1
    for cut in (first_line, first_line + 5, HELD_TEXT.index("\tCode"),
                len(HELD_TEXT) - 4, len(HELD_TEXT) - 1):
        log.write_text(text_before + HELD_TEXT[:cut])
        fresh = EventLogReader.from_state(log, reader.state_dict())
        assert fresh.update() is False, cut
        assert fresh.procs[(4, 0)].state is ProcState.IDLE
        assert fresh.offset == start, cut
        _append_raw(log, HELD_TEXT[cut:])
        assert fresh.update() is True, cut
        st = fresh.procs[(4, 0)]
        assert (st.state, st.hold_code, st.hold_subcode) == (ProcState.HELD, 21, 2), cut
        assert fresh.offset == log.stat().st_size


def test_htcondor2_drops_an_event_when_it_sees_only_its_number(log: Path) -> None:
    """Why update() takes a shared lock: if the log ends in just the digits
    of an event number, htcondor2 consumes them, and the event is lost when
    the rest arrives.  (Canary: if a future htcondor2 stops doing this the
    lock is merely belt and braces.)"""
    EventLogWriter(log).submit(4, 0, HOST, when=WHEN)
    _append_raw(log, HELD_TEXT[:3])
    jel = htcondor2.JobEventLog(str(log))
    assert [e.type for e in jel.events(stop_after=0)] == [ET.SUBMIT]
    _append_raw(log, HELD_TEXT[3:])
    EventLogWriter(log).released(4, 0, "after", when=WHEN)
    seen = []
    for _ in range(5):  # each pass stops at (and steps over) one bad line
        seen += [e.type for e in jel.events(stop_after=0)]
    assert seen == [ET.JOB_RELEASED]  # the JOB_HELD is gone


def test_update_holds_a_shared_lock_that_excludes_writers(log: Path) -> None:
    """While update() reads, an EventLogWriter (exclusive flock) cannot
    append, so the reader never sees half of one of our events."""
    attempts: list[bool] = []

    class Probe(EventLogReader):
        def _apply(self, event: htcondor2.JobEvent) -> bool:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                attempts.append(True)  # a writer could have got in
            except BlockingIOError:
                attempts.append(False)
            finally:
                os.close(fd)
            return super()._apply(event)

    w = EventLogWriter(log)
    w.submit(4, 0, HOST, when=WHEN)
    w.held(4, 0, "x", code=1, when=WHEN)
    reader = Probe(log)
    assert reader.update() is True
    assert attempts == [False, False]
    w.released(4, 0, "y", when=WHEN)  # the lock is gone after update()
    assert reader.update() is True and attempts == [False, False, False]


def test_terminated_event_missing_only_the_final_newline(log: Path) -> None:
    """A ``...`` sync line without its newline: htcondor2 already returns the
    terminated event, then on the NEXT iteration only steps over the lone
    newline and stops.  update() keeps iterating while the offset moves, so
    the following events are not delayed to a later call."""
    w = EventLogWriter(log)
    w.submit(5, 0, HOST, when=WHEN)
    term = EventLogWriter._render(5, 5, 0, WHEN, (
        "Job terminated.", "\t(1) Normal termination (return value 0)",
        *(f"\t\tUsr 0 00:00:00, Sys 0 00:00:00  -  {x} Usage"
          for x in ("Run Remote", "Run Local", "Total Remote", "Total Local")),
        *(f"\t0  -  {x} By Job" for x in (
            "Run Bytes Sent", "Run Bytes Received", "Total Bytes Sent", "Total Bytes Received")),
    )).decode()
    _append_raw(log, term[:-1])
    reader = EventLogReader(log)
    assert reader.update() is True
    assert reader.procs[(5, 0)].state is ProcState.COMPLETED
    _append_raw(log, "\n")
    w.submit(5, 1, HOST, when=WHEN)
    assert reader.update() is True
    assert (5, 1) in reader.procs
    assert reader.offset == log.stat().st_size


def test_garbage_lines_between_events_are_skipped(log: Path) -> None:
    w = EventLogWriter(log)
    w.submit(6, 0, HOST, when=WHEN)
    _append_raw(log, "this is not an event\n\n\nneither is this\n")
    w.execute(6, 0, HOST, when=WHEN + 1)
    _append_raw(log, "\n\n")
    w.terminated(6, 0, return_value=1, when=WHEN + 2)
    reader = EventLogReader(log)
    assert reader.update() is True
    assert reader.procs[(6, 0)].state is ProcState.FAILED
    assert reader.procs[(6, 0)].exit_code == 1
    assert reader.offset == log.stat().st_size


def test_state_dict_resume_does_not_reapply_old_events(log: Path) -> None:
    w = EventLogWriter(log)
    w.submit(8, 0, HOST, when=WHEN)
    w.execute(8, 0, HOST, when=WHEN + 1)
    w.evicted(8, 0, "preempted", when=WHEN + 2)
    reader = EventLogReader(log)
    reader.update()
    saved = json.loads(json.dumps(reader.state_dict()))  # must survive JSON
    assert saved["offset"] == log.stat().st_size
    reader.close()

    resumed = EventLogReader.from_state(log, saved)
    assert resumed.procs == reader.procs
    assert resumed.update() is False  # nothing new, nothing re-applied
    assert resumed.procs[(8, 0)].evictions == 1

    w.execute(8, 0, HOST, when=WHEN + 3)
    w.evicted(8, 0, "preempted again", when=WHEN + 4)
    assert resumed.update() is True
    st = resumed.procs[(8, 0)]
    assert (st.state, st.evictions, st.note) == (ProcState.IDLE, 2, "preempted again")


def test_resume_before_the_log_exists(log: Path) -> None:
    reader = EventLogReader.from_state(log, EventLogReader(log).state_dict())
    assert reader.update() is False
    EventLogWriter(log).submit(1, 0, HOST, when=WHEN)
    assert reader.update() is True


def test_resume_on_a_replaced_shorter_log_starts_over(log: Path) -> None:
    w = EventLogWriter(log)
    for proc in range(5):
        w.submit(1, proc, HOST, when=WHEN)
    reader = EventLogReader(log)
    reader.update()
    saved = reader.state_dict()
    log.unlink()
    w.submit(2, 0, HOST, when=WHEN)
    resumed = EventLogReader.from_state(log, saved)
    assert resumed.update() is True
    assert list(resumed.procs) == [(2, 0)]


def test_resume_rejects_unknown_state_version(log: Path) -> None:
    with pytest.raises(ValueError):
        EventLogReader.from_state(log, {"version": 99, "offset": 0, "procs": []})


def test_close_then_update_continues(log: Path) -> None:
    w = EventLogWriter(log)
    w.submit(1, 0, HOST, when=WHEN)
    with EventLogReader(log) as reader:
        assert reader.update() is True
    w.execute(1, 0, HOST, when=WHEN)
    assert reader.update() is True
    assert reader.procs[(1, 0)].state is ProcState.RUNNING


# ---------------------------------------------------------------------------
# Concurrent writers
# ---------------------------------------------------------------------------

WORKERS = 4
CYCLES = 60  # each cycle writes 4 events -> 2 + 4*60 = 242 events per worker
LONG = "x" * 5000  # longer than a page: atomicity must not depend on PIPE_BUF


def _runner(path: str, proc: int) -> None:
    """One runner process: the whole life of one proc, many evictions long."""
    w = EventLogWriter(path)
    w.submit(77, proc, HOST)
    for cycle in range(CYCLES):
        w.execute(77, proc, f"<10.0.0.{proc}:9618>")
        w.image_size(77, proc, 1000 + cycle, cycle, 900 + cycle)
        w.evicted(77, proc, f"cycle {cycle} of proc {proc} {LONG if cycle % 7 == 0 else ''}")
        w.shadow_exception(77, proc, f"proc {proc} cycle {cycle}")
    w.terminated(77, proc, return_value=proc)


def test_concurrent_writers_never_interleave(log: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    workers = [ctx.Process(target=_runner, args=(str(log), p)) for p in range(WORKERS)]
    for p in workers:
        p.start()
    for p in workers:
        p.join(timeout=30)
        assert p.exitcode == 0

    per_worker = 2 + 4 * CYCLES
    events = parse(log)
    assert len(events) == WORKERS * per_worker
    assert log.read_text().count("\n...\n") == WORKERS * per_worker
    for proc in range(WORKERS):
        mine = [e for e in events if e.proc == proc]
        assert len(mine) == per_worker
        assert mine[0].type == ET.SUBMIT and mine[-1].type == ET.JOB_TERMINATED
        reasons = [e["Reason"] for e in mine if e.type == ET.JOB_EVICTED]
        assert [r.split()[1] for r in reasons] == [str(c) for c in range(CYCLES)]
        assert all(r.endswith(LONG) for r in reasons[::7])

    reader = EventLogReader(log)
    assert reader.update() is True
    for proc in range(WORKERS):
        st = reader.procs[(77, proc)]
        assert st.evictions == CYCLES
        assert st.exit_code == proc
        assert st.state is (ProcState.COMPLETED if proc == 0 else ProcState.FAILED)
        assert (st.memory_mb, st.image_size_kb) == (CYCLES - 1, 1000 + CYCLES - 1)


# ---------------------------------------------------------------------------
# Model helpers
# ---------------------------------------------------------------------------


def test_terminal_states() -> None:
    assert TERMINAL_STATES == {ProcState.COMPLETED, ProcState.FAILED, ProcState.REMOVED}
    assert [s.is_terminal for s in ProcState] == [False, False, False, True, True, True]


def test_proc_status_dict_round_trip() -> None:
    st = ProcStatus(1, 2, ProcState.HELD, hold_reason="r", hold_code=6, submitted_at=WHEN,
                    evictions=3)
    d = st.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["state"] == "held"
    assert ProcStatus.from_dict({**d, "added_in_a_later_version": 1}) == st


I, R, H, C, F, X = "idle", "running", "held", "completed", "failed", "removed"


@pytest.mark.parametrize("states, expected", [
    ([], I),
    ([I], I),
    ([I, I], I),
    ([R, I], R),
    ([R, H], R),
    ([H, I], H),
    ([H, C], H),
    ([H, C, I], H),
    ([C, I], R),
    ([F, I], R),
    ([X, I], R),
    ([C], C),
    ([C, C], C),
    ([C, F], F),
    ([C, X], X),
    ([F, X, C], X),
])
def test_overall_state(states: list[str], expected: str) -> None:
    assert overall_state(states) == expected
    assert overall_state(ProcState(s) for s in states) == expected
    assert overall_state(ProcStatus(1, i, ProcState(s)) for i, s in enumerate(states)) == expected
