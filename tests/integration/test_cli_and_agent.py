"""The console script as a user runs it: demo, serve + agent, client commands."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import psutil
import pytest
import requests

from tests.conftest import ROOT, wait_until

pytestmark = pytest.mark.integration


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pocketgrid.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout)


def test_demo_runs_end_to_end_and_leaves_nothing_behind():
    out = run_cli("demo", timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "each verified by SHA-256" in out.stdout and "merged histogram of 6 inputs" in out.stdout
    assert "n=120000" in out.stdout
    state = out.stdout.split("state directory: ", 1)[1].split()[0]
    leftovers = [p for p in psutil.process_iter(["cmdline"]) if any(state in c for c in (p.info["cmdline"] or []))]
    assert leftovers == [] and not os.path.exists(state)


def test_standalone_agent_reports_to_the_broker(peers):
    broker = peers("site-a", extra=["--no-agent"])
    member = peers("site-b", join=broker.url, extra=["--no-agent"])
    agent = subprocess.Popen([sys.executable, "-m", "pocketgrid.cli", "agent", "--peer", member.url,
                              "--name", "site-b", "--interval", "0.5"], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def reported():
            load = requests.get(f"{broker.url}/api/v1/broker", timeout=2).json()["load"]
            return next((r for r in load if r["peer"] == "site-b"), None)
        row = wait_until(reported, what="site-b's agent report at the broker")
        assert row["coefficient"] >= 0 and row["metrics"]["cores"] >= 1 and row["url"] == member.url
    finally:
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(10) == 0


def test_client_commands(peers, tmp_path):
    p = peers("solo", extra=["--no-agent"])
    (p.publish / "runs").mkdir(parents=True)
    (p.publish / "runs" / "r1.txt").write_text("alpha\nbeta\n")
    (p.publish / "runs" / "r2.txt").write_text("gamma\n")
    exe = tmp_path / "lines.sh"
    exe.write_text("#!/bin/sh\nwc -l < \"$1\" > lines.txt\n")
    sub = tmp_path / "lines.sub"
    sub.write_text("executable = lines.sh\narguments = $(input)\nqueue\n")
    peer = ["--peer", p.url]
    out = run_cli("files", "--glob", "*.txt", *peer)
    assert out.returncode == 0 and "runs/r1.txt" in out.stdout and "runs/r2.txt" in out.stdout
    out = run_cli("files", "--grep", "beta", *peer)
    assert out.returncode == 0 and "runs/r1.txt:2: beta" in out.stdout
    out = run_cli("submit", "--name", "lines", "--executable", str(exe), "--submit-file", str(sub),
                  "runs/r1.txt", "runs/r2.txt", *peer)
    assert out.returncode == 0, out.stderr
    job_id = out.stdout.split()[0]
    assert job_id.startswith("solo.")
    out = run_cli("status", job_id, "--wait", *peer)
    assert out.returncode == 0 and "completed" in out.stdout
    out = run_cli("outputs", job_id, *peer)
    assert "0/lines.txt" in out.stdout and "1/lines.txt" in out.stdout
    out = run_cli("fetch", job_id, "-o", str(tmp_path / "res"), "--no-progress", *peer)
    assert out.returncode == 0 and out.stdout.count("verified") == 6  # lines.txt, _condor_stdout, _condor_stderr x 2
    assert (tmp_path / "res" / "0" / "lines.txt").read_text().strip() == "2"
    out = run_cli("status", "--system", *peer)
    assert "broker: solo (epoch 1)" in out.stdout
    out = run_cli("status", "solo.nope", *peer)
    assert out.returncode == 1 and "no such job" in out.stderr
    out = run_cli("submit", "--name", "x", "--executable", str(exe), "--submit-file", str(sub), "../etc/passwd", *peer)
    assert out.returncode == 1 and "'..' is not allowed" in out.stderr


def test_serve_refuses_bad_names_and_the_missing_condor_executor(tmp_path):
    out = run_cli("serve", "--name", "bad.name", "--state", str(tmp_path))
    assert out.returncode == 2 and "peer name" in out.stderr
    out = run_cli("serve", "--name", "ok", "--executor", "condor", "--state", str(tmp_path), "--insecure-http")
    assert out.returncode == 2 and "executor" in out.stderr
    out = run_cli("serve", "--name", "ok", "--state", str(tmp_path))  # no certificates, no --insecure-http
    assert out.returncode == 2 and "TLS is required" in out.stderr and "--pki" in out.stderr
