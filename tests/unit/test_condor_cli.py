"""The condor_submit / condor_rm / condor_q fallback: parsers on the tools' real output formats.

Formats (see peer/executors/condor_cli.py for the exact source locations):

* condor_submit -terse: ``fprintf(stdout, "%d.%d - %d.%d\\n", ...)`` once per
  cluster (src/condor_submit.V6/submit.cpp, main()); without -terse
  ``"%d job(s) submitted to cluster %d.\\n"`` after ``Submitting job(s)`` and
  one dot per proc.
* condor_rm / condor_release -totals: ``"%d Succeeded, %d Failed, %d Not Found,
  %d Bad Status, %d Already Done, %d Permission Denied\\n"``, then ``"All jobs%s
  have been %s\\n"`` with ``" matching constraint (%s)"`` and ``actionWord()``
  = ``marked for removal`` / ``released``; on failure ``"Couldn't find/%s all
  jobs%s\\n"`` on stderr (src/condor_rm.V6/rm.cpp).
* condor_q -af: values separated by one space, ``undefined`` when missing.

No Condor tool runs here: these are the parsers, fed the exact text.
"""
from __future__ import annotations

import htcondor2
import pytest

from peer.executors import condor_cli
from peer.executors.condor_cli import (
    ActTotals,
    ClusterRange,
    CondorCliError,
    parse_act_output,
    parse_af_output,
    parse_terse,
    render_submit_file,
)

# ---- condor_submit ---------------------------------------------------------


def test_terse_one_cluster() -> None:
    assert parse_terse("2345.0 - 2345.5\n") == [ClusterRange(2345, 0, 5)]
    assert parse_terse("2345.0 - 2345.5\n")[0].num_procs == 6


def test_terse_single_proc_and_several_clusters() -> None:
    # One line per cluster, exactly as the loop over SubmitInfo prints them.
    out = "17.0 - 17.0\n18.0 - 18.2\n"
    assert parse_terse(out) == [ClusterRange(17, 0, 0), ClusterRange(18, 0, 2)]


def test_default_output_is_accepted_too() -> None:
    out = "Submitting job(s)......\n6 job(s) submitted to cluster 2345.\n"
    assert parse_terse(out) == [ClusterRange(2345, 0, 5)]


@pytest.mark.parametrize("out", ["", "\n", "ERROR: Failed to connect to local queue manager\n", "12.0 - 13.4\n"])
def test_terse_garbage_or_impossible_ranges_are_errors(out: str) -> None:
    with pytest.raises(CondorCliError):
        parse_terse(out)


# ---- condor_rm / condor_release --------------------------------------------

CONSTRAINT = '(PocketgridJob =?= "site-a.65f1c2ab12cd34ef") && (ClusterId == 2345)'


def test_rm_totals_success() -> None:
    out = (
        "6 Succeeded, 0 Failed, 0 Not Found, 0 Bad Status, 0 Already Done, 0 Permission Denied\n"
        f"All jobs matching constraint ({CONSTRAINT}) have been marked for removal\n"
    )
    t = parse_act_output(out, "", 0)
    assert (t.succeeded, t.failed, t.not_found, t.known) == (6, 0, 0, True)


def test_rm_nothing_matched_is_zero_not_an_error() -> None:
    # The jobs already left the queue: totals are printed, then the failure
    # sentence on stderr and exit status 1 (had_error).
    out = "0 Succeeded, 0 Failed, 0 Not Found, 0 Bad Status, 0 Already Done, 0 Permission Denied\n"
    err = f"\nCouldn't find/remove all jobs matching constraint ({CONSTRAINT})\n"
    t = parse_act_output(out, err, 1)
    assert t.succeeded == 0 and t.known
    assert t.messages == [f"Couldn't find/remove all jobs matching constraint ({CONSTRAINT})"]


def test_release_totals_and_mixed_results() -> None:
    out = (
        "2 Succeeded, 0 Failed, 0 Not Found, 4 Bad Status, 0 Already Done, 0 Permission Denied\n"
        f"All jobs matching constraint ({CONSTRAINT}) have been released\n"
    )
    t = parse_act_output(out, "", 0)
    assert (t.succeeded, t.bad_status) == (2, 4)


