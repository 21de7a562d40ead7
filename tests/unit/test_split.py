"""broker/split.py as a pure function, and the broker role's split (in flight per share)."""
from __future__ import annotations

from typing import Any

from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

from broker.models import BrokerBase
from broker.placement import JobRequest, LeastExpectedLoad, PeerState, peer_state_from_report
from broker.role import BrokerRole
from broker.runtimes import summarize
from broker.split import split_inputs

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
