"""Placement: the policies, the broker role's bookkeeping (in-flight, bans, bandwidth) and the simulator.

Behaviour only; the benchmark figures live in benchmarks/README.md.  Every
test is deterministic: seeded policies and an injected clock.
"""
from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

from benchmarks.placement import WorkloadError, parse_workload, simulate
from broker.models import BrokerBase
from broker.placement import (
    Backoff,
    JobRequest,
    LeastExpectedLoad,
    PeerState,
    get_policy,
    hidden_backlog,
    peer_state_from_report,
)
from broker.role import BrokerRole, UnknownPeer

GB = 10**9


class Clock:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class NoHttp:
    """Membership pushes go nowhere."""

    def post(self, *args: Any, **kwargs: Any) -> None:
        return None


def report(name: str, clock: Clock, *, coefficient: float = 0.1, cores: int = 4, clock_mhz: float = 2000.0,
           cpu: float = 0.0, load1: float = 0.0, pool: dict | None = None) -> dict[str, Any]:
    return {
        "peer": name, "url": f"http://{name}", "coefficient": coefficient, "pool": pool,
        "metrics": {"cores": cores, "clock_mhz": clock_mhz, "cpu_percent": cpu, "load1": load1},
        "sampled_at": clock.t, "interval": 15,
    }


def state(name: str, *, cores: int = 4, clock_mhz: float = 2000.0, in_flight: int = 0, now: float = 0.0,
          **kw: Any) -> PeerState:
    rep = {"coefficient": 0.1, "metrics": {"cores": cores, "clock_mhz": clock_mhz, "cpu_percent": 0.0, "load1": 0.0},
           "pool": None, "sampled_at": now - 1.0, "interval": 15}
    return peer_state_from_report(name, f"http://{name}", rep, now, in_flight=in_flight, **kw)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make_role(tmp_path, clock):
    engines = []

    def make(policy: str = "least-expected-load", **kw: Any) -> BrokerRole:
        engine = create_engine(f"sqlite:///{tmp_path / f'broker{len(engines)}.db'}")
        engines.append(engine)
        BrokerBase.metadata.create_all(engine)
        role = BrokerRole(sessionmaker(engine), name="a", url="http://a", policy=policy, seed=7,
                          http=NoHttp(), clock=clock, **kw)  # type: ignore[arg-type]
        role.ensure_self_registered()
        return role

    yield make
    for engine in engines:
        engine.dispose()


# ---- the policies ---------------------------------------------------------------
def test_every_policy_is_selectable_by_name_and_deterministic_for_a_seed():
    peers = [state(n) for n in "abcd"]
    job = JobRequest(n_procs=1)
    for name in ("random", "round-robin", "min-coefficient", "least-expected-load"):
        runs = []
        for _ in range(2):
            policy = get_policy(name, seed=3)
            runs.append([policy(peers, job, 0.0)[0].name for _ in range(8)])
        assert runs[0] == runs[1], name
    rr = get_policy("round-robin")
    assert [rr(peers, job, 0.0)[0].name for _ in range(5)] == ["a", "b", "c", "d", "a"]
    with pytest.raises(ValueError, match="least-expected-load"):
        get_policy("fastest")


def test_data_locality_wins_when_loads_are_equal():
    policy = get_policy("least-expected-load", seed=1)
    peers = [state("a"), state("b"), state("c")]
    for holder in "abc":
        ranking = policy(peers, JobRequest(n_procs=1, input_bytes={holder: GB}), 0.0)
        assert ranking[0].name == holder
        assert ranking[0].detail["move_bytes"] == 0 and ranking[1].detail["move_bytes"] == GB


def test_measured_bandwidth_prices_the_move():
    """Inputs on a peer behind a fast measured link cost less to move than on one at the default rate."""
    policy = LeastExpectedLoad(seed=1)
    job = JobRequest(n_procs=1, input_bytes={"far": GB})
    fast = state("b", bandwidth_in={"far": 1e9})
    slow = state("c")
    assert policy.move_seconds(fast, job) == (1.0, GB)
    assert policy.move_seconds(slow, job)[0] == pytest.approx(80.0)
    assert policy([slow, fast], job, 0.0)[0].name == "b"


