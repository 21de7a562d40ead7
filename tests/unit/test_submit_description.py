"""Tests for peer.submit_description: the user's submit file -> what pocketgrid runs.

Parsing and expansion go through HTCondor's own parser (``htcondor2.Submit``);
the argument/environment syntax cases are the condor_submit manual's own
examples (docs/man-pages/condor_submit.rst, "arguments" and "environment").
"""
from __future__ import annotations

import os
from pathlib import Path

import htcondor2
import pytest

from peer.submit_description import (
    CONDOR_FORCED_KEYS,
    DEFAULT_FORBIDDEN_UNIVERSES,
    Policy,
    ProcSpec,
    SubmitDescriptionError,
    condor_submit_dict,
    local_proc_specs,
    parse,
    parse_environment,
    split_arguments,
)

POLICY = Policy()


@pytest.fixture
def stage(tmp_path: Path):
    """A staged job: two proc directories with the executable and one input each."""
    root = tmp_path / "job"
    dirs = []
    for i, name in enumerate(["a.txt", "b.dat"]):
        d = root / name
        d.mkdir(parents=True)
        (d / "prog").write_text("#!/bin/sh\n")
        (d / name).write_text(f"input {i}\n")
        dirs.append(str(d))
    return {"root": root, "dirs": dirs, "names": ["a.txt", "b.dat"]}


def specs_for(text: str, stage, policy: Policy = POLICY) -> list[ProcSpec]:
    parsed = parse(text, policy)
    return local_proc_specs(parsed, executable_name="prog", input_names=stage["names"], proc_dirs=stage["dirs"])


def refused(text: str, policy: Policy = POLICY) -> SubmitDescriptionError:
    with pytest.raises(SubmitDescriptionError) as info:
        parse(text, policy)
    return info.value


# ---------------------------------------------------------------------------
# Argument and environment syntax: the manual's own examples
# ---------------------------------------------------------------------------

MANUAL_ARGUMENTS = [
    # Old syntax: "arguments = one \"two\" 'three'" produces one / "two" / 'three'
    ("one \\\"two\\\" 'three'", ["one", '"two"', "'three'"]),
    # New syntax examples
    ('"3 simple arguments"', ["3", "simple", "arguments"]),
    ("\"one 'two with spaces' 3\"", ["one", "two with spaces", "3"]),
    ('"one ""two"" \'spacey \'\'quoted\'\' argument\'"', ["one", '"two"', "spacey 'quoted' argument"]),
]

MANUAL_ENVIRONMENTS = [
    # New syntax: environment = "one=1 two=""2"" three='spacey ''quoted'' value'"
    ('"one=1 two=""2"" three=\'spacey \'\'quoted\'\' value\'"', {"one": "1", "two": '"2"', "three": "spacey 'quoted' value"}),
    # Old (Unix) syntax: environment = one=1;two=2;three="quotes have no 'special' meaning"
    (
        "one=1;two=2;three=\"quotes have no 'special' meaning\"",
        {"one": "1", "two": "2", "three": "\"quotes have no 'special' meaning\""},
    ),
]


@pytest.mark.parametrize("value, expected", MANUAL_ARGUMENTS)
def test_split_arguments_manual_examples(value, expected):
    assert split_arguments(value) == expected


@pytest.mark.parametrize("value, expected", MANUAL_ENVIRONMENTS)
def test_parse_environment_manual_examples(value, expected):
    assert parse_environment(value) == expected


@pytest.mark.parametrize("value, expected", MANUAL_ARGUMENTS)
def test_manual_argument_examples_through_htcondor_parser(value, expected, stage):
    specs = specs_for(f"executable = prog\narguments = {value}\nqueue\n", stage)
    assert [s.arguments for s in specs] == [expected, expected]


@pytest.mark.parametrize("value, expected", MANUAL_ENVIRONMENTS)
def test_manual_environment_examples_through_htcondor_parser(value, expected, stage):
    specs = specs_for(f"executable = prog\nenvironment = {value}\nqueue\n", stage)
    assert specs[0].environment == expected


