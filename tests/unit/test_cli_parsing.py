"""The CLI's parsing and text, with no server: options in both places, help wording, status and system text."""
from __future__ import annotations

from pathlib import Path

import pytest

from mobile_client import cli
from pocketgrid.cli import build_parser


@pytest.fixture(scope="module")
def parser():
    return build_parser()


@pytest.mark.parametrize("argv", [
    ["acl", "list", "--peer", "https://x:1", "--json", "--ca", "ca.pem"],
    ["acl", "--peer", "https://x:1", "--json", "--ca", "ca.pem", "list"],
    ["acl", "--peer", "https://x:1", "list", "--json", "--ca", "ca.pem"],
])
def test_acl_takes_peer_options_before_and_after_the_action(parser, argv):
    args = parser.parse_args(argv)
    assert (args.acl_command, args.peer, args.json, args.ca) == ("list", "https://x:1", True, "ca.pem")


def test_acl_options_default_when_given_nowhere(parser):
    args = parser.parse_args(["acl", "deny", "files-read", "vo", "atlas"])
    assert (args.peer, args.json, args.ca, args.value) == (None, False, None, "atlas")
    args = parser.parse_args(["acl", "remove", "3", "--peer", "https://y:2"])
    assert (args.rule_id, args.peer) == (3, "https://y:2")


