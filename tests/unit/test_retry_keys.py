"""HTCondor's retry keys as the LocalExecutor carries them out (the site's job, not pocketgrid's re-runs):
its job policy (classad2) decides, and a re-run is logged as the shadow logs it, not as an eviction."""
from __future__ import annotations

import time
from pathlib import Path


from peer.event_log import EventLogReader, EventLogWriter
from peer.executors.local_policy import JobPolicy
from peer.submit_description import Policy, local_proc_specs, parse


def specs(tmp_path: Path, text: str):
    d = tmp_path / "0"
    d.mkdir(exist_ok=True)
    (d / "x.sh").write_text("#!/bin/sh\n")
    (d / "in.txt").write_text("1\n")
    return local_proc_specs(parse(text, Policy()), executable_name="x.sh", input_names=["in.txt"], proc_dirs=[str(d)])


def runs_again(tmp_path: Path, keys: str, completions: int, *, exit_code: int | None, signal: int | None = None) -> bool:
    """What the LocalExecutor's policy (peer/executors/local_policy.py, ClassAds by classad2) decides when
    a proc of a submit file with ``keys`` ends so, for the ``completions``-th time."""
    (spec,) = specs(tmp_path, f"executable = x.sh\n{keys}\nqueue\n")
    policy = JobPolicy(spec.job_ad, spec.policy, cluster=1, proc=0)
    verdict = policy.on_exit(exit_code=exit_code, signal=signal, now=time.time(), started=time.time() - 1,
                             starts=completions, completions=completions)
    return verdict.action == "requeue"


def test_the_submit_files_retry_keys_reach_the_procs_policy(tmp_path: Path) -> None:
    (spec,) = specs(tmp_path, "executable = x.sh\nmax_retries = 2\nsuccess_exit_code = 3\nretry_until = 7\nqueue\n")
    assert {"JobMaxRetries", "JobSuccessExitCode", "RetryUntil"} <= set(spec.policy)
    (plain,) = specs(tmp_path, "executable = x.sh\nqueue\n")
    assert not {"JobMaxRetries", "JobSuccessExitCode", "RetryUntil"} & set(plain.policy)


def test_runs_again_as_htcondor_would(tmp_path: Path) -> None:
    """max_retries = 2: at most 3 runs; success_exit_code and retry_until stop it early (condor_submit's
    manual); with none of the keys a proc never runs again."""
    keys = "max_retries = 2"
    assert runs_again(tmp_path, keys, 1, exit_code=1)
    assert runs_again(tmp_path, keys, 2, exit_code=1)
    assert not runs_again(tmp_path, keys, 3, exit_code=1)  # max_retries used up
    assert not runs_again(tmp_path, keys, 1, exit_code=0)  # success
    assert runs_again(tmp_path, keys, 1, exit_code=None, signal=9)
    assert not runs_again(tmp_path, keys + "\nsuccess_exit_code = 3", 1, exit_code=3)
    assert not runs_again(tmp_path, keys + "\nretry_until = 7", 1, exit_code=7)
    assert runs_again(tmp_path, keys + "\nretry_until = 7", 1, exit_code=1)
    assert not runs_again(tmp_path, keys + "\nretry_until = ExitCode > 100", 1, exit_code=101)
    assert runs_again(tmp_path, keys + "\nretry_until = ExitCode > 100", 1, exit_code=5)
    assert not runs_again(tmp_path, "", 1, exit_code=1)  # no retry keys: never


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
