"""Learned run times: the summary a site reports, the policy that uses it, the broker that keeps it,
and the collector that reads it from real event logs (written by EventLogWriter, read by
htcondor2.JobEventLog)."""
from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import pytest

from broker.placement import JobRequest, LeastExpectedLoad, get_policy, peer_state_from_report
from broker.runtimes import RunTimeStats, expected_start, history_key, summarize
from peer.db import Database
from peer.event_log import EventLogWriter
from peer.models import Base, Job, Proc
from peer.runtime_stats import RunTimeCollector
from tests.unit.test_placement import Clock, make_role, clock, report  # noqa: F401  (fixtures)

NOW = 1_000_000.0


def full_site(name: str, run_s: float, *, slots: int = 4, ages: list[float] | None = None,
              completed: int = 30, by_key: dict[str, list[float]] | None = None, now: float = NOW,
              clock_mhz: float = 2000.0, busy: float | None = None):
    """A host of ``slots`` cores, all busy, whose completed procs all took ``run_s``."""
    busy = slots if busy is None else busy
    runtimes = summarize([run_s] * completed, running_ages=ages if ages is not None else [10.0] * int(busy),
                         by_key=by_key)
    rep = {"coefficient": 2.0 * busy / slots,
           "metrics": {"cores": slots, "clock_mhz": clock_mhz, "cpu_percent": 100.0 * busy / slots, "load1": busy},
           "pool": None, "sampled_at": now - 1.0, "interval": 15, "runtimes": runtimes}
    return peer_state_from_report(name, f"http://{name}", rep, now)


# ---- the summary --------------------------------------------------------------------------------
def test_summary_quantiles_and_parse_round_trip():
    s = summarize([float(x) for x in range(1, 101)], running_ages=[5, 50, 500], idle=2, queue_waits=[1, 3],
                  by_key={"k": [10, 20, 30]}, window_s=3600)
    assert s["completed"] == 100 and s["median_s"] == pytest.approx(50.5) and s["p90_s"] == pytest.approx(90.1)
    assert len(s["quantiles_s"]) == 21 and s["quantiles_s"][0] == 1 and s["quantiles_s"][-1] == 100
    assert s["running_ages_s"] == [500, 50, 5] and s["idle"] == 2 and s["mean_queue_wait_s"] == 2
    assert s["by_key"] == {"k": {"n": 3, "mean_s": 20, "median_s": 20, "p90_s": 28}}
    stats = RunTimeStats.parse(s)
    assert stats is not None and stats.usable and stats.running == 3 and stats.by_key["k"]["n"] == 3


@pytest.mark.parametrize("junk", [None, "x", [], {"completed": "many"}, {"completed": 9, "quantiles_s": "no"},
                                  {"completed": 9, "quantiles_s": [3, 2, 1]}])
def test_junk_from_a_peer_is_not_learned_from(junk):
    stats = RunTimeStats.parse(junk)
    assert stats is None or not stats.usable


def test_the_rest_of_a_running_proc_depends_on_its_age():
    stats = RunTimeStats.parse(summarize([10.0] * 50 + [1000.0] * 50))
    assert stats.draw(0.0) == 10 and stats.draw(1.0) == 1000 and stats.cdf(10) == pytest.approx(0.45)
    assert stats.rest(0, 0.25) == pytest.approx(stats.draw(0.25))
    assert stats.rest(600, 0.5) == pytest.approx(400.0)  # past the short ones: a long one, 400 s to go
    assert stats.rest(5000, 0.5) == 5000  # older than any seen: as long again (heavy tail)


def test_slots_free_in_order_and_queued_procs_take_turns():
    stats = RunTimeStats.parse(summarize([100.0] * 10, running_ages=[90, 40]))
    starts = [expected_start(stats, slots=4, running=2, position=k) for k in range(6)]
    assert starts == [0, 0, pytest.approx(10), pytest.approx(60), pytest.approx(100), pytest.approx(100)]


def test_on_many_slots_the_first_one_frees_long_before_the_shortest_expected_rest():
    runs = [10.0 * 1.5 ** k for k in range(12)] * 5  # 10 s to 860 s: heavy tailed
    stats = RunTimeStats.parse(summarize(runs, running_ages=[5.0] * 24))
    first = expected_start(stats, slots=24, running=24, position=0)
    mean_rest = sum(stats.rest(5.0, (k + 0.5) / 100) for k in range(100)) / 100
    assert first < mean_rest / 5
    assert expected_start(stats, 24, 24, 23) > first  # later positions wait longer
    far = expected_start(stats, 24, 24, 5000)  # extrapolated at the site's rate beyond the played part
    assert far == pytest.approx(expected_start(stats, 24, 24, 512) + (5000 - 512) * stats.mean / 24)