def test_the_cap_holds_per_report_interval():
    """A much faster peer stops taking work once it got its cap, while a comparable peer is under its cap."""
    for cap_slack, expect_more_than_cap in ((1.0, False), (0.0, True)):
        policy = LeastExpectedLoad(seed=1, cap_slack=cap_slack)
        fast, slow = state("fast", cores=8, clock_mhz=6000.0), state("slow", cores=8)
        taken = 0
        while True:
            ranking = policy([fast, slow], JobRequest(n_procs=1), 0.0)
            if ranking[0].name != "fast":
                break
            taken += 1
            fast = state("fast", cores=8, clock_mhz=6000.0, in_flight=taken)
        assert (taken > policy.cap(fast)) is expect_more_than_cap
        if not expect_more_than_cap:
            assert taken == policy.cap(fast) == 8


def test_stale_and_banned_peers_are_last_resorts():
    now = 100.0
    peers = [state("a", now=now, banned_until=now + 5), state("b", now=now),
             PeerState("c", "http://c", None, None)]
    for name in ("random", "round-robin", "min-coefficient", "least-expected-load"):
        ranking = get_policy(name, seed=1)(peers, JobRequest(n_procs=1), now)
        assert [r.name for r in ranking] == ["b", "c", "a"], name
        assert "banned" in ranking[-1].reason


def test_hidden_backlog_of_a_host_is_carried_until_it_shows_a_free_slot():
    now = 0.0
    idle = state("h", cores=4)
    full = peer_state_from_report("h", "http://h", {"coefficient": 2.2, "metrics": {"cores": 4, "cpu_percent": 100.0,
                                  "load1": 4.0, "clock_mhz": 2000.0}, "sampled_at": now, "interval": 15}, now)
    assert hidden_backlog(idle, full, placed=10) == 6  # 4 of the 10 took the free slots
    full_with_backlog = peer_state_from_report("h", "http://h", {"coefficient": 2.2, "metrics": full.metrics,
                                               "sampled_at": now, "interval": 15}, now, backlog=6)
    assert hidden_backlog(full_with_backlog, full, placed=2) == 8  # still full: nothing drained for sure
    assert hidden_backlog(full_with_backlog, idle, placed=2) == 0  # a free slot: the queue is empty
    pool = peer_state_from_report("p", "http://p", {"coefficient": 2.0, "pool": {"total_slots": 4, "claimed_slots": 4,
                                  "idle_jobs": 9}, "sampled_at": now, "interval": 15}, now)
    assert hidden_backlog(pool, pool, placed=5) == 0  # pools show their queue


def test_backoff_doubles_up_to_its_maximum():
    b = Backoff(threshold=2, base=15, factor=2, maximum=100)
    assert [b.ban_seconds(n) for n in range(1, 7)] == [0, 15, 30, 60, 100, 100]


# ---- the broker role ----------------------------------------------------------
def test_a_burst_spreads_over_peers_where_min_coefficient_herds(make_role, clock):
    for policy, expect_spread in (("least-expected-load", True), ("min-coefficient", False)):
        role = make_role(policy)
        for name, coeff in (("a", 0.12), ("b", 0.1), ("c", 0.11)):
            role.ingest_report(report(name, clock, coefficient=coeff))
        chosen = Counter(role.place(f"job{i}", JobRequest(n_procs=1))[0].name for i in range(12))
        if expect_spread:
            assert set(chosen) == {"a", "b", "c"} and max(chosen.values()) <= 5, chosen
        else:
            assert chosen == {"b": 12}


def test_in_flight_counts_reset_on_a_new_report(make_role, clock):
    role = make_role()
    role.ingest_report(report("b", clock, cores=8))
    role.ingest_report(report("a", clock, coefficient=3.0, cpu=100.0, load1=4.0))
    for i in range(3):
        assert role.place(f"j{i}", JobRequest(n_procs=2))[0].name == "b"
    rows = {r["peer"]: r for r in role.load_table()}
    assert rows["b"]["in_flight"] == 6 and rows["b"]["expected_occupancy"] == pytest.approx(0.75)
    assert rows["a"]["in_flight"] == 0 and rows["a"]["expected_occupancy"] == pytest.approx(1.0)
    clock.t += 15
    role.ingest_report(report("b", clock, cores=8, cpu=75.0, load1=6.0))  # 6 of its 8 cores busy: no hidden queue
    rows = {r["peer"]: r for r in role.load_table()}
    assert rows["b"]["in_flight"] == 0 and rows["b"]["backlog"] == 0 and rows["b"]["report_age"] == 0


