"""The stderr tail a failed input's status shows (peer/proc_stderr.py)."""
from __future__ import annotations

import os
from pathlib import Path

from peer.proc_stderr import CONDOR_DEFAULT, record_names, recorded_names, stderr_fields, tail


def test_the_tail_is_whole_lines_within_2_kib_and_decodes_bad_bytes(tmp_path: Path):
    f = tmp_path / "err"
    f.write_bytes(b"".join(f"line {i} \u00e9\n".encode() for i in range(1000)) + b"last \xff\n")
    t = tail(f)
    assert len(t.encode()) <= 2048
    assert t.splitlines()[-1] == "last \ufffd" and t.splitlines()[-2] == "line 999 \u00e9"
    assert t.splitlines()[0].startswith("line ")  # no partial first line
    assert len(t.splitlines()) == 20


def test_a_short_file_comes_back_whole_and_one_long_line_is_cut(tmp_path: Path):
    f = tmp_path / "err"
    f.write_text("only\nthis\n")
    assert tail(f) == "only\nthis"
    f.write_text("x" * 5000)
    assert tail(f) == "x" * 2048


def test_names_recorded_relative_to_each_proc_dir_and_the_condor_default_as_fallback(tmp_path: Path):
    dirs = [tmp_path / "0", tmp_path / "1"]
    for d in dirs:
        d.mkdir()
    record_names(tmp_path / ".pocketgrid", dirs, [str(dirs[0] / "err.txt"), None])
    assert recorded_names(tmp_path / ".pocketgrid") == ["err.txt", None]
    (dirs[0] / "err.txt").write_text("boom\n")
    assert stderr_fields(dirs[0], "err.txt") == {"stderr_file": "err.txt", "stderr_tail": "boom"}
    assert stderr_fields(dirs[1], None) == {}  # discarded, nothing else there
    (dirs[1] / CONDOR_DEFAULT).write_text("from the starter\n")
    assert stderr_fields(dirs[1], "gone.txt") == {"stderr_file": CONDOR_DEFAULT, "stderr_tail": "from the starter"}
    assert stderr_fields(dirs[0], "missing.txt") == {"stderr_file": "missing.txt", "stderr_tail": None}


def test_a_link_out_of_the_proc_dir_is_not_followed(tmp_path: Path):
    secret = tmp_path / "host.key"
    secret.write_text("PRIVATE KEY\n")
    d = tmp_path / "0"
    d.mkdir()
    os.symlink(secret, d / "err.txt")
    assert stderr_fields(d, "err.txt") == {"stderr_file": "err.txt", "stderr_tail": None}


def test_condor_stderr_names_get_the_cluster_the_schedd_gave(tmp_path: Path):
    from peer.submit_description import condor_submission, parse

    dirs = [str(tmp_path / "0"), str(tmp_path / "1")]
    for d in dirs:
        os.mkdir(d)
    built = condor_submission(parse("executable = prog\nerror = err.$(Cluster).$(Process)\nqueue\n"),
                              executable_path=str(tmp_path / "prog"), proc_dirs=dirs,
                              input_names=["a.txt", "b.txt"], log_path=str(tmp_path / "job.log"))
    assert built.stderr_paths_for(42) == [f"{dirs[0]}/err.42.0", f"{dirs[1]}/err.42.1"]
    default = condor_submission(parse("executable = prog\nqueue\n"), executable_path=str(tmp_path / "prog"),
                                proc_dirs=dirs[:1], input_names=["a.txt"], log_path=str(tmp_path / "job.log"))
    assert default.stderr_paths_for(7) == [f"{dirs[0]}/{CONDOR_DEFAULT}"]
