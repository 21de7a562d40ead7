"""The CLI as a person meets it: the real ``pocketgrid`` command against real TLS peers.

Each test runs the console script in a subprocess with its own ``POCKETGRID_HOME``
and checks what a person would read: which folder the outputs land in, what a
Ctrl-C says, what a down peer, a wrong CA or a missing login says, which peers
did not answer.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pocketgrid import pki
from tests.conftest import ROOT, PeerProcess, SitePki, free_port, secure_args, wait_until

pytestmark = pytest.mark.integration


class Cli:
    """``pocketgrid`` with one saved login (``home``), as a person types it."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.env = {**os.environ, "POCKETGRID_HOME": str(home), "PYTHONUNBUFFERED": "1"}

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "pocketgrid.cli", *args]

    def __call__(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.command(*args), capture_output=True, text=True, cwd=ROOT, timeout=timeout,
                              env=self.env)

    def start(self, *args: str, stdout: Path) -> subprocess.Popen[str]:
        out = open(stdout, "w")
        try:
            return subprocess.Popen(self.command(*args), stdout=out, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                                    env=self.env)
        finally:
            out.close()

    def login(self, peer_url: str, site_pki: SitePki, user: str = "alice") -> None:
        issued = site_pki.users[user]
        out = self("login", peer_url, "--ca", site_pki.ca, "--cert", str(issued.cert_path),
                   "--key", str(issued.key_path))
        assert out.returncode == 0, out.stderr


def submit(cli: Cli, tmp_path: Path, script: str, *inputs: str, name: str = "job") -> str:
    exe = tmp_path / f"{name}.sh"
    exe.write_text("#!/bin/sh\n" + script)
    sub = tmp_path / f"{name}.sub"
    sub.write_text(f"executable = {exe.name}\narguments = $(input)\nqueue\n")
    out = cli("submit", "--name", name, "--executable", str(exe), "--submit-file", str(sub), *inputs)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()[0]


def completed(cli: Cli, job_id: str) -> None:
    out = cli("status", job_id, "--wait", timeout=120)
    assert out.returncode == 0 and "completed" in out.stdout, out.stdout + out.stderr


def stderr_lines(out: subprocess.CompletedProcess[str] | str) -> list[str]:
    text = out if isinstance(out, str) else out.stderr
    return [line for line in text.splitlines() if line.strip()]


@pytest.fixture
def solo(peers, site_pki, tmp_path):
    """One TLS peer with two published inputs, and alice logged in to it."""
    p = peers("solo", extra=["--no-agent"], site_pki=site_pki)
    (p.publish / "a.txt").write_text("alpha\n")
    (p.publish / "b.txt").write_text("beta\n")
    cli = Cli(tmp_path / "home")
    cli.login(p.url, site_pki)
    return p, cli


