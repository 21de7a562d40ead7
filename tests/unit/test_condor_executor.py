"""CondorExecutor logic that needs no schedd, checked with HTCondor's own code where it matters.

What is NOT here: anything that claims a schedd behaves some way.  Nothing
below pretends to be one; the whole path against a real schedd is
tests/integration/test_condor_pool.py.  The "no schedd" cases do not rely on
the machine having none: they run with an HTCondor configuration of their own
(the ``no_schedd`` fixture of tests/conftest.py: ``CONDOR_CONFIG`` in the
test's tmp dir, naming a schedd and collector address where nothing listens),
which the helper process inherits, so they give the same verdict on a host
that runs a pool.

Here: the submission the schedd would receive (built from a really staged job
through the real parser, read back with htcondor2.Submit and expanded per
proc), the cluster.proc -> input mapping, the constraints (evaluated by
classad2 against job ads), the commit/rollback ordering on a real database,
the helper process that keeps htcondor2 out of the peer (against an address
that refuses connections and against a listener that never answers), and how ``auto``/``condor`` decide.
"""
from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import classad2
import htcondor2
import pytest
import requests
from sqlalchemy.exc import IntegrityError

from peer.db import Database
from peer.executors.choice import ExecutorUnavailable, choose_executor, require_condor
from peer.executors import condor as condor_mod
from peer.executors.condor import (
    BindingsClient,
    CondorExecutor,
    PendingSubmissions,
    ScheddProbe,
    condor_table,
    job_constraint,
    probe_schedd,
    proc_rows,
    quote_classad_string,
    release_constraint,
    submission_for,
)
from peer.models import Base, Job, Proc
from peer.staging import InputSource, Stager
from peer.submit_description import parse
from pocketgrid.errors import Unavailable
from tests.conftest import wait_until

USER_SUB = (
    "universe = vanilla\n"
    "executable = histogram.py\n"
    "arguments = $(input) histogram.json $(input_index)\n"
    "output = stdout.txt\n"
    "hold = false\n"
    '+PocketgridJob = "someone-else.123"\n'
    'MY.pocketgridPeer = "evil"\n'
    '+ProjectName = "phys"\n'
    "queue\n"
)


@pytest.fixture
def staged(tmp_path: Path):
    publish = tmp_path / "publish"
    publish.mkdir()
    names = ["run 0.txt", "run1.txt", "run2.txt"]
    for n in names:
        (publish / n).write_text("1.0\n2.0\n")
    stager = Stager(tmp_path / "stage", http=requests.Session())
    return stager.stage(
        "site-a.65f1c2ab12cd34ef",
        executable=b"#!/usr/bin/env python3\nprint('hi')\n",
        executable_name="histogram.py",
        submit_text=USER_SUB,
        submit_name="histogram.sub",
        inputs=[InputSource(name=n, local_path=publish / n) for n in names],
    )


# ---- the submission ----------------------------------------------------------


def test_submission_forces_hold_and_identity_and_drops_the_users(staged) -> None:
    parsed = parse(USER_SUB)
    table, itemdata = submission_for(parsed, staged, job_id=staged.job_id, peer_name="site-a")
    low = {k.lower(): v for k, v in table.items()}
    assert low["hold"] == "true"
    assert low["my.pocketgridjob"] == f'"{staged.job_id}"'
    assert low["my.pocketgridpeer"] == '"site-a"'
    assert low["my.pocketgridindex"] == "$(input_index)"
    assert low["batch_name"] == staged.job_id
    assert low["my.projectname"] == '"phys"'  # the user's other attributes stay
    # exactly one of each identity key: the user's spellings are gone
    assert [k for k in table if k.lower() == "hold"] == ["hold"]
    assert [k for k in table if k.lower().endswith("pocketgridjob")] == ["MY.PocketgridJob"]
    assert [k for k in table if k.lower().endswith("pocketgridpeer")] == ["MY.PocketgridPeer"]
    assert low["executable"] == str(staged.executable_path)
    assert low["log"] == str(staged.log_path)
    assert [row["input"] for row in itemdata] == staged.input_names
    assert [row["proc_dir"] for row in itemdata] == [str(d) for d in staged.proc_dirs]