def test_history_key_names_one_users_executable():
    assert history_key("CN=Alice", "ab" * 32) == history_key("CN=Alice", "ab" * 32)
    assert history_key("CN=Alice", "ab" * 32) != history_key("CN=Bob", "ab" * 32)
    assert len(history_key("CN=Alice", "cd" * 32)) == 32


# ---- the policy ---------------------------------------------------------------------------------
def test_a_site_busy_with_long_jobs_loses_to_an_equal_one_with_short_jobs():
    longs, shorts = full_site("longs", 900.0), full_site("shorts", 30.0)
    job = JobRequest(n_procs=4)
    for order in ([longs, shorts], [shorts, longs]):
        ranking = LeastExpectedLoad(seed=1)(order, job, NOW)
        assert [r.name for r in ranking] == ["shorts", "longs"]
    by_name = {r.name: r for r in LeastExpectedLoad(seed=1)([longs, shorts], job, NOW)}
    assert by_name["longs"].detail["wait_s"] == pytest.approx(890.0)  # 900 s jobs, 10 s old
    assert by_name["shorts"].detail["wait_s"] == pytest.approx(20.0)
    assert by_name["longs"].detail["wait_source"].startswith("learned: 4/4 slots busy, oldest 10 s, 0 queued")
    assert "learned wait" in by_name["longs"].reason
    # the nominal policy sees two equally full sites
    nominal = {r.name: r.detail["wait_s"] for r in get_policy("least-expected-load-nominal", seed=1)(
        [longs, shorts], job, NOW)}
    assert nominal == {"longs": 60.0, "shorts": 60.0}


def test_without_history_the_policy_is_the_nominal_one():
    rng = random.Random(4)
    for trial in range(50):
        peers = []
        for k in range(4):
            slots = rng.choice([1, 2, 4, 8])
            busy = rng.uniform(0, 2 * slots)
            rep = {"coefficient": busy, "metrics": {"cores": slots, "clock_mhz": rng.choice([1000, 2000, 3000]),
                                                    "cpu_percent": min(100.0, 100 * busy / slots), "load1": busy},
                   "pool": None, "sampled_at": NOW - 1, "interval": 15}
            peers.append(peer_state_from_report(f"p{k}", f"http://p{k}", rep, NOW, in_flight=rng.randint(0, 3)))
        job = JobRequest(n_procs=rng.randint(1, 6), input_bytes={"p1": rng.randint(0, 10**9)}, history_key="unknown")
        learned = [(r.name, r.score) for r in get_policy("least-expected-load", seed=trial)(peers, job, NOW)]
        nominal = [(r.name, r.score) for r in get_policy("least-expected-load-nominal", seed=trial)(peers, job, NOW)]
        assert learned == nominal


def test_slots_held_by_a_long_program_free_late_even_if_most_procs_there_were_short():
    """A pool that ran hundreds of one-minute analyses but whose slots now hold three-hour simulations."""
    quick = [60.0] * 300
    sims = [10800.0] * 20
    busy = summarize(quick + sims, by_key={"ana": quick, "sim": sims}, running_by_key={"sim": [600.0] * 4})
    mixed = summarize(quick + sims, by_key={"ana": quick, "sim": sims}, running_by_key={"ana": [30.0] * 4})
    pool = {"total_slots": 4, "claimed_slots": 4, "idle_jobs": 0}
    states = [peer_state_from_report(name, f"http://{name}", {"coefficient": 1.0, "metrics": {}, "pool": pool,
                                     "sampled_at": NOW - 1, "interval": 15, "runtimes": rt}, NOW)
              for name, rt in (("sims-running", busy), ("analyses-running", mixed))]
    by_name = {r.name: r.detail["wait_s"] for r in LeastExpectedLoad(seed=1)(states, JobRequest(n_procs=1), NOW)}
    assert by_name["sims-running"] == pytest.approx(10200.0)  # the simulations' rest, not the site's median
    assert by_name["analyses-running"] < 60
    assert RunTimeStats.parse(busy).key_procs["sim"] == ((600.0,) * 4, 0)