def test_argument_syntax_details():
    assert split_arguments("") == []
    assert split_arguments('"a\tb  c"') == ["a", "b", "c"]
    assert split_arguments("\"'' x\"") == ["", "x"]  # '' is an empty argument
    assert split_arguments("\"a'b c'd\"") == ["ab cd"]  # quotes group inside a word
    assert split_arguments('  "x y"  ') == ["x", "y"]  # whitespace around the quotes
    assert split_arguments("a\\b c\\\"d") == ["a\\b", 'c"d']  # old syntax: only \" is special
    assert split_arguments('"a\\b"') == ["a\\b"]  # new syntax: backslash has no meaning


@pytest.mark.parametrize(
    "value, message",
    [
        ('"one two', "Unterminated double-quote"),
        ('"one" two"', "Unexpected characters following double-quote"),
        ("\"one 'two\"", "Unbalanced quote starting here: 'two"),
        ('one "two"', "Found illegal unescaped double-quote"),
    ],
)
def test_argument_syntax_errors_name_the_key(value, message):
    with pytest.raises(SubmitDescriptionError) as info:
        split_arguments(value)
    assert message in str(info.value)
    assert str(info.value).startswith("arguments = ")
    assert info.value.key == "arguments"


def test_environment_syntax_details():
    assert parse_environment("|a=1;2|b=x y") == {"a": "1;2", "b": "x y"}  # first char picks the delimiter
    assert parse_environment(";a=1;;b=2;") == {"a": "1", "b": "2"}  # empty entries skipped
    assert parse_environment("a=1; b=2") == {"a": "1", "b": "2"}  # leading blanks dropped
    assert parse_environment('"a=1 a=2"') == {"a": "2"}  # later entries win
    assert parse_environment('"p=x=y"') == {"p": "x=y"}
    with pytest.raises(SubmitDescriptionError, match="Missing '=' after environment variable 'oops'"):
        parse_environment('"a=1 oops"')
    with pytest.raises(SubmitDescriptionError, match="missing variable"):
        parse_environment("=1")
    with pytest.raises(SubmitDescriptionError, match="V2 format"):
        parse_environment("a=1", v2_only=True, key="environment2")


def test_aliases_and_v2_only_keys(stage):
    specs = specs_for('executable = prog\nArgs = x y\nenv = A=1;B=2\nqueue\n', stage)
    assert specs[0].arguments == ["x", "y"]
    assert specs[0].environment == {"A": "1", "B": "2"}
    specs = specs_for('arguments2 = "p \'q r\'"\nenvironment2 = "C=3"\nqueue\n', stage)
    assert specs[0].arguments == ["p", "q r"]
    assert specs[0].environment == {"C": "3"}
    e = refused("arguments2 = p q\nqueue\n")
    assert "arguments2" in str(e) and "V2 format" in str(e)
    e = refused('arguments = a\narguments2 = "b"\nqueue\n')
    assert "allow_arguments_v1" in str(e)
    specs = specs_for('arguments = a\narguments2 = "b"\nallow_arguments_v1 = true\nqueue\n', stage)
    assert specs[0].arguments == ["b"]


def test_bad_argument_syntax_is_refused_at_parse():
    e = refused('arguments = "unterminated\nqueue\n')
    assert "arguments" in str(e) and "Unterminated double-quote" in str(e)


# ---------------------------------------------------------------------------
# Per-proc expansion and what the LocalExecutor runs
# ---------------------------------------------------------------------------


def test_a_piece_of_a_job_expands_input_index_as_the_jobs_index(stage):
    """A piece holds some inputs of a job: $(input_index) is the job's index on every site."""
    text = 'executable = prog\narguments = "$(input) $(input_index) $(Process)"\noutput = out.$(input_index)\nqueue\n'
    specs = local_proc_specs(parse(text, POLICY), executable_name="prog", input_names=stage["names"],
                             proc_dirs=stage["dirs"], indexes=[4, 9])
    assert [s.arguments for s in specs] == [["a.txt", "4", "4"], ["b.dat", "9", "9"]]
    assert [s.index for s in specs] == [4, 9] and specs[1].stdout.endswith("/out.9")
    with pytest.raises(ValueError, match="distinct"):
        local_proc_specs(parse(text, POLICY), executable_name="prog", input_names=stage["names"],
                         proc_dirs=stage["dirs"], indexes=[4, 4])


