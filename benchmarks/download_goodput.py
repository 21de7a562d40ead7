"""Goodput of downloading a 1 GiB job output over loopback, and the cost of resuming near its end.

One real peer; a real job (one proc, ``head -c 1073741824 /dev/urandom > big.bin``)
makes the output.  Then, from the same server and the same URL
(``GET /api/v1/jobs/<id>/outputs/0/big.bin``), alternating:

(a) ``mobile_client.Client.fetch`` — the product's download: one streaming
    request, checkpoint (flush + fsync + JSON sidecar) every 1 MiB (the
    default), SHA-256 of every byte, verified against the listing at the end;
(b) ``curl -s -o FILE URL`` — plain HTTP, no fsync, no hash.

One warm-up run of each (the server caches the file's SHA-256 per
size+mtime, the page cache warms), then ``--runs`` (3) of each.  Each run
writes a fresh file on the same disk, which is deleted and ``sync``-ed before
the next run.  Goodput = file bytes / wall time (MB = 10^6 bytes).
Target: (a)/(b) >= 0.7.

(c) the cost of resuming at a large offset, server side: ``Range:
bytes=(1GiB-1MiB)-`` vs ``Range: bytes=0-(1MiB-1)`` (both 1 MiB), with and
without the ``If-Range`` the client sends, on a keep-alive session, ``--range-reps``
each, interleaved.  Target: flat (the server seeks; see peer/downloads.py).
Plus (d) an end-to-end resume with ``Client.fetch`` from a partial file of
1 GiB - 1 MiB: the client re-hashes what it already has before asking for
the rest.

(e) the client's peak RSS in a separate ``pocketgrid fetch`` process (see
benchmarks/client_rss.py); ``--no-rss`` skips it.

Skipped with a message when fewer than 5 GiB are free.  All 1 GiB files are
deleted afterwards.

    python -m benchmarks.download_goodput [--runs 3] [--size-mib 1024] [--no-rss]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests

from mobile_client import Client
from pocketgrid import transfer

from .bigfile import MIN_FREE_BYTES, BigOutput, free_bytes, make_big_output
from .client_rss import human_line as rss_human_line
from .client_rss import measure_fetch_rss
from .harness import ROOT, MiB, Cluster, common_arguments, emit, summarize_ms
from .profiling import breakdown, format_breakdown, py_spy_path, remove_quietly

TARGET_RATIO = 0.7


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.download_goodput", description=__doc__.splitlines()[0])
    p.add_argument("--size-mib", type=int, default=1024, help="output size in MiB (default 1024)")
    p.add_argument("--runs", type=int, default=3, help="measured downloads per method (default 3)")
    p.add_argument("--range-reps", type=int, default=30, help="requests per Range variant (default 30)")
    p.add_argument("--no-rss", action="store_true", help="skip the client peak-RSS measurement")
    p.add_argument("--no-resume", action="store_true", help="skip the end-to-end client resume")
    p.add_argument("--profile", choices=["auto", "always", "never"], default="auto",
                   help="one extra client download under py-spy, broken down by source line: when the "
                        "ratio misses the target (auto), always, never")
    p.add_argument("--job-timeout", type=float, default=300.0)
    common_arguments(p)
    return p.parse_args(argv)


def _clean(dest: Path) -> None:
    for p in (dest, dest.with_name(dest.name + ".part"), dest.with_name(dest.name + ".part.json")):
        p.unlink(missing_ok=True)
    os.sync()  # the next run must not pay for this run's write-back


def run_client(big: BigOutput, peer_url: str, dest: Path) -> float:
    client = Client(peer_url)
    t0 = time.perf_counter()
    res = client.fetch(big.job_id, big.index, big.name, dest)
    elapsed = time.perf_counter() - t0
    if res.size != big.size or res.sha256 != big.sha256:
        raise RuntimeError(f"client download mismatch: {res}")
    return elapsed


def run_curl(curl: str, url: str, dest: Path, size: int, timeout: float = 600.0) -> float:
    t0 = time.perf_counter()
    subprocess.run([curl, "-s", "-S", "-f", "-o", str(dest), url], check=True, timeout=timeout)
    elapsed = time.perf_counter() - t0
    if dest.stat().st_size != size:
        raise RuntimeError(f"curl got {dest.stat().st_size} bytes, expected {size}")
    return elapsed


def range_costs(url: str, size: int, reps: int) -> dict[str, Any]:
    """1 MiB at the start vs 1 MiB at the end, with and without If-Range; interleaved."""
    s = requests.Session()
    head = s.get(url, headers={"Range": "bytes=0-0"}, timeout=30)
    etag = head.headers.get("ETag")
    variants = {
        "start_0_to_1MiB": ({"Range": f"bytes=0-{MiB - 1}"}, 0),
        "end_last_1MiB": ({"Range": f"bytes={size - MiB}-"}, size - MiB),
    }
    if etag:
        variants["start_with_if_range"] = ({"Range": f"bytes=0-{MiB - 1}", "If-Range": etag}, 0)
        variants["end_with_if_range"] = ({"Range": f"bytes={size - MiB}-", "If-Range": etag}, size - MiB)
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(2):  # warm-up
        for headers, _start in variants.values():
            s.get(url, headers={**headers, "Accept-Encoding": "identity"}, timeout=60).content
    for _ in range(max(1, reps)):
        for name, (headers, start) in variants.items():
            t0 = time.perf_counter()
            r = s.get(url, headers={**headers, "Accept-Encoding": "identity"}, timeout=60)
            body = r.content
            times[name].append(time.perf_counter() - t0)
            if r.status_code != 206 or len(body) != MiB:
                raise RuntimeError(f"{name}: HTTP {r.status_code}, {len(body)} bytes (Content-Range "
                                   f"{r.headers.get('Content-Range')})")
            if not r.headers.get("Content-Range", "").startswith(f"bytes {start}-"):
                raise RuntimeError(f"{name}: unexpected Content-Range {r.headers.get('Content-Range')}")
    out: dict[str, Any] = {k: summarize_ms(v, 3) for k, v in times.items()}
    out["end_over_start_p50"] = round(out["end_last_1MiB"]["p50_ms"] / out["start_0_to_1MiB"]["p50_ms"], 2)
    if etag:
        out["end_over_start_p50_with_if_range"] = round(
            out["end_with_if_range"]["p50_ms"] / out["start_with_if_range"]["p50_ms"], 2)
    return out


def client_resume(big: BigOutput, peer_url: str, dest: Path, keep_bytes: int) -> dict[str, Any]:
    """``Client.fetch`` resuming from a partial file of ``keep_bytes`` left by an earlier attempt."""
    client = Client(peer_url)
    client.fetch(big.job_id, big.index, big.name, dest)  # a complete copy to cut down
    part = dest.with_name(dest.name + ".part")
    os.replace(dest, part)
    with open(part, "r+b") as fh:
        fh.truncate(keep_bytes)
    url = f"{client.base_url}/api/v1/jobs/{big.job_id}/outputs/{big.index}/{big.name}"
    etag = requests.get(url, headers={"Range": "bytes=0-0"}, timeout=30).headers.get("ETag")
    transfer._write_checkpoint(part, url, keep_bytes, etag)  # what an interrupted fetch leaves behind
    os.sync()
    t0 = time.perf_counter()
    res = client.fetch(big.job_id, big.index, big.name, dest)
    elapsed = time.perf_counter() - t0
    ok = res.size == big.size and res.sha256 == big.sha256
    return {"kept_bytes": keep_bytes, "resumed_from": res.resumed_from, "transferred": res.transferred,
            "verified": ok, "ms": round(elapsed * 1000, 1),
            "note": "includes re-hashing the kept bytes (the client's SHA-256 covers the whole file)"}


def profile_client(big: BigOutput, peer_url: str, dest_dir: Path, rate: int = 250) -> dict[str, Any]:
    """``pocketgrid fetch`` of the output under ``py-spy record --idle``: wall time per source line."""
    exe = py_spy_path()
    if exe is None:
        return {"skipped": "py-spy not installed: .venv/bin/pip install py-spy"}
    raw = dest_dir / "py-spy-fetch.txt"
    cmd = [exe, "record", "--idle", "-r", str(rate), "-f", "raw", "-o", str(raw), "--",
           sys.executable, "-m", "pocketgrid.cli", "fetch", big.job_id, f"{big.index}/{big.name}",
           "-o", str(dest_dir / "p"), "--peer", peer_url, "--no-progress"]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, timeout=600)
    elapsed = time.perf_counter() - t0
    try:
        if done.returncode != 0:
            return {"error": done.stderr.decode(errors="replace")[-500:]}
        b = breakdown(raw, "download (pocketgrid/transfer.py", rate=rate, requests_count=1)
        b["seconds_under_py_spy"] = round(elapsed, 2)
        return b
    finally:
        remove_quietly(raw)
        shutil.rmtree(dest_dir / "p", ignore_errors=True)
        os.sync()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    size = args.size_mib * MiB
    where = args.workdir or os.environ.get("TMPDIR", "/tmp")
    free = free_bytes(where)
    if free < MIN_FREE_BYTES:
        print(f"skipped: {free / 2**30:.1f} GiB free in {where}, need {MIN_FREE_BYTES / 2**30:.0f} GiB "
              f"(the output, one download at a time)")
        return 0
    curl = shutil.which("curl")
    if curl is None:
        print("skipped: curl is not installed (apt-get install curl)")
        return 0
    t_start = time.monotonic()
    results: dict[str, Any] = {
        "params": {"size_bytes": size, "runs": args.runs, "chunk_bytes": transfer.DEFAULT_CHUNK,
                   "disk_free_gib_before": round(free / 2**30, 1)},
        "target": {"client_over_curl": TARGET_RATIO, "range_end_over_start": "flat (~1)"},
    }
    with Cluster(workdir=args.workdir, keep=args.keep, log_level=args.log_level) as cluster:
        a = cluster.start("site-a")
        big = make_big_output(a, size, timeout=args.job_timeout)
        os.sync()  # the job's write-back must not slow the first download
        results["output"] = {"job_id": big.job_id, "url_path": big.url.split(a.url, 1)[1], "sha256": big.sha256,
                             "job_seconds": round(big.job_seconds, 1),
                             "first_listing_seconds": round(big.first_listing_seconds, 2)}
        dl = cluster.root / "downloads"
        dl.mkdir()
        dest_client, dest_curl = dl / "client.bin", dl / "curl.bin"
        try:
            warm = {"client_s": run_client(big, a.url, dest_client)}
            _clean(dest_client)
            warm["curl_s"] = run_curl(curl, big.url, dest_curl, size)
            _clean(dest_curl)
            times: dict[str, list[float]] = {"client": [], "curl": []}
            for _ in range(max(1, args.runs)):
                times["client"].append(run_client(big, a.url, dest_client))
                _clean(dest_client)
                times["curl"].append(run_curl(curl, big.url, dest_curl, size))
                _clean(dest_curl)
            goodput = {}
            for k, v in times.items():
                rates = [size / t / 1e6 for t in v]
                goodput[k] = {"seconds": [round(t, 2) for t in v], "mb_per_s": [round(r, 1) for r in rates],
                              "median_mb_per_s": round(statistics.median(rates), 1),
                              "warmup_mb_per_s": round(size / warm[f"{k}_s"] / 1e6, 1)}
            ratio = goodput["client"]["median_mb_per_s"] / goodput["curl"]["median_mb_per_s"]
            results["goodput"] = {**goodput, "client_over_curl": round(ratio, 2),
                                  "meets_target": ratio >= TARGET_RATIO}
            if args.profile == "always" or (args.profile == "auto" and ratio < TARGET_RATIO):
                results["client_profile"] = profile_client(big, a.url, dl)
            results["range"] = range_costs(big.url, size, args.range_reps)
            if not args.no_resume:
                try:
                    results["client_resume_at_end"] = client_resume(big, a.url, dest_client, size - MiB)
                finally:
                    _clean(dest_client)
            if not args.no_rss:
                results["client_rss"] = measure_fetch_rss(a.url, big.job_id, big.index, big.name, dl / "rss",
                                                          expected_size=size)
        finally:
            shutil.rmtree(dl, ignore_errors=True)
            big.path.unlink(missing_ok=True)
    results["wall_seconds"] = round(time.monotonic() - t_start, 1)

    g, r = results["goodput"], results["range"]
    human = (f"download goodput ({args.size_mib} MiB, loopback): Client.fetch {g['client']['median_mb_per_s']} MB/s, "
             f"curl {g['curl']['median_mb_per_s']} MB/s, ratio {g['client_over_curl']} "
             f"(target >= {TARGET_RATIO}: {'MEETS' if g['meets_target'] else 'MISSES'}); "
             f"1 MiB range at the end p50 {r['end_last_1MiB']['p50_ms']:.2f} ms vs at the start "
             f"{r['start_0_to_1MiB']['p50_ms']:.2f} ms (x{r['end_over_start_p50']})")
    if "client_resume_at_end" in results:
        human += f"; client resume of the last MiB {results['client_resume_at_end']['ms']:.0f} ms"
    emit("download_goodput", results, human)
    if "client_rss" in results:
        print(rss_human_line(results["client_rss"], size))
    prof = results.get("client_profile")
    if prof and "top" in prof:
        print(f"where the client's time goes (one pocketgrid fetch under py-spy, {prof['seconds_under_py_spy']} s):")
        print(format_breakdown(prof))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
