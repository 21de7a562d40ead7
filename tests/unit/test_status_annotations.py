"""What an executor adds to a job's status beyond its event log (a pending removal, why an idle proc waits)
changes the status and its ETag even when the log does not grow, and wakes waiting polls.

The job service is real (database, staging root, event log written in HTCondor's format and read with
htcondor2.JobEventLog); the executor here only says what it would add, through the Executor interface
(no schedd is involved: what a CondorExecutor adds is tested in test_condor_executor.py and, on a real
pool, in tests/integration/test_condor_pool.py).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import requests

from peer.db import Database
from peer.digests import DigestCache
from peer.event_log import EventLogWriter
from peer.executors.base import Executor
from peer.jobs import JobService
from peer.models import Base, Job, Proc
from peer.publishing import PublishingArea
from peer.staging import Stager

PENDING = "pending: the schedd is not answering; it will be carried out when it answers"


class SaysWhat(Executor):
    """An executor whose annotations the test sets."""

    name = "condor"

    def __init__(self) -> None:
        self.extra: dict[str, Any] = {}
        self.stamp = 0

    def prepare(self, session, job, staged, parsed):  # pragma: no cover - not used here
        raise NotImplementedError

    def remove(self, job_id: str) -> int:  # pragma: no cover - not used here
        return 0

    def remove_proc(self, job_id: str, index: int, reason: str) -> str:  # pragma: no cover - not used here
        return "gone"

    def annotate(self, job, states):
        return self.extra

    def annotation_stamp(self) -> int:
        return self.stamp


def test_an_annotation_change_is_a_new_status_version_without_the_log_growing(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'p.db'}")
    db.create_all(Base.metadata)
    stager = Stager(tmp_path / "stage", http=requests.Session())
    executor = SaysWhat()
    jobs = JobService(name="site-a", db=db, publishing=PublishingArea(tmp_path / "pub"), stager=stager,
                      executor=executor, digests=DigestCache(db))
    job_id = "site-a.1"
    stager.job_root(job_id).mkdir(parents=True)
    EventLogWriter(stager.job_root(job_id) / "job.log").submit(7, 0, "<127.0.0.1:0>")
    with db.session() as s:
        s.add(Job(id=job_id, name="n", owner="alice", created_at=time.time(), executor="condor",
                  executable_name="x", submit_name="s", submit_text="queue\n", input_names=["in.txt"],
                  entry_peer="site-a", origin_key="k"))
        s.flush()
        s.add(Proc(job_id=job_id, index=0, input_name="in.txt", executor="condor", cluster=7, proc=0))

    first = jobs.status(job_id, "alice")
    assert first["inputs"][0]["state"] == "idle" and "removal" not in first and "match" not in first["inputs"][0]
    marker = jobs.change_marker(job_id)

    executor.extra = {"removal": PENDING, "procs": {0: {"match": {"slots": 0, "of": 4, "failing": "Arch == \"NOPE\""}}}}
    executor.stamp += 1
    assert jobs.change_marker(job_id) != marker  # a waiting long-poll or event stream wakes up
    second = jobs.status(job_id, "alice")
    assert second["removal"] == PENDING and second["inputs"][0]["match"]["slots"] == 0
    assert second["version"] > first["version"]  # a new ETag: a poll with the old one gets the change
    assert jobs.status(job_id, "alice")["version"] == second["version"]  # nothing new: same ETag (304)
    # what the job's home asks for (one request per site): the piece's removal and its input's match
    piece = jobs.piece_statuses({job_id: first["version"]})["pieces"][job_id]
    assert piece["removal"] == PENDING and piece["procs"][0]["match"]["slots"] == 0
    assert jobs.piece_statuses({job_id: second["version"]})["pieces"] == {}  # unchanged: not sent again

    executor.stamp += 1  # the executor looked again and found the same: no new version
    assert jobs.status(job_id, "alice")["version"] == second["version"]

    executor.extra = {}
    executor.stamp += 1
    third = jobs.status(job_id, "alice")
    assert "removal" not in third and "match" not in third["inputs"][0] and third["version"] > second["version"]