def test_submission_reads_back_through_htcondor_and_expands_per_proc(staged) -> None:
    table, itemdata = submission_for(parse(USER_SUB), staged, job_id=staged.job_id, peer_name="site-a")
    # Schedd.submit serialises the table as "key = value" lines; parse them back.
    text = "".join(f"{k} = {v}\n" for k, v in table.items()) + "queue\n"
    sub = htcondor2.Submit(text)
    assert dict(sub.items()) == table
    for row in itemdata:
        for k, v in row.items():
            sub[k] = v
        assert sub.expand("initialdir") == row["proc_dir"]
        assert sub.expand("input") == row["input"]
        assert sub.expand("arguments") == f"{row['input']} histogram.json {row['input_index']}"
        assert sub.expand("MY.PocketgridIndex") == row["input_index"]
        first = sub.expand("transfer_input_files").split(",")[0].strip()
        assert first == row["input"] and (Path(row["proc_dir"]) / first).is_file()
    assert staged.executable_path.is_file()  # the executable the schedd transfers


def test_user_batch_name_is_kept() -> None:
    table = condor_table({"batch_name": "my analysis", "executable": "/x"}, job_id="a.1", peer_name="a")
    assert table["batch_name"] == "my analysis"


def test_classad_strings_refuse_quotes() -> None:
    assert quote_classad_string("site-a.65f1") == '"site-a.65f1"'
    with pytest.raises(ValueError):
        quote_classad_string('x" || true || "')


# ---- cluster.proc -> input ---------------------------------------------------


def test_proc_rows_map_itemdata_order_to_proc_ids() -> None:
    rows = proc_rows("a.1", ["x.txt", "y.txt", "z.txt"], cluster=2345, first_proc=0, num_procs=3)
    assert [(r.index, r.input_name, r.cluster, r.proc, r.executor) for r in rows] == [
        (0, "x.txt", 2345, 0, "condor"), (1, "y.txt", 2345, 1, "condor"), (2, "z.txt", 2345, 2, "condor")]


def test_proc_rows_refuse_a_count_mismatch() -> None:
    with pytest.raises(ValueError, match="2 procs for 3 inputs"):
        proc_rows("a.1", ["x", "y", "z"], cluster=5, first_proc=0, num_procs=2)
    with pytest.raises(ValueError):
        proc_rows("a.1", ["x"], cluster=0, first_proc=0, num_procs=1)


# ---- constraints, evaluated by HTCondor's ClassAd library ---------------------


def _ad(**attrs) -> classad2.ClassAd:
    return classad2.ClassAd(attrs)


def test_job_constraint_matches_only_that_jobs_clusters() -> None:
    c = classad2.ExprTree(job_constraint("a.1", [7, 9]))
    assert c.eval(_ad(PocketgridJob="a.1", ClusterId=7)) is True
    assert c.eval(_ad(PocketgridJob="a.1", ClusterId=9)) is True
    assert c.eval(_ad(PocketgridJob="a.1", ClusterId=8)) is False
    assert c.eval(_ad(PocketgridJob="b.2", ClusterId=7)) is False  # a reused cluster number
    assert c.eval(_ad(ClusterId=7)) is False  # a job that is not pocketgrid's


def test_release_constraint_touches_only_procs_held_since_submit() -> None:
    c = classad2.ExprTree(job_constraint("a.1", [7], submitted_on_hold=True))
    assert c.eval(_ad(PocketgridJob="a.1", ClusterId=7, JobStatus=5, HoldReasonCode=15)) is True
    # held later for a real reason (e.g. code 13, input transfer failed): not ours to release
    assert c.eval(_ad(PocketgridJob="a.1", ClusterId=7, JobStatus=5, HoldReasonCode=13)) is False
    assert c.eval(_ad(PocketgridJob="a.1", ClusterId=7, JobStatus=1)) is False


