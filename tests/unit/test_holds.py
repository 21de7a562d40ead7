"""Verdicts on attempts (peer/holds.py) from event logs read with HTCondor's own JobEventLog, and the
CondorExecutor's side of losing a copy (removing one proc), with no schedd.

The logs are written by peer/event_log.py's EventLogWriter (the LocalExecutor's
writer, in HTCondor's format) or are HTCondor's own text as a schedd writes it;
either way peer/event_log.py reads them with ``htcondor2.JobEventLog``.
"""
from __future__ import annotations

from pathlib import Path

import classad2
import pytest
import requests

from peer import records
from peer.db import Database
from peer.event_log import EventLogReader, EventLogWriter
from peer.executors.condor import CondorExecutor, ScheddProbe, proc_constraint, proc_rows
from peer.holds import SITE_HOLD_CODES, USER_HOLD_CODES, HOLD_LABELS, classify
from peer.models import Base, Job, JobRecord
from peer.staging import InputSource, Stager
from pocketgrid.errors import Unavailable

#: As a schedd writes it (ISO dates): proc 0 held for an input transfer failure, proc 1 for memory,
#: proc 2 evicted three times, proc 3 removed by an administrator, proc 4 done.
CONDOR_LOG = """\
000 (4242.000.000) 2025-03-05 11:10:01 Job submitted from host: <10.0.0.5:9618?addrs=10.0.0.5-9618&alias=ap.example.org>
...
000 (4242.001.000) 2025-03-05 11:10:01 Job submitted from host: <10.0.0.5:9618?addrs=10.0.0.5-9618&alias=ap.example.org>
...
000 (4242.002.000) 2025-03-05 11:10:01 Job submitted from host: <10.0.0.5:9618?addrs=10.0.0.5-9618&alias=ap.example.org>
...
000 (4242.003.000) 2025-03-05 11:10:01 Job submitted from host: <10.0.0.5:9618?addrs=10.0.0.5-9618&alias=ap.example.org>
...
000 (4242.004.000) 2025-03-05 11:10:01 Job submitted from host: <10.0.0.5:9618?addrs=10.0.0.5-9618&alias=ap.example.org>
...
012 (4242.000.000) 2025-03-05 11:14:36 Job was held.
\tTransfer input files failure at execution point slot1_30@ep.example.org using protocol osdf. Details: 404
\tCode 13 Subcode 256
...
001 (4242.001.000) 2025-03-05 11:11:00 Job executing on host: <10.0.0.7:9618?addrs=10.0.0.7-9618&alias=ep.example.org>
...
012 (4242.001.000) 2025-03-05 11:13:00 Job was held.
\tError from slot1_2@ep.example.org: Job has gone over cgroup memory limit of 2048 megabytes.
\tCode 34 Subcode 102
...
001 (4242.004.000) 2025-03-05 11:11:00 Job executing on host: <10.0.0.7:9618?addrs=10.0.0.7-9618&alias=ep.example.org>
...
005 (4242.004.000) 2025-03-05 11:12:00 Job terminated.
\t(1) Normal termination (return value 0)
\t\tUsr 0 00:00:01, Sys 0 00:00:00  -  Run Remote Usage
\t\tUsr 0 00:00:00, Sys 0 00:00:00  -  Run Local Usage
\t\tUsr 0 00:00:01, Sys 0 00:00:00  -  Total Remote Usage
\t\tUsr 0 00:00:00, Sys 0 00:00:00  -  Total Local Usage
\t0  -  Run Bytes Sent By Job
\t0  -  Run Bytes Received By Job
\t0  -  Total Bytes Sent By Job
\t0  -  Total Bytes Received By Job
...
009 (4242.003.000) 2025-03-05 11:15:00 Job was aborted.
\tvia condor_rm (by user condor_admin)
...
"""


def statuses(path: Path) -> dict[int, dict]:
    reader = EventLogReader(str(path))
    reader.update()
    return {proc: st.to_dict() for (_, proc), st in reader.procs.items()}


def verdict(proc: dict, *, removed_by_user: bool = False, success: int | None = None):
    return classify(proc, removed_by_user=removed_by_user, max_evictions=3, success_exit_code=success)


