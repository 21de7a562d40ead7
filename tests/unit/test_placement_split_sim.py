"""The placement simulator's split jobs and site failures (issue 14), on grids small enough to work out by hand.

Behaviour only; the figures live in benchmarks/placement/README.md.  Every
expected time below is derived in the comments from the workload, the
broker's estimate (nominal 60 s per proc at speed 1 while nothing has
finished) and the job manager's rules.
"""
from __future__ import annotations

from typing import Any

import pytest

from benchmarks.placement import SimJob, Simulation, WorkloadError, parse_workload
from benchmarks.placement.__main__ import main
from benchmarks.placement.simulator import ORACLE, Manager

MB = 10**6


def grid(*peers: tuple[str, int], streams: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Hosts of speed 1.0, 1 MB/s between any two, reports every 15 s."""
    return {
        "name": "tiny",
        "report_interval": 15,
        "peers": [{"name": name, "slots": slots, "speed": 1.0, "reports": "host"} for name, slots in peers],
        "bandwidth": {"default": 1e6},
        "streams": streams or [{"type": "burst", "at": 0, "count": 1, "entry": "home",
                                "job": {"procs": 6, "work": 60,
                                        "inputs": [{"bytes": MB, "on": "entry", "each_proc": True}]}}],
    }


def test_a_split_job_ends_with_its_last_input_and_beats_whole_placement() -> None:
    workload = parse_workload(grid(("home", 2), ("far", 4)))
    (job,) = workload.jobs(1)
    assert job.proc_inputs == ((("home", MB),),) * 6 and job.input_bytes == {"home": 6 * MB}

    split = Simulation(workload, "least-expected-load", 1, placement="split").run(per_job=True)
    # Estimates: home runs 2 at once (60 s each, nothing to move); far 4 at once (60 s + 1 s per input moved).
    # Inputs 1-2 go home (60 s); the third would wait a wave there (120 s), so far takes inputs 3-6 (61-64 s).
    # Whole, far would need two waves (126 s): the split stands.  Far stages its 4 MB in 4 s, then runs
    # all four at once: the last input ends at 4 + 60 = 64 s; home's end at 60 s.
    assert split["per_job"][0]["shares"] == [{"far": 4, "home": 2}]
    assert split["per_job"][0]["makespan_s"] == pytest.approx(64.0)
    assert split["bytes_moved"] == 4 * MB and split["inputs_placed"] == {"home": 2, "far": 4}

    whole = Simulation(workload, "least-expected-load", 1, placement="whole").run(per_job=True)
    # Whole: far (one extra wave, 126 s estimated) beats home (two extra waves, 180 s); 6 s to stage, then
    # two waves of 60 s on its 4 slots: 126 s.
    assert whole["per_job"][0]["shares"] == [{"far": 6}]
    assert whole["per_job"][0]["makespan_s"] == pytest.approx(126.0)
    assert whole["bytes_moved"] == 6 * MB


def three_sites() -> Any:
    return parse_workload(grid(("a", 4), ("b", 4), ("home", 2)))


def job_of(works: tuple[float, ...]) -> SimJob:
    return SimJob(0, 0.0, "home", works, (), "prog", tuple(() for _ in works))


def run_with_failure(works: tuple[float, ...], *, down_at: float, **manager: Any) -> tuple[Simulation, dict]:
    sim = Simulation(three_sites(), "least-expected-load", 1, placement="split", jobs=[job_of(works)],
                     failures=[("b", down_at)], manager=Manager(monitor_interval=2.0, site_lost_after=20.0, **manager))
    sim.home_phase["home"] = 0.0  # the home's status rounds at 0, 2, 4, ... s
    return sim, sim.run(per_job=True)


def test_a_dead_site_s_inputs_are_split_again_over_the_others_after_the_detection_delay() -> None:
    # Ten 60-s inputs, nothing to move: equal estimates go to the first name, a site already given
    # inputs keeps the next while it has free slots: a 4, b 4, home 2, all done at 60 s without a failure.
    clean = Simulation(three_sites(), "least-expected-load", 1, placement="split", jobs=[job_of((60.0,) * 10)]).run(
        per_job=True)
    assert clean["per_job"][0]["shares"] == [{"a": 4, "b": 4, "home": 2}]
    assert clean["per_job"][0]["makespan_s"] == pytest.approx(60.0)

    sim, run = run_with_failure((60.0,) * 10, down_at=30.0)
    # b answered the round at 28 s, none after: lost at the first round more than 20 s later, 50 s.
    # The 4 inputs run again after the second attempt's backoff (5 s), at 55 s, avoiding b: a and home
    # each look one wave busy (126 s: wait 60 + run 60 + headroom 6); a, first by name, takes one and then,
    # within the tie margin, the rest.  a's slots free at 60 s: the job ends at 60 + 60 = 120 s.
    (loss,) = run["losses"]
    assert (loss["site"], loss["declared_at"], loss["delay_s"], loss["inputs"], loss["results"]) == ("b", 50.0, 20.0, 4, 0)
    job = run["per_job"][0]
    assert job["shares"] == [{"a": 4, "b": 4, "home": 2}, {"a": 4}]
    assert job["makespan_s"] == pytest.approx(120.0)
    assert (job["lost_inputs"], job["attempts"], job["failed_inputs"]) == (4, 14, 0)
    assert job["lost_longest_rerun_s"] == pytest.approx(60.0)
    # b ran nothing after it went down: its two reports after 30 s never came, its 30 s of half-done work is
    # all it did (4 slots x 30 s over the 120-s makespan)
    assert run["utilisation"]["b"] == pytest.approx(4 * 30 / (4 * 120))
    second = [history[-1] for history in sim.attempts[0] if len(history) == 2]
    assert {a.site for a in second} == {"a"} and {a.avoid for a in second} == {("b",)}


def test_results_a_dead_site_held_are_lost_while_the_job_is_unfinished_unless_kept() -> None:
    # b's four inputs take 10 s and end long before it goes down at 30 s; home's take 100 s.
    works = (60.0,) * 4 + (10.0,) * 4 + (100.0,) * 2
    _, run = run_with_failure(works, down_at=30.0)
    # Lost at 50 s with their outputs, run again on a from 60 s (a's slots free) to 70 s; home ends at 100 s.
    (loss,) = run["losses"]
    assert (loss["inputs"], loss["results"]) == (4, 4)
    assert run["per_job"][0]["makespan_s"] == pytest.approx(100.0)
    assert run["per_job"][0]["attempts"] == 14

    _, kept = run_with_failure(works, down_at=30.0, lose_results=False)
    assert kept["losses"] == [] and kept["per_job"][0]["attempts"] == 10
    assert kept["per_job"][0]["makespan_s"] == pytest.approx(100.0)


def test_an_input_lost_max_attempts_times_fails_and_the_job_still_ends() -> None:
    # One attempt per input allowed: b's inputs fail when b is lost (50 s), nothing runs again, the
    # others complete at 60 s.  With the failure after the last completion, the job ends with the verdict.
    _, run = run_with_failure((60.0,) * 10, down_at=30.0, max_attempts=1)
    job = run["per_job"][0]
    assert (job["failed_inputs"], job["lost_inputs"], job["attempts"]) == (4, 4, 10)
    assert job["makespan_s"] == pytest.approx(60.0) and run["failed_inputs"] == 4
    _, late = run_with_failure((10.0,) * 4 + (60.0,) * 4 + (10.0,) * 2, down_at=5.0, max_attempts=1)
    # b down at 5 s, lost at the first round more than 20 s after its last answer (4 s): 26 s; a and home
    # were done at 10 s, so the job ends at 26 s with b's four inputs failed
    assert late["per_job"][0]["failed_inputs"] == 4 and late["per_job"][0]["makespan_s"] == pytest.approx(26.0)


def test_the_oracle_knows_a_site_is_down() -> None:
    later = SimJob(1, 40.0, "home", (60.0,) * 4, (), "prog", ((),) * 4)
    sim = Simulation(three_sites(), ORACLE, 1, jobs=[job_of((60.0,) * 2), later], failures=[("b", 30.0)])
    run = sim.run(per_job=True)
    # b, idle and down, would look soonest to an oracle that did not know (4 free slots: done at 100 s).  The
    # first job holds 2 of a's slots until 60 s: a runs two at once from 40 s and two from 60 s, done at 120 s.
    assert run["per_job"][1]["shares"] == [{"a": 4}]
    assert run["per_job"][1]["makespan_s"] == pytest.approx(80.0)


def test_the_home_s_detection_rounds_and_backoff_follow_the_job_manager() -> None:
    m = Manager(monitor_interval=2.0, site_lost_after=120.0)
    # rounds at 0.5, 2.5, ...: the last answer at 28.5 s; lost at the first round after 148.5 s
    assert m.detection(0.5, 30.3) == pytest.approx(150.5)
    assert m.detection(0.0, 30.0) == pytest.approx(150.0)  # a round at 30 s already goes unanswered
    assert m.next_round(0.5, 30.3) == pytest.approx(30.5)
    assert m.next_tick(0.25, 55.1) == pytest.approx(55.25)
    assert [m.backoff(n) for n in (1, 2, 3, 4)] == [0.0, 5.0, 10.0, 20.0]
    with pytest.raises(ValueError):
        Manager(monitor_interval=0)


def test_a_home_cannot_be_failed_and_each_proc_inputs_are_checked() -> None:
    with pytest.raises(ValueError, match="job's home"):
        Simulation(three_sites(), "least-expected-load", 1, jobs=[job_of((1.0,))], failures=[("home", 5.0)])
    with pytest.raises(ValueError, match="no such peer"):
        Simulation(three_sites(), "least-expected-load", 1, jobs=[job_of((1.0,))], failures=[("c", 5.0)])
    bad = grid(("home", 2), streams=[{"type": "burst", "count": 1, "entry": "home",
                                      "job": {"work": 1, "inputs": [{"bytes": 1, "each_proc": "yes"}]}}])
    with pytest.raises(WorkloadError, match=r"inputs\[0\].each_proc"):
        parse_workload(bad)


def test_the_command_line_runs_a_failure_and_refuses_a_bad_one(capsys, tmp_path) -> None:
    path = tmp_path / "tiny.json"
    import json

    path.write_text(json.dumps(grid(("a", 4), ("b", 4), ("home", 2), streams=[
        {"type": "burst", "count": 1, "entry": "home", "job": {"procs": 10, "work": 60}}])))
    assert main(["--policy", "least-expected-load", "--workload", str(path), "--placement", "split",
                 "--fail", "b@30", "--site-lost-after", "20", "--per-job"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["losses"][0]["site"] == "b" and out["per_job"][0]["lost_inputs"] == 4
    assert main(["--policy", "least-expected-load", "--workload", str(path), "--fail", "home@30"]) == 2
    assert "job's home" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--policy", "least-expected-load", "--workload", str(path), "--fail", "b"])
    assert "SITE@SECONDS" in capsys.readouterr().err