def test_a_failing_peer_is_banned_with_backoff_and_comes_back(make_role, clock):
    role = make_role()
    role.ingest_report(report("a", clock, coefficient=1.5, cpu=75.0, load1=3.0))
    role.ingest_report(report("b", clock))
    assert role.place("j0", JobRequest(n_procs=1))[0].name == "b"
    assert role.report_failure("b")["banned"] is False  # one failure is a hiccup
    ban = role.report_failure("b")
    assert ban["banned"] and ban["banned_for"] == 15 and ban["failures"] == 2
    ranking = role.place("j1", JobRequest(n_procs=1))
    assert [r.name for r in ranking] == ["a", "b"] and "banned" in ranking[-1].reason
    assert {r["peer"]: r["ban"]["banned"] for r in role.load_table()} == {"a": False, "b": True}
    clock.t += 16  # the ban is over
    for name in "ab":
        role.ingest_report(report(name, clock, coefficient=1.5 if name == "a" else 0.1,
                                  cpu=75.0 if name == "a" else 0.0, load1=3.0 if name == "a" else 0.0))
    assert role.place("j2", JobRequest(n_procs=1))[0].name == "b"
    assert role.report_failure("b")["banned_for"] == 30  # the next ban is twice as long
    assert role.report_success("b")["banned"] is False
    assert role.place("j3", JobRequest(n_procs=1))[0].name == "b"
    with pytest.raises(UnknownPeer):
        role.report_failure("nobody")


def test_transfers_feed_the_bandwidth_table(make_role, clock):
    role = make_role()
    for name in "ab":
        role.ingest_report(report(name, clock))
    assert role.report_transfer("a", "b", 1000, 1.0) is None  # too small to say anything
    assert role.report_transfer("a", "b", 100_000_000, 2.0) == pytest.approx(50e6)
    assert role.report_transfer("a", "b", 100_000_000, 1.0) == pytest.approx(0.7 * 50e6 + 0.3 * 100e6)
    states = {p.name: p for p in role.peer_states()}
    assert states["b"].bandwidth_in == {"a": pytest.approx(65e6)} and states["a"].bandwidth_in == {}
    with pytest.raises(ValueError):
        role.report_transfer("a", "a", GB, 1.0)


def test_each_decision_is_recorded_with_its_scores(make_role, clock):
    from sqlalchemy import select

    from broker.models import Placement

    role = make_role()
    for name in "ab":
        role.ingest_report(report(name, clock))
    role.place("key-1", JobRequest(n_procs=1, input_bytes={"a": GB}))
    with role.sessions() as s:
        row = s.scalars(select(Placement)).one()
    assert row.job_key == "key-1" and row.policy == "least-expected-load" and row.chosen == row.ranking[0]["name"]
    assert row.chosen == "a"  # it holds the input
    assert all(r["score"] is not None and "wait_s" in r["detail"] for r in row.ranking)


# ---- the simulator --------------------------------------------------------------
TINY = {
    "name": "tiny",
    "peers": [{"name": "p", "slots": 4, "reports": "pool"}, {"name": "h", "slots": 2, "speed": 2.0, "reports": "host"},
              {"name": "s", "slots": 2, "speed": 0.5, "reports": "host"}],
    "bandwidth": {"default": 1e7, "links": {"p->h": 1e8}},
    "streams": [
        {"type": "burst", "at": 5, "count": 30, "entry": "p",
         "job": {"work": {"dist": "exp", "mean": 20}, "inputs": [{"bytes": 1e6, "on": "entry"}]}},
        {"type": "poisson", "utilisation": 0.5, "duration": 120, "entry": "any",
         "job": {"procs": {"dist": "choice", "values": [1, 2]}, "work": {"dist": "uniform", "low": 5, "high": 30},
                 "inputs": [{"bytes": {"dist": "uniform", "low": 1e6, "high": 1e8}, "on": "any"}]}},
    ],
}


def test_simulator_is_deterministic_for_a_seed_and_uses_the_broker_policies():
    workload = parse_workload(TINY)
    first = simulate(workload, "least-expected-load", 5)
    assert first == simulate(workload, "least-expected-load", 5)
    assert first["jobs"] == len(workload.jobs(5)) > 30 and first["mean_response_s"] > 0
    assert set(first["utilisation"]) == {"p", "h", "s"}
    herd = simulate(workload, "min-coefficient", 5)
    assert herd["jobs"] == first["jobs"]  # same jobs for every policy
    assert simulate(workload, "oracle", 5)["jobs"] == first["jobs"]
    assert simulate(workload, "least-expected-load", 6) != first