def test_fetch_puts_each_job_in_its_own_folder_and_never_overwrites(solo, tmp_path):
    p, cli = solo
    first = submit(cli, tmp_path, 'echo "first $1" > out.txt\n', "a.txt", name="first")
    second = submit(cli, tmp_path, 'echo "second $1" > out.txt\n', "a.txt", name="second")
    completed(cli, first)
    completed(cli, second)
    res = tmp_path / "res"
    for job in (first, second):  # two jobs fetched into one folder
        out = cli("fetch", job, "-o", str(res), "--no-progress")
        assert out.returncode == 0, out.stderr
    assert (res / first / "0" / "out.txt").read_text() == "first a.txt\n"
    assert (res / second / "0" / "out.txt").read_text() == "second a.txt\n"

    out = cli("fetch", first, "-o", str(res), "--no-progress")  # again: nothing to send, all verified
    assert out.returncode == 0 and out.stdout.count("already here, verified") == 3, out.stdout  # + stdout, stderr

    mine = res / first / "0" / "out.txt"
    mine.write_text("my own notes\n")  # a different file where an output would go
    out = cli("fetch", first, "-o", str(res), "--no-progress")
    assert out.returncode == 1 and "already exists with other contents" in out.stderr and "--force" in out.stderr
    assert mine.read_text() == "my own notes\n"
    out = cli("fetch", first, "0/out.txt", "-o", str(res), "--no-progress")  # one file: the same rule
    assert out.returncode == 1 and "--force" in out.stderr and mine.read_text() == "my own notes\n"
    out = cli("fetch", first, "-o", str(res), "--no-progress", "--force")
    assert out.returncode == 0 and mine.read_text() == "first a.txt\n"

    here = tmp_path / "cwd"  # no -o: ./<job-id>/ in the current folder
    here.mkdir()
    out = subprocess.run(cli.command("fetch", second, "0/out.txt", "--no-progress"), capture_output=True, text=True,
                         cwd=here, env={**cli.env, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert out.returncode == 0, out.stderr
    assert (here / second / "0" / "out.txt").read_text() == "second a.txt\n"


def test_ctrl_c_in_fetch_says_how_to_resume_and_the_rerun_resumes(solo, tmp_path):
    p, cli = solo
    job = submit(cli, tmp_path, "head -c 6291456 /dev/urandom > big.bin\n", "a.txt", name="big")
    completed(cli, job)
    res = tmp_path / "res"
    part = res / job / "0" / "big.bin.part"
    proc = cli.start("fetch", job, "0/big.bin", "-o", str(res), "--no-progress", "--limit-rate", "1M",
                     "--chunk", "131072", stdout=tmp_path / "fetch.out")
    try:
        wait_until(lambda: part.exists() and part.stat().st_size >= 262144, 60, what="the first chunks to arrive")
        proc.send_signal(signal.SIGINT)
        err = proc.stderr.read()
        assert proc.wait(30) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert stderr_lines(err) == [
        "fetch interrupted: the partial download is kept (NAME.part); run the same command again to resume"]
    assert part.exists()

    out = cli("fetch", job, "0/big.bin", "-o", str(res), "--no-progress")
    assert out.returncode == 0, out.stderr
    resumed = int(re.search(r"resumed at byte (\d+)", out.stdout).group(1))
    assert resumed > 0
    listed = json.loads(cli("outputs", job, "--json").stdout)["outputs"][0]["files"]
    expected = next(f["sha256"] for f in listed if f["name"] == "big.bin")
    assert hashlib.sha256((res / job / "0" / "big.bin").read_bytes()).hexdigest() == expected
    assert not part.exists()


def test_ctrl_c_in_status_wait_says_the_job_goes_on(solo, tmp_path):
    p, cli = solo
    job = submit(cli, tmp_path, "sleep 60\n", "a.txt", name="slow")
    follow = tmp_path / "status.out"
    proc = cli.start("status", job, "--wait", stdout=follow)
    try:
        wait_until(lambda: job in follow.read_text(), 30, what="the first status line")
        proc.send_signal(signal.SIGINT)
        err = proc.stderr.read()
        assert proc.wait(30) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        cli("kill", job)
    assert "Traceback" not in err
    assert stderr_lines(err) == [f"stopped following {job}; the job goes on on the grid: run the same command "
                                 "again to continue following it"]


def test_a_down_peer_costs_no_retries_and_says_what_to_do(solo):
    p, cli = solo
    down = f"https://127.0.0.1:{free_port()}"
    out = cli("whoami", "--peer", f"{down},{p.url}")  # a failover list with a dead first peer
    assert out.returncode == 0 and out.stdout.startswith("CN=Alice"), out.stderr
    assert out.stderr == ""  # no urllib3 "WARNING: Retrying" lines
    out = cli("whoami", "--peer", down)
    assert out.returncode == 1
    assert stderr_lines(out) == [f"error: no peer answered: {down} (connection refused) — is it running? "
                                 "give another with --peer"]


def test_a_wrong_ca_or_host_name_is_named_in_one_line(peers, site_pki, tmp_path):
    pki.issue_host(site_pki.root, "narrow", sans=["127.0.0.1"])  # no "localhost" in its certificate
    p = peers("narrow", extra=["--no-agent"], site_pki=site_pki)
    other = SitePki(tmp_path / "other-site")
    cli = Cli(tmp_path / "home")
    out = cli("whoami", "--peer", p.url, "--ca", other.ca)
    assert out.returncode == 1
    [line] = stderr_lines(out)
    assert line.startswith(f"error: {p.url}: the peer's certificate is not signed by the CA in {other.ca}: "
                           "pass the site CA with --ca"), line
    out = cli("whoami", "--peer", f"https://localhost:{p.port}", "--ca", site_pki.ca)
    assert out.returncode == 1
    [line] = stderr_lines(out)
    assert "is not issued for 'localhost' (hostname mismatch)" in line and "HTTPSConnectionPool" not in line
    out = cli("whoami", "--peer", p.url, "--ca", str(tmp_path / "nope.pem"))
    assert out.returncode == 2 and "the CA file" in out.stderr and "does not exist" in out.stderr


def test_not_logged_in_and_a_revoked_token_say_how_to_log_in(solo, tmp_path):
    p, cli = solo
    stranger = Cli(tmp_path / "stranger")
    out = stranger("whoami", "--peer", p.url, "--ca", p.ca)
    assert out.returncode == 1
    [line] = stderr_lines(out)
    assert line.startswith(f"error: not logged in to {p.url}: run `pocketgrid login {p.url} --ca {p.ca} --cert")
    out = stranger("pair", "--peer", p.url, "--ca", p.ca)  # a code needs a login too
    assert out.returncode == 1 and stderr_lines(out)[0].startswith(f"error: not logged in to {p.url}: run")
    copy = Cli(tmp_path / "copy")
    copy.home.mkdir()
    (copy.home / "credentials.json").write_bytes((cli.home / "credentials.json").read_bytes())
    assert cli("logout").returncode == 0  # revokes the token the copy still holds
    out = copy("whoami")
    assert out.returncode == 1
    [line] = stderr_lines(out)
    assert line.startswith(f"error: not logged in to {p.url} (the token has been revoked") and "pocketgrid pair" in line


def test_status_names_the_peers_that_did_not_answer_and_shows_dead_members(peers, site_pki, tmp_path):
    hb = ["--heartbeat-interval", "0.3", "--heartbeat-misses", "3"]
    a = peers("site-a", extra=[*hb, "--agent-interval", "0.3"], site_pki=site_pki)
    b = peers("site-b", join=a.url, extra=[*hb, "--no-agent"], site_pki=site_pki)
    c = peers("site-c", join=a.url, extra=[*hb, "--no-agent"], site_pki=site_pki)
    cli = Cli(tmp_path / "home")
    cli.login(a.url, site_pki)
    wait_until(lambda: "site-c" in cli("status", "--system", "--peer", c.url).stdout, what="site-c in the membership")
    out = cli("status", "--system", "--peer", a.url)
    assert out.returncode == 0, out.stderr
    assert re.search(r"site-a\s+alive\s+\S+ s ago\s+\d+\.\d\d", out.stdout), out.stdout  # its agent's load

    b.stop()
    out = cli("status", "--peer", a.url)  # the job list
    assert out.returncode == 3
    assert stderr_lines(out) == ["warning: site-b did not answer: its jobs are not listed; run it again later "
                                 "(exit status 3: the list is partial)"]

    def dead_seen_through_c():
        out = cli("status", "--system", "--peer", c.url)  # asked through a member: the broker's view
        return out if re.search(r"site-b\s+DEAD\s", out.stdout) else None

    out = wait_until(dead_seen_through_c, 30, what="site-b shown dead")
    assert out.returncode == 0 and out.stdout.startswith("broker: site-a (epoch 1)")
    assert re.search(r"site-c\s+alive\s", out.stdout) and re.search(r"site-a\s+alive\s.*\blocal\b", out.stdout)


def test_files_says_which_peer_answered_and_that_areas_are_per_peer(peers, site_pki, tmp_path):
    p = peers("empty", extra=["--no-agent"], site_pki=site_pki)
    cli = Cli(tmp_path / "home")
    cli.login(p.url, site_pki)
    out = cli("files")
    assert out.returncode == 0
    assert out.stdout.strip() == f"the publishing area of empty ({p.url}) is empty; publishing areas are per peer"
    out = cli("files", "--glob", "*.dat")
    assert f"nothing matches '*.dat' in the publishing area of empty ({p.url})" in out.stdout
    (p.publish / "run1.txt").write_text("x\n")
    out = cli("files")
    assert out.stdout.splitlines()[0] == f"publishing area of empty ({p.url}):" and "run1.txt" in out.stdout


def test_pair_prints_a_phone_command_that_works_and_the_browser_address(solo, tmp_path):
    p, cli = solo
    out = cli("pair")
    assert out.returncode == 0, out.stderr
    phone_line = next(line for line in out.stdout.splitlines() if line.startswith("on the phone:"))
    assert f"--ca {p.ca}" in phone_line
    assert f"in a browser:  open {p.url}/ and type the code" in out.stdout
    command = shlex.split(phone_line.split(":", 1)[1])
    assert command[0] == "pocketgrid"
    phone = Cli(tmp_path / "phone")  # a device with no saved login: only what the line says
    out = phone(*command[1:])
    assert out.returncode == 0 and "device token" in out.stdout, out.stderr


def test_peers_of_one_account_do_not_share_a_gunicorn_control_socket(site_pki, tmp_path):
    home = tmp_path / "account"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"}
    env.update(HOME=str(home), PYTHONUNBUFFERED="1")
    started = []
    try:
        for name in ("twin-a", "twin-b"):
            peer = PeerProcess(name, tmp_path / name, free_port(), secure_args(site_pki, name, "--no-agent"), env)
            started.append(peer.start())
        assert all(peer.proc.poll() is None for peer in started)
        assert not (home / ".gunicorn").exists()  # gunicorn's per-account default: $HOME/.gunicorn/gunicorn.ctl
        assert not any("Control socket listening" in peer.log_tail(100_000) for peer in started)
    finally:
        for peer in started:
            peer.stop()


def test_a_failed_input_shows_the_last_lines_of_its_stderr(solo, tmp_path):
    p, cli = solo
    script = 'if [ "$1" = b.txt ]; then echo "reading $1" >&2; echo "ValueError: bad line 3" >&2; exit 1; fi\n'
    job = submit(cli, tmp_path, script, "a.txt", "b.txt", name="half")
    out = cli("status", job, "--wait", timeout=120)
    assert out.returncode == 1  # it did not complete
    last = out.stdout.split(f"{job} (half)")[-1].splitlines()  # the final status
    assert "  [0] a.txt: completed exit 0, on solo" in last  # with the site each input ran at
    at = last.index("  [1] b.txt: failed exit 1, on solo")
    assert last[at + 1:at + 4] == ["      last lines of _condor_stderr:", "        reading b.txt",
                                   "        ValueError: bad line 3"]


def test_the_saved_peer_order_follows_the_peer_that_answered(peers, site_pki, tmp_path):
    a = peers("site-a", extra=["--no-agent"], site_pki=site_pki)
    b = peers("site-b", join=a.url, extra=["--no-agent"], site_pki=site_pki)
    cli = Cli(tmp_path / "home")
    cli.login(f"{a.url},{b.url}", site_pki)

    def b_knows_a() -> bool:  # b checks a's tokens once the membership carries a's certificate
        out = cli("whoami", "--peer", b.url)
        return out.returncode == 0
    wait_until(b_knows_a, 30, what="site-b to accept site-a's tokens")
    saved = lambda: json.loads((cli.home / "credentials.json").read_text())["peers"]  # noqa: E731
    assert saved() == [a.url, b.url]
    a.stop()
    out = cli("whoami")  # the token (issued by a) is checked by b
    assert out.returncode == 0 and out.stderr == "", out.stderr
    assert saved() == [b.url, a.url]  # the next command asks b first


def test_a_submit_whose_answer_was_lost_is_not_made_twice_by_running_it_again(solo, tmp_path, monkeypatch, capsys):
    """The job was created but the answer never reached the person (Ctrl-C, a dropped link):
    running the same command again re-sends the same Idempotency-Key and gets the same job."""
    from mobile_client.client import Client
    from pocketgrid import cli as pg_cli

    p, cli = solo
    monkeypatch.setenv("POCKETGRID_HOME", str(cli.home))
    exe = tmp_path / "once.sh"
    exe.write_text("#!/bin/sh\necho once > out.txt\n")
    sub = tmp_path / "once.sub"
    sub.write_text(f"executable = {exe.name}\nqueue\n")
    command = ["submit", "--name", "once", "--executable", str(exe), "--submit-file", str(sub), "a.txt"]
    real_submit = Client.submit
    made: list[str] = []

    def answer_lost(self, *args, **kwargs):
        made.append(real_submit(self, *args, **kwargs)["id"])  # the peer made the job ...
        raise KeyboardInterrupt  # ... and the person pressed Ctrl-C before the answer was shown

    monkeypatch.setattr(Client, "submit", answer_lost)
    assert pg_cli.main(command) == 130
    assert "cannot create a second job" in capsys.readouterr().err
    monkeypatch.setattr(Client, "submit", real_submit)
    assert pg_cli.main(command) == 0  # the same command again
    out = capsys.readouterr()
    assert "re-sending an earlier submit" in out.err and out.out.split()[0] == made[0]
    listing = cli("status", "--json")
    assert [j["id"] for j in json.loads(listing.stdout) if j["name"] == "once"] == made
    assert pg_cli.main(command) == 0  # answered: the same command now on purpose makes a new job
    assert capsys.readouterr().out.split()[0] != made[0]