def test_the_code_table_is_htcondors_and_every_listed_code_has_one_side() -> None:
    assert HOLD_LABELS[13] == "TransferInputError" and HOLD_LABELS[34] == "JobOutOfResources"
    assert HOLD_LABELS[14] == "IwdError" and HOLD_LABELS[3] == "JobPolicy" and HOLD_LABELS[15] == "SubmittedOnHold"
    assert not SITE_HOLD_CODES & USER_HOLD_CODES
    assert SITE_HOLD_CODES | USER_HOLD_CODES == set(HOLD_LABELS)


def test_a_schedds_own_log_gives_site_and_user_verdicts(tmp_path: Path) -> None:
    log = tmp_path / "job.log"
    log.write_text(CONDOR_LOG)
    procs = statuses(log)
    transfer = verdict(procs[0])
    assert transfer.kind == "lost" and "code 13 TransferInputError" in transfer.reason and "osdf" in transfer.reason
    memory = verdict(procs[1])
    assert memory.kind == "held" and "JobOutOfResources" in memory.reason  # the user asked for too little
    assert verdict(procs[4]).kind == "completed"
    removed = verdict(procs[3])  # an administrator's condor_rm: the site's doing, the input runs elsewhere
    assert removed.kind == "lost" and "condor_rm" in removed.reason
    assert verdict(procs[3], removed_by_user=True).kind == "removed"
    assert verdict(procs[2]).kind == "active"  # still idle


def test_our_writers_logs_give_the_same_verdicts(tmp_path: Path) -> None:
    log = tmp_path / "job.log"
    w = EventLogWriter(log)
    for proc in range(6):
        w.submit(7, proc, "<127.0.0.1:0?alias=site-b>")
    w.execute(7, 0, "site-b")
    w.held(7, 0, "Failed to execute '/stage/p/0/x.sh': No such file or directory", code=6, subcode=2)
    w.execute(7, 1, "site-b")
    w.held(7, 1, "The job's periodic_hold expression became true", code=3)
    for _ in range(3):
        w.execute(7, 2, "site-b")
        w.evicted(7, 2, "the peer shut down; the proc will run again")
    w.execute(7, 3, "site-b")
    w.terminated(7, 3, return_value=1)
    w.execute(7, 4, "site-b")
    w.terminated(7, 4, return_value=3)
    w.execute(7, 5, "site-b")
    w.terminated(7, 5, signal=9)
    procs = statuses(log)
    assert verdict(procs[0]).kind == "lost"  # FailedToCreateProcess: the site's problem
    assert verdict(procs[1]).kind == "held"  # the submit file's own policy
    evicted = verdict(procs[2])
    assert evicted.kind == "lost" and "evicted 3 times" in evicted.reason
    assert verdict(procs[3]).kind == "failed" and verdict(procs[3]).reason == "exit code 1"
    assert verdict(procs[4]).kind == "failed"
    assert verdict(procs[4], success=3).kind == "completed"  # success_exit_code = 3
    assert verdict(procs[5]).kind == "failed" and "signal 9" in verdict(procs[5]).reason


def test_a_site_hold_in_a_log_reruns_the_input_elsewhere_and_cleans_the_copy(tmp_path: Path) -> None:
    """The whole path of a held attempt: the site's log -> verdict -> lost, cleaned up, run again elsewhere."""
    log = tmp_path / "job.log"
    log.write_text(CONDOR_LOG)
    proc = statuses(log)[0]
    record = JobRecord(id="home.9", name="j", owner="CN=a", created_at=0.0, executable_name="x", submit_name="s",
                       submit_text="", inputs=[{"name": "in", "path": "in", "size": 1, "sha256": "0" * 64}],
                       warnings=[], version=1, home="home", manager="home", manager_epoch=1)
    record.attempts.extend(records.first_attempts(record, 0.0))
    a = record.attempts[0]
    a.state, a.site, a.piece = "idle", "site-b", "site-b.1"
    new = records.apply_verdict(record, [a], a, verdict(proc), proc, 10.0, records.Limits())
    assert a.state == "lost" and "TransferInputError" in a.reason
    assert [(x.piece, x.index, x.cleanup) for x in records.to_clean(record.attempts)] == [("site-b.1", 0, "delete")]
    assert new is not None and new.avoid == ["site-b"] and new.state == "pending"


# ---- the CondorExecutor removes the lost copy: one proc, matched exactly ---------------------


