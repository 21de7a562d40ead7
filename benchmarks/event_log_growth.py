"""Cost of one job's status as its event log grows: incremental reader vs re-reading from the start.

A status request in pocketgrid reads the job's HTCondor user log
(``peer/event_log.EventLogReader`` on ``htcondor2.JobEventLog``).  This
benchmark puts OLD events of other jobs (10, 1,000, 100,000 by default) in
front of ours, then, round after round, appends ONE new event of our job and
times what a status request costs to see it:

* ``incremental``: the reader the peer caches per job, after its first read
  (``reader.update()`` reads only what was appended since the previous call);
* ``resumed``: a new reader from the state saved in the job row
  (``EventLogReader.from_state``: what a restarted peer, or a peer whose
  reader cache evicted the job, does): it seeks to the saved offset, but
  loads and saves the status of every proc the state carries.  Timed twice:
  with the state of every proc in the log (``resumed_all``: here the other
  jobs' procs too, one per 4 old events) and with our job's procs only
  (``resumed_own``: pocketgrid's real case, one ``job.log`` per job);
* ``full``: a new reader from offset 0 every time (what "read the log"
  costs without an offset: the naive way, and the shape of ``condor_q``-per-
  request the paper used: cost grows with history, not with news);
* ``first``: the incremental reader's one-off first read of the whole log.

The log is written with pocketgrid's EventLogWriter (HTCondor's exact text
format; a real schedd writes the same bytes).  Target: incremental and
resumed flat in the number of old events.

    python -m benchmarks.event_log_growth [--old 10,1000,100000] [--rounds 200] [--full-rounds 20]
"""
from __future__ import annotations

import argparse
import gc
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from peer.event_log import EventLogReader, EventLogWriter, ProcState

from .harness import emit, summarize_ms

OUR_CLUSTER = 999_999
WHEN = 1_700_000_000.0


def write_old_events(writer: EventLogWriter, n: int) -> None:
    """``n`` events of other jobs: submit / execute / image size / terminated, 4 per proc."""
    written = 0
    cluster = 1
    while written < n:
        for kind in range(4):
            if written >= n:
                break
            proc = 0
            if kind == 0:
                writer.submit(cluster, proc, "<10.0.0.1:9618?addrs=10.0.0.1-9618&alias=head>", when=WHEN)
            elif kind == 1:
                writer.execute(cluster, proc, "<10.0.0.7:9618?addrs=10.0.0.7-9618&alias=w7>", when=WHEN + 1)
            elif kind == 2:
                writer.image_size(cluster, proc, 10_240, 10, 10_240, when=WHEN + 2)
            else:
                writer.terminated(cluster, proc, return_value=0, usage=(1.0, 0.1), when=WHEN + 3)
            written += 1
        cluster += 1