def test_input_and_input_index_expand_per_proc(stage):
    text = (
        "executable = prog\n"
        'arguments = "--in $(input) --index $(input_index) \'$Fn(input) x\'"\n'
        'environment = "IDX=$(input_index) NAME=$(input) P=$(Process)"\n'
        "output = out.$(input_index).txt\n"
        "error = $Fn(input).err\n"
        "queue\n"
    )
    specs = specs_for(text, stage)
    a, b = specs
    assert a.arguments == ["--in", "a.txt", "--index", "0", "a x"]
    assert b.arguments == ["--in", "b.dat", "--index", "1", "b x"]
    assert a.environment == {"IDX": "0", "NAME": "a.txt", "P": "0"}
    assert b.environment == {"IDX": "1", "NAME": "b.dat", "P": "1"}
    assert a.stdout == os.path.join(stage["dirs"][0], "out.0.txt")
    assert b.stdout == os.path.join(stage["dirs"][1], "out.1.txt")
    assert a.stderr == os.path.join(stage["dirs"][0], "a.err")
    assert b.stderr == os.path.join(stage["dirs"][1], "b.err")


def test_proc_spec_paths_and_defaults(stage):
    specs = specs_for("executable = /usr/bin/whatever\nqueue\n", stage)
    for i, s in enumerate(specs):
        d = stage["dirs"][i]
        assert s.index == i
        assert s.input_name == stage["names"][i]
        assert s.iwd == d
        assert s.executable == os.path.join(d, "prog")  # forced: the staged executable
        assert s.stdin == os.path.join(d, stage["names"][i])  # $(input) is also HTCondor's stdin command
        assert s.stdout == os.path.join(d, "_condor_stdout")
        assert s.stderr == os.path.join(d, "_condor_stderr")
        assert s.arguments == [] and s.environment == {}


def test_dev_null_and_empty_output_discard(stage):
    specs = specs_for("output = /dev/null\nerror = $(nothing)\nqueue\n", stage)
    assert specs[0].stdout is None and specs[0].stderr is None


def test_absolute_path_inside_proc_dir_is_allowed(stage):
    specs = specs_for("output = $(proc_dir)/sub/o.txt\nerror = $(proc_dir)/o.txt\nqueue\n", stage)
    assert specs[1].stdout == os.path.join(stage["dirs"][1], "sub", "o.txt")


def test_same_file_for_output_and_error_is_allowed(stage):
    specs = specs_for("output = both.log\nerror = both.log\nqueue\n", stage)
    assert specs[0].stdout == specs[0].stderr


def test_parsed_submit_is_not_modified_by_expansion(stage):
    parsed = parse('arguments = "$(input)"\nqueue\n', POLICY)
    before = dict(parsed.submit)
    local_proc_specs(parsed, executable_name="prog", input_names=stage["names"], proc_dirs=stage["dirs"])
    assert dict(parsed.submit) == before
    assert "input" not in {k.lower() for k in parsed.submit}


def test_unsafe_input_names_are_refused(stage):
    parsed = parse("queue\n", POLICY)
    for name in ["$(x)", "a/b", "..", ""]:
        with pytest.raises(SubmitDescriptionError):
            local_proc_specs(parsed, executable_name="prog", input_names=[name], proc_dirs=[stage["dirs"][0]])


def test_local_executor_runs_vanilla_only_whatever_the_policy(stage):
    open_policy = Policy(forbidden_universes=frozenset())
    parsed = parse("universe = java\nqueue\n", open_policy)
    with pytest.raises(SubmitDescriptionError, match="vanilla-universe jobs only"):
        local_proc_specs(parsed, executable_name="prog", input_names=stage["names"], proc_dirs=stage["dirs"])


def test_dollar_dollar_env_entry_is_condor_only(stage):
    parsed = parse('environment = "A=1 $$(Foo)"\nqueue\n', POLICY)  # fine for HTCondor
    with pytest.raises(SubmitDescriptionError, match=r"\$\$\(\) entries"):
        local_proc_specs(parsed, executable_name="prog", input_names=stage["names"], proc_dirs=stage["dirs"])


