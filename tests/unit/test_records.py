"""peer/records.py: the rules over a job's attempts, as plain functions (no peer, no clock of their own)."""
from __future__ import annotations

import json

import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from peer import records
from peer.holds import Verdict
from peer.models import Base, JobAttempt, JobRecord

LIMITS = records.Limits(max_attempts=3, retry_backoff=5.0, max_evictions=3)
T = 1_000_000.0


def record(n: int = 2) -> JobRecord:
    r = JobRecord(id="home.1", name="j", owner="CN=alice", owner_vo="cms", created_at=T, executable_name="x.sh",
                  submit_name="x.sub", submit_text="executable = x.sh\nqueue\n",
                  inputs=[{"name": f"in{i}.txt", "path": f"in{i}.txt", "size": 10, "sha256": "0" * 64}
                          for i in range(n)], warnings=[], version=1, home="home", manager="home", manager_epoch=1)
    r.attempts.extend(records.first_attempts(r, T))
    return r


def send(a: JobAttempt, site: str, piece: str | None = None) -> JobAttempt:
    a.state, a.site, a.piece, a.piece_key, a.dispatched_at = "idle", site, piece or f"{site}.p", "k", T
    return a


def groups(r: JobRecord) -> dict[int, list[JobAttempt]]:
    return records.by_input(r.attempts)


def verdict(r: JobRecord, a: JobAttempt, v: Verdict, proc: dict | None = None, now: float = T + 10):
    new = records.apply_verdict(r, groups(r)[a.index], a, v, proc or {"state": v.kind}, now, LIMITS)
    if new is not None:
        r.attempts.append(new)
    return new


def test_a_new_record_has_one_pending_attempt_per_input_and_shows_them_idle() -> None:
    r = record(3)
    view = records.render(r, now=T)
    assert [(i["index"], i["state"], i["site"], i["attempt"]) for i in view["inputs"]] == [
        (0, "idle", None, 1), (1, "idle", None, 1), (2, "idle", None, 1)]
    assert view["state"] == "idle" and view["counts"] == {"idle": 3} and view["peer"] == "home"
    assert "attempts" not in view["inputs"][0]  # only with history


def test_completed_is_the_result_and_a_failure_is_final() -> None:
    r = record(2)
    a0, a1 = (send(a, "site-b") for a in r.attempts)
    verdict(r, a0, Verdict("completed"), {"state": "completed", "exit_code": 0})
    assert verdict(r, a1, Verdict("failed", "exit code 1"), {"state": "failed", "exit_code": 1}) is None
    assert a0.result and not a1.result
    view = records.render(r, now=T + 20)
    assert [(i["state"], i.get("exit_code")) for i in view["inputs"]] == [("completed", 0), ("failed", 1)]
    assert view["state"] == "failed" and records.record_finished(r)
    assert len(r.attempts) == 2  # a user failure is not re-run


def test_a_site_failure_runs_the_input_again_elsewhere_with_backoff() -> None:
    r = record(1)
    a = send(r.attempts[0], "site-b")
    new = verdict(r, a, Verdict("lost", "held at the site (code 13 TransferInputError): no file"))
    assert a.state == "lost" and a.cleanup == "delete"
    assert new is not None and (new.number, new.state, new.avoid) == (2, "pending", ["site-b"])
    assert new.not_before == pytest.approx(T + 10 + 5.0)  # attempt 2 waits retry_backoff * 2^0
    view = records.render(r, history=True, now=T + 11)
    i = view["inputs"][0]
    assert i["state"] == "idle" and i["attempt"] == 2 and "lost on site-b" in i["note"]
    assert [(h["attempt"], h["site"], h["state"]) for h in i["attempts"]] == [(1, "site-b", "lost"), (2, None, "pending")]
    assert "TransferInputError" in i["attempts"][0]["reason"]
    third = verdict(r, send(new, "site-c"), Verdict("lost", "evicted 3 times"), now=T + 30)
    assert third is not None and third.not_before == pytest.approx(T + 30 + 10.0)  # 5 * 2^1
    assert third.avoid == ["site-b", "site-c"]


