"""Authenticated status polls per second with TLS on, against the same server's ``/healthz``.

One real peer (``pocketgrid serve --pki DIR --admin DN --no-agent``: gunicorn,
one gthread worker, TLS with the site CA) on a free loopback port.  A user
who is *not* an administrator (so the ACL is really consulted) logs in by
challenge-response (``Client.login``), submits the sample histogram job
(``pocketgrid/sample``, as ``pocketgrid demo`` does) and waits until it has
completed, so the status body no longer changes.

Before anything is measured the benchmark checks, with the CA verified, that
authentication is enforced on the status URL: no token and a token with a
forged signature get 401, the token gets 200, the token with
``If-None-Match`` gets 304.

A second peer, started with ``--insecure-http`` (no TLS, no authentication)
from the same code, runs the same kind of job: it separates the cost of TLS
from the cost of authentication + the status handler.  Both peers stay up;
only one is loaded at a time.

Then the load generator, on the same 2-core machine, runs closed-loop over
``--connections`` keep-alive connections for ``--seconds``:

* ``ceiling``            TLS ``GET /healthz``: unauthenticated, public route (the ceiling);
* ``auth_200``           TLS ``GET /api/v1/jobs/<id>`` with ``Authorization: Bearer <token>``: full JSON body;
* ``auth_304``           the same with ``If-None-Match: <ETag>``: what a phone sends while polling;
* ``insecure_ceiling``   ``GET /healthz`` on the ``--insecure-http`` peer;
* ``insecure_200``       ``GET /api/v1/jobs/<id>`` on the ``--insecure-http`` peer (no TLS, no token).

The five are interleaved, ``--runs`` times each (so drift of the machine hits
them alike), and the median req/s is reported with wrk's latency
percentiles (closed loop: latency at saturation, not an idle service time).
Every run checks that the generator saw no error and that the bytes per
response match the expected answer (a 401 instead of a 200 or a 304 would
show).  The generator is ``wrk`` (C, keep-alive, TLS; ``apt-get install -y
wrk``); it does not verify the server certificate, which the checks above
do.  Without wrk a weaker Python generator (one process per connection, each
a keep-alive requests Session verifying the CA) is used, and the output says
so.

The machine may be shared: before each run the benchmark waits (up to
``--quiet-timeout`` s) until processes other than ours use under 0.25 of a
core, and every run records the CPU used by the worker (cores, CPU
microseconds and context switches per request), the gunicorn master, the
generator and everything else ("foreign").

Diagnostics, once each: the status URL without a token under the same load
(every answer must be 401: what refusing costs), and ``ceiling``,
``auth_200`` and ``insecure_200`` over ONE connection (what concurrency
costs).

What limits it: an ``auth_200`` run with ``py-spy record --gil`` on the
worker (only the thread holding the GIL: the Python work, summed by
component and inclusively under the functions that matter: access check,
token verification, ACL decision, the status handler, SQLAlchemy,
jsonify...), and, if ``perf`` is installed (``apt-get install -y
linux-perf``), an ``auth_200`` run under ``perf record -g -e cpu-clock`` on
the worker: ALL its CPU by shared object (interpreter, kernel, OpenSSL,
SQLite...) with the kernel part split by what called it (futex waits and
wakes, TCP, epoll, file system).

Anchor: Clarens served 1,450 authenticated requests/s in 2005, without TLS.
Targets: ``auth_200`` at least 0.7 of the ceiling, and above 2 x 1,450 where
the ceiling allows it (judged only when the ceiling itself is above 2,900).

    python -m benchmarks.auth_throughput [--seconds 10] [--connections 8] [--threads 1] [--runs 3]
        [--server-threads 8] [--no-insecure] [--no-diagnostics] [--no-profile] [--generator auto|wrk|python]
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections import Counter
from importlib import resources as importlib_resources
from pathlib import Path
from typing import Any

import requests

from mobile_client import Client
from pocketgrid.http import Session  # keeps its own CA even when REQUESTS_CA_BUNDLE is set
from pocketgrid import pki
from pocketgrid.demo import make_sample_data

from .harness import Cluster, Peer, TlsPeer, common_arguments, emit, percentile
from .profiling import Recorder

CLARENS_RPS = 1450.0
TARGET_RATIO = 0.7
QUIET_CORES = 0.25
WRK_MARK = "WRKJSON "

#: wrk prints one JSON line at the end (latencies in microseconds).
WRK_LUA = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"duration_us": %d, "requests": %d, "bytes": %d, "connect_errors": %d, "read_errors": %d, ' ..
    '"write_errors": %d, "status_errors": %d, "timeouts": %d, "lat_mean_us": %.1f, "lat_stdev_us": %.1f, ' ..
    '"lat_max_us": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d}\n',
    summary.duration, summary.requests, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency.stdev, latency.max, latency:percentile(50), latency:percentile(90),
    latency:percentile(99)))
end
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.auth_throughput", description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=10.0, help="duration of each run (default 10)")
    p.add_argument("--connections", type=int, default=8, help="keep-alive connections of the generator (default 8)")
    p.add_argument("--threads", type=int, default=1,
                   help="load-generator threads (wrk -t; default 1: the other core is the server's)")
    p.add_argument("--runs", type=int, default=3, help="measured runs per request kind, interleaved (default 3)")
    p.add_argument("--server-threads", type=int, default=8, help="gunicorn threads of the peer (default 8)")
    p.add_argument("--inputs", type=int, default=6, help="inputs (procs) of the sample job (default 6, as the demo)")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of untimed load per kind first (default 2)")
    p.add_argument("--generator", choices=["auto", "wrk", "python"], default="auto",
                   help="wrk if installed (auto), or the weaker Python generator")
    p.add_argument("--quiet-timeout", type=float, default=60.0,
                   help="before each run, wait up to this long for other processes to leave the CPUs (default 60)")
    p.add_argument("--no-profile", action="store_true", help="skip the py-spy and perf runs")
    p.add_argument("--no-diagnostics", action="store_true", help="skip the 401 and one-connection runs")
    p.add_argument("--no-insecure", action="store_true", help="skip the --insecure-http peer")
    p.add_argument("--job-timeout", type=float, default=120.0)
    common_arguments(p)
    return p.parse_args(argv)


# ---- peers ----------------------------------------------------------------------
def sample_job(client: Client, peer: Peer, n_inputs: int, timeout: float) -> dict[str, Any]:
    """Submit the demo's histogram job and wait until it has completed and its runners are gone."""
    inputs = make_sample_data(peer.publish, n_inputs)
    sample = importlib_resources.files("pocketgrid") / "sample"
    job = client.submit("auth-throughput", sample.joinpath("histogram.py").read_bytes(), "histogram.sub", inputs,
                        executable_name="histogram.py", submit_text=sample.joinpath("histogram.sub").read_text())
    final = client.wait(job["id"], timeout=timeout, poll=5)
    if final["state"] != "completed":
        raise RuntimeError(f"job {job['id']} ended {final['state']}")
    peer.wait_idle()
    return final


