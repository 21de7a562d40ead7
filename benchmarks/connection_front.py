"""The peer with its front (peer/front/) under idle and slow connections: printed, never asserted.

    python -m benchmarks.connection_front [--fixture DIR] [--seconds 8] [--runs 2] [--baseline-tree DIR]
        [--held idle,longpoll]

One real peer (``pocketgrid serve --pki ... --threads 32 --no-agent``: the front and the app) on the state of
benchmarks/connection_model/fixture.py (a logged-in non-admin user, a completed job, its ETag).  Measured
twice, each time with wrk (8 keep-alive TLS connections, 1 thread, the Lua reporter of
benchmarks/auth_throughput.py) and with 5 new TLS connections one after another:

* **base**: nothing else held open;
* **held idle** (``--held idle``): 1,000 idle keep-alive TLS connections (one ``GET /healthz`` each, then
  silence: phones between polls) and 100 slow-body connections (``POST /api/v1/auth/login``,
  ``Content-Length: 1000``, 3 bytes, then silence: the attack of issue 10 §2) held by
  benchmarks/connection_model/holders.py in other processes.  The slow bodies are answered 408 after
  ``front_body_timeout`` and re-opened by the holder at once, so 100 of them are always open;
* **held long-polls** (``--held longpoll``): 1,000 waiting status long-polls (the fixture user's
  ``GET /api/v1/jobs/<id>?wait=60`` with the job's ETag: nothing changes, each waits its whole minute in the
  front, peer/front/waits.py, and is asked again when answered 304) and the same 100 slow bodies.  The
  peer runs with ``front_max_waits_per_user = 2000`` here: all of them are one user's.

For each: ``/healthz`` req/s and p50/p99 latency, authenticated status polls per second (``Authorization:
Bearer`` + ``If-None-Match``: 304, the phone's usual poll; and without ``If-None-Match``: 200 with the body),
the CPU of the front, the app's master and its worker during each run, their memory, and the machine's
load average and the CPU other processes used just before (the machine is shared).

All holders connect from 127.0.0.1, so the peer runs with ``front_max_connections_per_address = 0`` (no
per-address limit) here.  ``--baseline-tree DIR`` measures the same *base* runs against another source tree
(e.g. a checkout of the commit before the front) for comparison: loads are not held against it, because
the peer before the front stops answering under them (benchmarks/connection_model/README.md).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import requests

from .auth_throughput import WRK_LUA
from .connection_model import run as cm
from .connection_model import servers
from .connection_model.fixture import build, load
from .harness import ROOT

#: Clarens' authenticated requests per second (the paper's reference; docs/benchmarks in benchmarks/README.md).
CLARENS_RPS = 1450
HELD = {"idle": [("idle", 1000), ("slow_body", 100)],
        "longpoll": [("longpoll", 1000), ("slow_body", 100)]}
HELD_LABEL = {"idle": "1000 idle + 100 slow bodies held", "longpoll": "1000 waiting long-polls + 100 slow bodies held"}


class Peer(servers.Running):
    """The product: the front (the ``serve`` process), the app's gunicorn master, its worker."""

    def roles(self) -> dict[int, str]:
        out: dict[int, str] = {}
        root = self.procs[0].pid
        for pid in self.pids():
            try:
                parent = psutil.Process(pid).ppid()
            except psutil.Error:
                continue
            if self.name == "baseline":  # before the front: the serve process is gunicorn's master
                out[pid] = "gunicorn-master" if pid == root else "gunicorn-worker"
            else:
                out[pid] = "front" if pid == root else ("app-master" if parent == root else "app-worker")
        return out


def start_peer(fx: dict[str, Any], work: Path, tree: Path | None = None) -> Peer:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "POCKETGRID_FRONT_MAX_CONNECTIONS_PER_ADDRESS": "0",
           "POCKETGRID_FRONT_MAX_WAITS_PER_USER": "2000", "POCKETGRID_FRONT_MAX_WAITS_PER_ADDRESS": "0"}
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    log = work / f"peer-{'baseline' if tree else 'front'}.log"
    cmd = [sys.executable, "-m", "pocketgrid.cli", "serve", "--name", fx["name"], "--port", str(fx["port"]),
           "--state", fx["state"], "--pki", fx["pki"], "--admin", fx["admin_dn"], "--no-agent", "--threads", "32",
           "--log-level", "WARNING"]
    with open(log, "ab") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=tree or ROOT, env=env, start_new_session=True)
    peer = Peer("baseline" if tree else "front", f"https://127.0.0.1:{fx['port']}", procs=[proc], tmp=work)
    servers._wait_ready(peer.url, fx["ca"], peer.procs)
    return peer


def measure(peer: Peer, fx: dict[str, Any], seconds: float, lua: Path) -> dict[str, Any]:
    bearer = {"Authorization": f"Bearer {fx['token']}"}
    job = f"{peer.url}/api/v1/jobs/{fx['job']}"
    out: dict[str, Any] = {"memory": cm.memory(peer), "fresh": cm.fresh(peer.url, fx["ca"])}
    out["healthz"] = cm.wrk(peer, f"{peer.url}/healthz", {}, seconds, lua)
    out["auth_304"] = cm.wrk(peer, job, {**bearer, "If-None-Match": fx["etag"]}, seconds, lua)
    out["auth_200"] = cm.wrk(peer, job, bearer, seconds, lua)
    return out