# ---------------------------------------------------------------------------
# Refused: keys, attributes, universes, queue statements, text
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line, key",
    [
        ('+Owner = "root"', "Owner"),
        ('MY.Owner = "root"', "Owner"),
        ('+User = "root@site"', "User"),
        ('+AcctGroupUser = "boss"', "AcctGroupUser"),
        ('+Cmd = "/bin/sh"', "Cmd"),
        ('+Iwd = "/etc"', "Iwd"),
        ("+JobUniverse = 12", "JobUniverse"),
        ('+x509UserProxySubject = "/CN=x"', "x509UserProxySubject"),
        ("accounting_group_user = boss", "accounting_group_user"),
        ("accounting_group = group_physics", "accounting_group"),
        ("x509userproxy = /tmp/x509up_u0", "x509userproxy"),
        ("use_x509userproxy = true", "use_x509userproxy"),
        ("use_oauth_services = scitokens", "use_oauth_services"),
        ("aws_secret_access_key_file = /root/.aws/secret", "aws_secret_access_key_file"),
        ("remote_initialdir = /", "remote_initialdir"),
        ("Remote_Universe = local", "Remote_Universe"),
        ("output_destination = https://example.org/", "output_destination"),
        ("shell = cat /etc/shadow", "shell"),
        ("tool_daemon_cmd = /bin/sh", "tool_daemon_cmd"),
        ("parallel_script_shadow = x.sh", "parallel_script_shadow"),
        ("notify_user = victim@example.org", "notify_user"),
        ("run_as_owner = true", "run_as_owner"),
        ("transfer_plugins = evil=/usr/bin/evil", "transfer_plugins"),
        ("dagman_log = /etc/cron.d/x", "dagman_log"),
    ],
)
def test_refused_keys_are_named(line, key):
    e = refused(f"executable = prog\n{line}\nqueue\n")
    assert key in str(e)
    assert "not allowed" in str(e)


def test_policy_can_refuse_more_keys():
    policy = Policy(forbidden_keys=POLICY.forbidden_keys | {"Priority"})
    assert "priority" in str(refused("priority = 10\nqueue\n", policy))
    parse("priority = 10\nqueue\n", POLICY)


@pytest.mark.parametrize(
    "text",
    [
        "universe = local\n",
        "universe = scheduler\n",
        "Universe = LOCAL\n",
        "universe = 12\n",  # local, by number
        "JobUniverse = 7\n",  # scheduler, through the attribute-name alias
        "u = scheduler\nuniverse = $(u)\n",  # through a macro
        "universe = grid\n",
        "universe = globus\n",
        "universe = docker\ndocker_image = debian\n",
        "container_image = docker://debian\n",  # vanilla + image = container job
        "universe = java\n",
        "universe = vm\n",
        "universe = parallel\n",
    ],
)
def test_universes_refused(text):
    e = refused(text + "queue\n")
    assert "universe is not allowed" in str(e)


@pytest.mark.parametrize("text", ["", "universe = vanilla\n", "universe = VANILLA\n", "universe = 5\n"])
def test_vanilla_universe_accepted(text):
    parse(text + "executable = prog\nqueue\n", POLICY)


def test_unknown_universe_refused():
    assert "no such universe" in str(refused("universe = moon\nqueue\n"))


def test_site_may_allow_a_universe_for_condor():
    policy = Policy(forbidden_universes=DEFAULT_FORBIDDEN_UNIVERSES - {"container"})
    parse("container_image = docker://debian\nqueue\n", policy)
    refused("universe = local\nqueue\n", policy)


@pytest.mark.parametrize(
    "text",
    [
        "queue 3\n",
        "queue 2 in (a b)\n",
        "queue input in (a.txt b.txt)\n",
        "queue input matching *.txt\n",
        "queue input from list.txt\n",
        "queue input from ls |\n",
        "queue 1 # one\n",
    ],
)
def test_queue_statements_other_than_plain_queue_refused(text):
    e = refused("executable = prog\n" + text)
    assert "pocketgrid queues one proc per input" in str(e)
    assert e.key == "queue"


@pytest.mark.parametrize("text", ["queue\n", "QUEUE 1\n", "  Queue   \n", "queue\n\n# done\n", ""])
def test_plain_queue_or_none_accepted(text):
    parse("executable = prog\n" + text, POLICY)


def test_commands_after_queue_refused():
    e = refused("arguments = 1\nqueue\narguments = 2\nqueue\n")
    assert "line 3" in str(e) and "after the queue statement on line 2" in str(e)


def test_parse_error_passes_the_parser_message_and_line():
    e = refused("executable = prog\nthis is not a command\nqueue\n")
    assert "parse_up_to_q_line() failed" in str(e)  # HTCondor's own message
    assert "line 2" in str(e) and "this is not a command" in str(e)
    assert e.line == 2


