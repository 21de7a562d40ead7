"""Peak RSS of the client while it downloads a 1 GiB output.

The download runs in its own process, exactly as a user runs it::

    python -m pocketgrid.cli fetch JOB 0/big.bin -o DIR --peer URL --no-progress

Its peak RSS is the kernel's high-water mark for that process image
(``VmHWM`` in /proc/PID/status), which a two-line wrapper around
``runpy.run_module("pocketgrid.cli")`` prints as the process exits, cross-checked
by polling VmHWM and psutil's RSS every 50 ms.  (``ru_maxrss`` from
``wait4``/``RUSAGE_CHILDREN`` is not used: on Linux it also counts the
image between fork and exec, i.e. the parent's RSS.)  For scale, the same for ``python -m pocketgrid.cli
--version`` (the interpreter plus the client's imports, no download).

Standalone, this starts one peer and runs a real job that writes the 1 GiB
output (/dev/urandom) first; ``benchmarks.download_goodput`` calls
:func:`measure_fetch_rss` on the output it already has.  Needs 5 GiB free.
Target: under 60 MB.

    python -m benchmarks.client_rss [--size-mib 1024]
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from .bigfile import MIN_FREE_BYTES, free_bytes, make_big_output
from .harness import MiB, ROOT, Cluster, common_arguments, emit

TARGET_MB = 60.0


#: Runs ``python -m pocketgrid.cli ARGS`` unchanged, then reports the process's own peak RSS
#: (VmHWM: the high-water mark of this process image since exec) on stderr as it exits.
_WRAPPER = (
    "import runpy, sys\n"
    "sys.argv = ['pocketgrid'] + sys.argv[1:]\n"
    "try:\n"
    "    runpy.run_module('pocketgrid.cli', run_name='__main__', alter_sys=True)\n"
    "finally:\n"
    "    for line in open('/proc/self/status'):\n"
    "        if line.startswith('VmHWM:'):\n"
    "            sys.stderr.write('\\n@@VmHWM ' + line.split()[1] + '\\n')\n"
)


def cli_command(args: list[str]) -> list[str]:
    """``python -m pocketgrid.cli ARGS`` inside the VmHWM-reporting wrapper."""
    return [sys.executable, "-c", _WRAPPER, *args]


def _vmhwm_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def _run_measured(cmd: list[str], *, timeout: float, sample_interval: float = 0.05) -> dict[str, Any]:
    """Run ``cmd``; return its exit code, wall time and peak RSS three ways.

    * ``vmhwm_mb``: VmHWM the process reported itself at exit (see ``_WRAPPER``): exact;
    * ``polled_vmhwm_mb``: VmHWM read from /proc every ``sample_interval`` (misses only the last interval);
    * ``sampled_peak_rss_mb``: the largest RSS psutil saw at those instants.

    Not ``ru_maxrss`` from wait4/RUSAGE_CHILDREN: on Linux it also counts the image the
    child had between fork and exec, i.e. the (larger) parent's RSS.
    """
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil is in the server extra
        psutil = None
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    peak = {"rss": 0, "samples": 0}
    done = threading.Event()

    def sample() -> None:
        if psutil is None:
            return
        try:
            p = psutil.Process(proc.pid)
        except psutil.Error:
            return
        while not done.is_set():
            try:
                peak["rss"] = max(peak["rss"], p.memory_info().rss)
                peak["samples"] += 1
            except psutil.Error:
                return
            hwm = _vmhwm_kib(proc.pid)
            if hwm is not None:
                peak["hwm"] = max(peak.get("hwm", 0), hwm)
            done.wait(sample_interval)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out_chunks: list[bytes] = []

    def drain(stream, sink: list[bytes]) -> None:
        for chunk in iter(lambda: stream.read(65536), b""):
            sink.append(chunk)

    err_chunks: list[bytes] = []
    drains = [threading.Thread(target=drain, args=(proc.stdout, out_chunks), daemon=True),
              threading.Thread(target=drain, args=(proc.stderr, err_chunks), daemon=True)]
    for t in drains:
        t.start()
    deadline = time.monotonic() + timeout
    status = None
    while time.monotonic() < deadline:
        pid, status, _ = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        time.sleep(0.02)
    else:
        proc.kill()
        _, status, _ = os.wait4(proc.pid, 0)
    wall = time.monotonic() - t0
    done.set()
    sampler.join(5)
    for t in drains:
        t.join(5)
    proc.returncode = os.waitstatus_to_exitcode(status) if status is not None else None  # reaped by wait4
    err = b"".join(err_chunks).decode(errors="replace")
    reported = [ln.split()[1] for ln in err.splitlines() if ln.startswith("@@VmHWM ")]
    return {
        "exit_code": proc.returncode,
        "seconds": round(wall, 2),
        "vmhwm_mb": round(int(reported[-1]) * 1024 / 1e6, 1) if reported else None,
        "polled_vmhwm_mb": round(peak["hwm"] * 1024 / 1e6, 1) if "hwm" in peak else None,
        "sampled_peak_rss_mb": round(peak["rss"] / 1e6, 1) if peak["samples"] else None,
        "samples": peak["samples"],
        "stderr_tail": "\n".join(ln for ln in err.splitlines() if not ln.startswith("@@VmHWM"))[-500:],
    }


def measure_fetch_rss(peer_url: str, job_id: str, index: int, name: str, dest_dir: Path, *,
                      expected_size: int | None = None, timeout: float = 600.0) -> dict[str, Any]:
    """Peak RSS of ``pocketgrid fetch`` downloading one output into ``dest_dir`` (deleted afterwards)."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    try:
        baseline = _run_measured(cli_command(["--version"]), timeout=60)
        fetch = _run_measured(
            cli_command(["fetch", job_id, f"{index}/{name}", "-o", str(dest_dir), "--peer", peer_url,
                         "--no-progress"]),
            timeout=timeout,
        )
        got = dest_dir / job_id / str(index) / name  # fetch writes DEST/<job-id>/<index>/<name>
        fetch["downloaded_bytes"] = got.stat().st_size if got.exists() else None
        if expected_size is not None and fetch["downloaded_bytes"] != expected_size:
            fetch["error"] = f"expected {expected_size} bytes, got {fetch['downloaded_bytes']}"
        if fetch["exit_code"] == 0:
            fetch.pop("stderr_tail", None)
        baseline.pop("stderr_tail", None)
        return {
            "command": f"python -m pocketgrid.cli fetch {job_id} {index}/{name} -o DIR --peer {peer_url} --no-progress",
            "fetch": fetch,
            "baseline_version_command": baseline,
            "target_mb": TARGET_MB,
            "meets_target": fetch["vmhwm_mb"] is not None and fetch["vmhwm_mb"] < TARGET_MB,
        }
    finally:
        shutil.rmtree(dest_dir, ignore_errors=True)


