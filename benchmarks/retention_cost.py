"""What retention and quotas cost on a peer with many finished jobs.

Builds a peer's state (SQLite, the real Stager layout) with N finished jobs of
one user, each a staging directory of ``--files`` small files per input
(executable and submit file hard-linked into every input's directory, as
staging does), then times:

* ``usage``: one quota check's look at the user's bytes (peer/storage.py),
  what every submission and upload creation pays on the target: the first
  walks every file, later ones reuse the sizes of finished jobs;
* ``plan``: a dry-run sweep with nothing due (the sweeper's idle round);
* ``sweep``: a real sweep removing every job (rows, directories, digests).

    python -m benchmarks.retention_cost [--jobs 200,1000] [--inputs 4] [--files 5]
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from peer.app import build_services
from peer.models import Job
from pocketgrid.config import PeerConfig

OWNER = "CN=Bench,O=pocketgrid"


def build(root: Path, n_jobs: int, inputs: int, files: int) -> object:
    config = PeerConfig(name="bench", state_dir=str(root), insecure_http=True, agent=False, executor="local",
                        job_retention_seconds=86400.0)
    svc = build_services(config)
    finished = time.time() - 3600
    with svc.db.session() as s:
        for j in range(n_jobs):
            job_id = f"bench.{j:08x}"
            root_dir = svc.stager.job_root(job_id)
            meta = root_dir / ".pocketgrid" / "files"
            meta.mkdir(parents=True)
            (meta / "run.sh").write_bytes(b"#!/bin/sh\n" + b"x" * 1000)
            (meta / "job.sub").write_text("executable = run.sh\nqueue\n")
            for i in range(inputs):
                d = root_dir / str(i)
                d.mkdir()
                os.link(meta / "run.sh", d / "run.sh")
                os.link(meta / "job.sub", d / "job.sub")
                for f in range(files):
                    (d / f"out{f}.dat").write_bytes(b"y" * 1024)
            (root_dir / "job.log").write_text("")
            s.add(Job(id=job_id, name="b", owner=OWNER, executor="local", executable_name="run.sh",
                      submit_name="job.sub", submit_text="", input_names=[f"in{i}" for i in range(inputs)],
                      entry_peer="bench", origin_key=job_id, finished_at=finished))
    return svc


def timed(fn, repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", default="200,1000")
    ap.add_argument("--inputs", type=int, default=4)
    ap.add_argument("--files", type=int, default=5)
    args = ap.parse_args()
    print(f"{'jobs':>6} {'files':>7} {'1st usage ms':>13} {'usage ms':>9} {'idle plan ms':>13} {'sweep s':>8}")
    for n in (int(x) for x in args.jobs.split(",")):
        root = Path(tempfile.mkdtemp(prefix="pg-retention-"))
        try:
            svc = build(root, n, args.inputs, args.files)
            n_files = n * args.inputs * (args.files + 2)
            first = timed(lambda: svc.quotas.usage(OWNER), repeat=1)
            usage = timed(lambda: svc.quotas.usage(OWNER))
            plan = timed(lambda: svc.retention.sweep(dry_run=True))  # finished an hour ago: nothing due
            started = time.perf_counter()
            result = svc.retention.sweep(now=time.time() + 2 * 86400)
            sweep = time.perf_counter() - started
            assert len(result["remove"]) == n, result["keep"][:3]
            print(f"{n:>6} {n_files:>7} {first * 1000:>13.1f} {usage * 1000:>9.1f} {plan * 1000:>13.1f} {sweep:>8.2f}")
            svc.db.dispose()
        finally:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