def test_parse_error_includes_htcondor_diagnostics():
    e = refused("x = 1\nendif\nqueue\n")
    assert "endif without matching if" in str(e)
    assert e.line == 2


@pytest.mark.parametrize("text", ["", "   \n\n", "\t"])
def test_empty_text_refused(text):
    assert "empty" in str(refused(text))


def test_oversized_and_control_characters_refused():
    assert "at most" in str(refused("x = " + "a" * 70_000 + "\nqueue\n"))
    assert "U+0000" in str(refused("x = 1\x00\nqueue\n"))
    assert "U+000D" in str(refused("x = 1\ry = 2\nqueue\n"))
    parse("x = 1\r\nqueue\r\n", POLICY)  # CRLF line ends are fine


def test_include_refused_and_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    for text in [
        f"include command : touch {marker} |\nqueue\n",
        f"INCLUDE : touch {marker} |\nqueue\n",
        f"x = 1\ninclude ifexist : /etc/passwd\nqueue\n",
        f"incl\\\nude command : touch {marker} |\nqueue\n",  # hidden behind a line continuation
    ]:
        e = refused(text)
        assert "include statements are not allowed" in str(e)
    assert not marker.exists()


def test_env_macro_refused():
    e = refused("arguments = $ENV(HOME)\nqueue\n")
    assert "$ENV" in str(e) and "line 1" in str(e)
    refused('if "$ENV(SECRET)" == "x"\nx = 1\nendif\nqueue\n')


def test_multiline_values_refused():
    assert "multi-line" in str(refused("arguments @=end\na b\n@end\nqueue\n"))


@pytest.mark.parametrize("value", ["true", "True", "yes", "HOME, PATH", "$(g)"])
def test_getenv_refused_unless_false(value):
    e = refused(f"g = true\ngetenv = {value}\nqueue\n")
    assert "getenv" in str(e) and "environment" in str(e)


@pytest.mark.parametrize("line", ["getenv = false", "getenv = False", "get_env = no"])
def test_getenv_false_accepted(line):
    parse(line + "\nqueue\n", POLICY)


def test_get_env_alias_refused():
    assert "get_env" in str(refused("get_env = true\nqueue\n"))


# ---------------------------------------------------------------------------
# Macros HTCondor's expander cannot finish: refused, never hang the peer
# ---------------------------------------------------------------------------


def test_macro_loop_refused_with_names():
    e = refused("a = $(b) x\nb = $(c)\nc = $(a)\narguments = $(a)\nqueue\n")
    assert "a -> b -> c -> a" in str(e)


def test_self_reference_without_base_refused():
    e = refused("b = 1\na = $(b:$(a))\nqueue\n")  # HTCondor's expand() never returns on this
    assert "a refers to itself" in str(e)


def test_self_reference_with_a_base_is_fine(stage):
    specs = specs_for('args = base\nargs = $(args) more\nqueue\n', stage)
    assert specs[0].arguments == ["base", "more"]


def test_indirect_loop_stopped_by_the_child_timeout():
    # $(DOLLAR)(c) becomes "$(c)" inside $Fn(), which HTCondor expands again: an
    # endless loop the reference graph cannot see; the checker process is killed.
    policy = Policy(expand_timeout_seconds=2)
    e = refused("b = $(DOLLAR)(c)\nc = $Fn(b)\narguments = $(c)\nqueue\n", policy)
    assert "did not finish within 2 s" in str(e)


def test_huge_values_refused():
    e = refused("a = x\n" + "a = $(a)$(a)\n" * 22 + "arguments = $(a)\nqueue\n")  # 4 MiB
    assert "more than 1 MiB" in str(e) and e.key in ("a", "arguments")


def test_exponential_parse_is_contained():
    text = "a = x\n" + "a = $(a)$(a)\n" * 40 + "queue\n"  # 2**40 characters if it ran
    e = refused(text, Policy(expand_timeout_seconds=5, expand_memory_bytes=512 << 20))
    assert "HTCondor" in str(e)