# ---- CPU accounting ---------------------------------------------------------------
def _busy(t: Any) -> float:
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


class CpuMeter:
    """CPU of one peer's worker and master, of the other peers (idle meanwhile), of our reaped children
    (the generator) and of everyone else on the machine ("foreign")."""

    def __init__(self, peer: Peer, others: list[Peer] = ()) -> None:
        import psutil

        self.psutil = psutil
        self.master = psutil.Process(peer.proc.pid)
        wpid = peer.worker_pid()
        self.worker = psutil.Process(wpid) if wpid else None
        self.me = psutil.Process()
        self.others = []
        for o in others:
            self.others.append(psutil.Process(o.proc.pid))
            if o.worker_pid():
                self.others.append(psutil.Process(o.worker_pid()))

    def _cpu(self, p: Any) -> tuple[float, float]:
        if p is None:
            return 0.0, 0.0
        try:
            t = p.cpu_times()
            return t.user, t.system
        except self.psutil.Error:
            return 0.0, 0.0

    def _snap(self) -> dict[str, Any]:
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        try:
            ctx = self.worker.num_ctx_switches() if self.worker else None
        except self.psutil.Error:
            ctx = None
        return {"t": time.monotonic(), "worker": self._cpu(self.worker), "master": sum(self._cpu(self.master)),
                "me": sum(self._cpu(self.me)), "others": sum(sum(self._cpu(o)) for o in self.others),
                "children": ru.ru_utime + ru.ru_stime, "ctx": ctx, "machine": self.psutil.cpu_times()}

    def foreign(self, seconds: float = 1.0) -> float:
        """Cores used by processes other than the peers and this benchmark, over ``seconds``."""
        a = self._snap()
        time.sleep(seconds)
        b = self._snap()
        wall = b["t"] - a["t"]
        machine = _busy(b["machine"]) - _busy(a["machine"])
        ours = sum(b["worker"]) - sum(a["worker"]) + sum(b[k] - a[k] for k in ("master", "me", "others"))
        return max(0.0, machine - ours) / wall

    def wait_quiet(self, timeout: float) -> dict[str, Any]:
        """Until the foreign load stays under QUIET_CORES for 2 s in a row (or ``timeout``)."""
        t0 = time.monotonic()
        calm = 0
        last = 0.0
        while time.monotonic() - t0 < timeout:
            last = self.foreign(1.0)
            calm = calm + 1 if last < QUIET_CORES else 0
            if calm >= 2:
                return {"waited_s": round(time.monotonic() - t0, 1), "quiet": True}
        return {"waited_s": round(time.monotonic() - t0, 1), "quiet": False, "foreign_cores": round(last, 2)}

    def start(self) -> None:
        self._a = self._snap()

    def stop(self, requests_done: int) -> dict[str, Any]:
        b, a = self._snap(), self._a
        wall = b["t"] - a["t"]
        wu, ws = b["worker"][0] - a["worker"][0], b["worker"][1] - a["worker"][1]
        d = {k: b[k] - a[k] for k in ("master", "me", "others", "children")}
        machine = _busy(b["machine"]) - _busy(a["machine"])
        out = {
            "wall_s": round(wall, 2),
            # In cores: 1.0 = one core busy for the whole run.
            "worker_cores": round((wu + ws) / wall, 2),
            "worker_user_cores": round(wu / wall, 2),
            "worker_sys_cores": round(ws / wall, 2),
            "worker_cpu_us_per_request": round((wu + ws) / max(1, requests_done) * 1e6),
            "master_cores": round(d["master"] / wall, 2),
            "generator_cores": round((d["children"] + d["me"]) / wall, 2),
            "idle_peers_cores": round(d["others"] / wall, 2),
            "machine_busy_cores": round(machine / wall, 2),
            "foreign_cores": round(max(0.0, machine - wu - ws - sum(d.values())) / wall, 2),
        }
        if a["ctx"] and b["ctx"]:
            n = max(1, requests_done)
            out["worker_voluntary_ctx_per_request"] = round((b["ctx"].voluntary - a["ctx"].voluntary) / n, 2)
            out["worker_involuntary_ctx_per_request"] = round((b["ctx"].involuntary - a["ctx"].involuntary) / n, 2)
        return out


