"""Undefined macros in a submit file: accepted as HTCondor accepts them (they expand to nothing), with a warning.

Which names are defined is HTCondor's own answer: the checker child process
expands each ``$(name)`` with ``htcondor2.Submit`` (the file's own macros,
pocketgrid's per-proc ones, and HTCondor's configuration such as ``$(Arch)``).
"""
from __future__ import annotations

from pathlib import Path

import pytest

from peer.submit_description import local_proc_specs, parse


def warnings_of(text: str) -> list[str]:
    return parse(text, input_names=["data.txt"]).warnings


def test_a_misspelt_macro_is_named_with_its_line_and_the_likely_name():
    text = "executable = prog\narguments = $(inptu) out.json\nqueue\n"
    (w,) = warnings_of(text)
    assert w.startswith("$(inptu) is not defined")
    assert "line 2" in w and "arguments = $(inptu) out.json" in w
    assert "did you mean $(input)?" in w


def test_the_job_is_accepted_and_the_macro_expands_to_nothing(tmp_path: Path):
    text = "executable = prog\narguments = a$(inptu)b $(input)\nqueue\n"
    parsed = parse(text, input_names=["data.txt"])
    d = tmp_path / "0"
    d.mkdir()
    (spec,) = local_proc_specs(parsed, executable_name="prog", input_names=["data.txt"], proc_dirs=[str(d)])
    assert spec.arguments == ["ab", "data.txt"]  # HTCondor's own expansion: nothing in its place


BUILT_IN = [
    "$(input) $(input_index) $(proc_dir) $(INPUT)",  # pocketgrid's, any case
    "$(Cluster) $(ClusterId) $(Process) $(ProcId) $(Step) $(Row) $(ItemIndex)",
    "$(Item) $(Node) $(SUBMIT_FILE)",  # condor_submit's own at queue time
    "$(Arch) $(OpSys) $(OpSysAndVer) $(DOLLAR)",  # from HTCondor's configuration
    "$Fn(input) $Fx(input) $RANDOM_INTEGER(1,9) $INT(input_index)",  # function forms
    "$$(Memory) $(missing:fallback)",  # match-time, and a default
    "$(later) $(blank)",  # defined further down, or defined empty
]


@pytest.mark.parametrize("refs", BUILT_IN)
def test_defined_and_built_in_macros_do_not_warn(refs: str):
    text = f"executable = prog\narguments = {refs}\nlater = x\nblank =\nqueue\n"
    assert warnings_of(text) == []


def test_each_undefined_name_once_and_comments_ignored():
    text = (
        "# arguments = $(not_a_reference)\n"
        "executable = prog\n"
        "arguments = $(alpha) $(alpha)\n"
        "output = out.$(beta).txt\n"
        "error = err.$(BETA).txt\n"
        "queue\n"
    )
    ws = warnings_of(text)
    assert len(ws) == 2
    assert ws[0].startswith("$(alpha) is not defined") and "line 3" in ws[0]
    assert ws[1].startswith("$(beta) is not defined") and "line 4" in ws[1]
    assert not any("not_a_reference" in w for w in ws)


def test_an_undefined_macro_used_through_another_macro_is_found():
    text = "executable = prog\nname = run-$(Procss)\noutput = $(name).out\nqueue\n"
    (w,) = warnings_of(text)
    assert w.startswith("$(Procss) is not defined") and "did you mean $(process)?" in w


def test_the_warnings_come_after_the_owned_key_warnings_and_change_no_refusal():
    text = "executable = prog\ninitialdir = /tmp\narguments = $(oops)\nqueue\n"
    ws = warnings_of(text)
    assert [w.split(" ")[0] for w in ws] == ["initialdir", "$(oops)"]