def human_line(r: dict[str, Any], size: int) -> str:
    f, b = r["fetch"], r["baseline_version_command"]
    return (f"client peak RSS while fetching {size / MiB:.0f} MiB: {f['vmhwm_mb']} MB (VmHWM; sampled RSS peak "
            f"{f['sampled_peak_rss_mb']} MB) in {f['seconds']} s; interpreter+imports alone {b['vmhwm_mb']} MB "
            f"| target < {TARGET_MB:.0f} MB -> {'MEETS' if r['meets_target'] else 'MISSES'}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.client_rss", description=__doc__.splitlines()[0])
    p.add_argument("--size-mib", type=int, default=1024, help="size of the output in MiB (default 1024)")
    p.add_argument("--job-timeout", type=float, default=300.0)
    common_arguments(p)
    args = p.parse_args(argv)
    size = args.size_mib * MiB
    where = args.workdir or os.environ.get("TMPDIR", "/tmp")
    free = free_bytes(where)
    if free < MIN_FREE_BYTES:
        print(f"skipped: {free / 2**30:.1f} GiB free in {where}, need {MIN_FREE_BYTES / 2**30:.0f} GiB")
        return 0
    t_start = time.monotonic()
    with Cluster(workdir=args.workdir, keep=args.keep, log_level=args.log_level) as cluster:
        a = cluster.start("site-a")
        big = make_big_output(a, size, timeout=args.job_timeout)
        try:
            r = measure_fetch_rss(a.url, big.job_id, big.index, big.name, cluster.root / "client-rss",
                                  expected_size=size)
        finally:
            big.path.unlink(missing_ok=True)
    r["wall_seconds"] = round(time.monotonic() - t_start, 1)
    r["params"] = {"size_bytes": size}
    emit("client_rss", r, human_line(r, size))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