def test_pareto_run_times_and_programs_in_workloads():
    from benchmarks.placement.workload import dist_mean, sample
    import random

    capped = {"dist": "pareto", "scale": 300, "alpha": 1.5, "max": 21600}
    rng = random.Random(1)
    draws = [sample(capped, rng) for _ in range(20000)]
    assert min(draws) >= 300 and max(draws) <= 21600
    assert sum(draws) / len(draws) == pytest.approx(dist_mean(capped), rel=0.05)
    assert dist_mean({"dist": "pareto", "scale": 10, "alpha": 2}) == pytest.approx(20)
    data = {**TINY, "streams": [{**TINY["streams"][0], "job": {**TINY["streams"][0]["job"], "program": "sim"}},
                                TINY["streams"][1]]}
    jobs = parse_workload(data).jobs(1)
    assert {j.program for j in jobs} == {"sim", "stream1"}
    with pytest.raises(WorkloadError, match="alpha <= 1 has no mean"):
        parse_workload({**TINY, "streams": [{"type": "burst", "count": 1,
                                             "job": {"work": {"dist": "pareto", "scale": 1, "alpha": 1}}}]})


def test_workload_errors_name_the_field():
    bad = {**TINY, "streams": [{"type": "poisson", "duration": 10, "job": {"work": 1}}]}
    with pytest.raises(WorkloadError, match=r"streams\[0\].*rate"):
        parse_workload(bad)
    bad = {**TINY, "peers": [{"name": "p", "slots": 0}]}
    with pytest.raises(WorkloadError, match=r"peers\[0\].*slots"):
        parse_workload(bad)
    bad = {**TINY, "streams": [{"type": "burst", "count": 1, "job": {"work": 1, "inputs": [{"bytes": 1, "on": "mars"}]}}]}
    with pytest.raises(WorkloadError, match="mars"):
        parse_workload(bad)


# ---- HTTP ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def client(tmp_path_factory):
    from peer.app import create_app
    from pocketgrid.config import PeerConfig

    config = PeerConfig(name="solo", state_dir=str(tmp_path_factory.mktemp("placement-peer")), agent=False,
                        insecure_http=True)  # input checks of the broker routes; access is tested elsewhere
    app = create_app(config, start_services=False)
    yield app.test_client()
    app.extensions["pocketgrid"].stop()


@pytest.mark.parametrize(
    "path, body, status, message",
    [
        ("/api/v1/broker/placements/outcome", None, 400, "JSON object"),
        ("/api/v1/broker/placements/outcome", {"ok": False}, 400, "missing field 'peer'"),
        ("/api/v1/broker/placements/outcome", {"peer": "solo", "ok": "no"}, 400, "'ok' has the wrong type"),
        ("/api/v1/broker/placements/outcome", {"peer": "", "ok": False}, 400, "must not be empty"),
        ("/api/v1/broker/placements/outcome", {"peer": "ghost", "ok": False}, 404, "unknown peer 'ghost'"),
        ("/api/v1/broker/transfers", {"src": "solo", "dst": "x", "bytes": -1, "seconds": 1}, 400, "'bytes' must be >= 0"),
        ("/api/v1/broker/transfers", {"src": "solo", "dst": "x", "bytes": 1, "seconds": 0}, 400, "'seconds'"),
        ("/api/v1/broker/transfers", {"src": "solo", "dst": "solo", "bytes": 1, "seconds": 1}, 400, "same peer"),
        ("/api/v1/broker/transfers", {"src": "solo", "dst": "ghost", "bytes": 10**9, "seconds": 1}, 404, "unknown peer"),
        ("/api/v1/broker/placements", {"job_key": "k", "n_procs": 1, "input_bytes": {"solo": "big"}}, 400, "input_bytes"),
    ],
)
def test_routes_validate_input(client, path, body, status, message):
    r = client.post(path, json=body) if body is not None else client.post(path, data="nope")
    assert r.status_code == status, r.get_json()
    assert message in r.get_json()["error"]