def test_after_max_attempts_the_input_fails_with_the_last_site_reason() -> None:
    r = record(1)
    a = r.attempts[0]
    for n, site in enumerate(["b", "c", "d"], start=1):
        new = verdict(r, send(a, site), Verdict("lost", f"trouble at {site}"))
        a = new
    assert a is None and len(r.attempts) == 3  # max_attempts = 3
    view = records.render(r, now=T + 20)
    assert view["inputs"][0]["state"] == "failed" and "trouble at d" in view["inputs"][0]["note"]
    assert records.record_finished(r)


def test_one_result_per_input_a_late_success_of_a_lost_attempt_is_ignored() -> None:
    r = record(1)
    first = send(r.attempts[0], "site-b")
    successor = records.lose_site(r, "site-b", "site-b did not answer for 120 s", T + 5, LIMITS)
    r.attempts.extend(successor)
    second = send(successor[0], "site-c")
    verdict(r, second, Verdict("completed"), {"state": "completed", "exit_code": 0})
    # site-b comes back and says its (lost) attempt completed too
    assert verdict(r, first, Verdict("completed"), {"state": "completed", "exit_code": 0}) is None
    assert (first.state, first.result, second.result) == ("lost", False, True)
    assert [a.number for a in r.attempts if a.result] == [2]
    assert [(a.number, a.cleanup) for a in records.to_clean(r.attempts)] == [(1, "delete")]


def test_a_result_supersedes_every_other_attempt_and_schedules_their_deletion() -> None:
    r = record(1)
    a = send(r.attempts[0], "site-b")
    verdict(r, a, Verdict("failed", "exit code 1"), {"state": "failed", "exit_code": 1})
    (again,) = records.retry(r, [0], T + 20)
    r.attempts.append(again)
    assert again.retry and again.number == 2
    verdict(r, send(again, "site-c"), Verdict("completed"), {"state": "completed", "exit_code": 0})
    assert again.result and a.cleanup == "delete" and a.state == "failed"
    assert "attempt 2 gave the result" in a.reason
    assert records.render(r, now=T + 30)["inputs"][0]["state"] == "completed"


def test_the_site_of_an_unfinished_job_takes_its_results_with_it() -> None:
    r = record(2)
    a0, a1 = (send(a, "site-b") for a in r.attempts)
    verdict(r, a0, Verdict("completed"), {"state": "completed", "exit_code": 0})
    new = records.lose_site(r, "site-b", "site-b did not answer", T + 5, LIMITS)
    assert sorted(n.index for n in new) == [0, 1]  # the result is out of reach while the job runs
    assert not a0.result and a0.state == "lost"


def test_a_finished_job_keeps_its_results_when_their_site_goes() -> None:
    r = record(1)
    a = send(r.attempts[0], "site-b")
    verdict(r, a, Verdict("completed"), {"state": "completed", "exit_code": 0})
    r.finished_at = T + 11
    assert records.lose_site(r, "site-b", "gone", T + 300, LIMITS) == []
    view = records.render(r, now=T + 300, unreachable=frozenset({"site-b"}))
    assert view["inputs"][0]["state"] == "completed" and "does not answer" in view["inputs"][0]["note"]


def test_kill_marks_every_unfinished_input_removed_and_schedules_the_removals() -> None:
    r = record(3)
    running = send(r.attempts[0], "site-b")
    running.state = "running"
    done = send(r.attempts[1], "site-c")
    verdict(r, done, Verdict("completed"), {"state": "completed", "exit_code": 0})
    assert records.kill(r, T + 20) == 2  # the running one and the pending one
    assert (running.state, running.cleanup) == ("removed", "remove")
    assert (r.attempts[2].state, r.attempts[2].cleanup) == ("removed", None)  # no site held it
    view = records.render(r, now=T + 21, unreachable=frozenset({"site-b"}))
    assert view["state"] == "removed" and view["counts"] == {"removed": 2, "completed": 1}
    # one wording for a kill not carried out yet: here the site does not answer...
    assert view["inputs"][0]["removal"].startswith("pending at site-b: it does not answer")
    assert view["removal"] == view["inputs"][0]["removal"] and "removal" not in view["inputs"][1]
    # ...there its schedd does not (the site said so when asked to remove the piece): the site's sentence
    running.status = {**running.status, "removal": "pending: the schedd is not answering; it will be carried "
                                                   "out when it answers"}
    view = records.render(r, now=T + 22)
    assert view["removal"] == ("pending at site-b: the schedd is not answering; it will be carried out when it "
                               "answers")
    running.cleanup = "removed"  # carried out at last
    assert "removal" not in records.render(r, now=T + 23)
    # a site answering late cannot revive a removed attempt
    assert verdict(r, running, Verdict("completed"), {"state": "completed", "exit_code": 0}) is None
    assert running.state == "removed" and not running.result