def test_user_release_touches_only_held_procs_of_the_chosen_inputs() -> None:
    c = classad2.ExprTree(release_constraint("a.1", [7], [0, 2]))
    assert c.eval(_ad(PocketgridJob="a.1", ClusterId=7, PocketgridIndex=2, JobStatus=5)) is True
    assert c.eval(_ad(PocketgridJob="a.1", ClusterId=7, PocketgridIndex=1, JobStatus=5)) is False  # not asked for
    assert c.eval(_ad(PocketgridJob="a.1", ClusterId=7, PocketgridIndex=0, JobStatus=2)) is False  # running
    assert c.eval(_ad(PocketgridJob="b.2", ClusterId=7, PocketgridIndex=0, JobStatus=5)) is False  # another job
    assert classad2.ExprTree(release_constraint("a.1", [7], [])).eval(
        _ad(PocketgridJob="a.1", ClusterId=7, PocketgridIndex=0, JobStatus=5)) is False  # nothing asked: nothing


# ---- commit / rollback ordering on a real database ------------------------------


@pytest.fixture
def db(tmp_path: Path) -> Database:
    d = Database(f"sqlite:///{tmp_path / 'p.db'}")
    d.create_all(Base.metadata)
    return d


def _job(job_id: str) -> Job:
    return Job(id=job_id, name="n", owner="o", created_at=time.time(), executor="condor", executable_name="x",
               submit_name="s", submit_text="queue\n", input_names=["a"], entry_peer="p", origin_key=job_id)


def test_commit_keeps_the_cluster_for_release(db: Database) -> None:
    pending, removed = PendingSubmissions(), []
    with db.session() as s:
        s.add(_job("a.1"))
        s.flush()
        pending.track(s, "a.1", 41, lambda j, c: removed.append((j, c)))
        s.add_all(proc_rows("a.1", ["a"], cluster=41, first_proc=0, num_procs=1))
    assert removed == [] and pending.clusters() == {41}
    assert pending.pop("a.1") == 41 and len(pending) == 0
    with db.sessions() as s:
        assert [(p.cluster, p.proc) for p in s.get(Job, "a.1").procs] == [(41, 0)]


def test_rollback_removes_the_cluster(db: Database) -> None:
    pending, removed = PendingSubmissions(), []
    with pytest.raises(RuntimeError):
        with db.session() as s:
            s.add(_job("a.2"))
            s.flush()
            pending.track(s, "a.2", 42, lambda j, c: removed.append((j, c)))
            raise RuntimeError("something after prepare failed")
    assert removed == [("a.2", 42)] and len(pending) == 0 and pending.pop("a.2") is None


def test_commit_that_fails_removes_the_cluster(db: Database) -> None:
    """A duplicate cluster.proc (e.g. a schedd whose job queue was wiped) fails the commit itself."""
    with db.session() as s:
        s.add(_job("old.1"))
        s.flush()
        s.add_all(proc_rows("old.1", ["a"], cluster=43, first_proc=0, num_procs=1))
    pending, removed = PendingSubmissions(), []
    with pytest.raises(IntegrityError):
        with db.session() as s:
            s.add(_job("a.3"))
            s.flush()
            pending.track(s, "a.3", 43, lambda j, c: removed.append((j, c)))
            s.add_all(proc_rows("a.3", ["a"], cluster=43, first_proc=0, num_procs=1))
    assert removed == [("a.3", 43)]
    with db.sessions() as s:
        assert s.get(Job, "a.3") is None


def test_later_rollback_of_a_committed_session_does_not_remove(db: Database) -> None:
    pending, removed = PendingSubmissions(), []
    with db.sessions() as s:
        s.add(_job("a.4"))
        pending.track(s, "a.4", 44, lambda j, c: removed.append((j, c)))
        s.commit()
        s.add(_job("a.5"))
        s.flush()
        s.rollback()
    assert removed == [] and pending.pop("a.4") == 44


# ---- the helper process that keeps htcondor2 (and its GIL) out of the peer ------


def test_helper_answers_unknown_ops_and_no_schedd_without_hanging(no_schedd: str) -> None:
    client = BindingsClient(timeout=20)
    try:
        assert client.call("nonsense")["ok"] is False
        reply = client.call("probe")
        # The configured schedd refuses connections: htcondor2's own error comes back as an answer,
        # and it names the address of this test's configuration (the helper inherited it).
        assert reply["ok"] is False and reply["kind"] == "condor" and no_schedd in reply["error"]
        assert client.call("submit", table={"executable": "/bin/true"}, itemdata=[{"a": "1"}])["ok"] is False
    finally:
        client.close()