def measure(n_old: int, rounds: int, full_rounds: int, workdir: Path) -> dict[str, Any]:
    path = workdir / f"job-{n_old}.log"
    writer = EventLogWriter(path)
    writer.submit(OUR_CLUSTER, 0, "<10.0.0.1:9618>", when=WHEN)
    t0 = time.perf_counter()
    write_old_events(writer, n_old)
    write_s = time.perf_counter() - t0
    log_bytes = os.path.getsize(path)

    incremental = EventLogReader(path)
    t0 = time.perf_counter()
    incremental.update()
    first_s = time.perf_counter() - t0
    assert (OUR_CLUSTER, 0) in incremental.procs
    saved_all = incremental.state_dict()
    saved_own = {**saved_all, "procs": [p for p in saved_all["procs"] if p["cluster"] == OUR_CLUSTER]}

    seq = iter(range(10**9))

    def new_event() -> int:
        """Append one event of our job (an image-size update); returns the memory it reports."""
        k = next(seq)
        writer.image_size(OUR_CLUSTER, 0, 20_000 + k, 20 + k, 20_000 + k, when=WHEN + 10 + k)
        return 20 + k

    def timed(fn) -> tuple[float, Any]:
        gc.disable()  # a collection of earlier garbage must not land in the measurement
        try:
            t0 = time.perf_counter()
            out = fn()
            return time.perf_counter() - t0, out
        finally:
            gc.enable()

    # Each way is measured in its own phase, so one way's cache footprint (a
    # full re-read touches the whole file) does not slow the next one down.
    # The full re-reads come first, while the log holds (almost) only the old events.
    def whole():
        reader = EventLogReader(path)
        reader.update()
        st = reader.procs[(OUR_CLUSTER, 0)]
        reader.close()
        return st

    full = []
    for _ in range(full_rounds):
        memory = new_event()
        elapsed, st = timed(whole)
        full.append(elapsed)
        assert st.memory_mb == memory

    incremental.update()  # catch up with the full-read phase's events
    inc, idle = [], []
    for _ in range(rounds):
        memory = new_event()
        elapsed, st = timed(lambda: (incremental.update(), incremental.procs[(OUR_CLUSTER, 0)])[1])
        inc.append(elapsed)
        assert st.memory_mb == memory
        elapsed, changed = timed(incremental.update)
        idle.append(elapsed)
        assert changed is False  # an unchanged poll (e.g. a phone's If-None-Match)

    def resume(saved: dict[str, Any]):
        fresh = EventLogReader.from_state(path, saved)
        fresh.update()
        st = fresh.procs[(OUR_CLUSTER, 0)]
        new_state = fresh.state_dict()  # the peer stores it in the job row when the status changed
        fresh.close()
        return st, new_state

    resumed = {}
    for label, saved in (("own", saved_own), ("all", saved_all)):
        saved = {**saved, "offset": incremental.offset}
        times = []
        for _ in range(rounds):
            memory = new_event()
            elapsed, (st, saved) = timed(lambda: resume(saved))
            times.append(elapsed)
            assert st.memory_mb == memory
        resumed[label] = times
        incremental.update()

    resumed_own, resumed_all = resumed["own"], resumed["all"]

    writer.terminated(OUR_CLUSTER, 0, return_value=0)
    incremental.update()
    assert incremental.procs[(OUR_CLUSTER, 0)].state is ProcState.COMPLETED
    procs_in_log = len(incremental.procs)
    incremental.close()
    return {
        "old_events": n_old,
        "log_bytes": log_bytes,
        "write_old_s": round(write_s, 2),
        "first_read_ms": round(first_s * 1000, 2),
        "incremental": summarize_ms(inc, 3),
        "unchanged_poll": summarize_ms(idle, 3),
        "procs_in_log": procs_in_log,
        "resumed_all": summarize_ms(resumed_all, 3),
        "resumed_own": summarize_ms(resumed_own, 3),
        "full": summarize_ms(full, 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", default="10,1000,100000", help="numbers of old events, comma separated")
    parser.add_argument("--rounds", type=int, default=200, help="new events (status reads) per size")
    parser.add_argument("--full-rounds", type=int, default=20, help="of which also timed as a full re-read")
    parser.add_argument("--workdir", default=None, help="where to write the logs (default: the system temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the logs afterwards")
    args = parser.parse_args(argv)
    sizes = [int(x) for x in args.old.split(",") if x.strip()]
    workdir = Path(tempfile.mkdtemp(prefix="pocketgrid-eventlog-", dir=args.workdir))
    try:
        rows = [measure(n, args.rounds, min(args.full_rounds, args.rounds), workdir) for n in sizes]
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    table = ["old events | log size | first read | incremental p50 (p90) | unchanged poll p50 "
             "| resumed, own procs p50 (p90) | resumed, all procs p50 | full re-read p50 (p90)",
             "---:|---:|---:|---:|---:|---:|---:|---:"]
    for r in rows:
        table.append(
            f"{r['old_events']:,} | {r['log_bytes'] / 1024:,.0f} KiB | {r['first_read_ms']:,.1f} ms | "
            f"{r['incremental']['p50_ms']:.3f} ({r['incremental']['p90_ms']:.3f}) ms | "
            f"{r['unchanged_poll']['p50_ms']:.3f} ms | "
            f"{r['resumed_own']['p50_ms']:.3f} ({r['resumed_own']['p90_ms']:.3f}) ms | "
            f"{r['resumed_all']['p50_ms']:,.2f} ms ({r['procs_in_log']:,} procs) | "
            f"{r['full']['p50_ms']:,.2f} ({r['full']['p90_ms']:,.2f}) ms"
        )
    small, big = rows[0], rows[-1]

    def ratio(key: str) -> str:
        return f"{big[key]['p50_ms'] / small[key]['p50_ms']:,.2f}x"

    human = "\n".join(table) + (
        f"\np50 at {big['old_events']:,} old events / at {small['old_events']:,}: incremental {ratio('incremental')}, "
        f"resumed (own procs) {ratio('resumed_own')}, resumed (all procs) {ratio('resumed_all')}, "
        f"full re-read {ratio('full')}"
    )
    emit("event_log_growth", {"rounds": args.rounds, "full_rounds": args.full_rounds, "results": rows}, human)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
