"""Measure the candidate connection models under idle, slow and waiting connections (printed, not asserted).

    python -m benchmarks.connection_model.run --fixture DIR [--candidates a,b,...] [--loads a,b,...]
        [--seconds 4] [--out results.jsonl]

For each candidate server (servers.py) on the fixture's state (fixture.py): first without extra load, then
with each load held open by holders.py (in a separate process), it measures

* ``fresh``: 5 sequential NEW TLS connections, each ``GET /healthz`` with a 3 s deadline (what a phone that
  connects now sees: answered or not, and how fast);
* ``healthz``: wrk, 8 keep-alive TLS connections, 1 thread, ``--seconds``: req/s and p50/p99 (closed loop);
* ``auth_304``: the same for the fixture user's status poll with ``Authorization: Bearer`` and
  ``If-None-Match`` (the phone's usual poll); ``auth_200`` (full body) without load only;
* CPU of each server process during each wrk run (cores), resident memory of each server process, and the
  machine's load average.

Loads (held for the whole measurement; ``+`` joins loads held at the same time):
``idle1000`` 1000 keep-alive TLS connections idle after one request; ``idlehs1000`` 1000 TLS connections idle
right after the handshake; ``slowhs100`` 100 half-sent ClientHellos; ``slowbody100`` 100 login POSTs with 3 of
1000 announced body bytes; ``longpoll1000`` 1000 status long-polls (?wait=60, nothing changes);
``longpoll1000+slowbody100`` both at once (the benchmark issue 10 asks for).
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

from ..auth_throughput import WRK_LUA, run_wrk
from ..harness import ROOT
from . import servers
from .fixture import load

LOADS: dict[str, list[tuple[str, int]]] = {
    "idle1000": [("idle", 1000)],
    "idlehs1000": [("idle_handshake", 1000)],
    "slowhs100": [("slow_handshake", 100)],
    "slowbody100": [("slow_body", 100)],
    "longpoll1000": [("longpoll", 1000)],
    "longpoll1000+slowbody100": [("longpoll", 1000), ("slow_body", 100)],
}


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def memory(run: servers.Running) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pid, role in run.roles().items():
        try:
            p = psutil.Process(pid)
            mi = p.memory_full_info()
            out.setdefault(role, {"rss_mib": 0.0, "uss_mib": 0.0, "threads": 0})
            out[role]["rss_mib"] = round(out[role]["rss_mib"] + mi.rss / 2**20, 1)
            out[role]["uss_mib"] = round(out[role]["uss_mib"] + mi.uss / 2**20, 1)
            out[role]["threads"] += p.num_threads()
        except psutil.Error:
            pass
    return out


def total_uss(mem: dict[str, Any]) -> float:
    return sum(v["uss_mib"] for v in mem.values())


class Cpu:
    def __init__(self, run: servers.Running) -> None:
        self.procs = {pid: (role, psutil.Process(pid)) for pid, role in run.roles().items()}

    def snap(self) -> dict[int, float]:
        out = {}
        for pid, (_, p) in self.procs.items():
            try:
                t = p.cpu_times()
                out[pid] = t.user + t.system
            except psutil.Error:
                out[pid] = 0.0
        return out

    def cores(self, a: dict[int, float], b: dict[int, float], wall: float) -> dict[str, float]:
        out: dict[str, float] = {}
        for pid, (role, _) in self.procs.items():
            out[role] = round(out.get(role, 0.0) + (b.get(pid, 0.0) - a.get(pid, 0.0)) / wall, 2)
        return out


def fresh(url: str, ca: str, n: int = 5, timeout: float = 3.0) -> dict[str, Any]:
    lat, errors = [], {}
    for _ in range(n):
        t0 = time.perf_counter()
        try:
            r = requests.get(f"{url}/healthz", verify=ca, timeout=timeout, headers={"Connection": "close"})
            if r.ok:
                lat.append((time.perf_counter() - t0) * 1000)
            else:
                errors[str(r.status_code)] = errors.get(str(r.status_code), 0) + 1
        except requests.RequestException as exc:
            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
            if sum(errors.values()) >= 3 and not lat:
                break
    lat.sort()
    return {"ok": len(lat), "tried": len(lat) + sum(errors.values()), "errors": errors,
            "p50_ms": round(lat[len(lat) // 2], 1) if lat else None, "max_ms": round(lat[-1], 1) if lat else None}


#: Processes of this benchmark (holders) whose CPU is ours, not "foreign".
HOLDER_PIDS: list[int] = []


def _busy() -> float:
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


def _ours(run: servers.Running) -> float:
    total = 0.0
    for pid in run.pids() + HOLDER_PIDS + [os.getpid()]:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def wait_quiet(run: servers.Running, limit: float = 0.3, timeout: float = 20.0) -> float:
    """Until processes other than the server, the holders and this driver use under ``limit`` cores for 1 s
    (or ``timeout``): the machine is shared.  Returns the last foreign load seen (cores)."""
    t0 = time.monotonic()
    foreign = 0.0
    while time.monotonic() - t0 < timeout:
        a, oa, w = _busy(), _ours(run), time.monotonic()
        time.sleep(1.0)
        foreign = max(0.0, (_busy() - a) - (_ours(run) - oa)) / (time.monotonic() - w)
        if foreign < limit:
            break
    return round(foreign, 2)


#: How long each wrk run waits for the machine to be quiet (--quiet-timeout).
QUIET_TIMEOUT = [20.0]


def wrk(run: servers.Running, url: str, headers: dict[str, str], seconds: float, lua: Path) -> dict[str, Any]:
    foreign = wait_quiet(run, timeout=QUIET_TIMEOUT[0])
    cpu = Cpu(run)
    a, t0 = cpu.snap(), time.monotonic()
    try:
        r = run_wrk(url, headers, seconds=seconds, connections=8, threads=1, lua=lua)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        r = {"rps": 0.0, "failed": str(exc)[:300]}
    b = cpu.snap()
    r["cpu_cores"] = cpu.cores(a, b, time.monotonic() - t0)
    r["load"] = loadavg()
    r["foreign_cores_before"] = foreign
    return {k: r[k] for k in ("rps", "p50_ms", "p99_ms", "max_ms", "errors", "bytes_per_response", "cpu_cores",
                              "load", "foreign_cores_before", "failed") if k in r}


def measure(run: servers.Running, fx: dict[str, Any], seconds: float, lua: Path, *, full: bool) -> dict[str, Any]:
    bearer = {"Authorization": f"Bearer {fx['token']}"}
    job = f"{run.url}/api/v1/jobs/{fx['job']}"
    out: dict[str, Any] = {"load_avg": loadavg(), "memory": memory(run), "fresh": fresh(run.url, fx["ca"])}
    out["healthz"] = wrk(run, f"{run.url}/healthz", {}, seconds, lua)
    out["auth_304"] = wrk(run, job, {**bearer, "If-None-Match": fx["etag"]}, seconds, lua)
    if full:
        out["auth_200"] = wrk(run, job, bearer, seconds, lua)
    return out


def hold(run: servers.Running, fx_root: Path, kinds: list[tuple[str, int]], seconds: float, tmp: Path,
         ramp: float) -> tuple[list[subprocess.Popen], list[Path], dict[str, Any]]:
    procs, files = [], []
    for i, (kind, n) in enumerate(kinds):
        f = tmp / f"holder-{i}.json"
        f.unlink(missing_ok=True)
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "benchmarks.connection_model.holders", "--fixture", str(fx_root), "--url", run.url,
             "--kind", kind, "--n", str(n), "--seconds", str(seconds), "--status-file", str(f)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True))
        files.append(f)
    HOLDER_PIDS[:] = [pr.pid for pr in procs]
    t0 = time.monotonic()
    status: dict[str, Any] = {}
    while time.monotonic() - t0 < ramp:
        time.sleep(1)
        status = {}
        done = True
        for (kind, n), f in zip(kinds, files):
            try:
                s = json.loads(f.read_text())
            except (OSError, ValueError):
                s = {"up": 0}
            status[kind] = s
            done &= s["up"] >= n * 0.98
        if done:
            break
    status["ramp_s"] = round(time.monotonic() - t0, 1)
    return procs, files, status


def recover(run: servers.Running, ca: str, timeout: float = 60) -> float | None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            if requests.get(f"{run.url}/healthz", verify=ca, timeout=2).ok:
                return round(time.monotonic() - t0, 1)
        except requests.RequestException:
            pass
        time.sleep(0.5)
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fixture", type=Path, required=True)
    p.add_argument("--candidates", default=",".join(servers.CANDIDATES))
    p.add_argument("--loads", default=",".join(LOADS))
    p.add_argument("--seconds", type=float, default=4.0, help="each wrk run (default 4)")
    p.add_argument("--ramp", type=float, default=25.0, help="longest wait for a load to be in place (default 25)")
    p.add_argument("--out", type=Path, default=None, help="append one JSON line per candidate here")
    p.add_argument("--log-level", default="INFO")
    p.add_argument("--keep", action="store_true", help="keep the servers' logs (the work directory) afterwards")
    p.add_argument("--quiet-timeout", type=float, default=20.0,
                   help="before each wrk run, wait up to this long for other processes to use < 0.3 cores")
    args = p.parse_args(argv)
    QUIET_TIMEOUT[0] = args.quiet_timeout
    fx = load(args.fixture)
    work = Path(tempfile.mkdtemp(prefix="cm-run-"))
    lua = work / "report.lua"
    lua.write_text(WRK_LUA)
    for name in args.candidates.split(","):
        result: dict[str, Any] = {"candidate": name, "started": time.strftime("%H:%M:%S"), "loads": {}}
        print(f"== {name}", file=sys.stderr, flush=True)
        run = servers.start(name, fx, work, log_level=args.log_level)
        try:
            time.sleep(1)
            requests.get(f"{run.url}/healthz", verify=fx["ca"], timeout=5)
            result["base"] = measure(run, fx, args.seconds, lua, full=True)
            result["base"]["memory_after_warmup"] = memory(run)  # the reference for what a load adds
            print(f"   base: {json.dumps(result['base'])}", file=sys.stderr, flush=True)
            for load_name in [x for x in args.loads.split(",") if x]:
                kinds = LOADS[load_name]
                hold_s = args.ramp + 4 * args.seconds + 30
                procs, files, status = hold(run, args.fixture, kinds, hold_s, work, args.ramp)
                try:
                    m = measure(run, fx, args.seconds, lua, full=False)
                    m["holders_at_start"] = status
                    m["holders_at_end"] = {k: json.loads(f.read_text()) for (k, _), f in zip(kinds, files)
                                           if f.exists()}
                    m["memory_added_uss_mib"] = round(total_uss(m["memory"]) - total_uss(
                        result["base"].get("memory_after_warmup", result["base"]["memory"])), 1)
                finally:
                    for pr in procs:
                        pr.send_signal(signal.SIGTERM)
                    for pr in procs:
                        try:
                            pr.wait(15)
                        except subprocess.TimeoutExpired:
                            pr.kill()
                            pr.wait()
                m["recovered_after_s"] = recover(run, fx["ca"])
                result["loads"][load_name] = m
                print(f"   {load_name}: {json.dumps(m)}", file=sys.stderr, flush=True)
                time.sleep(2)
        finally:
            run.stop()
        line = json.dumps(result)
        print(line, flush=True)
        if args.out:
            with open(args.out, "a") as fh:
                fh.write(line + "\n")
    if args.keep:
        print(f"server logs kept in {work}", file=sys.stderr)
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