def test_a_program_never_finished_here_is_judged_by_its_runs_elsewhere():
    """A host that ran only short analyses now runs simulations that finished only on the pool so far."""
    quick = [30.0] * 200
    rt = summarize(quick, by_key={"ana": quick}, running_by_key={"sim": [100.0] * 4}, idle_by_key={"sim": 1})
    host = peer_state_from_report("host", "http://host", {
        "coefficient": 2.0, "metrics": {"cores": 4, "clock_mhz": 2000.0, "cpu_percent": 100.0, "load1": 4.0},
        "pool": None, "sampled_at": NOW - 1, "interval": 15, "runtimes": rt}, NOW)
    pool_rt = summarize([1000.0] * 50, by_key={"sim": [1000.0] * 50})
    pool = peer_state_from_report("pool", "http://pool", {
        "coefficient": 1.0, "metrics": {}, "pool": {"total_slots": 2, "claimed_slots": 2, "idle_jobs": 0},
        "sampled_at": NOW - 1, "interval": 15, "runtimes": pool_rt}, NOW)
    assert host.runtimes.key_procs == {"sim": ((100.0,) * 4, 1)} and "sim" not in host.runtimes.key_stats
    policy = LeastExpectedLoad(seed=1)
    wait = policy.score(host, JobRequest(n_procs=1), [host, pool]).detail["wait_s"]
    assert wait == pytest.approx(900.0)  # 4 sims 100 s into their 1000 s on the pool (the same speed)
    alone = policy.score(host, JobRequest(n_procs=1), [host]).detail["wait_s"]
    assert alone < 200  # without that history: procs older than any seen here go on about as long again


def test_a_peers_few_procs_are_shrunk_towards_the_history_elsewhere():
    key = "k" * 32
    odd = full_site("odd", 60.0, busy=0, by_key={key: [300.0] * 5})  # five unlucky procs
    main = full_site("main", 60.0, busy=0, by_key={key: [30.0] * 200})
    policy = LeastExpectedLoad(seed=1)
    run, source = policy.job_run(odd, JobRequest(n_procs=1, history_key=key), [odd, main])
    assert run == pytest.approx((5 * 300 + 20 * 30) / 25)  # medians, weighted
    assert source == "learned: median of 5 procs of this executable on odd and 200 on main (scaled by speed)"
    assert policy.job_run(main, JobRequest(n_procs=1, history_key=key), [odd, main])[0] == pytest.approx(
        (200 * 30 + 5 * 300) / 205)


def test_a_long_executable_goes_to_the_fast_site_a_short_one_may_wait_less_on_a_slow_one():
    key = "k" * 32
    # the fast site has one slot busy for another 590 s; the slow one is idle
    fast = full_site("fast", 600.0, clock_mhz=4000.0, busy=1, by_key={key: [900.0] * 5})
    slow = full_site("slow", 60.0, clock_mhz=1000.0, busy=0)
    long_job = JobRequest(n_procs=4, history_key=key)
    ranking = {r.name: r for r in LeastExpectedLoad(seed=1)([fast, slow], long_job, NOW)}
    assert ranking["fast"].detail["run_s"] == 900.0
    assert ranking["fast"].detail["run_source"] == "learned: median of 5 procs of this executable on fast"
    assert ranking["slow"].detail["run_s"] == pytest.approx(3600.0)  # the same program, a quarter the speed
    assert ranking["slow"].detail["run_source"] == "learned: median of 5 procs of this executable on fast, scaled by speed"
    assert LeastExpectedLoad(seed=1)([fast, slow], long_job, NOW)[0].name == "fast"
    assert ranking["fast"].detail["wait_s"] == pytest.approx(590.0)
    # an unknown executable: nominal run times (30 s there, 120 s here): the idle slow site starts it at once
    assert LeastExpectedLoad(seed=1)([fast, slow], JobRequest(n_procs=4), NOW)[0].name == "slow"


# ---- the broker keeps the figures ---------------------------------------------------------------
def test_the_broker_keeps_the_last_runtimes_until_they_are_stale(make_role, clock):
    role = make_role()
    rep = report("b", clock)
    rep["runtimes"] = summarize([120.0] * 10, running_ages=[30.0])
    role.ingest_report(rep)
    role.ingest_report(report("b", clock))  # a report without them (an agent of an older version)
    stats = {p.name: p for p in role.peer_states()}["b"].runtimes
    assert stats is not None and stats.median == 120.0
    row = next(r for r in role.load_table() if r["peer"] == "b")
    assert row["runtimes"]["completed"] == 10 and row["runtimes"]["used"] is True
    clock.t += 3 * 15 + 1
    role.ingest_report(report("b", clock))
    assert {p.name: p for p in role.peer_states()}["b"].runtimes is None