# ---- load generators ------------------------------------------------------------
def run_wrk(url: str, headers: dict[str, str], *, seconds: float, connections: int, threads: int,
            lua: Path) -> dict[str, Any]:
    cmd = ["wrk", "-t", str(min(threads, connections)), "-c", str(connections), "-d", f"{max(1, round(seconds))}s",
           "--timeout", "10s", "-s", str(lua)]
    for k, v in headers.items():
        cmd += ["-H", f"{k}: {v}"]
    cmd.append(url)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith(WRK_MARK)), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stdout[-2000:]} {proc.stderr[-2000:]}")
    w = json.loads(line[len(WRK_MARK):])
    dur = w["duration_us"] / 1e6
    return {
        "requests": w["requests"],
        "seconds": round(dur, 3),
        "rps": round(w["requests"] / dur, 1),
        "bytes_per_response": round(w["bytes"] / max(1, w["requests"]), 1),  # status line + headers + body
        "p50_ms": round(w["p50_us"] / 1000, 3),
        "p90_ms": round(w["p90_us"] / 1000, 3),
        "p99_ms": round(w["p99_us"] / 1000, 3),
        "max_ms": round(w["lat_max_us"] / 1000, 3),
        "mean_ms": round(w["lat_mean_us"] / 1000, 3),
        "errors": {k: w[k] for k in ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts")},
    }


def _py_worker(args: tuple[str, dict[str, str], float, str | bool]) -> tuple[int, int, list[float], Counter]:
    url, headers, seconds, verify = args
    s = Session(verify=verify)
    lat: list[float] = []
    codes: Counter = Counter()
    nbytes = 0
    s.get(url, headers=headers, timeout=10)  # connect (and handshake) outside the timed loop
    deadline = time.perf_counter() + seconds
    while True:
        t0 = time.perf_counter()
        if t0 >= deadline:
            break
        r = s.get(url, headers=headers, timeout=10)
        nbytes += len(r.content)
        lat.append(time.perf_counter() - t0)
        codes[r.status_code] += 1
    return len(lat), nbytes, lat, codes


def run_python(url: str, headers: dict[str, str], *, seconds: float, connections: int, verify: str | bool,
               expect: int) -> dict[str, Any]:
    """Fallback: one process per connection, each a keep-alive requests Session (far weaker than wrk)."""
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(connections) as pool:
        parts = pool.map(_py_worker, [(url, headers, seconds, verify)] * connections)
    n = sum(p[0] for p in parts)
    lat = sorted(x for p in parts for x in p[2])
    codes: Counter = Counter()
    for p in parts:
        codes.update(p[3])
    return {
        "requests": n,
        "seconds": round(seconds, 3),
        "rps": round(n / seconds, 1),
        "body_bytes_per_response": round(sum(p[1] for p in parts) / max(1, n), 1),
        "p50_ms": round(percentile(lat, 50) * 1000, 3),
        "p90_ms": round(percentile(lat, 90) * 1000, 3),
        "p99_ms": round(percentile(lat, 99) * 1000, 3),
        "max_ms": round(lat[-1] * 1000, 3) if lat else None,
        "errors": {"unexpected_status": sum(c for k, c in codes.items() if k != expect)},
        "codes": {str(k): v for k, v in codes.items()},
    }


class Generator:
    def __init__(self, kind: str, *, connections: int, threads: int, ca: str, tmp: Path) -> None:
        self.kind = kind
        self.connections = connections
        self.threads = threads
        self.ca = ca
        self.lua = tmp / "report.lua"
        self.lua.write_text(WRK_LUA)

    def describe(self, connections: int | None = None) -> str:
        c = connections or self.connections
        if self.kind == "wrk":
            return f"wrk -t {min(self.threads, c)} -c {c} (C, keep-alive, TLS without certificate check, closed loop)"
        return (f"Python fallback: {c} processes x 1 keep-alive requests Session (CA verified); much weaker "
                f"than wrk: on 2 cores the client may be the limit")

    def run(self, url: str, headers: dict[str, str], seconds: float, expect: int,
            connections: int | None = None) -> dict[str, Any]:
        c = connections or self.connections
        if self.kind == "wrk":
            return run_wrk(url, headers, seconds=seconds, connections=c, threads=self.threads, lua=self.lua)
        verify = self.ca if url.startswith("https:") else False
        return run_python(url, headers, seconds=seconds, connections=c, verify=verify, expect=expect)


def check_run(kind: str, r: dict[str, Any], expect_bytes: tuple[float, float]) -> None:
    """No error, and responses of the expected size (a 401 instead of a 200 or a 304 would show)."""
    errs = {k: v for k, v in r["errors"].items() if v}
    if errs:
        raise RuntimeError(f"{kind}: the load generator saw errors {errs}")
    size = r.get("bytes_per_response", r.get("body_bytes_per_response"))
    lo, hi = expect_bytes
    if not lo <= size <= hi:
        raise RuntimeError(f"{kind}: {size} bytes per response, expected {lo}..{hi}")


# ---- py-spy --gil -------------------------------------------------------------------
def py_spy_path() -> str | None:
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


#: Where a leaf frame's time goes, by the file it is in (first match wins).
COMPONENTS: list[tuple[str, str]] = [
    (r"(^|/)ssl\.py$", "ssl.py (Python side of TLS reads/writes)"),
    (r"(^|/)(socket|selectors)\.py$", "socket / selectors (poll, accept)"),
    (r"gunicorn/", "gunicorn (HTTP parsing, gthread loop, response writing)"),
    (r"werkzeug/", "Werkzeug (request/response objects, routing, headers)"),
    (r"flask/", "Flask (dispatch, app/request context, jsonify)"),
    (r"sqlalchemy/", "SQLAlchemy (ORM get, lazy load, result rows, JSON columns)"),
    (r"(^|/)(dataclasses|copy)\.py$", "dataclasses.asdict / deepcopy (ProcStatus.to_dict)"),
    (r"(^|/)json/", "json (stdlib)"),
    (r"jwt/", "PyJWT"),
    (r"cryptography/", "cryptography"),
    (r"(^|/)(threading|queue)\.py$|concurrent/futures", "thread handoff (threading, futures)"),
    (r"(^|/)logging/", "logging"),
    (r"^(peer|broker|pocketgrid|mobile_client|ema_agent)/", "pocketgrid's own code (self time)"),
]

#: Inclusive shares (label, frame pattern): a sample counts for every one of these its stack passes
#: through.  The indentation of the label shows what is inside what.
INCLUSIVE: list[tuple[str, str]] = [
    ("gunicorn main thread (poll, accept, hand connections to the pool)", r"^ThreadWorker\.run \(gunicorn/"),
    ("gunicorn per request: ThreadWorker.handle (pool thread)", r"^ThreadWorker\.handle \(gunicorn/workers/gthread\.py"),
    ("  read + parse the request (gunicorn/http)", r"\(gunicorn/http/(parser|message|unreader|body)\.py"),
    ("  build the WSGI environ (wsgi.create)", r"^create \(gunicorn/http/wsgi\.py"),
    ("  write the response (Response.write/close/send_headers)",
     r"^Response\.(write|close|send_headers|write_file|start_response) \(gunicorn/http/wsgi\.py"),
    ("  Flask.wsgi_app (everything inside Flask)", r"^Flask\.wsgi_app \(flask/app\.py"),
    ("    request context, routing (Werkzeug Request, Map.bind/match)",
     r"^(RequestContext\.(__init__|push|match_request)|Flask\.create_url_adapter|Flask\.request_context) \(flask/"),
    ("    before_request: check_access (authentication + ACL)", r"^check_access \(peer/access\.py"),
    ("      identity() -> _resolve", r"^_resolve \(peer/auth\.py"),
    ("        tls_client_certificate (getpeercert)", r"^tls_client_certificate \(pocketgrid/client_certificate\.py"),
    ("        TokenService.verify (cached: dict lookup, expiry, revocation)", r"^TokenService\.verify \(peer/tokens\.py"),
    ("        AclStore.is_admin", r"^AclStore\.is_admin \(peer/acl\.py"),
    ("      AclStore.decide (jobs-manage)", r"^AclStore\.decide \(peer/acl\.py"),
    ("    the status view (peer/api_jobs.status)", r"^status \(peer/api_jobs\.py"),
    ("      JobService.log_size (stat job.log)", r"^JobService\.log_size \(peer/jobs\.py"),
    ("      JobService.status", r"^JobService\.status \(peer/jobs\.py"),
    ("        JobService._job (ORM: the job row + its procs, 2 SELECTs)", r"^JobService\._job \(peer/jobs\.py"),
    ("        EventLogReader.update (unchanged log)", r"^EventLogReader\.update \(peer/event_log\.py"),
    ("        ProcStatus.to_dict (dataclasses.asdict)", r"^ProcStatus\.to_dict \(peer/event_log\.py"),
    ("      jsonify (JSON body)", r"^jsonify \(flask/"),
    ("    Flask response finalisation (process_response, headers)",
     r"^Flask\.(finalize_request|process_response|make_response) \(flask/"),
    ("any SQLAlchemy frame", r"\(sqlalchemy/"),
    ("any Werkzeug frame", r"\(werkzeug/"),
    ("any ssl.py frame (Python side of TLS)", r"\(ssl\.py:"),
    ("any logging / audit frame", r"\((logging/|peer/audit\.py)"),
]

_FRAME = re.compile(r"^(?P<func>.+?) \((?P<file>.+?):(?P<line>\d+)\)$")
_OWN = re.compile(r"^(peer|broker|pocketgrid|mobile_client|ema_agent)/")


def _short(file: str) -> str:
    """Paths as py-spy prints them for site-packages and the stdlib; ours relative to the repository."""
    if "site-packages/" in file:
        return file.split("site-packages/", 1)[1]
    m = re.search(r"/lib/python3\.\d+/(.*)$", file)
    if m:
        return m.group(1)
    root = str(Path(__file__).resolve().parent.parent) + "/"
    return file[len(root):] if file.startswith(root) else file


def analyse_py_spy(raw: Path, *, rate: int, seconds: float, requests_done: int, top: int = 15) -> dict[str, Any]:
    try:
        lines = raw.read_text().splitlines()
    except OSError as exc:
        return {"error": f"no py-spy output: {exc}"}
    total = 0
    comp: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    for line in lines:
        stack, _, n_text = line.rstrip().rpartition(" ")
        if not n_text.isdigit():
            continue
        n = int(n_text)
        frames = []
        for f in stack.split(";"):
            m = _FRAME.match(f)
            if m:
                frames.append((m.group("func"), _short(m.group("file")), m.group("line")))
        if not frames:
            continue
        total += n
        func, file, lineno = frames[-1]
        comp[next((name for pat, name in COMPONENTS if re.search(pat, file)), f"other: {file}")] += n
        leaf[f"{func} ({file}:{lineno})" if _OWN.match(file) else f"{func} ({file})"] += n
        texts = [f"{fn} ({fl}:{ln})" for fn, fl, ln in frames]
        for name, pat in INCLUSIVE:
            if any(re.search(pat, t) for t in texts):
                incl[name] += n
    if not total:
        return {"error": "py-spy recorded no samples"}
    share = lambda c: round(c / total, 3)  # noqa: E731
    return {
        "samples": total,
        # Share of the wall time during which some thread of the worker held the GIL.
        "gil_held_share": round(total / (rate * seconds), 2),
        "gil_us_per_request": round(total / rate / max(1, requests_done) * 1e6),
        "by_component": [{"share": share(c), "what": k} for k, c in comp.most_common()],
        "inclusive": [{"share": share(incl[name]), "what": name} for name, _ in INCLUSIVE],
        "top_leaf_functions": [{"share": share(c), "where": k} for k, c in leaf.most_common(top)],
    }


def format_py_spy(p: dict[str, Any]) -> str:
    if "error" in p:
        return f"py-spy: {p['error']}"
    out = [f"py-spy --gil on the worker during auth_200 ({p['rps_while_profiled']:.0f} req/s while sampled): "
           f"GIL held {100 * p['gil_held_share']:.0f}% of the time, {p['gil_us_per_request']} us per request; "
           f"shares of the GIL-held samples:",
           "  by component of the leaf frame (self time):"]
    out += [f"    {100 * x['share']:5.1f}%  {x['what']}" for x in p["by_component"] if x["share"] >= 0.01]
    out.append("  inclusive (the stack passes through):")
    out += [f"    {100 * x['share']:5.1f}%  {x['what']}" for x in p["inclusive"]]
    out.append("  top leaf functions:")
    out += [f"    {100 * x['share']:5.1f}%  {x['where']}" for x in p["top_leaf_functions"][:12]]
    return "\n".join(out)


# ---- perf (optional) ----------------------------------------------------------------
_PERF_FRAME = re.compile(r"^\s*[0-9a-f]+ (?P<sym>.+?) \((?P<dso>[^()]*)\)$")


def _perf_category(frames: list[tuple[str, str]]) -> str:
    sym, dso = frames[0]
    base = os.path.basename(dso)
    if dso == "[kernel.kallsyms]":
        syms = " ".join(s for s, d in frames if d == "[kernel.kallsyms]")
        if "futex" in syms:
            return "kernel: futex wait/wake (threads handing over the GIL, locks, the pool's queue)"
        if "epoll" in syms:
            return "kernel: epoll (gunicorn's poller)"
        if re.search(r"tcp_|inet_|sock_|__sys_(send|recv)|sendmsg|recvmsg|sendto|recvfrom", syms):
            return "kernel: TCP send/recv over loopback"
        if re.search(r"stat|openat|vfs_|fcntl|pread|pwrite|lseek", syms):
            return "kernel: file system calls (stat, SQLite's file access)"
        return "kernel: other (scheduling, interrupts, ...)"
    if "libpython" in base or re.fullmatch(r"python3?(\.\d+)?", base):
        return "Python interpreter (bytecode, objects, dicts, allocation)"
    if base.startswith(("libssl", "libcrypto")) or base.startswith("_ssl."):
        return "OpenSSL (TLS records: encrypt, decrypt, MAC)"
    if base.startswith("libsqlite3") or base.startswith("_sqlite3."):
        return "SQLite (C)"
    if "sqlalchemy" in dso:
        return "SQLAlchemy C extensions"
    if base.startswith("_json."):
        return "json C accelerator"
    if base.startswith("libc.") or base.startswith("libc-"):
        return "libc (malloc, memcpy, pthread)"
    return f"other: {base or sym}"


def analyse_perf(data: Path, requests_done: int) -> dict[str, Any]:
    proc = subprocess.run(["perf", "script", "-i", str(data), "-F", "ip,sym,dso"], capture_output=True,
                          text=True, timeout=300)
    if proc.returncode != 0:
        return {"error": f"perf script failed: {proc.stderr[-500:]}"}
    cats: Counter[str] = Counter()
    total = 0
    frames: list[tuple[str, str]] = []

    def flush() -> None:
        nonlocal total
        if frames:
            cats[_perf_category(frames)] += 1
            total += 1
        frames.clear()

    for line in proc.stdout.splitlines():
        if not line.strip():
            flush()
            continue
        m = _PERF_FRAME.match(line)
        if m:
            frames.append((m.group("sym"), m.group("dso")))
        else:  # a sample without call chain prints its frame on the same line as the header
            flush()
    flush()
    if not total:
        return {"error": "perf recorded no samples"}
    return {"samples": total,
            "by_category": [{"share": round(c / total, 3), "what": k} for k, c in cats.most_common()]}


def format_perf(p: dict[str, Any]) -> str:
    if "error" in p:
        return f"perf: {p['error']}"
    out = [f"perf record -g -e cpu-clock on the worker during auth_200 ({p['rps_while_profiled']:.0f} req/s while "
           f"sampled): all of the worker's CPU, {p['samples']} samples:"]
    out += [f"    {100 * x['share']:5.1f}%  {x['what']}" for x in p["by_category"] if x["share"] >= 0.005]
    return "\n".join(out)


# ---- checks ---------------------------------------------------------------------------
def check_auth(url: str, ca: str, token: str) -> dict[str, Any]:
    """The status URL refuses no token and a forged one (401); the token gets 200, then 304 with the ETag."""
    s = Session(verify=ca)
    out: dict[str, Any] = {}
    out["no_token"] = s.get(url, timeout=10).status_code
    head, payload, sig = token.split(".")
    forged = ".".join([head, payload, sig[:-4] + ("AAAA" if not sig.endswith("AAAA") else "BBBB")])
    out["forged_signature"] = s.get(url, headers={"Authorization": f"Bearer {forged}"}, timeout=10).status_code
    r = s.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
    out["token"] = r.status_code
    out["etag"] = r.headers.get("ETag")
    out["body_bytes"] = len(r.content)
    r = s.get(url, headers={"Authorization": f"Bearer {token}", "If-None-Match": out["etag"] or ""}, timeout=10)
    out["token_if_none_match"] = r.status_code
    expected = {"no_token": 401, "forged_signature": 401, "token": 200, "token_if_none_match": 304}
    wrong = {k: (out[k], v) for k, v in expected.items() if out[k] != v}
    if wrong:
        raise RuntimeError(f"authentication is not enforced as expected (got, wanted): {wrong}")
    return out


def response_bytes(url: str, verify: str | bool, headers: dict[str, str] | None = None) -> int:
    return len(requests.get(url, headers=headers or {}, timeout=10, verify=verify).content)


# ---- main ---------------------------------------------------------------------------------
#: label, peer ("tls" or "insecure"), what
KINDS: dict[str, tuple[str, str]] = {
    "ceiling": ("tls", "TLS: GET /healthz (unauthenticated: the ceiling)"),
    "auth_200": ("tls", "TLS: GET /api/v1/jobs/<id> + Bearer (200, full body)"),
    "auth_304": ("tls", "TLS: same + If-None-Match (304)"),
    "insecure_ceiling": ("insecure", "--insecure-http: GET /healthz"),
    "insecure_200": ("insecure", "--insecure-http: GET /api/v1/jobs/<id> (no TLS, no auth)"),
}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t_start = time.monotonic()
    kind = args.generator
    if kind == "auto":
        kind = "wrk" if shutil.which("wrk") else "python"
        if kind == "python":
            print("wrk not found (apt-get install -y wrk): using the weaker Python load generator", file=sys.stderr)
    elif kind == "wrk" and not shutil.which("wrk"):
        print("error: wrk is not installed (apt-get install -y wrk)", file=sys.stderr)
        return 2

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    results: dict[str, Any] = {
        "params": {"seconds": args.seconds, "connections": args.connections, "generator_threads": args.threads,
                   "runs": args.runs, "server_threads": args.server_threads, "inputs": args.inputs,
                   "generator": kind},
        "anchor": {"clarens_2005_rps": CLARENS_RPS, "note": "authenticated, no TLS"},
        "target": {"auth_over_ceiling": TARGET_RATIO, "auth_rps_over": 2 * CLARENS_RPS},
    }
    with Cluster(workdir=args.workdir, keep=args.keep, log_level=args.log_level,
                 threads=args.server_threads) as cluster:
        tmp = cluster.root
        pki_dir = tmp / "pki"
        ca = pki.init_ca(pki_dir, common_name="auth_throughput CA")
        ca_file = str(ca.cert_path)
        pki.issue_host(pki_dir, "site-a")
        admin = pki.issue_user(pki_dir, "Bench Admin", vo="bench")
        user = pki.issue_user(pki_dir, "Bench User", vo="bench")  # not an admin: the ACL is consulted
        gen = Generator(kind, connections=args.connections, threads=args.threads, ca=ca_file, tmp=tmp)
        results["generator"] = gen.describe()

        # ---- the TLS peer, a logged-in user, a completed job -------------------------
        a = TlsPeer("site-a", tmp / "site-a", pki_dir=pki_dir, admin=admin.subject, threads=args.server_threads,
                    log_level=args.log_level)
        cluster.peers.append(a)
        a.start()
        client = Client(a.url, ca=ca.cert_path)
        login = client.login(user.cert_path, user.key_path)
        token = login["token"]
        final = sample_job(client, a, args.inputs, args.job_timeout)
        job_url = f"{a.url}/api/v1/jobs/{final['id']}"
        auth = check_auth(job_url, ca_file, token)
        etag = auth["etag"]
        results["job"] = {"id": final["id"], "state": final["state"], "procs": len(final["inputs"]),
                          "status_body_bytes": auth["body_bytes"], "etag": etag, "user": login["dn"]}
        results["auth_check"] = {k: auth[k] for k in ("no_token", "forged_signature", "token", "token_if_none_match")}
        log(f"auth check on {job_url}: no token -> {auth['no_token']}, forged signature -> "
            f"{auth['forged_signature']}, token -> {auth['token']} ({auth['body_bytes']} B body), "
            f"token + If-None-Match -> {auth['token_if_none_match']}")

        # Bytes per response as wrk counts them (status line + headers + body); the Python generator counts bodies.
        slack = 400 if kind == "wrk" else 0
        health = response_bytes(f"{a.url}/healthz", ca_file)
        bearer = {"Authorization": f"Bearer {token}"}
        # kind -> (url, headers, expected status, (min, max) bytes per response)
        plan: dict[str, tuple[str, dict[str, str], int, tuple[int, int]]] = {
            "ceiling": (f"{a.url}/healthz", {}, 200, (health, health + slack)),
            "auth_200": (job_url, bearer, 200, (auth["body_bytes"], auth["body_bytes"] + slack)),
            "auth_304": (job_url, {**bearer, "If-None-Match": etag}, 304, (0, slack)),
        }

        # ---- the same peer software without TLS and without authentication ----------------
        b = None
        if not args.no_insecure:
            b = Peer("site-i", tmp / "site-i", threads=args.server_threads, log_level=args.log_level,
                     extra=["--insecure-http"])
            cluster.peers.append(b)
            b.start()
            final_b = sample_job(Client(b.url), b, args.inputs, args.job_timeout)
            url_b = f"{b.url}/api/v1/jobs/{final_b['id']}"
            body_b = response_bytes(url_b, False)
            health_b = response_bytes(f"{b.url}/healthz", False)
            plan["insecure_ceiling"] = (f"{b.url}/healthz", {}, 200, (health_b, health_b + slack))
            plan["insecure_200"] = (url_b, {}, 200, (body_b, body_b + slack))
            results["insecure_peer"] = {"job": final_b["id"], "status_body_bytes": body_b}
        meters = {"tls": CpuMeter(a, [b] if b else [])}
        if b is not None:
            meters["insecure"] = CpuMeter(b, [a])

        def measure(label: str, k: str, connections: int | None = None, *, headers: dict[str, str] | None = None,
                    expect_401: bool = False) -> dict[str, Any]:
            url, hdrs, expect, size = plan[k]
            hdrs = hdrs if headers is None else headers
            m = meters[KINDS[k][0]]
            quiet = m.wait_quiet(args.quiet_timeout)
            m.start()
            r = gen.run(url, hdrs, args.seconds, 401 if expect_401 else expect, connections)
            r["cpu"] = m.stop(r["requests"])
            r["quiet_wait"] = quiet
            r["loadavg_1"] = round(os.getloadavg()[0], 2)
            if expect_401:  # every response must be a refusal: wrk counts them as status errors
                if "status_errors" in r["errors"]:  # wrk: every status >= 400
                    refused = r["errors"].pop("status_errors")
                else:  # the Python generator counts codes
                    r["errors"].pop("unexpected_status", None)
                    refused = r["codes"].get("401", 0)
                if refused != r["requests"]:
                    raise RuntimeError(f"{label}: {refused} of {r['requests']} requests refused, expected all")
                r["refused_401"] = refused
                check_run(label, r, (0, 10_000))
            else:
                check_run(label, r, size)
            log(f"{label}: {r['rps']:.0f} req/s, p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms; worker "
                f"{r['cpu']['worker_cores']} cores ({r['cpu']['worker_cpu_us_per_request']} us/request), generator "
                f"{r['cpu']['generator_cores']}, foreign {r['cpu']['foreign_cores']}"
                + ("" if quiet["quiet"] else f" (machine NOT quiet after {quiet['waited_s']} s)"))
            return r

        for k, (url, headers, expect, _) in plan.items():  # warm-up: connections, caches, the readers
            gen.run(url, headers, args.warmup, expect)
        runs: dict[str, list[dict[str, Any]]] = {k: [] for k in plan}
        for i in range(args.runs):  # interleaved, so drift of the machine hits every kind alike
            for k in plan:
                runs[k].append(measure(f"run {i + 1}/{args.runs} {k}", k))
        summary: dict[str, Any] = {}
        for k, rs in runs.items():
            med = lambda f: round(statistics.median(f(r) for r in rs), 3)  # noqa: E731
            summary[k] = {
                "median_rps": med(lambda r: r["rps"]),
                "rps_runs": [r["rps"] for r in rs],
                "median_p50_ms": med(lambda r: r["p50_ms"]),
                "median_p99_ms": med(lambda r: r["p99_ms"]),
                "median_worker_cores": med(lambda r: r["cpu"]["worker_cores"]),
                "median_worker_cpu_us_per_request": med(lambda r: r["cpu"]["worker_cpu_us_per_request"]),
                "median_worker_voluntary_ctx_per_request":
                    med(lambda r: r["cpu"].get("worker_voluntary_ctx_per_request", 0)),
                "median_generator_cores": med(lambda r: r["cpu"]["generator_cores"]),
                "max_foreign_cores": max(r["cpu"]["foreign_cores"] for r in rs),
                "runs": rs,
            }
        results["measured"] = summary

        diag: dict[str, Any] = {}
        if not args.no_diagnostics:
            diag["no_token_401"] = measure("TLS: status without a token (401), all refused", "auth_200",
                                           headers={}, expect_401=True)
            for k in ("ceiling", "auth_200", "insecure_200"):
                if k in plan:
                    diag[f"{k}_1_connection"] = measure(f"{k}, 1 connection", k, 1)
        results["diagnostics"] = diag

        # ---- what limits it: py-spy --gil and perf on the worker during auth_200 --------
        prof: dict[str, Any] = {}
        if not args.no_profile:
            wpid = a.worker_pid()
            url, headers, _, _ = plan["auth_200"]
            exe = py_spy_path()
            if exe is None:
                prof["py_spy"] = {"error": "py-spy is not installed (.venv/bin/pip install py-spy)"}
            else:
                out = tmp / "py-spy-gil.txt"
                rate = 200
                rec = Recorder([exe, "record", "-p", str(wpid), "--gil", "--threads", "-r", str(rate), "-f", "raw",
                                "-o", str(out), "-d", str(int(args.seconds + 60))])
                time.sleep(1.5)  # let py-spy attach
                meters["tls"].wait_quiet(args.quiet_timeout)
                r = gen.run(url, headers, args.seconds, 200)
                err = rec.stop()
                p = analyse_py_spy(out, rate=rate, seconds=r["seconds"], requests_done=r["requests"])
                if "error" in p:
                    p["stderr"] = err[-1500:]
                p["rps_while_profiled"] = r["rps"]
                prof["py_spy"] = p
                log(f"py-spy --gil during auth_200: {r['rps']:.0f} req/s")
            if shutil.which("perf"):
                data = tmp / "perf.data"
                rec = Recorder(["perf", "record", "-g", "-e", "cpu-clock", "-F", "999", "-p", str(wpid),
                                "-o", str(data)])
                time.sleep(1.0)
                meters["tls"].wait_quiet(args.quiet_timeout)
                r = gen.run(url, headers, args.seconds, 200)
                err = rec.stop()
                p = analyse_perf(data, r["requests"]) if data.exists() else {"error": f"no perf data: {err[-800:]}"}
                p["rps_while_profiled"] = r["rps"]
                prof["perf"] = p
                log(f"perf during auth_200: {r['rps']:.0f} req/s")
            else:
                prof["perf"] = {"error": "perf is not installed (apt-get install -y linux-perf); skipped"}
        results["profile"] = prof
    results["wall_seconds"] = round(time.monotonic() - t_start, 1)

    # ---- summary ----------------------------------------------------------------------------
    ceil, a200, a304 = (summary[k]["median_rps"] for k in ("ceiling", "auth_200", "auth_304"))
    twice = 2 * CLARENS_RPS
    ratios = {
        "auth_200_over_ceiling": round(a200 / ceil, 3),
        "auth_304_over_ceiling": round(a304 / ceil, 3),
        "auth_200_over_clarens": round(a200 / CLARENS_RPS, 2),
        "auth_304_over_clarens": round(a304 / CLARENS_RPS, 2),
        "auth_200_over_2x_clarens": round(a200 / twice, 2),
        "auth_304_over_2x_clarens": round(a304 / twice, 2),
    }
    if "insecure_200" in summary:
        ratios["auth_200_over_insecure_200"] = round(a200 / summary["insecure_200"]["median_rps"], 3)
        ratios["ceiling_over_insecure_ceiling"] = round(ceil / summary["insecure_ceiling"]["median_rps"], 3)
    results["ratios"] = ratios
    results["meets_target"] = {
        "auth_200_at_least_0.7_of_ceiling": a200 >= TARGET_RATIO * ceil,
        "auth_304_at_least_0.7_of_ceiling": a304 >= TARGET_RATIO * ceil,
        # "Where the ceiling allows it": judged only when the ceiling itself is above 2 x Clarens.
        "auth_200_over_2x_clarens": (a200 > twice) if ceil > twice else "n/a: ceiling below 2 x Clarens",
        "auth_304_over_2x_clarens": (a304 > twice) if ceil > twice else "n/a: ceiling below 2 x Clarens",
    }

    lines = ["", f"{'':<66} {'req/s':>6} {'runs':>17} {'p50 ms':>7} {'p99 ms':>7} {'/ceil':>6} {'/1450':>6} "
                 f"{'/2900':>6} {'worker us/req':>13}"]

    def row(label: str, rps: float, runs_text: str, p50: float, p99: float, us: float) -> str:
        return (f"{label:<66} {rps:>6.0f} {runs_text:>17} {p50:>7.2f} {p99:>7.2f} {rps / ceil:>6.2f} "
                f"{rps / CLARENS_RPS:>6.2f} {rps / twice:>6.2f} {us:>13.0f}")

    for k, x in summary.items():
        lines.append(row(f"{KINDS[k][1]} [{args.connections} conn]", x["median_rps"],
                         ", ".join(f"{v:.0f}" for v in x["rps_runs"]), x["median_p50_ms"], x["median_p99_ms"],
                         x["median_worker_cpu_us_per_request"]))
    for k, x in diag.items():
        if k == "no_token_401":
            label = f"TLS: status without a token: 401 [{args.connections} conn]"
        else:
            label = f"{KINDS[k.replace('_1_connection', '')][1]} [1 conn]"
        lines.append(row(label, x["rps"], "(1 run)", x["p50_ms"], x["p99_ms"], x["cpu"]["worker_cpu_us_per_request"]))
    lines.append("worker CPU (cores, median): " + ", ".join(f"{k} {x['median_worker_cores']}" for k, x in summary.items())
                 + "; generator: " + ", ".join(f"{k} {x['median_generator_cores']}" for k, x in summary.items())
                 + "; foreign load, max: " + ", ".join(f"{k} {x['max_foreign_cores']}" for k, x in summary.items()))
    lines.append("worker voluntary context switches per request (median): "
                 + ", ".join(f"{k} {x['median_worker_voluntary_ctx_per_request']}" for k, x in summary.items()))
    if "py_spy" in prof:
        lines.append(format_py_spy(prof["py_spy"]))
    if "perf" in prof:
        lines.append(format_perf(prof["perf"]))
    log("\n".join(lines))

    human = (f"auth throughput ({gen.describe().split(' (')[0]}, TLS on): ceiling /healthz {ceil:.0f} req/s; "
             f"authenticated status 200 {a200:.0f} req/s ({a200 / ceil:.2f} of the ceiling, "
             f"{a200 / CLARENS_RPS:.2f}x Clarens), 304 {a304:.0f} req/s ({a304 / ceil:.2f}, {a304 / CLARENS_RPS:.2f}x)"
             + (f"; --insecure-http status {summary['insecure_200']['median_rps']:.0f} req/s, healthz "
                f"{summary['insecure_ceiling']['median_rps']:.0f}" if "insecure_200" in summary else "")
             + f" (target >= {TARGET_RATIO} of the ceiling: "
             f"{'MEETS' if results['meets_target']['auth_200_at_least_0.7_of_ceiling'] else 'MISSES'} for 200, "
             f"{'MEETS' if results['meets_target']['auth_304_at_least_0.7_of_ceiling'] else 'MISSES'} for 304; "
             f"> 2x Clarens: {results['meets_target']['auth_200_over_2x_clarens']} / "
             f"{results['meets_target']['auth_304_over_2x_clarens']})")
    emit("auth_throughput", results, human)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