def test_retry_picks_failed_inputs_and_refuses_running_ones() -> None:
    r = record(3)
    a0, a1, a2 = (send(a, "site-b") for a in r.attempts)
    verdict(r, a0, Verdict("failed", "exit code 1"), {"state": "failed", "exit_code": 1})
    verdict(r, a1, Verdict("completed"), {"state": "completed", "exit_code": 0})
    a2.state = "running"
    assert records.retryable(r, failed=True) == [0]
    assert records.retryable(r, indexes=[1]) == [1]
    with pytest.raises(ValueError, match="input 2 is still running"):
        records.retryable(r, indexes=[2])
    with pytest.raises(ValueError, match="no input 7"):
        records.retryable(r, indexes=[7])


def test_a_retry_round_has_its_own_attempt_limit() -> None:
    r = record(1)
    a = r.attempts[0]
    for site in ("b", "c", "d"):
        a = verdict(r, send(a, site), Verdict("lost", "site trouble"))
    (again,) = records.retry(r, [0], T + 50)
    r.attempts.append(again)
    new = verdict(r, send(again, "e"), Verdict("lost", "site trouble"), now=T + 60)
    assert new is not None and new.number == 5 and new.not_before == pytest.approx(T + 60 + 5.0)


def test_a_user_held_attempt_stays_held() -> None:
    r = record(1)
    a = send(r.attempts[0], "site-b")
    assert verdict(r, a, Verdict("held", "held (code 34 JobOutOfResources): memory"),
                   {"state": "held", "hold_code": 34, "hold_reason": "memory"}) is None
    view = records.render(r, now=T + 20)
    assert view["inputs"][0]["state"] == "held" and view["inputs"][0]["hold_code"] == 34
    assert not records.record_finished(r)


def test_a_record_and_its_attempts_travel_as_one_json_document(tmp_path) -> None:
    r = record(2)
    a = send(r.attempts[0], "site-b")
    verdict(r, a, Verdict("lost", "gone"))
    doc = json.loads(json.dumps(records.to_document(r)))
    back = records.from_document(doc)
    assert records.render(back, history=True, now=T + 20) == records.render(r, history=True, now=T + 20)
    engine = create_engine(f"sqlite:///{tmp_path / 'replica.db'}")
    Base.metadata.create_all(engine)
    with Session(engine) as s:  # a replica stores it as it is
        s.add(back)
        s.commit()
        stored = s.get(JobRecord, "home.1")
        assert [(x.index, x.number, x.state) for x in stored.attempts] == [(0, 1, "lost"), (0, 2, "pending"),
                                                                          (1, 1, "pending")]
    with pytest.raises(ValueError, match="unknown attempt state"):
        records.from_document({"record": doc["record"], "attempts": [{**doc["attempts"][0], "state": "zombie"}]})


def test_an_idle_inputs_match_shows_while_it_waits_and_no_longer() -> None:
    """Why an idle proc waits (its site's ``match``) reaches the input's view; once it runs, it is gone."""
    r = record(1)
    a = send(r.attempts[0], "site-b")
    match = {"slots": 0, "of": 4, "failing": 'Arch == "NOPE"'}
    verdict(r, a, Verdict("active"), {"state": "idle", "match": match})
    assert records.render(r, now=T + 1)["inputs"][0]["match"] == match
    verdict(r, a, Verdict("active"), {"state": "running", "match": match, "started_at": T + 2})
    assert "match" not in records.render(r, now=T + 3)["inputs"][0]