# ---------------------------------------------------------------------------
# Paths that leave the input's directory
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line, key",
    [
        ("output = ../escape.txt", "output"),
        ("output = /etc/passwd", "output"),
        ("error = sub/../../x", "error"),
        ("stdout = /tmp/x", "stdout"),
        ("output = .", "output"),
        ("transfer_input_files = /etc/passwd", "transfer_input_files"),
        ("transfer_input_files = ok.txt, ../other-job/secret", "transfer_input_files"),
        ("transfer_input_files = file:///etc/passwd", "transfer_input_files"),
        ('transfer_output_remaps = "out.txt = ../../out.txt"', "transfer_output_remaps"),
        ('transfer_output_remaps = "out.txt = https://example.org/o"', "transfer_output_remaps"),
        ("output = $$(Name).out", "output"),
    ],
)
def test_path_escapes_refused_at_parse(line, key):
    e = refused(f"executable = prog\n{line}\nqueue\n")
    assert key in str(e)
    assert e.key == key


def test_path_escape_through_input_dependent_macro(stage):
    parsed = parse("output = $CHOICE(input_index, ok.txt, ../../x)\nqueue\n", POLICY)  # index 0 passes
    with pytest.raises(SubmitDescriptionError, match="leaves the input's directory"):
        local_proc_specs(parsed, executable_name="prog", input_names=stage["names"], proc_dirs=stage["dirs"])
    # parse() checks every input when it is given the names
    with pytest.raises(SubmitDescriptionError, match="leaves the input's directory"):
        parse("output = $CHOICE(input_index, ok.txt, ../../x)\nqueue\n", POLICY, input_names=stage["names"])


def test_symlink_escape_refused(stage, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, os.path.join(stage["dirs"][0], "link"))
    parsed = parse("output = link/o.txt\nqueue\n", POLICY)  # harmless by name
    with pytest.raises(SubmitDescriptionError, match="symbolic links"):
        local_proc_specs(parsed, executable_name="prog", input_names=stage["names"], proc_dirs=stage["dirs"])


def test_allowed_transfer_entries(stage):
    parse(
        'transfer_input_files = extra.dat, sub/, https://example.org/data.tgz\n'
        'transfer_output_remaps = "result.txt = results/$(input).txt"\nqueue\n',
        POLICY,
    )


# ---------------------------------------------------------------------------
# Warnings for overridden keys
# ---------------------------------------------------------------------------


def test_input_override_warns_and_names_the_key(stage):
    parsed = parse("executable = prog\ninput = data.txt\nqueue\n", POLICY)
    assert len(parsed.warnings) == 1
    assert parsed.warnings[0].startswith("input = data.txt is overridden")
    assert "standard input" in parsed.warnings[0]
    specs = local_proc_specs(parsed, executable_name="prog", input_names=stage["names"], proc_dirs=stage["dirs"])
    assert specs[0].stdin == os.path.join(stage["dirs"][0], "a.txt")


@pytest.mark.parametrize("line", ["input = $(input)", "input = $( Input )", "executable = prog", "Executable = my prog"])
def test_no_warning_for_what_pocketgrid_would_do_anyway(line):
    assert parse(line + "\nqueue\n", POLICY).warnings == []


@pytest.mark.parametrize(
    "line, key",
    [
        ("stdin = x", "stdin"),
        ("initialdir = /tmp", "initialdir"),
        ("initial_dir = elsewhere", "initial_dir"),
        ("Iwd = /tmp", "Iwd"),
        ("log = my.log", "log"),
        ("executable = /usr/bin/python3", "executable"),
        ("Cmd = /bin/sh", "Cmd"),
        ("input_index = 7", "input_index"),
        ("should_transfer_files = NO", "should_transfer_files"),
        ("when_to_transfer_output = ON_EXIT", "when_to_transfer_output"),
        ("stream_output = false", "stream_output"),
        ("transfer_executable = false", "transfer_executable"),
        ("notification = always", "notification"),
        ("log_xml = true", "log_xml"),
        ("transfer_output = false", "transfer_output"),
    ],
)
def test_overridden_keys_warn(line, key):
    warnings = parse(line + "\nqueue\n", POLICY).warnings
    assert len(warnings) == 1 and warnings[0].startswith(line.split(" = ")[0] + " = ")
    assert key in warnings[0]


def test_forced_values_equal_to_ours_do_not_warn():
    text = "".join(f"{k} = {v}\n" for k, v in CONDOR_FORCED_KEYS.items()) + "stream_error = True\nqueue\n"
    assert parse(text, POLICY).warnings == []


