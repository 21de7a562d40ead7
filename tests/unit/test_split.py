"""broker/split.py as a pure function, and the broker role's split (in flight per share)."""
from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

from broker.models import BrokerBase
from broker.placement import JobRequest, LeastExpectedLoad, PeerState, peer_state_from_report
from broker.role import BrokerRole
from broker.runtimes import summarize
from broker.split import split_inputs
from pocketgrid.config import PeerConfig

NOW = 1_000_000.0


def site(name: str, *, cores: int, busy: float = 0.0, in_flight: int = 0, fresh: bool = True,
         banned_until: float | None = None) -> PeerState:
    """A host of ``cores`` slots, ``busy`` of them taken at its (fresh or stale) report."""
    report = {"coefficient": 0.1, "pool": None, "interval": 15,
              "metrics": {"cores": cores, "clock_mhz": 2000.0, "cpu_percent": 100.0 * busy / cores, "load1": 0.0},
              "sampled_at": NOW - (1.0 if fresh else 3600.0)}
    return peer_state_from_report(name, f"https://{name}", report, NOW, in_flight=in_flight, banned_until=banned_until)


def job(n: int, home: str = "home") -> JobRequest:
    return JobRequest(n_procs=n, input_bytes={home: n * 1000}, entry_peer=home)


def split(peers: list[PeerState], n: int, **kw: Any):
    return split_inputs(peers, job(n), NOW, estimator=LeastExpectedLoad(seed=1), input_sizes=[1000] * n, **kw)


def test_a_site_with_enough_free_slots_takes_the_whole_job() -> None:
    peers = [site("a", cores=10), site("big", cores=64), site("c", cores=10)]
    shares = split(peers, 20)
    assert [(s.name, s.count) for s in shares] == [("big", 20)]
    assert shares[0].est_seconds < 2 * 60  # one wave: no input waits for a slot


def test_the_whole_job_stays_on_the_home_when_it_has_the_slots() -> None:
    """Equal sites: the one holding the inputs (nothing to move) takes all, none is shared out by a tie."""
    peers = [site("home", cores=40), site("b", cores=40), site("c", cores=40)]
    assert [(s.name, s.count) for s in split(peers, 30)] == [("home", 30)]


def test_forty_inputs_over_four_sites_with_ten_free_slots_each_spread_over_all() -> None:
    peers = [site(n, cores=10) for n in ("home", "b", "c", "d")]
    shares = split(peers, 40)
    assert sorted((s.name, s.count) for s in shares) == [("b", 10), ("c", 10), ("d", 10), ("home", 10)]
    assert sum(s.count for s in shares) == 40
    assert all("wait 0.0" in s.reason for s in shares)  # nobody waits for a slot


def test_busy_sites_and_in_flight_procs_take_fewer() -> None:
    peers = [site("home", cores=10, busy=8), site("b", cores=10, in_flight=5), site("c", cores=10)]
    counts = {s.name: s.count for s in split(peers, 17)}
    assert counts == {"home": 2, "b": 5, "c": 10}


def test_an_avoided_site_gets_nothing_while_others_exist() -> None:
    peers = [site("a", cores=4), site("b", cores=100), site("c", cores=4)]
    shares = split(peers, 30, avoid=frozenset({"b"}))
    assert "b" not in {s.name for s in shares}
    assert sum(s.count for s in shares) == 30


def test_an_avoided_site_is_the_last_resort() -> None:
    shares = split([site("b", cores=4)], 3, avoid=frozenset({"b"}))
    assert [(s.name, s.count) for s in shares] == [("b", 3)] and "avoided" in shares[0].reason


def test_stale_and_banned_sites_only_when_no_usable_one_remains() -> None:
    peers = [site("stale", cores=64, fresh=False), site("banned", cores=64, banned_until=NOW + 60),
             site("small", cores=2)]
    assert {s.name for s in split(peers, 10)} == {"small"}
    only_bad = [site("stale", cores=64, fresh=False), site("banned", cores=64, banned_until=NOW + 60)]
    assert {s.name for s in split(only_bad, 10)} == {"stale"}
    # an avoided usable site still comes after a stale one that is not avoided
    assert {s.name for s in split([site("stale", cores=4, fresh=False), site("ok", cores=4)], 2,
                                  avoid=frozenset({"ok"}))} == {"stale"}