def test_outcome_route_bans_and_the_system_view_shows_it(client):
    client.post("/api/v1/broker/reports", json={"peer": "solo", "url": "http://solo", "coefficient": 0.1,
                                                "metrics": {"cores": 2}})
    for _ in range(2):
        r = client.post("/api/v1/broker/placements/outcome", json={"peer": "solo", "ok": False})
        assert r.status_code == 200
    assert r.get_json()["banned"] is True
    view = client.get("/api/v1/broker").get_json()
    row = next(row for row in view["load"] if row["peer"] == "solo")
    assert row["ban"]["banned"] and row["in_flight"] == 0 and "report_age" in row
    assert view["policy"] == "least-expected-load"
    r = client.post("/api/v1/broker/placements/outcome", json={"peer": "solo", "ok": True})
    assert r.status_code == 200 and r.get_json()["banned"] is False


# ---- held and unmatchable procs are not load (issue 13, item 5) ----------------------------------
def pool_state(name: str, *, idle_jobs: int, site: dict | None = None, in_flight: int = 0, now: float = 0.0) -> PeerState:
    """A Condor site with 4 idle one-core slots, as its agent reports it."""
    rep = {"coefficient": 0.1, "pool": {"total_slots": 4, "claimed_slots": 0, "idle_slots": 4, "idle_jobs": idle_jobs},
           "site": site, "sampled_at": now - 1.0, "interval": 15}
    return peer_state_from_report(name, f"http://{name}", rep, now, in_flight=in_flight)


def test_procs_no_slot_matches_are_not_load_and_do_not_deter_other_jobs():
    stuck = pool_state("a", idle_jobs=4, site={"held": 0, "unmatchable": 4})  # its 4 idle procs match no slot
    busy = pool_state("b", idle_jobs=2)  # 2 idle procs that will take slots
    assert (stuck.unmatchable, busy.unmatchable) == (4, 0)
    policy = LeastExpectedLoad(seed=1, tie_fraction=0.0)
    ranked = policy([stuck, busy], JobRequest(n_procs=3), 0.0)
    assert ranked[0].name == "a" and ranked[0].detail["occupancy"] == 0.0
    assert ranked[1].detail["occupancy"] == 0.5
    # the same figures without the site's word count those 4 procs as work about to take the 4 slots
    naive = pool_state("a", idle_jobs=4)
    assert policy([naive, busy], JobRequest(n_procs=3), 0.0)[0].name == "b"


def test_held_procs_are_not_load_and_not_a_hidden_backlog():
    """Four held procs on a site with 4 idle slots: not busy, not over cap, not queued work."""
    held = pool_state("a", idle_jobs=0, site={"held": 4, "unmatchable": 0})
    ranked = LeastExpectedLoad(seed=1)([held], JobRequest(n_procs=1), 0.0)
    assert ranked[0].detail["occupancy"] == 0.0 and "over cap" not in ranked[0].reason
    # A host whose slots are all busy, to which 4 procs were placed that then went on hold: its next report
    # says so, and they are not carried as a hidden queue.
    full = {"coefficient": 2.2, "metrics": {"cores": 4, "cpu_percent": 100.0, "load1": 4.0, "clock_mhz": 2000.0},
            "sampled_at": 0.0, "interval": 15}
    before = peer_state_from_report("h", "http://h", {**full, "site": {"held": 1}}, 0.0)
    after = peer_state_from_report("h", "http://h", {**full, "site": {"held": 5}}, 0.0)
    assert hidden_backlog(before, after, placed=4) == 0
    assert hidden_backlog(before, peer_state_from_report("h", "http://h", {**full, "site": {"held": 1}}, 0.0),
                          placed=4) == 4  # still waiting for a slot: backlog, as before


def test_the_broker_keeps_each_sites_word_and_shows_it(make_role, clock):
    role = make_role()
    rep = report("a", clock, pool={"total_slots": 4, "claimed_slots": 0, "idle_slots": 4, "idle_jobs": 4})
    role.ingest_report({**rep, "site": {"held": 2, "unmatchable": 4, "idle": 4}})
    row = {r["peer"]: r for r in role.load_table()}["a"]
    assert row["site"] == {"held": 2, "unmatchable": 4, "idle": 4} and row["expected_occupancy"] == 0.0
    role.ingest_report(report("a", clock, pool=rep["pool"]))  # an agent that does not say: counted as load
    assert {r["peer"]: r for r in role.load_table()}["a"]["expected_occupancy"] == 1.0