def test_a_schedd_that_never_answers_costs_the_deadline_not_the_peer() -> None:
    """htcondor2 holds the GIL while it waits (~20 s); the helper keeps that out of our threads."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    accepted: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                accepted.append(srv.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    ticks: list[float] = []
    stop = threading.Event()

    def tick() -> None:
        while not stop.is_set():
            ticks.append(time.monotonic())
            time.sleep(0.02)

    ticker = threading.Thread(target=tick, daemon=True)
    ticker.start()
    try:
        started = time.monotonic()
        probe = probe_schedd(1.0, address=f"<127.0.0.1:{srv.getsockname()[1]}>")
        elapsed = time.monotonic() - started
    finally:
        stop.set()
        ticker.join()
        srv.close()
        for c in accepted:
            c.close()
    assert not probe.ok and "did not answer 'probe' within 1 s" in (probe.reason or "")
    assert elapsed < 10  # the deadline, not htcondor2's own 20 s
    gaps = [b - a for a, b in zip(ticks, ticks[1:])]
    assert gaps and max(gaps) < 0.5  # our other threads kept running meanwhile


def test_probe_without_a_schedd_says_why(no_schedd: str) -> None:
    probe = probe_schedd(10)
    assert not probe.ok and "htcondor2:" in probe.reason and no_schedd in probe.reason
    assert probe.describe().startswith("no HTCondor schedd answered")


# ---- choosing the executor ------------------------------------------------------------


def test_auto_without_a_schedd_picks_local_and_says_why(db: Database, tmp_path: Path, monkeypatch,
                                                        no_schedd: str) -> None:
    monkeypatch.setattr(condor_mod, "running_as_root", lambda: False)
    ex = choose_executor("auto", db, tmp_path / "stage", peer_name="p", slots=1, max_restarts=0, probe_timeout=10)
    d = ex.describe()
    assert ex.name == "local" and d["chosen_by"] == "auto"
    assert str(d["condor"]).startswith("no HTCondor schedd answered") and no_schedd in str(d["condor"])


def test_auto_as_root_does_not_even_try(db: Database, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(condor_mod, "running_as_root", lambda: True)
    ex = choose_executor("auto", db, tmp_path / "stage", peer_name="p", slots=1, max_restarts=0)
    assert ex.name == "local" and "root" in str(ex.describe()["condor"])


def test_condor_refuses_root_with_the_reason(monkeypatch) -> None:
    monkeypatch.setattr(condor_mod, "running_as_root", lambda: True)
    with pytest.raises(ExecutorUnavailable, match="never lets root own jobs"):
        require_condor()


def test_condor_without_a_schedd_fails_fast(db: Database, tmp_path: Path, monkeypatch, no_schedd: str) -> None:
    monkeypatch.setattr(condor_mod, "running_as_root", lambda: False)
    started = time.monotonic()
    with pytest.raises(ExecutorUnavailable, match="no HTCondor schedd answered") as refused:
        choose_executor("condor", db, tmp_path / "stage", peer_name="p", slots=1, max_restarts=0, probe_timeout=10)
    assert time.monotonic() - started < 10
    assert no_schedd in str(refused.value) and "--executor local" in str(refused.value)


def test_a_peer_whose_schedd_is_gone_answers_503_and_records_nothing(db: Database, staged, no_schedd: str) -> None:
    """503 sends the job to the next site (JobService tries candidates on 5xx)."""
    ex = CondorExecutor(db, staged.root.parent, peer_name="site-a", probe=ScheddProbe(True, "bindings"),
                        call_timeout=10, submit_timeout=10)
    try:
        with pytest.raises(Unavailable, match="did not take the job"):
            with db.session() as s:
                job = _job(staged.job_id)
                s.add(job)
                s.flush()
                ex.prepare(s, job, staged, parse(USER_SUB))
        with db.sessions() as s:
            assert s.get(Job, staged.job_id) is None and s.query(Proc).count() == 0
        assert ex.remove("nobody.1") == 0
        assert ex.describe()["last_error"]
    finally:
        ex.stop()


# ---- where the staging directory is (issue 13, item 12) -------------------------------


def test_staging_under_a_job_private_scratch_mount_names_the_real_risk() -> None:
    from peer.executors.condor import scratch_mount_warning

    said = scratch_mount_warning("/var/tmp/pocketgrid/stage", '"/tmp,/var/tmp"')  # as htcondor2.param gives it
    assert said is not None
    assert "under /var/tmp" in said and "is under /tmp" not in said
    assert "MOUNT_UNDER_SCRATCH" in said and "private" in said and "$(proc_dir)" in said
    assert scratch_mount_warning("/tmp/x/stage", None) is not None  # HTCondor's default when unset
    assert scratch_mount_warning("/var/lib/pocketgrid/stage", '"/tmp,/var/tmp"') is None
    assert scratch_mount_warning("/var/tmpfoo/stage", "/tmp,/var/tmp") is None  # a prefix is not a parent
    # a site that mounts something else privately: that is what counts, not /tmp as such
    assert scratch_mount_warning("/tmp/pg/stage", "/scratch") is None
    assert "under /scratch" in scratch_mount_warning("/scratch/pg/stage", "/scratch")


def test_the_warning_follows_the_sites_htcondor_configuration(db: Database, tmp_path: Path, caplog) -> None:
    from tests.conftest import condor_environment, refused_address, write_condor_config

    private = tmp_path / "private-scratch"
    stage = private / "stage"
    stage.mkdir(parents=True)
    with refused_address() as address:
        config = write_condor_config(tmp_path / "cfg", address)
        config.write_text(config.read_text() + f"MOUNT_UNDER_SCRATCH = {private}\n")
        with condor_environment({"CONDOR_CONFIG": str(config)}):
            ex = CondorExecutor(db, stage, peer_name="site-a", probe=ScheddProbe(True, "bindings"))
            try:
                with caplog.at_level("WARNING", logger="peer.executors.condor"):
                    ex._check_stage_root()
            finally:
                ex.stop()
    assert any(f"under {private}" in r.getMessage() and "MOUNT_UNDER_SCRATCH" in r.getMessage()
               for r in caplog.records)


# ---- staging left without a job row (issue 13, item 10) --------------------------------


def test_orphaned_staging_is_swept_only_when_it_has_no_row(db: Database, tmp_path: Path) -> None:
    from peer.staging import remove_orphan
    from peer.app import _job_rows

    stager = Stager(tmp_path / "stage", http=requests.Session())
    with db.session() as s:
        s.add(_job("site-a.00aa"))
    ids = ["site-a.00aa"] + [f"site-a.{i:05x}" for i in range(0x10000, 0x10000 + 1200)]  # more than one batch of lookups
    for job_id in ids + ["site-b.00bb", "site-a.not-hex"]:
        (stager.root / job_id).mkdir()
    (stager.root / "site-a.00cc").write_text("a file, not a job")
    removed = stager.sweep_orphans(_job_rows(db), peer_name="site-a")
    assert removed == len(ids) - 1
    left = sorted(p.name for p in stager.root.iterdir())
    assert left == ["site-a.00aa", "site-a.00cc", "site-a.not-hex", "site-b.00bb"]
    # the reconciliation's one-job form: a row keeps it, no row removes it, odd names are refused
    assert remove_orphan(stager.root, "site-a.00aa", lambda j: True) is False
    assert remove_orphan(stager.root, "../stage", lambda j: False) is False
    (stager.root / "site-a.0dd0").mkdir()
    assert remove_orphan(stager.root, "site-a.0dd0", lambda j: False) is True
    assert not (stager.root / "site-a.0dd0").exists() and (stager.root / "site-a.00aa").exists()


# ---- the schedd's health, kills during an outage (issue 13, items 9 and 11) -------------------


def _job_with_procs(db: Database, job_id: str, cluster: int) -> None:
    with db.session() as s:
        s.add(_job(job_id))
        s.flush()
        s.add_all(proc_rows(job_id, ["a"], cluster=cluster, first_proc=0, num_procs=1))


def test_the_probe_says_the_schedd_is_unreachable_and_why(db: Database, tmp_path: Path, no_schedd: str) -> None:
    ex = CondorExecutor(db, tmp_path / "stage", peer_name="site-a", probe=ScheddProbe(True, "bindings"),
                        probe_timeout=10)
    try:
        assert ex.describe()["schedd"]["state"] == "unknown"  # no probe yet: not "ok"
        assert ex.probe_once() is False
        schedd = ex.describe()["schedd"]
        assert schedd["state"] == "unreachable" and schedd["checked_at"] and no_schedd in schedd["last_error"]
        assert len(schedd["last_error"]) <= 300  # one line, not a kilobyte of condor_q's stderr
    finally:
        ex.stop()


def test_health_never_waits_for_a_probe_in_flight(db: Database, tmp_path: Path) -> None:
    """A collector and schedd that accept and never answer: the probe waits out its deadline in its own
    helper; describe() (what /healthz shows) answers meanwhile."""
    from tests.conftest import condor_environment, write_condor_config

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    accepted: list[socket.socket] = []
    threading.Thread(target=lambda: [accepted.append(srv.accept()[0]) for _ in range(8)], daemon=True).start()
    address = f"127.0.0.1:{srv.getsockname()[1]}"
    try:
        with condor_environment({"CONDOR_CONFIG": str(write_condor_config(tmp_path / "hang", address))}):
            ex = CondorExecutor(db, tmp_path / "stage", peer_name="site-a", probe=ScheddProbe(True, "bindings"),
                                probe_timeout=3)
            probing = threading.Thread(target=ex.probe_once)
            probing.start()
            try:
                wait_until(lambda: ex.watch_client._proc is not None, what="the probe to start")
                health = ex.describe()
                assert probing.is_alive()  # the probe is still waiting for the schedd...
                assert health["schedd"]["state"] == "unknown"  # ...and /healthz answered without it
                probing.join(30)
                assert ex.describe()["schedd"]["state"] == "unreachable"
                assert "did not answer" in ex.describe()["schedd"]["last_error"]
            finally:
                probing.join(30)
                ex.stop()
    finally:
        srv.close()
        for c in accepted:
            c.close()


def test_a_kill_during_an_outage_answers_at_once_and_is_carried_out_later(db: Database, tmp_path: Path,
                                                                         no_schedd: str) -> None:
    from peer.executors.base import RemovalPending
    from peer.executors.condor import PENDING_REMOVAL

    _job_with_procs(db, "site-a.1", 41)
    ex = CondorExecutor(db, tmp_path / "stage", peer_name="site-a", probe=ScheddProbe(True, "bindings"),
                        removal_timeout=10, probe_timeout=10)
    try:
        with pytest.raises(RemovalPending) as pending:  # the schedd refuses connections: it does not answer
            ex.remove("site-a.1")
        assert pending.value.message == PENDING_REMOVAL and len(PENDING_REMOVAL) < 100
        assert ex.describe()["schedd"]["state"] == "unreachable" and ex.describe()["pending_removals"] == 1
        _job_with_procs(db, "site-a.2", 42)
        ex.client.close()
        with pytest.raises(RemovalPending):
            ex.remove("site-a.2")  # known unreachable: not even tried
        assert ex.client._proc is None
        with db.sessions() as s:
            job = s.get(Job, "site-a.1")
            job.procs  # noqa: B018 - load them
        assert ex.annotate(job, {0: "running"})["removal"] == PENDING_REMOVAL
    finally:
        ex.stop()
    # A restarted peer still knows, still says so, and tries again when its probe finds the schedd.
    again = CondorExecutor(db, tmp_path / "stage", peer_name="site-a", probe=ScheddProbe(True, "bindings"))
    try:
        again._load_pending_removals()
        assert again.describe()["pending_removals"] == 2
        assert again.annotate(job, {0: "running"})["removal"] == PENDING_REMOVAL
        again._carry_out_removals()  # no schedd yet: still pending, nothing lost
        assert again.describe()["pending_removals"] == 2
    finally:
        again.stop()