def test_moving_big_inputs_keeps_them_at_home_unless_waiting_there_is_longer() -> None:
    gb = 10**9
    peers = [site("home", cores=2), site("far", cores=16)]
    est = LeastExpectedLoad(seed=1)
    big = split_inputs(peers, JobRequest(n_procs=4, input_bytes={"home": 4 * gb}, entry_peer="home"), NOW,
                       estimator=est, input_sizes=[gb] * 4)
    assert {s.name: s.count for s in big} == {"home": 4}  # 80 s per GB to move: two waves at home win
    small = split_inputs(peers, JobRequest(n_procs=4, input_bytes={"home": 4000}, entry_peer="home"), NOW,
                         estimator=est, input_sizes=[1000] * 4)
    assert {s.name: s.count for s in small} == {"far": 4}  # small: one wave at the big site beats two at home


def test_a_program_s_run_times_learned_elsewhere_count_as_in_the_ranking() -> None:
    """Sites that never ran the program use its history on the others (scaled by speed), as the ranking does.

    ``prog`` ran twenty times for 900 s on ``lab`` (speed 1, busy with a long queue).  Two 1 GB inputs
    (80 s each to move): at the nominal 60 s the slow home (speed 0.5: 120 s, nothing to move) would
    keep them; at 900 s they take 1800 s there and 900 + 160 s on ``fast`` (speed 1), which the
    ranking's first is too.
    """
    gb = 10**9

    def host(name: str, clock: float, runtimes: dict[str, Any] | None = None, busy: int = 0) -> PeerState:
        report = {"coefficient": 0.1, "pool": None, "interval": 15, "sampled_at": NOW - 1.0,
                  "metrics": {"cores": 4, "clock_mhz": clock, "cpu_percent": 25.0 * busy, "load1": float(busy)},
                  "runtimes": runtimes}
        return peer_state_from_report(name, f"https://{name}", report, NOW)

    lab = host("lab", 2000.0, summarize([900.0] * 20, by_key={"prog": [900.0] * 20},
                                        running_by_key={"prog": [10.0] * 4}, idle_by_key={"prog": 20}), busy=4)
    peers = [host("home", 1000.0), host("fast", 2000.0), lab]
    est = LeastExpectedLoad(seed=1)
    request = JobRequest(n_procs=2, input_bytes={"home": 2 * gb}, entry_peer="home", history_key="prog")
    shares = split_inputs(peers, request, NOW, estimator=est, input_sizes=[gb] * 2)
    assert {s.name: s.count for s in shares} == {"fast": 2}
    assert "learned" in shares[0].detail["run_source"] and shares[0].detail["run_s"] == 900.0
    assert est(peers, request, NOW)[0].name == "fast"
    # the same job of a program nobody has run: nominal 60 s, and the slow home keeps it
    unknown = split_inputs(peers, JobRequest(n_procs=2, input_bytes={"home": 2 * gb}, entry_peer="home",
                                             history_key="new"), NOW, estimator=est, input_sizes=[gb] * 2)
    assert {s.name: s.count for s in unknown} == {"home": 2}


def test_nothing_to_split() -> None:
    assert split([], 5) == []
    assert split_inputs([site("a", cores=2)], JobRequest(n_procs=0), NOW, estimator=LeastExpectedLoad()) == []


def test_the_broker_role_counts_each_share_in_flight_on_its_site(tmp_path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'broker.db'}")
    BrokerBase.metadata.create_all(engine)
    role = BrokerRole(sessionmaker(engine), name="home", url="https://home", seed=3, clock=lambda: NOW)
    role.ensure_self_registered()
    for name in ("home", "b"):
        role.ingest_report({"peer": name, "url": f"https://{name}", "coefficient": 0.1, "interval": 15,
                            "sampled_at": NOW, "metrics": {"cores": 4, "clock_mhz": 2000.0, "cpu_percent": 0.0,
                                                           "load1": 0.0}})
    ranking, shares = role.split("job-1", job(6), input_sizes=[1000] * 6)
    assert {s.name: s.count for s in shares} == {"home": 4, "b": 2}
    assert {r["peer"]: r["in_flight"] for r in role.load_table()} == {"home": 4, "b": 2}
    assert {r.name for r in ranking} == {"home", "b"}
    # the next split sees them: home's slots are taken now
    _, again = role.split("job-2", job(2), input_sizes=[1000] * 2)
    assert {s.name: s.count for s in again} == {"b": 2}


# ---- late binding (waves_ahead): a site is given what it can start soon, the rest stays unassigned ----
def pool(name: str, *, slots: int, claimed: int, idle_jobs: int, ours_idle: int | None = None,
         in_flight: int = 0) -> PeerState:
    """A Condor pool's fresh report: ``idle_jobs`` waiting in it, ``ours_idle`` of them this grid's
    (its peer's event logs count them; None: the peer reports no run times)."""
    report = {"coefficient": 0.1, "interval": 15, "sampled_at": NOW - 1.0,
              "metrics": {"cores": 4, "clock_mhz": 2000.0, "cpu_percent": 5.0, "load1": 0.2},
              "pool": {"total_slots": slots, "claimed_slots": claimed, "idle_slots": slots - claimed,
                       "idle_jobs": idle_jobs, "running_jobs": claimed}}
    if ours_idle is not None:
        report["runtimes"] = summarize([], idle=ours_idle)
    return peer_state_from_report(name, f"https://{name}", report, NOW, in_flight=in_flight)


