"""Shared helpers for the benchmarks: real peer processes on loopback, timing, output.

Peers are started exactly as an operator would start them::

    python -m pocketgrid.cli serve --name N --port P --state DIR --no-agent --threads 8 [--join URL]

(no EMA agent: the benchmark reports loads itself through the broker API, as
``tests/conftest.py`` does), waited for on ``/healthz`` with a deadline, and
stopped with SIGTERM (SIGKILL to the process group only if SIGTERM is not
honoured within the grace period).  Every wait here is bounded in time.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import requests

from pocketgrid.loopback import free_port, report_load, wait_until  # noqa: F401  (re-exported for the benchmarks)

ROOT = Path(__file__).resolve().parent.parent
MiB = 1024 * 1024
GiB = 1024 * MiB

#: An executable that exits at once, and the smallest submit file that runs it.
NOOP_SH = b"#!/bin/sh\nexit 0\n"
NOOP_SUB = "executable = x.sh\nqueue\n"


# ---- small utilities --------------------------------------------------------
def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100) of an already sorted sequence."""
    if not sorted_values:
        return math.nan
    if len(sorted_values) == 1:
        return sorted_values[0]
    k = (len(sorted_values) - 1) * q / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


def summarize_ms(seconds: Iterable[float], digits: int = 2) -> dict[str, Any]:
    """n, min, p50, p90, p99, max and mean of durations given in seconds, in milliseconds."""
    v = sorted(x * 1000.0 for x in seconds)
    if not v:
        return {"n": 0}
    r = lambda x: round(x, digits)  # noqa: E731
    return {
        "n": len(v),
        "min_ms": r(v[0]),
        "p50_ms": r(percentile(v, 50)),
        "p90_ms": r(percentile(v, 90)),
        "p99_ms": r(percentile(v, 99)),
        "max_ms": r(v[-1]),
        "mean_ms": r(sum(v) / len(v)),
    }


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {"cpus": os.cpu_count(), "python": sys.version.split()[0]}
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as fh:
            info["mem_gib"] = round(int(fh.readline().split()[1]) / 1024 / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    try:
        # Other work on the machine skews every number here: say how busy it was.
        info["loadavg_1_5_15"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    return info


def emit(benchmark: str, results: dict[str, Any], human: str) -> None:
    """Print the JSON summary, then one human line."""
    print(json.dumps({"benchmark": benchmark, "machine": machine_info(), **results}, indent=2))
    print(human, flush=True)


def common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", default=None,
                        help="where to create the peers' state directories (default: the system temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the state directories afterwards")
    parser.add_argument("--log-level", default="INFO", help="log level of the peers (their logs: STATE/peer.log)")


def write_random_file(path: Path, size: int, block: int = MiB) -> None:
    """``size`` bytes from os.urandom (incompressible, so nothing can cheat)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        left = size
        while left > 0:
            n = min(block, left)
            fh.write(os.urandom(n))
            left -= n


def write_probe(directory: Path, mib: int = 200) -> dict[str, Any]:
    """How fast this machine writes NEW data into the page cache right now (MB/s), then deletes it.

    On some VMs (e.g. with free-page reporting to the host) memory the guest has not touched
    recently costs a host fault per page: writes into fresh page-cache pages then run at a
    fraction of the speed of writes into recycled ones.  Staging writes fresh data, so this
    is context for the submit numbers.
    """
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "write-probe.bin"
    buf = os.urandom(MiB)
    os.sync()
    t0 = time.perf_counter()
    with open(path, "wb") as fh:
        for _ in range(mib):
            fh.write(buf)
    elapsed = time.perf_counter() - t0
    path.unlink()
    os.sync()
    return {"bytes": mib * MiB, "mb_per_s": round(mib * MiB / elapsed / 1e6)}


# ---- peers ------------------------------------------------------------------
class Peer:
    """One real peer: the front (the ``serve`` process) and its app (gunicorn master + one gthread worker)."""

    def __init__(self, name: str, state: Path, *, join: str | None = None, threads: int = 8,
                 log_level: str = "INFO", extra: Sequence[str] = ()) -> None:
        self.name = name
        self.state = state
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.join = join
        self.threads = threads
        self.log_level = log_level
        self.extra = list(extra)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def publish(self) -> Path:
        return self.state / "publish"

    @property
    def stage(self) -> Path:
        return self.state / "stage"

    @property
    def log_path(self) -> Path:
        return self.state / "peer.log"

    def command(self) -> list[str]:
        """Without ``--pki`` in ``extra`` the peer runs ``--insecure-http``: the job-path benchmarks
        (submit, status, goodput, failover, RSS) measure the job path itself, and their figures in
        benchmarks/README.md were taken that way; what TLS and authentication add is what
        ``auth_throughput`` measures (TLS peers, real logins)."""
        tls = "--pki" in self.extra
        cmd = [sys.executable, "-m", "pocketgrid.cli", "serve", "--name", self.name, "--port", str(self.port),
               "--state", str(self.state), "--no-agent", "--threads", str(self.threads),
               "--log-level", self.log_level, *self.extra, *([] if tls else ["--insecure-http"])]
        if self.join:
            cmd += ["--join", self.join]
        return cmd

    def start(self, timeout: float = 30.0) -> "Peer":
        self.state.mkdir(parents=True, exist_ok=True)
        self.publish.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=env, cwd=ROOT, start_new_session=True,
            )
        wait_until(self.healthy, timeout, interval=0.1, what=f"peer {self.name} to answer /healthz")
        return self

    def healthy(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"peer {self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
        return requests.get(f"{self.url}/healthz", timeout=2).ok

    def worker_pid(self) -> int | None:
        """The pid of the app's gunicorn worker (where requests are served), if psutil can tell."""
        if self.proc is None:
            return None
        try:
            import psutil
        except ImportError:
            return None
        try:
            masters = psutil.Process(self.proc.pid).children()  # the front's child: the app's gunicorn master
            workers = masters[0].children() if masters else []
        except psutil.Error:
            return None
        return workers[0].pid if workers else None

    def busy_children(self) -> int:
        """Processes the worker has started and not yet reaped (job runners, submit-file checkers)."""
        pid = self.worker_pid()
        if pid is None:
            return 0
        import psutil

        try:
            kids = psutil.Process(pid).children(recursive=True)
        except psutil.Error:
            return 0
        n = 0
        for k in kids:
            try:
                if k.status() != psutil.STATUS_ZOMBIE:
                    n += 1
            except psutil.Error:
                pass
        return n

    def wait_idle(self, timeout: float = 60.0) -> None:
        """Until the worker has no live child process (no job runner, no checker) left."""
        wait_until(lambda: self.busy_children() == 0, timeout, interval=0.05,
                   what=f"{self.name} to have no running job processes")

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self, timeout: float = 25.0) -> None:
        """SIGTERM (the front's graceful stop); SIGKILL the process group after ``timeout`` (the app dies with it)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)


class TlsPeer(Peer):
    """A peer with TLS (``--pki``), checked on /healthz against the site CA."""

    def __init__(self, name: str, state: Path, *, pki_dir: Path, admin: str, threads: int, log_level: str) -> None:
        super().__init__(name, state, threads=threads, log_level=log_level,
                         extra=["--pki", str(pki_dir), "--admin", admin])
        self.url = f"https://127.0.0.1:{self.port}"
        self.ca = str(pki_dir / "ca.pem")

    def healthy(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"peer {self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
        return requests.get(f"{self.url}/healthz", timeout=2, verify=self.ca).ok


class Cluster:
    """A set of peers in one temporary directory; a context manager that always stops them.

    The first peer started (no ``join``) holds the broker role.
    """

    def __init__(self, *, workdir: str | None = None, keep: bool = False, log_level: str = "INFO",
                 threads: int = 8) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="pocketgrid-bench-", dir=workdir))
        self.keep = keep
        self.log_level = log_level
        self.threads = threads
        self.peers: list[Peer] = []
        self._old_sigterm: Any = None

    def start(self, name: str, *, join: "Peer | None" = None, log_level: str | None = None) -> Peer:
        p = Peer(name, self.root / name, join=join.url if join else None, threads=self.threads,
                 log_level=log_level or self.log_level)
        self.peers.append(p)
        p.start()
        return p

    def wait_members(self, n: int, timeout: float = 30.0) -> None:
        """Until every peer sees ``n`` members (registration and the membership push are done)."""
        for p in self.peers:
            wait_until(lambda p=p: len(requests.get(f"{p.url}/api/v1/broker", timeout=2).json()["members"]) >= n,
                       timeout, interval=0.1, what=f"{p.name} to see {n} members")

    def __enter__(self) -> "Cluster":
        # A SIGTERM to the benchmark should still stop the peers (they run in their own sessions).
        def _term(signum, frame):  # pragma: no cover - signal path
            raise SystemExit(128 + signum)

        self._old_sigterm = signal.signal(signal.SIGTERM, _term)
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            for p in reversed(self.peers):
                p.stop()
        finally:
            signal.signal(signal.SIGTERM, self._old_sigterm or signal.SIG_DFL)
            if self.keep:
                print(f"kept state in {self.root}", file=sys.stderr)
            else:
                shutil.rmtree(self.root, ignore_errors=True)


def wait_job(base_url: str, job_id: str, timeout: float = 120.0,
             session: requests.Session | None = None) -> dict[str, Any]:
    """Long-poll a job until it reaches a final state (bounded by ``timeout``)."""
    s = session or requests.Session()
    deadline = time.monotonic() + timeout
    etag = None
    status: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        wait = max(0.0, min(10.0, deadline - time.monotonic()))
        headers = {"If-None-Match": etag} if etag else {}
        r = s.get(f"{base_url}/api/v1/jobs/{job_id}", params={"wait": wait} if etag else {},
                  headers=headers, timeout=wait + 30)
        if r.status_code != 304:
            r.raise_for_status()
            status, etag = r.json(), r.headers.get("ETag")
        if status and status["state"] in {"completed", "failed", "removed"}:
            return status
    raise TimeoutError(f"job {job_id} did not finish within {timeout} s (last: {status and status['state']})")