def test_permission_denied_is_counted() -> None:
    out = "0 Succeeded, 0 Failed, 0 Not Found, 0 Bad Status, 0 Already Done, 3 Permission Denied\n"
    assert parse_act_output(out, "", 1).permission_denied == 3


def test_old_tool_without_totals_success_sentence() -> None:
    out = f"All jobs matching constraint ({CONSTRAINT}) have been marked for removal\n"
    t = parse_act_output(out, "", 0)
    assert t.known is False and t.succeeded == 0


def test_rm_that_cannot_reach_the_schedd_raises_with_its_message() -> None:
    err = "condor_rm: Can't find address for schedd site-a.example.org\n"
    with pytest.raises(CondorCliError, match="Can't find address for schedd"):
        parse_act_output("", err, 1)


def test_totals_add_up() -> None:
    a, b = ActTotals(1, 0, 2), ActTotals(3, 1, 0)
    a.add(b)
    assert (a.succeeded, a.failed, a.not_found) == (4, 1, 2)


# ---- condor_q -af ------------------------------------------------------------


def test_af_rows_with_undefined_and_strings() -> None:
    out = "2345 0 site-a.65f1c2ab12cd34ef\n2345 1 site-a.65f1c2ab12cd34ef\n2346 0 undefined\n"
    rows = parse_af_output(out, ["ClusterId", "ProcId", "PocketgridJob"])
    assert rows[0] == {"ClusterId": 2345, "ProcId": 0, "PocketgridJob": "site-a.65f1c2ab12cd34ef"}
    assert rows[2]["PocketgridJob"] is None


def test_af_nothing_matched_is_empty_and_short_rows_are_errors() -> None:
    assert parse_af_output("", ["ClusterId"]) == []
    with pytest.raises(CondorCliError):
        parse_af_output("2345\n", ["ClusterId", "ProcId"])


# ---- the submit file condor_submit gets ---------------------------------------

TABLE = {
    "executable": "/srv/stage/j/.pocketgrid/prog.sh",
    "initialdir": "$(proc_dir)",
    "arguments": "$(input) out.txt",
    "log": "/srv/stage/j/job.log",
    "transfer_input_files": "$(input), /srv/stage/j/.pocketgrid/prog.sh",
    "hold": "true",
    "MY.PocketgridJob": '"site-a.j"',
}
ROWS = [
    {"input": "run 1.txt", "input_index": "0", "proc_dir": "/srv/stage/j/0"},
    {"input": "run2.txt", "input_index": "1", "proc_dir": "/srv/stage/j/1"},
]


def test_rendered_file_has_one_queue_per_row_in_order() -> None:
    text = render_submit_file(TABLE, ROWS)
    lines = text.splitlines()
    assert lines.count("queue") == 2
    assert lines.index("input = run 1.txt") < lines.index("queue") < lines.index("input = run2.txt")
    # The commands before the first queue are what HTCondor's own parser reads back.
    head = text.split("\ninput = ", 1)[0] + "\nqueue\n"
    parsed = dict(htcondor2.Submit(head).items())
    for key, value in TABLE.items():
        assert parsed[key] == value


def test_rendered_rows_expand_per_proc_with_htcondors_expander() -> None:
    sub = htcondor2.Submit(TABLE)
    for row in ROWS:
        for k, v in row.items():
            sub[k] = v
        assert sub.expand("initialdir") == row["proc_dir"]
        assert sub.expand("arguments") == f"{row['input']} out.txt"


@pytest.mark.parametrize("bad", [{"a": "x\nqueue 100"}, {"bad key": "x"}, {"a": "x\r"}])
def test_render_refuses_values_that_would_inject_commands(bad: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        render_submit_file({**TABLE, **bad}, ROWS)


def test_render_refuses_ragged_or_empty_itemdata() -> None:
    with pytest.raises(ValueError):
        render_submit_file(TABLE, [])
    with pytest.raises(ValueError):
        render_submit_file(TABLE, [ROWS[0], {"input": "x"}])


def test_missing_tools_are_reported_not_crashed(monkeypatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    assert condor_cli.ping() == "condor_q is not on PATH"
    with pytest.raises(CondorCliError, match="not on PATH"):
        condor_cli.act("remove", "ClusterId == 1")