def test_late_binding_gives_each_site_its_free_slots_plus_the_waves_ahead_and_leaves_the_rest() -> None:
    peers = [site("home", cores=10, busy=4), site("b", cores=10), site("c", cores=4)]
    planned = {s.name: s.count for s in split(peers, 100)}  # no cap: every input given
    assert sum(planned.values()) == 100
    for waves, expected in ((0, {"home": 6, "b": 10, "c": 4}), (1, {"home": 16, "b": 20, "c": 8})):
        shares = split(peers, 100, waves_ahead=waves)
        counts = {s.name: s.count for s in shares}
        assert counts == expected  # free slots + waves x slots, each below its planned share
        assert all(counts[n] < planned[n] for n in counts)
        assert all("planned, the rest wait for its slots to free" in s.reason for s in shares)


def test_late_binding_gives_a_planned_share_smaller_than_the_room_whole() -> None:
    """The cap only holds inputs back: what fits in the free slots goes out as planned."""
    peers = [site("home", cores=10, busy=4), site("b", cores=10), site("c", cores=4)]
    assert ({s.name: s.count for s in split(peers, 12, waves_ahead=0)}
            == {s.name: s.count for s in split(peers, 12)})
    # a site with the free slots for all of it still takes the whole job
    assert [(s.name, s.count) for s in split([site("a", cores=10), site("big", cores=64)], 20,
                                             waves_ahead=0)] == [("big", 20)]


def test_late_binding_holds_inputs_for_the_best_site_rather_than_sending_them_to_a_worse_one() -> None:
    """Big inputs: waiting for the home's slots beats moving them (as without late binding), so the
    inputs beyond its free slots wait at the home instead of going to the far site."""
    gb = 10**9
    peers = [site("home", cores=2), site("far", cores=16)]
    request = JobRequest(n_procs=4, input_bytes={"home": 4 * gb}, entry_peer="home")
    shares = split_inputs(peers, request, NOW, estimator=LeastExpectedLoad(seed=1), input_sizes=[gb] * 4,
                          waves_ahead=0)
    assert {s.name: s.count for s in shares} == {"home": 2}


def test_a_full_site_gets_nothing_until_it_frees_slots() -> None:
    assert split([site("a", cores=4, busy=4)], 10, waves_ahead=0) == []
    assert {s.name: s.count for s in split([site("a", cores=4, busy=4)], 10, waves_ahead=1)} == {"a": 4}
    # the procs placed since its report count: no overfilling between two reports
    assert split([site("a", cores=4, busy=2, in_flight=2)], 10, waves_ahead=0) == []


def test_without_a_fresh_report_anywhere_late_binding_holds_nothing_back() -> None:
    """Stale sites (their agents are silent) will not be seen to free slots: holding inputs for them could
    hold them for ever, so they get every input, as before late binding; a fresh site still comes first."""
    stale = site("stale", cores=4, busy=4, fresh=False, in_flight=4)
    assert {s.name: s.count for s in split([stale], 10, waves_ahead=0)} == {"stale": 10}
    assert {s.name: s.count for s in split([stale, site("ok", cores=2)], 10, waves_ahead=0)} == {"ok": 2}


def test_a_full_pool_with_other_users_idle_jobs_still_gets_up_to_its_slots() -> None:
    """Other users' idle jobs may wait for ever: the grid's inputs queue with them, up to the pool's
    slots (less the grid's own waiting or in flight there), not never."""
    full = pool("pool", slots=8, claimed=8, idle_jobs=30, ours_idle=2)
    assert {s.name: s.count for s in split([full], 20, waves_ahead=0)} == {"pool": 6}
    placed = pool("pool", slots=8, claimed=8, idle_jobs=30, ours_idle=2, in_flight=6)
    assert split([placed], 20, waves_ahead=0) == []
    # run times not reported: its idle jobs count as others'
    assert {s.name: s.count for s in split([pool("pool", slots=8, claimed=8, idle_jobs=30)], 20,
                                           waves_ahead=0)} == {"pool": 8}
    # its queue is all the grid's own: it waits for its slots like any site
    assert split([pool("pool", slots=8, claimed=8, idle_jobs=5, ours_idle=5)], 20, waves_ahead=0) == []