# ---------------------------------------------------------------------------
# The CondorExecutor's submission
# ---------------------------------------------------------------------------


def condor_for(text: str, stage):
    parsed = parse(text, POLICY)
    exe = os.path.join(stage["dirs"][0], "prog")
    log = str(stage["root"] / "job.log")
    submit, itemdata = condor_submit_dict(
        parsed, executable_path=exe, proc_dirs=stage["dirs"], input_names=stage["names"], log_path=log
    )
    return submit, itemdata, exe, log


def test_condor_forced_keys_and_itemdata(stage):
    text = (
        "universe = vanilla\nexecutable = /usr/bin/python3\ninitialdir = /tmp\nlog = mine.log\n"
        "should_transfer_files = NO\nstream_output = false\ninput = other.txt\nstdin = x\n"
        'arguments = "$(input) $(input_index)"\nrequest_memory = 100\n+ProjectName = "phys"\n'
        "transfer_input_files = extra.dat\nqueue\n"
    )
    submit, itemdata, exe, log = condor_for(text, stage)
    d = {k.lower(): v for k, v in dict(submit).items()}
    assert d["executable"] == exe
    assert d["initialdir"] == "$(proc_dir)"
    assert d["log"] == log
    assert d["stream_output"] == "true" and d["stream_error"] == "true"
    assert d["should_transfer_files"] == "YES"
    assert d["when_to_transfer_output"] == "ON_EXIT_OR_EVICT"
    assert d["transfer_executable"] == "true"
    assert [t.strip() for t in d["transfer_input_files"].split(",")] == ["$(input)", exe, "extra.dat"]
    assert d["output"] == "_condor_stdout" and d["error"] == "_condor_stderr"
    assert "input" not in d and "stdin" not in d  # the itemdata variable is the input command
    assert d["request_memory"] == "100" and d["my.projectname"] == '"phys"'  # user's other keys kept
    assert itemdata == [
        {"input": "a.txt", "input_index": "0", "proc_dir": stage["dirs"][0]},
        {"input": "b.dat", "input_index": "1", "proc_dir": stage["dirs"][1]},
    ]


def test_condor_submit_round_trips_through_htcondor(stage):
    text = 'arguments = "$(input) $(input_index)"\noutput = out.$(input_index)\nstdout_unused = 1\nqueue\n'
    submit, itemdata, exe, log = condor_for(text, stage)
    again = htcondor2.Submit(str(submit))  # the text form parses again, queue statement included
    assert dict(again) == dict(submit)
    assert again.getQArgs() == ""
    for row in itemdata:
        for k, v in row.items():
            again[k] = v
        assert again.expand("initialdir") == row["proc_dir"]
        assert again.expand("arguments") == f'"{row["input"]} {row["input_index"]}"'
        assert again.expand("output") == f"out.{row['input_index']}"
        assert again.expand("input") == row["input"]
        assert again.expand("transfer_input_files") == f"{row['input']}, {exe}"
        assert again.expand("executable") == exe and again.expand("log") == log


def test_condor_user_output_kept_and_checked(stage):
    submit, _, _, _ = condor_for("stdout = o.$(input)\nerror = e.txt\nqueue\n", stage)
    d = {k.lower(): v for k, v in dict(submit).items()}
    assert d["output"] == "o.$(input)" and "stdout" not in d and d["error"] == "e.txt"


def test_condor_refuses_input_names_that_break_transfer_lists(stage):
    parsed = parse("queue\n", POLICY)
    with pytest.raises(SubmitDescriptionError, match="','"):
        condor_submit_dict(
            parsed,
            executable_path=os.path.join(stage["dirs"][0], "prog"),
            proc_dirs=[stage["dirs"][0]],
            input_names=["a,b.txt"],
            log_path=str(stage["root"] / "job.log"),
        )


def test_condor_checks_paths_per_proc(stage):
    parsed = parse("output = $CHOICE(input_index, ok.txt, ../../x)\nqueue\n", POLICY)
    with pytest.raises(SubmitDescriptionError, match="leaves the input's directory"):
        condor_submit_dict(
            parsed,
            executable_path=os.path.join(stage["dirs"][0], "prog"),
            proc_dirs=stage["dirs"],
            input_names=stage["names"],
            log_path=str(stage["root"] / "job.log"),
        )