def held(peer: Peer, fx_root: Path, fx: dict[str, Any], seconds: float, lua: Path, work: Path,
         ramp: float, kinds: list[tuple[str, int]]) -> dict[str, Any]:
    procs, files, status = cm.hold(peer, fx_root, kinds, ramp + 3 * seconds + 90, work, ramp)
    try:
        m = measure(peer, fx, seconds, lua)
        m["holders_at_start"] = status
        m["front_waits"] = requests.get(f"{peer.url}/healthz", verify=fx["ca"], timeout=10).json().get("front_waits")
        m["holders_at_end"] = {k: json.loads(f.read_text()) for (k, _), f in zip(kinds, files) if f.exists()}
    finally:
        for pr in procs:
            pr.send_signal(signal.SIGTERM)
        for pr in procs:
            try:
                pr.wait(15)
            except subprocess.TimeoutExpired:
                pr.kill()
                pr.wait()
    return m


def _row(label: str, m: dict[str, Any]) -> str:
    def cell(k: str) -> str:
        r = m.get(k) or {}
        if not r.get("rps"):
            return "no answer" if k in m else "-"
        return f"{r['rps']:,.0f} / {r.get('p50_ms', 0):.1f} / {r.get('p99_ms', 0):.1f}"

    cpu = m.get("auth_304", {}).get("cpu_cores", {})
    fresh = m.get("fresh", {})
    foreign = m.get("healthz", {}).get("foreign_cores_before")
    return (f"| {label} | {fresh.get('ok', 0)}/{fresh.get('tried', 0)} {fresh.get('p50_ms') or '-'} | {cell('healthz')} | "
            f"{cell('auth_304')} | {cell('auth_200')} | "
            f"{', '.join(f'{k} {v:.2f}' for k, v in sorted(cpu.items()))} | "
            f"{sum(v['uss_mib'] for v in m.get('memory', {}).values()):.0f} | "
            f"{m.get('load_avg', ['?'])[0]} / {foreign} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fixture", type=Path, help="a fixture directory (built there if missing; default: a temp dir)")
    p.add_argument("--seconds", type=float, default=8.0, help="each wrk run (default 8)")
    p.add_argument("--runs", type=int, default=2, help="base/held rounds, interleaved (default 2)")
    p.add_argument("--ramp", type=float, default=60.0, help="longest wait for the held load to be in place")
    p.add_argument("--quiet-timeout", type=float, default=30.0,
                   help="before each wrk run, wait up to this long for other processes to use < 0.3 cores")
    p.add_argument("--baseline-tree", type=Path, help="also measure base runs of this source tree's peer")
    p.add_argument("--held", default="idle,longpoll",
                   help="the held loads, each measured after the base run: idle, longpoll (default both)")
    p.add_argument("--out", type=Path, help="append the results as JSON lines")
    args = p.parse_args(argv)
    cm.QUIET_TIMEOUT[0] = args.quiet_timeout
    work = Path(tempfile.mkdtemp(prefix="front-bench-"))
    fx_root = args.fixture or work / "fixture"
    fx = load(fx_root) if (fx_root / "fixture.json").exists() else build(fx_root)
    lua = work / "report.lua"
    lua.write_text(WRK_LUA)
    rows: list[tuple[str, dict[str, Any]]] = []
    for run in range(args.runs):
        if args.baseline_tree:
            peer = start_peer(fx, work, args.baseline_tree)
            try:
                requests.get(f"{peer.url}/healthz", verify=fx["ca"], timeout=5)
                rows.append((f"before the front, base (run {run + 1})", {**measure(peer, fx, args.seconds, lua),
                                                                         "load_avg": cm.loadavg()}))
            finally:
                peer.stop()
        peer = start_peer(fx, work)
        try:
            requests.get(f"{peer.url}/healthz", verify=fx["ca"], timeout=5)
            rows.append((f"front, base (run {run + 1})", {**measure(peer, fx, args.seconds, lua),
                                                          "load_avg": cm.loadavg()}))
            print(f"  {rows[-1][0]}: {json.dumps(rows[-1][1])}", file=sys.stderr, flush=True)
            for load_name in [h for h in args.held.split(",") if h]:
                m = held(peer, fx_root, fx, args.seconds, lua, work, args.ramp, HELD[load_name])
                rows.append((f"front, {HELD_LABEL[load_name]} (run {run + 1})", {**m, "load_avg": cm.loadavg()}))
                print(f"  {rows[-1][0]}: {json.dumps(rows[-1][1])}", file=sys.stderr, flush=True)
        finally:
            peer.stop()
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"\n`uptime` at the end: {uptime}; CPUs: {os.cpu_count()}")
    print("Cells: req/s / p50 ms / p99 ms (wrk -t 1 -c 8, TLS keep-alive).  Target: more than 2 x Clarens' "
          f"{CLARENS_RPS:,} authenticated req/s = {2 * CLARENS_RPS:,}/s.\n")
    print("| run | new TLS conn /healthz (ok/tried, p50 ms) | /healthz | auth poll 304 | auth poll 200 | "
          "CPU cores during the 304 run | USS MiB (all server processes) | load avg 1 min / other procs' cores |")
    print("|---|---|---|---|---|---|---|---|")
    for label, m in rows:
        print(_row(label, m))
        if "holders_at_end" in m:
            ends = {k: {"up": s.get("up"), **s.get("counts", {})} for k, s in m["holders_at_end"].items()}
            waits = f", long-polls held by the front: {m['front_waits']}" if m.get("front_waits") else ""
            print(f"|  held at the end: {json.dumps(ends)}{waits} | | | | | | | |")
    if args.out:
        with open(args.out, "a") as fh:
            for label, m in rows:
                fh.write(json.dumps({"run": label, **m}) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
