"""The job sandbox: the command line it builds, what it decides, and the refusal without isolation."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from peer.executors import sandbox
from peer.executors.local import LocalExecutor
from peer.executors.sandbox import Isolation, SandboxSettings, command, decide, exposed_files
from pocketgrid.errors import Unavailable

PROC = "/srv/pg/state/stage/site.1/0"


def _pairs(cmd: list[str], flag: str) -> list[tuple[str, str]]:
    return [(cmd[i + 1], cmd[i + 2]) for i, a in enumerate(cmd) if a == flag]


def test_root_command_binds_only_the_proc_dir_and_drops_to_the_job_account():
    iso = Isolation(bwrap="/usr/bin/bwrap", setpriv="/usr/bin/setpriv", user="nobody", uid=65534, gid=65534)
    cmd = command(iso, [f"{PROC}/run.sh", "in.txt"], PROC)
    assert cmd[0] == "/usr/bin/bwrap"
    sep = cmd.index("--")
    opts, job = cmd[:sep], cmd[sep + 1:]
    for flag in ("--unshare-net", "--unshare-pid", "--unshare-ipc", "--die-with-parent", "--new-session"):
        assert flag in opts
    assert _pairs(opts, "--bind") == [(PROC, PROC)]  # the one writable place, at its own path
    assert ("/etc", "/etc") not in _pairs(opts, "--ro-bind") and ("/", "/") not in _pairs(opts, "--ro-bind")
    assert ("/usr", "/usr") in _pairs(opts, "--ro-bind")
    bound = {src for src, _ in _pairs(opts, "--ro-bind") + _pairs(opts, "--ro-bind-try") + _pairs(opts, "--bind")}
    assert not any(src.startswith("/srv/pg/state") and src != PROC for src in bound)  # no state, db, keys
    assert opts[opts.index("--chdir") + 1] == PROC
    # setpriv becomes the job account with no capabilities before the job runs.
    assert job[:5] == ["/usr/bin/setpriv", "--reuid", "65534", "--regid", "65534"]
    assert "--no-new-privs" in job and ["--bounding-set", "-all"] == job[job.index("--bounding-set"):][:2]
    assert job[job.index("--") + 1:] == [f"{PROC}/run.sh", "in.txt"]
    assert sandbox.account_kwargs(iso) == {}  # bwrap starts as root, setpriv switches inside


def test_unprivileged_command_uses_a_user_namespace_and_network_only_when_allowed():
    iso = Isolation(bwrap="/usr/bin/bwrap")
    cmd = command(iso, ["./x"], PROC)
    assert "--unshare-all" in cmd and "--share-net" not in cmd and "setpriv" not in " ".join(cmd)
    assert ("/etc/resolv.conf", "/etc/resolv.conf") not in _pairs(cmd, "--ro-bind-try")
    net = command(Isolation(bwrap="/usr/bin/bwrap", network=True), ["./x"], PROC)
    assert "--share-net" in net and ("/etc/resolv.conf", "/etc/resolv.conf") in _pairs(net, "--ro-bind-try")


def test_without_bwrap_the_executable_is_started_relative_to_its_directory():
    iso = Isolation(user="nobody", uid=65534, gid=65534)
    assert command(iso, [f"{PROC}/run.sh", "a"], PROC) == ["./run.sh", "a"]  # the account cannot traverse the state dir
    assert sandbox.account_kwargs(iso) == {"user": 65534, "group": 65534, "extra_groups": []}


def test_no_isolation_possible_refuses_jobs_with_what_to_do():
    settings = SandboxSettings()
    iso = decide(settings, is_root=False, bwrap=None, bwrap_works=False, account=None)
    assert iso.refusal and not iso.isolated
    assert "bubblewrap" in iso.refusal and "allow_unisolated_jobs" in iso.refusal and "host key" in iso.refusal
    broken = decide(settings, is_root=False, bwrap="/usr/bin/bwrap", bwrap_works=False, account=None)
    assert "cannot create its sandbox" in broken.refusal
    accepted = decide(SandboxSettings(allow_unisolated=True), is_root=False, bwrap=None, bwrap_works=False,
                      account=None)
    assert accepted.refusal is None and not accepted.isolated and "NONE" in accepted.describe()


def test_root_without_a_job_account_is_refused_and_with_one_both_layers_apply():
    missing = decide(SandboxSettings(job_user="pg-jobs"), is_root=True, bwrap="/usr/bin/bwrap", bwrap_works=True,
                     account=None)
    assert missing.refusal and "'pg-jobs' does not exist" in missing.refusal
    both = decide(SandboxSettings(), is_root=True, bwrap="/usr/bin/bwrap", bwrap_works=True,
                  account=("nobody", 65534, 65534), setpriv="/usr/bin/setpriv")
    assert both.refusal is None and both.bwrap and both.uid == 65534
    assert Isolation.from_json(both.to_json()) == both
    account_only = decide(SandboxSettings(), is_root=True, bwrap=None, bwrap_works=False,
                          account=("nobody", 65534, 65534))
    assert account_only.isolated and account_only.bwrap is None and account_only.refusal is None


def test_the_executor_refuses_submissions_and_starts_nothing_when_jobs_cannot_be_isolated(tmp_path):
    executor = LocalExecutor(None, tmp_path, peer_name="p")  # type: ignore[arg-type]
    executor._isolation = decide(SandboxSettings(), is_root=False, bwrap=None, bwrap_works=False, account=None)
    with pytest.raises(Unavailable) as err:
        executor.prepare(None, None, None, None)  # type: ignore[arg-type]
    assert "this peer does not run jobs" in str(err.value) and "--allow-unisolated-jobs" in str(err.value)
    executor._fill()  # no database touched: it returns before looking for queued procs
    assert "jobs refused" in executor.describe()["isolation"]


def test_exposed_files_names_what_others_may_read(tmp_path):
    key = tmp_path / "host.key"
    key.write_text("k")
    key.chmod(0o644)
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    state.chmod(0o755)
    warnings = exposed_files([key, state])
    assert len(warnings) == 2 and "chmod 600" in warnings[0] and "chmod 700" in warnings[1]
    key.chmod(0o600)
    state.chmod(0o700)
    assert exposed_files([key, state]) == []


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")
def test_the_probe_finds_a_working_sandbox_and_it_hides_the_host(tmp_path):
    iso, error = sandbox.probe(SandboxSettings())
    assert iso.refusal is None and iso.bwrap, error
    secret = tmp_path / "secret.txt"
    secret.write_text("s3cret")
    proc_dir = tmp_path / "proc"
    proc_dir.mkdir()
    sandbox.hand_over(proc_dir, iso)
    out = subprocess.run(command(iso, ["/bin/sh", "-c", f"cat {secret}; echo ok > mine.txt"], str(proc_dir)),
                         capture_output=True, text=True, cwd=proc_dir, timeout=30, **sandbox.account_kwargs(iso))
    assert "s3cret" not in out.stdout and "No such file" in out.stderr
    assert (proc_dir / "mine.txt").read_text() == "ok\n"
    if os.geteuid() == 0:
        assert (proc_dir / "mine.txt").stat().st_uid == iso.uid


def test_exec_problems_are_found_before_the_sandbox_starts(tmp_path):
    iso = Isolation(bwrap="/usr/bin/bwrap")
    script = tmp_path / "run.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o700)
    assert sandbox.exec_problem(iso, str(script)) is None
    script.write_text("#!/home/me/venv/bin/python\n")
    assert "interpreter '/home/me/venv/bin/python' is not available to jobs" in sandbox.exec_problem(iso, str(script))
    script.chmod(0o600)
    assert sandbox.exec_problem(iso, str(script)) == "Permission denied"
    assert sandbox.exec_problem(iso, str(tmp_path / "gone")) == "No such file or directory"
    assert sandbox.exec_problem(Isolation(), str(tmp_path / "gone")) is None  # no bwrap: Popen says it


def test_the_operator_accepts_unisolated_jobs_by_flag_config_or_environment(tmp_path):
    from pocketgrid.cli import build_parser
    from pocketgrid.config import PeerConfig

    argv = ["serve", "--allow-unisolated-jobs"]
    assert build_parser().parse_args(argv).allow_unisolated_jobs is True
    assert build_parser().parse_args(["serve"]).allow_unisolated_jobs is None  # the config decides
    defaults = PeerConfig.load(environ={})
    assert (defaults.allow_unisolated_jobs, defaults.job_user, defaults.job_network) == (False, "nobody", False)
    toml = tmp_path / "peer.toml"
    toml.write_text('[peer]\nallow_unisolated_jobs = true\njob_user = "pgjobs"\n')
    loaded = PeerConfig.load(toml, environ={"POCKETGRID_JOB_NETWORK": "yes"})
    assert (loaded.allow_unisolated_jobs, loaded.job_user, loaded.job_network) == (True, "pgjobs", True)


@pytest.mark.skipif(os.geteuid() != 0, reason="handing a directory to another account needs root")
def test_hand_over_gives_the_job_its_dir_but_no_link_to_the_peers_files(tmp_path):
    iso = Isolation(user="nobody", uid=65534, gid=65534)
    staged = tmp_path / "files" / "run.sh"
    staged.parent.mkdir()
    staged.write_text("#!/bin/sh\n")
    peer_secret = tmp_path / "secret.key"
    peer_secret.write_text("k")
    proc = tmp_path / "0"
    (proc / "sub").mkdir(parents=True)
    (proc / "in.txt").write_text("x")
    os.link(staged, proc / "run.sh")
    os.link(peer_secret, proc / "sub" / "stolen")  # as an earlier run of the job could have left
    (proc / "escape").symlink_to(tmp_path / "files")
    sandbox.hand_over(proc, iso, [str(staged)])
    for path in (proc, proc / "sub", proc / "in.txt", proc / "run.sh"):
        assert path.stat().st_uid == 65534, path
    assert peer_secret.stat().st_uid == 0 and (tmp_path / "files").stat().st_uid == 0
    assert os.lstat(proc / "escape").st_uid == 65534  # the link itself, not what it points to
