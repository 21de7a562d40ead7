"""What a Prometheus scrape of ``/metrics`` costs on a peer with many jobs (peer/metrics.py).

Builds a peer's state (SQLite, the real staging layout, real HTCondor user logs written by
``EventLogWriter``) with N jobs of ``--inputs`` procs each, half of them finished (every proc
terminated) and half running, then times the exposition of the peer's registry (what ``GET /metrics``
does after the access check):

* ``first``: the first scrape, which reads every job's event log through the job service's status path;
* ``warm``: the next scrapes (finished jobs are remembered; running ones are status-cache hits while
  their logs do not grow);
* ``grown``: a scrape after one new event in every running job's log (each is read again).

    python -m benchmarks.metrics_scrape [--jobs 100,1000,3000] [--inputs 4]
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from prometheus_client import generate_latest

from peer.app import build_services
from peer.event_log import EventLogWriter
from peer.models import Job, Proc
from pocketgrid.config import PeerConfig

OWNER = "CN=Bench,O=pocketgrid"


def build(root: Path, n_jobs: int, inputs: int) -> object:
    config = PeerConfig(name="bench", state_dir=str(root), insecure_http=True, agent=False, executor="local")
    svc = build_services(config)
    with svc.db.session() as s:
        for j in range(n_jobs):
            job_id = f"bench.{j:08x}"
            job_root = svc.stager.job_root(job_id)
            job_root.mkdir(parents=True)
            writer = EventLogWriter(job_root / "job.log")
            s.add(Job(id=job_id, name="b", owner=OWNER, executor="local", executable_name="run.sh",
                      submit_name="job.sub", submit_text="", input_names=[f"in{i}" for i in range(inputs)],
                      entry_peer="bench", origin_key=job_id))
            for i in range(inputs):
                s.add(Proc(job_id=job_id, index=i, input_name=f"in{i}", executor="local", cluster=j + 1, proc=i,
                           local_state="done" if j % 2 else "running"))
                writer.submit(j + 1, i, "<127.0.0.1:0>")
                writer.execute(j + 1, i, "<127.0.0.1:0>")
                if j % 2:
                    writer.terminated(j + 1, i, return_value=0)
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
    ap.add_argument("--jobs", default="100,1000,3000")
    ap.add_argument("--inputs", type=int, default=4)
    args = ap.parse_args()
    print(f"{'jobs':>6} {'procs':>6} {'first ms':>9} {'warm ms':>8} {'grown ms':>9} {'bytes':>7}")
    for n in (int(x) for x in args.jobs.split(",")):
        root = Path(tempfile.mkdtemp(prefix="pg-metrics-"))
        try:
            svc = build(root, n, args.inputs)
            scrape = lambda: generate_latest(svc.metrics.registry)  # noqa: E731
            first = timed(scrape, repeat=1)
            warm = timed(scrape)
            body = scrape().decode()
            assert f'pocketgrid_jobs{{state="completed"}} {float(n // 2)}' in body, body
            for j in range(0, n, 2):  # one more event in every running job's log
                EventLogWriter(svc.stager.job_root(f"bench.{j:08x}") / "job.log").image_size(j + 1, 0, 1000, 1, 1000)
            grown = timed(scrape, repeat=1)
            print(f"{n:>6} {n * args.inputs:>6} {first * 1000:>9.1f} {warm * 1000:>8.1f} {grown * 1000:>9.1f} "
                  f"{len(body):>7}")
            svc.db.dispose()
        finally:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
