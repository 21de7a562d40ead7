"""Failover time: kill -9 the broker, time until every live peer agrees on one new broker.

    python -m benchmarks.failover --peers 4 --kills 20 --heartbeat 0.5 --misses 3

Each round kills the current broker's whole process group (SIGKILL), polls
every live peer's ``GET /api/v1/broker`` until all name the same broker with
a higher epoch, then restarts the killed peer on its old port and state
(it rejoins as a plain peer) before the next round.  Prints the median and
max failover time in seconds and in heartbeat periods.
"""
from __future__ import annotations

import argparse
import os
import signal
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import requests

from .harness import Cluster, Peer, common_arguments, emit, wait_until


def view(peer: Peer) -> tuple[str | None, int]:
    try:
        v = requests.get(f"{peer.url}/api/v1/broker", timeout=1).json()
    except (requests.RequestException, ValueError):
        return None, -1
    return (v["broker"] or {}).get("name"), int(v["epoch"])


def agreed(live: list[Peer], pool: ThreadPoolExecutor, old_epoch: int) -> str | None:
    views = list(pool.map(view, live))
    names = {n for n, _ in views}
    epochs = {e for _, e in views}
    if len(names) == 1 and len(epochs) == 1 and epochs.pop() > old_epoch:
        return names.pop()
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peers", type=int, default=4)
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--heartbeat", type=float, default=0.5, help="heartbeat interval, seconds")
    ap.add_argument("--misses", type=int, default=3)
    common_arguments(ap)
    args = ap.parse_args()
    extra = ["--heartbeat-interval", str(args.heartbeat), "--heartbeat-misses", str(args.misses)]
    times: list[float] = []
    with Cluster(workdir=args.workdir, keep=args.keep, log_level=args.log_level, threads=4) as cluster, \
            ThreadPoolExecutor(max_workers=min(32, args.peers)) as pool:
        first = Peer("p00", cluster.root / "p00", threads=4, extra=extra)
        cluster.peers.append(first)
        first.start()
        for i in range(1, args.peers):
            p = Peer(f"p{i:02d}", cluster.root / f"p{i:02d}", join=first.url, threads=4, extra=extra)
            cluster.peers.append(p)
            p.start()
        cluster.wait_members(args.peers, timeout=60)
        by_name = {p.name: p for p in cluster.peers}
        for k in range(args.kills):
            broker_name, epoch = view(cluster.peers[-1])
            broker = by_name[broker_name]
            os.killpg(broker.proc.pid, signal.SIGKILL)
            broker.proc.wait()
            t0 = time.monotonic()
            live = [p for p in cluster.peers if p is not broker]
            new = wait_until(lambda: agreed(live, pool, epoch), timeout=60, interval=0.02, what="agreement")
            times.append(time.monotonic() - t0)
            broker.start()  # the old broker returns and must rejoin as a plain peer
            wait_until(lambda: agreed(cluster.peers, pool, epoch), timeout=60, interval=0.05,
                       what="the old broker to rejoin")
            print(f"kill {k + 1}: {broker_name} -> {new} in {times[-1]:.2f} s", flush=True)
    med, mx = statistics.median(times), max(times)
    emit("failover", {
        "peers": args.peers, "kills": args.kills, "heartbeat_s": args.heartbeat, "misses": args.misses,
        "failover_s": {"median": round(med, 3), "max": round(mx, 3), "all": [round(t, 3) for t in times]},
        "failover_periods": {"median": round(med / args.heartbeat, 2), "max": round(mx / args.heartbeat, 2)},
    }, f"failover with {args.peers} peers, heartbeat {args.heartbeat} s x {args.misses}: "
       f"median {med:.2f} s ({med / args.heartbeat:.1f} periods), max {mx:.2f} s ({mx / args.heartbeat:.1f} periods)")


if __name__ == "__main__":
    main()