def test_the_removal_of_one_copy_matches_only_that_proc_of_that_piece() -> None:
    c = classad2.ExprTree(proc_constraint("site-b.7", 4242, 3))
    assert c.eval(classad2.ClassAd({"PocketgridJob": "site-b.7", "ClusterId": 4242, "ProcId": 3})) is True
    assert c.eval(classad2.ClassAd({"PocketgridJob": "site-b.7", "ClusterId": 4242, "ProcId": 2})) is False
    assert c.eval(classad2.ClassAd({"PocketgridJob": "site-b.8", "ClusterId": 4242, "ProcId": 3})) is False


def test_proc_rows_of_a_piece_keep_the_jobs_input_indexes() -> None:
    rows = proc_rows("site-b.7", ["c.txt", "h.txt"], cluster=4242, first_proc=0, num_procs=2, indexes=[2, 7])
    assert [(r.index, r.proc) for r in rows] == [(2, 0), (7, 1)]  # proc 1 of the cluster is input 7 of the job


def test_removing_a_copy_without_a_schedd_says_so_and_is_asked_again(tmp_path: Path, no_schedd: str) -> None:
    db = Database(f"sqlite:///{tmp_path / 'p.db'}")
    Base.metadata.create_all(db.engine)
    with db.session() as s:
        s.add(Job(id="site-b.7", name="j", owner="CN=a", created_at=0.0, executor="condor", executable_name="x",
                  submit_name="s", submit_text="", input_names=["h.txt"], entry_peer="home", origin_key="k",
                  warnings=[]))
        s.flush()
        s.add_all(proc_rows("site-b.7", ["h.txt"], cluster=4242, first_proc=0, num_procs=1, indexes=[7]))
    ex = CondorExecutor(db, tmp_path / "stage", peer_name="site-b", probe=ScheddProbe(True, "bindings"),
                        call_timeout=10)
    try:
        assert ex.remove_proc("site-b.7", 3, "superseded") == "gone"  # no such input in this piece
        with pytest.raises(Unavailable, match="did not answer the removal"):
            ex.remove_proc("site-b.7", 7, "superseded")  # the home keeps the cleanup and asks again later
    finally:
        ex.stop()
        db.dispose()


def test_a_piece_is_staged_by_the_jobs_input_indexes(tmp_path: Path) -> None:
    publish = tmp_path / "publish"
    publish.mkdir()
    for n in ("a.txt", "b.txt"):
        (publish / n).write_text("1\n")
    staged = Stager(tmp_path / "stage", http=requests.Session()).stage(
        "site-b.7", executable=b"#!/bin/sh\n", executable_name="x.sh", submit_text="executable = x.sh\nqueue\n",
        submit_name="x.sub", inputs=[InputSource(name="a.txt", local_path=publish / "a.txt", index=3),
                                     InputSource(name="b.txt", local_path=publish / "b.txt", index=8)])
    assert staged.proc_dirs == [staged.root / "3", staged.root / "8"] and staged.indexes == [3, 8]
    assert (staged.root / "8" / "b.txt").read_text() == "1\n" and not (staged.root / "0").exists()


def test_a_removal_by_the_submit_files_own_policy_is_final_not_a_site_loss() -> None:
    note = "The job attribute PeriodicRemove expression 'JobStatus == 2' evaluated to TRUE"
    own = classify({"state": "removed", "note": note}, removed_by_user=False, max_evictions=3)
    assert (own.kind, own.reason) == ("removed", note)  # not run again elsewhere: it asked for this
    admin = classify({"state": "removed", "note": "via condor_rm (by user condor)"}, removed_by_user=False,
                     max_evictions=3)
    assert admin.kind == "lost"  # an administrator's condor_rm: the site's doing, run again elsewhere


def test_a_file_the_job_names_that_does_not_exist_is_the_jobs_hold_not_the_sites() -> None:
    missing = {"state": "held", "hold_code": 12, "hold_subcode": 2,
               "hold_reason": "Transfer output files failure: reading nothere.txt: (errno 2) No such file or directory"}
    assert classify(missing, removed_by_user=False, max_evictions=3).kind == "held"  # the same everywhere
    broken = {**missing, "hold_subcode": 28, "hold_reason": "Transfer output files failure: No space left on device"}
    assert classify(broken, removed_by_user=False, max_evictions=3).kind == "lost"  # the site's disk