def test_help_wording(parser, capsys):
    assert parser.description == "pocketgrid: run HTCondor jobs from a phone or any weak device."
    with pytest.raises(SystemExit):
        parser.parse_args(["acl", "--help"])
    text = capsys.readouterr().out
    assert "denies a group" in text and "denys" not in text
    with pytest.raises(SystemExit):
        parser.parse_args(["fetch", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "DEST/<job-id>/<index>/<name>" in text and "--force" in text


def test_fetch_goes_into_a_folder_named_for_the_job():
    assert cli.job_folder(Path("res"), "site-a.67ab") == Path("res/site-a.67ab")
    for bad in ("../x", ".hidden", "a/b", ""):
        with pytest.raises(cli.UsageError):
            cli.job_folder(Path("."), bad)


def _status(*inputs: dict) -> dict:
    return {"id": "site-a.1", "name": "hist", "peer": "site-a", "state": "failed", "counts": {"failed": 1},
            "inputs": [{"index": n, "input": f"r{n}.txt", "exit_code": None, "signal": None, "hold_reason": None,
                        "note": None, **i} for n, i in enumerate(inputs)]}


def test_status_shows_the_reason_of_the_current_state_only():
    text = cli._status_text(_status(
        {"state": "removed", "hold_reason": "disk quota", "note": "removed by the owner"},
        {"state": "held", "hold_reason": "disk quota", "note": "evicted"},
        {"state": "completed", "exit_code": 0, "note": "evicted"},
        {"state": "running", "note": "evicted"},
        {"state": "running", "note": "disconnected: network"},
    ))
    lines = text.splitlines()
    assert lines[1] == "  [0] r0.txt: removed (removed by the owner)"
    assert lines[2] == "  [1] r1.txt: held (disk quota)"
    assert lines[3] == "  [2] r2.txt: completed exit 0"
    assert lines[4] == "  [3] r3.txt: running"
    assert lines[5] == "  [4] r4.txt: running (disconnected: network)"


def test_a_failed_input_shows_its_stderr_file_and_last_lines():
    text = cli._status_text(_status({"state": "failed", "exit_code": 1, "stderr_file": "_condor_stderr",
                                     "stderr_tail": "reading r0.txt\nValueError: bad line 3\n"}))
    assert text.splitlines()[1:] == [
        "  [0] r0.txt: failed exit 1",
        "      last lines of _condor_stderr:",
        "        reading r0.txt",
        "        ValueError: bad line 3",
    ]


def test_status_says_why_an_idle_input_waits_and_that_a_removal_is_pending():
    status = _status(
        {"state": "idle", "match": {"slots": 0, "of": 4,
                                    "failing": "TARGET.Memory >= RequestMemory (request_memory = 99999999)"}},
        {"state": "idle", "match": {"slots": 3, "of": 4}},
        {"state": "idle"},
    )
    status["removal"] = "pending: the schedd is not answering; it will be carried out when it answers"
    lines = cli._status_text(status).splitlines()
    assert lines[1] == "  removal pending: the schedd is not answering; it will be carried out when it answers"
    assert lines[2:] == [
        "  [0] r0.txt: idle",
        "      no slot matches (of 4): TARGET.Memory >= RequestMemory (request_memory = 99999999)",
        "  [1] r1.txt: idle",
        "      3 of 4 slots match: waiting for one to be free",
        "  [2] r2.txt: idle",
    ]


def test_system_text_tells_dead_from_alive():
    text = cli._system_text({
        "broker": {"name": "site-a", "url": "https://a"}, "epoch": 2,
        "members": [
            {"seq": 1, "name": "site-a", "url": "https://a", "alive": True, "last_seen_age": 0.0,
             "coefficient": 0.25, "report_age": 3.2, "executor": "condor"},
            {"seq": 2, "name": "site-b", "url": "https://b", "alive": False, "last_seen_age": 300.0,
             "coefficient": None, "report_age": None, "executor": None},
        ]})
    lines = text.splitlines()
    assert lines[0] == "broker: site-a (epoch 2)"
    assert sum("https://" in line for line in lines) == 2  # one per member (compose/client-demo.sh counts them)
    assert lines[2].split() == ["1", "site-a", "alive", "0", "s", "ago", "0.25", "3", "s", "ago", "condor", "https://a"]
    assert lines[3].split() == ["2", "site-b", "DEAD", "5", "min", "ago", "-", "-", "?", "https://b"]


def test_interrupted_messages_name_what_to_run_next(parser):
    assert "run the same command again to resume" in cli._interrupted(parser.parse_args(["fetch", "j.1"]))
    wait = cli._interrupted(parser.parse_args(["status", "j.1", "--wait"]))
    assert wait.startswith("stopped following j.1") and "run the same command again" in wait


# ---- the client's retry rule (no server needed: urllib3's Retry decides) -----------------------------

def test_a_read_error_is_retried_only_where_sending_twice_is_harmless():
    from http.client import RemoteDisconnected

    from urllib3.exceptions import MaxRetryError, NewConnectionError, ProtocolError

    from mobile_client.client import _session

    retry = _session(4).get_adapter("https://x").max_retries
    dropped = ProtocolError("Connection aborted.", RemoteDisconnected("closed"))
    assert retry.increment("GET", "/api/v1/jobs/a.1", error=dropped).read == 0
    assert retry.increment("POST", "/api/v1/jobs", error=dropped).read == 0  # a submit: Idempotency-Key
    with pytest.raises(ProtocolError):  # adding a rule twice would add two rules
        retry.increment("POST", "/api/v1/admin/acl", error=dropped)
    with pytest.raises(MaxRetryError):  # refused: no retry here, the client moves on to the next peer
        retry.increment("GET", "/healthz", error=NewConnectionError(None, "refused"))


def test_placement_in_one_line_and_in_full():
    p = {"chosen": "site-b", "policy": "least-expected-load", "decided_at": 1_700_000_000.0,
         "ranking": [{"name": "site-c", "score": None, "reason": "retry"},
                     {"name": "site-b", "score": 61.0, "reason": "est 61.0 s (wait 0.0 + run 60 + move 1.0); 0/4 in flight",
                      "detail": {"run_source": "nominal 60 s at speed 1", "wait_source": "learned: 4/4 slots busy"}},
                     {"name": "site-a", "score": 121.0, "reason": "est 121.0 s (wait 60 + run 60 + move 1.0); 1/4 in flight"},
                     {"name": "old", "score": 0.4, "reason": "min coefficient"},
                     {"name": "x", "score": None, "reason": "no fresh report"},
                     {"name": "y", "score": None, "reason": "no fresh report"}],
         "failed": [{"name": "site-c", "error": "cannot reach site-c: ConnectError"}]}
    line = cli.placement_line(p)
    assert line.startswith("placed on site-b: est 61.0 s (wait 0.0 + run 60 + move 1.0) (after site-c failed); ")
    assert "; site-a est 121.0 s (wait 60 + run 60 + move 1.0)" in line and "old score 0.4 (min coefficient)" in line
    assert line.endswith("; 2 more (pocketgrid status --placement)")
    full = cli.placement_text(p).splitlines()
    assert full[0].startswith("placement: least-expected-load, decided ") and full[0].endswith("chosen site-b")
    assert full[2].startswith(" * 2. site-b ") and "est 61.0 s" in full[2]
    assert full[3:5] == ["        run: nominal 60 s at speed 1", "        wait: learned: 4/4 slots busy"]
    assert full[-1] == "  failed first: site-c: cannot reach site-c: ConnectError"


def _job(states: list[str], overall: str) -> dict:
    counts: dict[str, int] = {}
    for st in states:
        counts[st] = counts.get(st, 0) + 1
    return {"id": "a.1", "name": "big", "peer": "a", "state": overall, "counts": counts,
            "inputs": [{"index": i, "input": f"in{i}.txt", "state": st, "site": "a",
                        **({"exit_code": 0} if st == "completed" else {})} for i, st in enumerate(states)]}


def test_status_wait_prints_the_whole_job_first_and_last_and_only_what_changed_between():
    printed: list[str] = []
    show = cli.follow_printer(printed.append)
    show(_job(["running"] * 100, "running"))
    show(_job(["completed"] + ["running"] * 99, "running"))  # one input finished
    show(_job(["completed"] * 2 + ["running"] * 98, "running"))
    show(_job(["completed"] * 100, "completed"))
    first, one, two, last = (p.splitlines() for p in printed)
    assert len(first) == 101 and len(last) == 101  # the head and every input
    assert one == ["a.1 (big) home a: running  completed 1, running 99", "  [0] in0.txt: completed exit 0, on a"]
    assert two == ["a.1 (big) home a: running  completed 2, running 98", "  [1] in1.txt: completed exit 0, on a"]
    assert last[0] == "a.1 (big) home a: completed  completed 100"