def test_the_broker_role_reports_the_unassigned_inputs_and_gives_them_out_as_slots_free(tmp_path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'broker.db'}")
    BrokerBase.metadata.create_all(engine)
    clock = [NOW]
    role = BrokerRole(sessionmaker(engine), name="home", url="https://home", seed=3, clock=lambda: clock[0],
                      split_waves_ahead=0)
    role.ensure_self_registered()

    def report(name: str, busy: int) -> None:
        role.ingest_report({"peer": name, "url": f"https://{name}", "coefficient": 0.1, "interval": 15,
                            "sampled_at": clock[0], "metrics": {"cores": 4, "clock_mhz": 2000.0,
                                                                "cpu_percent": 25.0 * busy, "load1": float(busy)}})

    for name in ("home", "b"):
        report(name, 0)
    first = role.split_decision("job-1/0.1", job(20), input_sizes=[1000] * 20)
    assert {s["name"]: s["count"] for s in first["shares"]} == {"home": 4, "b": 4}
    assert first["unassigned"] == 12 and first["id"] is not None
    # the next round, before any report: the shares are in flight, nothing more goes out, nothing recorded
    again = role.split_decision("job-1/8.1", job(12), input_sizes=[1000] * 12)
    assert again["shares"] == [] and again["unassigned"] == 12 and again["id"] is None
    # b reports two slots free: it gets two
    clock[0] += 15
    report("b", 2)
    later = role.split_decision("job-1/8.1", job(12), input_sizes=[1000] * 12)
    assert {s["name"]: s["count"] for s in later["shares"]} == {"b": 2} and later["unassigned"] == 10
    # without late binding every input is given at once
    eager = BrokerRole(sessionmaker(engine), name="home", url="https://home", seed=3, clock=lambda: clock[0])
    decision = eager.split_decision("job-2/0.1", job(20), input_sizes=[1000] * 20)
    assert sum(s["count"] for s in decision["shares"]) == 20 and decision["unassigned"] == 0


def test_the_peer_setting_takes_a_number_of_waves_or_minus_one_for_no_late_binding() -> None:
    assert PeerConfig.load(None, environ={}).split_waves_ahead == -1  # off by default (see the README)
    assert PeerConfig.load(None, environ={"POCKETGRID_SPLIT_WAVES_AHEAD": "0.5"}).split_waves_ahead == 0.5
    with pytest.raises(ValueError, match="split_waves_ahead"):
        PeerConfig.load(None, environ={"POCKETGRID_SPLIT_WAVES_AHEAD": "-2"})


def test_with_late_binding_a_report_sampled_while_a_share_is_staged_does_not_free_its_slots(tmp_path) -> None:
    """A site still staging a share reports none of it: a report sampled right after the split keeps the
    share in flight, so the next round does not fill the site twice; a later report counts it itself."""
    engine = create_engine(f"sqlite:///{tmp_path / 'broker.db'}")
    BrokerBase.metadata.create_all(engine)
    clock = [NOW]
    role = BrokerRole(sessionmaker(engine), name="home", url="https://home", seed=3, clock=lambda: clock[0],
                      split_waves_ahead=0)
    role.ensure_self_registered()

    def report(busy: int) -> None:
        role.ingest_report({"peer": "b", "url": "https://b", "coefficient": 0.1, "interval": 15,
                            "sampled_at": clock[0], "metrics": {"cores": 4, "clock_mhz": 2000.0,
                                                                "cpu_percent": 25.0 * busy, "load1": float(busy)}})

    report(0)
    exclude = frozenset({"home"})
    first = role.split_decision("j/0.1", job(10), input_sizes=[1000] * 10, exclude=exclude)
    assert [(s["name"], s["count"]) for s in first["shares"]] == [("b", 4)]
    clock[0] += 1
    report(0)  # sampled while b still stages its four: they are not in it
    assert {r["peer"]: r["in_flight"] for r in role.load_table()}["b"] == 4
    assert role.split_decision("j/4.1", job(6), input_sizes=[1000] * 6, exclude=exclude)["shares"] == []
    clock[0] += 15
    report(4)  # now running there: the report shows them, nothing is in flight any more
    assert {r["peer"]: r["in_flight"] for r in role.load_table()}["b"] == 0
    assert role.split_decision("j/4.1", job(6), input_sizes=[1000] * 6, exclude=exclude)["shares"] == []
    clock[0] += 15
    report(1)  # three of them finished
    again = role.split_decision("j/4.1", job(6), input_sizes=[1000] * 6, exclude=exclude)
    assert [(s["name"], s["count"]) for s in again["shares"]] == [("b", 3)] and again["unassigned"] == 3