def test_decisions_outcomes_and_pruning(make_role, clock):
    role = make_role()
    role.keep_placements = 150
    for name in "ab":
        role.ingest_report(report(name, clock))
    first = role.decide("key-0", JobRequest(n_procs=1))
    assert first["policy"] == "least-expected-load" and first["decided_at"] == clock.t and first["id"] == 1
    assert role.record_outcome("key-0", "b", job_id="b.1", failed=[{"name": "a", "error": "down"}])
    assert not role.record_outcome("nobody", "a")
    recent = role.recent_placements(5)
    assert recent[0]["outcome"] == {"accepted_by": "b", "job_id": "b.1", "failed": [{"name": "a", "error": "down"}],
                                    "reported_at": clock.t}
    assert "url" not in recent[0]["ranking"][0] and recent[0]["ranking"][0]["detail"]["run_source"]
    for i in range(1, 300):
        role.decide(f"key-{i}", JobRequest(n_procs=1))
    ids = [d["id"] for d in role.recent_placements(500)]
    assert ids[0] == 300 and len(ids) <= 150 + 100 and 1 not in ids  # pruned every 100 decisions


# ---- the collector, from real event logs --------------------------------------------------------
@pytest.fixture
def db(tmp_path: Path) -> Database:
    d = Database(f"sqlite:///{tmp_path / 'peer.db'}")
    d.create_all(Base.metadata)
    return d


def add_job(db: Database, stage: Path, job_id: str, cluster: int, n: int, key: str | None, created: float) -> Path:
    (stage / job_id).mkdir(parents=True)
    with db.session() as s:
        job = Job(id=job_id, name=job_id, owner="o", created_at=created, executor="local", executable_name="x",
                  submit_name="s", submit_text="queue\n", input_names=[f"i{k}" for k in range(n)], entry_peer="p",
                  origin_key=job_id, history_key=key)  # the piece's job's key, as its home sent it
        s.add(job)
        for k in range(n):
            s.add(Proc(job_id=job_id, index=k, input_name=f"i{k}", executor="local", cluster=cluster, proc=k))
    return stage / job_id / "job.log"


def test_the_collector_reads_run_times_ages_and_waits_from_the_event_logs(db, tmp_path):
    stage = tmp_path / "stage"
    now = time.time() // 1 * 1.0
    clock = Clock(now)
    long_log = add_job(db, stage, "p.long", 1, 3, "key-long", now - 5000)
    w = EventLogWriter(long_log)
    for k in range(3):
        w.submit(1, k, "<h>", when=now - 5000)
        w.execute(1, k, "<h>", when=now - 4000 + k)  # waited 1000 s (+k)
        w.terminated(1, k, return_value=0 if k else 2, when=now - 4000 + k + 900)  # ran 900 s
    mixed_log = add_job(db, stage, "p.mixed", 2, 4, "key-short", now - 200)
    w = EventLogWriter(mixed_log)
    for k in range(4):
        w.submit(2, k, "<h>", when=now - 200)
    w.execute(2, 0, "<h>", when=now - 190)
    w.terminated(2, 0, return_value=0, when=now - 160)  # 30 s
    w.execute(2, 1, "<h>", when=now - 150)  # running, 150 s old
    w.execute(2, 2, "<h>", when=now - 100)
    w.aborted(2, 2, "removed by user", when=now - 50)  # cut short: says nothing about run times
    old_log = add_job(db, stage, "p.old", 3, 1, None, now - 3 * 86400)  # outside the window
    EventLogWriter(old_log).submit(3, 0, "<h>", when=now - 3 * 86400)

    collector = RunTimeCollector(db, stage, window=86400, clock=clock)
    s = collector.collect()
    assert s["completed"] == 4 and sorted(s["quantiles_s"])[0] == 30 and s["quantiles_s"][-1] == 900
    assert s["median_s"] == 900 and s["running"] == 1 and s["running_ages_s"] == [150.0] and s["idle"] == 1
    assert s["by_key"] == {"key-long": {"n": 3, "mean_s": 900.0, "median_s": 900.0, "p90_s": 900.0},
                           "key-short": {"n": 1, "mean_s": 30.0, "median_s": 30.0, "p90_s": 30.0,
                                         "running_ages_s": [150.0], "idle": 1}}  # its running and waiting procs
    assert s["mean_queue_wait_s"] == pytest.approx((1000 + 1001 + 1002 + 10 + 50 + 100) / 6)

    # incremental: the running proc ends; the finished job is not read again
    EventLogWriter(mixed_log).terminated(2, 1, signal=9, when=now - 10)  # killed after 140 s: it ran, it counts
    long_log.unlink()
    clock.t += 5
    s = collector.collect()
    assert s["completed"] == 5 and s["running"] == 0 and s["by_key"]["key-short"]["n"] == 2
    assert s["by_key"]["key-long"]["n"] == 3  # from what was read before the log went away
