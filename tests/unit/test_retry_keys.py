"""HTCondor's retry keys as the LocalExecutor carries them out (the site's job, not pocketgrid's re-runs)."""
from __future__ import annotations

from pathlib import Path

import pytest

from peer.event_log import EventLogReader, EventLogWriter
from peer.executors.local_runner import runs_again
from peer.submit_description import Policy, SubmitDescriptionError, local_proc_specs, parse


def specs(tmp_path: Path, text: str):
    d = tmp_path / "0"
    d.mkdir(exist_ok=True)
    (d / "x.sh").write_text("#!/bin/sh\n")
    (d / "in.txt").write_text("1\n")
    return local_proc_specs(parse(text, Policy()), executable_name="x.sh", input_names=["in.txt"], proc_dirs=[str(d)])


def test_the_submit_files_retry_keys_reach_the_proc(tmp_path: Path) -> None:
    (spec,) = specs(tmp_path, "executable = x.sh\nmax_retries = 2\nsuccess_exit_code = 3\nretry_until = 7\nqueue\n")
    assert (spec.max_retries, spec.success_exit_code, spec.retry_until) == (2, 3, "7")
    (plain,) = specs(tmp_path, "executable = x.sh\nqueue\n")
    assert (plain.max_retries, plain.success_exit_code, plain.retry_until) == (0, 0, None)
    with pytest.raises(SubmitDescriptionError, match="max_retries"):
        specs(tmp_path, "executable = x.sh\nmax_retries = many\nqueue\n")
    with pytest.raises(SubmitDescriptionError, match="retry_until"):
        specs(tmp_path, "executable = x.sh\nretry_until = ExitCode ====\nqueue\n")


def test_runs_again_as_htcondor_would() -> None:
    spec = {"max_retries": 2, "success_exit_code": 0, "retry_until": None}
    assert runs_again(spec, 0, exit_code=1, signal_number=None)
    assert runs_again(spec, 1, exit_code=1, signal_number=None)
    assert not runs_again(spec, 2, exit_code=1, signal_number=None)  # max_retries used up
    assert not runs_again(spec, 0, exit_code=0, signal_number=None)  # success
    assert runs_again(spec, 0, exit_code=None, signal_number=9)
    assert not runs_again({**spec, "success_exit_code": 3}, 0, exit_code=3, signal_number=None)
    assert not runs_again({**spec, "retry_until": "7"}, 0, exit_code=7, signal_number=None)
    assert runs_again({**spec, "retry_until": "7"}, 0, exit_code=1, signal_number=None)
    assert not runs_again({**spec, "retry_until": "ExitCode > 100"}, 0, exit_code=101, signal_number=None)
    assert runs_again({**spec, "retry_until": "ExitCode > 100"}, 0, exit_code=5, signal_number=None)
    assert not runs_again({"max_retries": 0}, 0, exit_code=1, signal_number=None)  # the default: never


def test_a_requeue_is_not_an_eviction_in_the_log(tmp_path: Path) -> None:
    """Written as the shadow writes it, read with JobEventLog: a re-run by max_retries, not a site's eviction."""
    log = tmp_path / "job.log"
    w = EventLogWriter(log)
    w.submit(3, 0, "h")
    for _ in range(3):
        w.execute(3, 0, "h")
        w.requeued(3, 0, return_value=1, reason="its max_retries (3) runs it again")
    w.execute(3, 0, "h")
    w.terminated(3, 0, return_value=0)
    r = EventLogReader(str(log))
    r.update()
    st = r.procs[(3, 0)]
    assert (st.state.value, st.exit_code, st.evictions, st.retries) == ("completed", 0, 0, 3)
