"""The console script as a user runs it: demo, serve + agent, client commands."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import psutil
import pytest
import requests

from tests.conftest import ROOT, host_session, wait_until

pytestmark = pytest.mark.integration


def run_cli(*args: str, timeout: float = 60, home=None) -> subprocess.CompletedProcess[str]:
    """Run ``pocketgrid ARGS``; ``home``: the directory its saved login lives in (POCKETGRID_HOME)."""
    env = {**os.environ, "POCKETGRID_HOME": str(home)} if home else None
    return subprocess.run([sys.executable, "-m", "pocketgrid.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout, env=env)


def test_demo_runs_end_to_end_and_leaves_nothing_behind():
    out = run_cli("demo", timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "each verified by SHA-256" in out.stdout and "merged histogram of 6 inputs" in out.stdout
    assert "n=120000" in out.stdout
    state = out.stdout.split("state directory: ", 1)[1].split()[0]
    leftovers = [p for p in psutil.process_iter(["cmdline"]) if any(state in c for c in (p.info["cmdline"] or []))]
    assert leftovers == [] and not os.path.exists(state)


def test_standalone_agent_reports_to_the_broker(peers, site_pki, tmp_path, own_condor_config):
    """Run as docs/operations.md says (no pool option): it asks the pool HTCondor's configuration names
    (this suite's: a collector where nothing listens), and its log says it sends host figures, and why."""
    broker = peers("site-a", extra=["--no-agent"], site_pki=site_pki)
    member = peers("site-b", join=broker.url, extra=["--no-agent"], site_pki=site_pki)
    log = tmp_path / "agent.log"
    agent = subprocess.Popen([sys.executable, "-m", "pocketgrid.cli", "agent", "--peer", member.url,
                              "--name", "site-b", "--interval", "0.5", "--pki", str(site_pki.root),
                              "--log-file", str(log)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    view = host_session(site_pki, "site-a")
    try:
        def reported():
            load = view.get(f"{broker.url}/api/v1/broker", timeout=2).json()["load"]
            return next((r for r in load if r["peer"] == "site-b"), None)
        row = wait_until(reported, what="site-b's agent report at the broker")
        assert row["coefficient"] >= 0 and row["metrics"]["cores"] >= 1 and row["url"] == member.url
        assert row["pool"] is None  # no collector answers here
        collector = own_condor_config.read_text().split("COLLECTOR_HOST = ")[1].split()[0]
        said = wait_until(lambda: log.exists() and "host figures only" in log.read_text() and log.read_text(),
                          what="the agent's log to say which figures it sends")
        assert f"the collector {collector} did not answer" in said
        first = row["metrics"]["sampled_at"]
        wait_until(lambda: (reported() or {}).get("metrics", {}).get("sampled_at", 0) > first + 1.0,
                   what="more reports")
        assert log.read_text().count("host figures only") == 1  # said once, not at every report
    finally:
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(10) == 0


def test_client_commands(peers, tmp_path, site_pki):
    p = peers("solo", extra=["--no-agent"], site_pki=site_pki)
    home = tmp_path / "home"
    alice = site_pki.users["alice"]
    out = run_cli("login", p.url, "--ca", site_pki.ca, "--cert", str(alice.cert_path), "--key", str(alice.key_path),
                  home=home)
    assert out.returncode == 0 and "logged in as CN=Alice" in out.stdout, out.stderr
    assert (home / "credentials.json").stat().st_mode & 0o777 == 0o600
    run = lambda *a: run_cli(*a, home=home)  # noqa: E731  (every command below: the saved login)
    (p.publish / "runs").mkdir(parents=True)
    (p.publish / "runs" / "r1.txt").write_text("alpha\nbeta\n")
    (p.publish / "runs" / "r2.txt").write_text("gamma\n")
    exe = tmp_path / "lines.sh"
    exe.write_text("#!/bin/sh\nwc -l < \"$1\" > lines.txt\n")
    sub = tmp_path / "lines.sub"
    sub.write_text("executable = lines.sh\narguments = $(input)\nqueue\n")
    peer = ["--peer", p.url]
    out = run("files", "--glob", "*.txt", *peer)
    assert out.returncode == 0 and "runs/r1.txt" in out.stdout and "runs/r2.txt" in out.stdout
    out = run("files", "--grep", "beta", *peer)
    assert out.returncode == 0 and "runs/r1.txt:2: beta" in out.stdout
    out = run("submit", "--name", "lines", "--executable", str(exe), "--submit-file", str(sub),
                  "runs/r1.txt", "runs/r2.txt", *peer)
    assert out.returncode == 0, out.stderr
    job_id = out.stdout.split()[0]
    assert job_id.startswith("solo.")
    out = run("status", job_id, "--wait", *peer)
    assert out.returncode == 0 and "completed" in out.stdout
    out = run("outputs", job_id, *peer)
    assert "0/lines.txt" in out.stdout and "1/lines.txt" in out.stdout
    out = run("fetch", job_id, "-o", str(tmp_path / "res"), "--no-progress", *peer)
    assert out.returncode == 0 and out.stdout.count("verified") == 6  # lines.txt, _condor_stdout, _condor_stderr x 2
    assert (tmp_path / "res" / job_id / "0" / "lines.txt").read_text().strip() == "2"  # DEST/<job-id>/<index>/
    out = run("status", "--system", *peer)
    assert "broker: solo (epoch 1)" in out.stdout
    out = run("status", "solo.nope", *peer)
    assert out.returncode == 1 and "no such job" in out.stderr
    out = run("submit", "--name", "x", "--executable", str(exe), "--submit-file", str(sub), "../etc/passwd", *peer)
    assert out.returncode == 1 and "'..' is not allowed" in out.stderr


def test_serve_refuses_bad_names_and_the_missing_condor_executor(tmp_path):
    out = run_cli("serve", "--name", "bad.name", "--state", str(tmp_path))
    assert out.returncode == 2 and "peer name" in out.stderr
    out = run_cli("serve", "--name", "ok", "--executor", "condor", "--state", str(tmp_path), "--insecure-http")
    assert out.returncode == 2 and "executor" in out.stderr
    out = run_cli("serve", "--name", "ok", "--state", str(tmp_path))  # no certificates, no --insecure-http
    assert out.returncode == 2 and "TLS is required" in out.stderr and "--pki" in out.stderr


def test_security_commands(peers, tmp_path, site_pki):
    """pki, login, whoami, pair (both sides), tokens, acl, audit, logout: as a person types them."""
    pki_dir = tmp_path / "pki"
    out = run_cli("pki", "init-ca", "--dir", str(pki_dir))
    assert out.returncode == 0 and (pki_dir / "ca.key").stat().st_mode & 0o777 == 0o600
    out = run_cli("pki", "show", str(pki_dir / "ca.pem"))
    assert out.returncode == 0 and "pocketgrid site CA" in out.stdout
    p = peers("solo", extra=["--no-agent"], site_pki=site_pki)
    laptop, phone, admin = tmp_path / "laptop", tmp_path / "phone", tmp_path / "admin"
    for home, user in ((laptop, "alice"), (admin, "carol")):
        issued = site_pki.users[user]
        out = run_cli("login", p.url, "--ca", site_pki.ca, "--cert", str(issued.cert_path),
                      "--key", str(issued.key_path), home=home)
        assert out.returncode == 0, out.stderr
    out = run_cli("whoami", home=laptop)
    assert out.returncode == 0 and "CN=Alice" in out.stdout and "jobs-submit" in out.stdout and "[admin]" not in out.stdout
    out = run_cli("pair", home=laptop)
    assert out.returncode == 0 and "pairing code:" in out.stdout
    code = out.stdout.split("pairing code: ", 1)[1].split()[0]
    out = run_cli("pair", p.url, "--code", code, "--device", "my phone", "--ca", site_pki.ca, home=phone)
    assert out.returncode == 0 and "device token" in out.stdout, out.stderr
    assert run_cli("whoami", home=phone).stdout.startswith("CN=Alice")
    out = run_cli("tokens", home=laptop)
    device_id = next(line.split()[0] for line in out.stdout.splitlines() if "my phone" in line)
    assert run_cli("tokens", "--revoke", device_id, home=laptop).returncode == 0
    out = run_cli("whoami", home=phone)
    assert out.returncode == 1 and "revoked" in out.stderr
    out = run_cli("acl", "list", home=laptop)  # alice is no administrator
    assert out.returncode == 1 and "HTTP 403" in out.stderr
    out = run_cli("acl", "deny", "files-read", "dn", site_pki.dn("alice"), home=admin)
    assert out.returncode == 0 and "added rule" in out.stdout
    rule_id = out.stdout.split("added rule ", 1)[1].split(":")[0]
    out = run_cli("files", home=laptop)
    assert out.returncode == 1 and "denied by ACL rule" in out.stderr
    assert run_cli("acl", "remove", rule_id, home=admin).returncode == 0
    assert run_cli("files", home=laptop).returncode == 0
    out = run_cli("audit", "--action", "acl-deny", home=admin)
    assert "CN=Carol Admin" in out.stdout and "127.0.0.1" in out.stdout
    assert run_cli("logout", home=laptop).returncode == 0
    out = run_cli("files", home=laptop)  # forgotten here, and refused
    assert out.returncode == 1 and f"not logged in to {p.url}" in out.stderr and "pocketgrid login" in out.stderr


def test_insecure_http_is_explicit_loud_and_open(peers):
    """The development mode: plain HTTP, no authentication, and the log says so."""
    p = peers("dev", extra=["--no-agent"])  # no --pki: the test harness adds --insecure-http
    health = requests.get(f"{p.url}/healthz", timeout=5).json()
    assert p.url.startswith("http://") and health["tls"] is False
    assert requests.get(f"{p.url}/api/v1/jobs", timeout=5).json()["jobs"] == []  # anyone, no token
    assert "INSECURE: plain HTTP and NO authentication" in p.log_tail(100_000)
