"""LocalExecutor: the embedded default for a laptop, a demo or CI with no pool.

Each proc runs as a subprocess of a :mod:`peer.executors.local_runner`
process, at most ``slots`` at a time.  Scheduling state (queued / running /
done, runner pid) lives in the database, so a restarted peer picks up where
the old one stopped:

* a runner that is still alive (same pid and start time) is adopted;
* a runner that is gone left its verdict in the event log, or it did not,
  in which case the proc was lost with the peer: that is written to the log
  as a shadow exception and the proc is queued again (up to
  ``max_restarts`` times, then aborted) — reported honestly, never silently
  dropped.

One scheduler thread per peer process: the server runs a single worker
process (see docs/architecture.md), so there is exactly one.

Jobs never run as the peer: :mod:`peer.executors.sandbox` decides once (at
start) what isolation this host allows, and each runner starts its proc in it.
With none possible, submissions are refused (503, saying why and what to do)
unless the operator accepted that.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import psutil
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from pocketgrid.errors import NotRunnableHere, Unavailable

from ..db import Database
from ..event_log import EventLogReader, EventLogWriter
from ..models import Counter, Job, Proc
from ..staging import META_DIR, StagedJob
from ..proc_stderr import record_names
from ..submit_description import NotHonouredHere, ParsedSubmit, local_proc_specs
from .base import Executor
from .local_runner import EXIT_DONE, EXIT_EVICTED, EXIT_HELD
from .sandbox import Isolation, SandboxSettings, probe

#: In a staged job's META_DIR: does this host match each proc ({index: {"slots", "of", "failing"?}}).
MATCH_FILE = "match.json"

log = logging.getLogger(__name__)


def _spec_path(job_root: Path, index: int) -> Path:
    return job_root / ".pocketgrid" / "procs" / f"{index}.json"


class LocalExecutor(Executor):
    name = "local"

    def __init__(
        self,
        db: Database,
        stage_root: Path,
        *,
        peer_name: str,
        slots: int = 0,
        max_restarts: int = 3,
        poll_interval: float = 0.1,
        sandbox: SandboxSettings | None = None,
    ) -> None:
        self.db = db
        self.stage_root = stage_root
        self.peer_name = peer_name
        self.slots = slots or os.cpu_count() or 1
        self.max_restarts = max_restarts
        self.poll_interval = poll_interval
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._children: dict[int, tuple[int, subprocess.Popen[bytes]]] = {}  # proc row id -> (pid, popen)
        self._adopted: dict[int, psutil.Process] = {}  # proc row id -> process
        self._stopping: set[int] = set()  # proc row ids signalled by remove_proc
        self._lock = threading.Lock()
        self.sandbox = sandbox or SandboxSettings()
        self._isolation: Isolation | None = None
        self._isolation_lock = threading.Lock()
        self._match_cache: dict[str, dict[int, dict]] = {}
        self._site_cache: tuple[float, dict[str, int]] | None = None
        self._machine: dict[str, object] | None = None

    def machine_ad(self) -> dict[str, object]:
        """This host as a startd would advertise its one slot (pocketgrid/matching.py): cores, memory,
        free disk under the staging area, HTCondor's own ARCH and OPSYS for this host."""
        if self._machine is None:
            import htcondor2

            from pocketgrid.matching import host_machine_ad

            def param(name: str, default: str) -> str:
                try:
                    return str(htcondor2.param.get(name) or default)
                except Exception:  # noqa: BLE001 - no configuration: HTCondor's own default detection failed
                    return default

            self._machine = host_machine_ad(
                name=self.peer_name, cpus=os.cpu_count() or 1, memory_mb=psutil.virtual_memory().total >> 20,
                disk_kb=0, arch=param("ARCH", os.uname().machine.upper()), opsys=param("OPSYS", "LINUX"),
                extra={"OpSysAndVer": param("OPSYSANDVER", ""), "OpSysMajorVer": param("OPSYSMAJORVER", "0")})
        try:  # free disk changes: read it for each submission
            disk = shutil.disk_usage(self.stage_root).free >> 10
        except OSError:
            disk = 0
        return {**self._machine, "Disk": disk, "TotalDisk": disk}

    @property
    def isolation(self) -> Isolation:
        """What isolation jobs get here: probed once, logged loudly."""
        with self._isolation_lock:
            if self._isolation is None:
                iso, error = probe(self.sandbox)
                self._isolation = iso
                if iso.refusal:
                    log.error("%s", "!" * 72)
                    log.error("LOCAL JOBS REFUSED: %s", iso.refusal)
                    if error:
                        log.error("bwrap said: %s", error)
                    log.error("%s", "!" * 72)
                elif not iso.isolated:
                    log.warning("%s", "!" * 72)
                    log.warning("JOB ISOLATION: %s", iso.describe())
                    log.warning("%s", "!" * 72)
                else:
                    log.info("job isolation: %s", iso.describe())
                    if iso.bwrap is None:
                        log.warning("no namespace sandbox for jobs (bwrap %s): they see the host's files as %s",
                                    error or "not installed", iso.user)
        return self._isolation

    # ---- submission -------------------------------------------------------
    def prepare(self, session: Session, job: Job, staged: StagedJob, parsed: ParsedSubmit) -> list[Proc]:
        refusal = self.isolation.refusal
        if refusal:
            raise Unavailable(f"this peer does not run jobs: {refusal}")
        try:
            specs = local_proc_specs(
                parsed,
                executable_name=staged.executable_name,
                input_names=staged.input_names,
                proc_dirs=[str(d) for d in staged.proc_dirs],
                machine=self.machine_ad(),
                indexes=staged.job_indexes(),
            )
        except NotHonouredHere as exc:  # another site may run it as written: the entry peer tries the next
            raise NotRunnableHere(f"{self.peer_name}: {exc}", key=exc.key) from None
        unmatchable = {s.index for s in specs if s.match is not None and s.match.get("slots") == 0}
        if unmatchable:
            first = next(s for s in specs if s.index in unmatchable)
            why = first.match.get("failing") or "no match"
            host = self._machine_summary()
            if parsed.policy.unmatchable == "refuse":
                raise NotRunnableHere(
                    f"{self.peer_name}: this host ({host}) does not match the job: {why}; this site refuses such "
                    "jobs (submit policy unmatchable = refuse)")
            job.warnings = [*(job.warnings or []), (
                f"{self.peer_name} runs jobs on this host ({host}), which does not match "
                f"{'this job' if len(unmatchable) == len(specs) else f'{len(unmatchable)} of its procs'}: {why}; "
                "they stay idle (their status says why)")]
        (staged.meta_dir / MATCH_FILE).write_text(json.dumps({s.index: s.match for s in specs if s.match}))
        counter = session.get(Counter, "local_cluster", with_for_update=True)
        if counter is None:
            counter = Counter(name="local_cluster", value=0)
            session.add(counter)
        counter.value += 1
        cluster = counter.value
        writer = EventLogWriter(str(staged.log_path))
        procs_dir = staged.meta_dir / "procs"
        procs_dir.mkdir(parents=True, exist_ok=True)
        record_names(staged.meta_dir, [s.iwd for s in specs], [s.stderr for s in specs])
        rows = []
        base_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        for spec in specs:
            env = {**base_env, "_CONDOR_SCRATCH_DIR": spec.iwd, **spec.environment}
            payload = {
                **asdict(spec),
                "environment": env,
                "cluster": cluster,
                "proc": spec.index,
                "log": str(staged.log_path),
                "host": self.peer_name,
                # the executable and submit file each proc dir hard-links to (the job account gets them)
                "staged_files": [str(staged.executable_path), str(staged.meta_dir / "files" / staged.submit_name)],
            }
            _spec_path(staged.root, spec.index).write_text(json.dumps(payload))
            writer.submit(cluster, spec.index, f"<127.0.0.1:0?alias={self.peer_name}>")
            row = Proc(
                job_id=job.id,
                index=spec.index,
                input_name=spec.input_name,
                executor=self.name,
                cluster=cluster,
                proc=spec.index,
                local_state="unmatchable" if spec.index in unmatchable else "queued",
            )
            session.add(row)
            rows.append(row)
        return rows

    def committed(self, job_id: str) -> None:
        self._wake.set()
        with self.db.sessions() as s:
            if s.scalar(select(Proc.id).where(Proc.job_id == job_id, Proc.local_state == "unmatchable").limit(1)):
                self._site_changed()  # the agent reports them now, not at its next interval

    def _machine_summary(self) -> str:
        m = self._machine or {}
        return f"{m.get('Cpus')} cores, {m.get('Memory')} MB memory, {m.get('Arch')}/{m.get('OpSys')}"

    # ---- what the status adds, what the load report says -------------------
    def _matches(self, job_id: str) -> dict[int, dict]:
        cached = self._match_cache.get(job_id)
        if cached is None:
            try:
                raw = json.loads((self.stage_root / job_id / META_DIR / MATCH_FILE).read_text())
                cached = {int(k): v for k, v in raw.items() if isinstance(v, dict)}
            except (OSError, ValueError):
                cached = {}
            if len(self._match_cache) > 1024:
                self._match_cache.clear()
            self._match_cache[job_id] = cached
        return cached

    def annotate(self, job: Job, states) -> dict:
        matches = self._matches(job.id)
        procs = {i: {"match": dict(matches[i])} for i, state in states.items() if state == "idle" and i in matches}
        return {"procs": procs} if procs else {}

    def site_counts(self) -> dict[str, int] | None:
        cached = self._site_cache
        if cached is not None and time.monotonic() - cached[0] < 1.0:  # /healthz shows it: one query a second
            return dict(cached[1])
        with self.db.sessions() as s:
            rows = s.execute(select(Proc.local_state, func.count()).where(Proc.executor == self.name)
                             .where(Proc.local_state.in_(("held", "unmatchable", "queued")))
                             .group_by(Proc.local_state)).all()
        by = {state: n for state, n in rows}
        counts = {"held": by.get("held", 0), "unmatchable": by.get("unmatchable", 0),
                  "idle": by.get("queued", 0) + by.get("unmatchable", 0)}
        self._site_cache = (time.monotonic(), counts)
        return dict(counts)

    def _site_changed(self) -> None:
        self._site_cache = None
        super()._site_changed()

    # ---- removal and release ------------------------------------------------
    def remove(self, job_id: str) -> int:
        removed = 0
        with self._lock, self.db.session() as s:
            job = s.get(Job, job_id)
            if job is None:
                return 0
            writer = EventLogWriter(str(self.stage_root / job_id / "job.log"))
            held, _ = self._held(job)
            for p in job.procs:
                if p.local_state in ("queued", "unmatchable", "held") or p.id in held:  # HTCondor removes held jobs too
                    writer.aborted(p.cluster, p.proc, "removed by user")
                    p.local_state = "done"
                    removed += 1
                elif p.local_state == "running":
                    if self._signal(p, signal.SIGTERM):
                        removed += 1
        if removed:
            self._site_changed()
        return removed

    def remove_proc(self, job_id: str, index: int, reason: str) -> str:
        changed = False
        with self._lock, self.db.session() as s:
            p = s.scalars(select(Proc).where(Proc.job_id == job_id, Proc.index == index,
                                             Proc.executor == self.name)).first()
            if p is None:
                return "gone"
            if p.local_state == "running":
                if p.id not in self._stopping:  # once: the runner kills the proc and writes "aborted"
                    self._stopping.add(p.id)
                    if not self._signal(p, signal.SIGTERM):
                        self._stopping.discard(p.id)  # not started yet, or gone: the next round decides
                return "stopping"
            if p.local_state in ("queued", "unmatchable", "held"):  # HTCondor removes held jobs too
                EventLogWriter(str(self.stage_root / job_id / "job.log")).aborted(p.cluster, p.proc, reason)
                changed = p.local_state != "queued"  # no longer reported as held or unmatchable
                p.local_state = "done"
        if changed:
            self._site_changed()
        return "stopped"

    def release(self, job_id: str, indexes: Sequence[int]) -> int:
        """Queue the held procs among ``indexes`` again, with a *released* event in the log.

        A proc is held when its runner could not start it (see
        local_runner); released, it starts from the beginning when a slot
        frees, and is held again if the cause is still there.  A runner
        that wrote the hold but has not exited yet is waited for (briefly):
        its exit would otherwise mark the released proc held again.
        """
        wanted = set(indexes)
        deadline = time.monotonic() + 5.0
        while True:
            self._reap()
            with self._lock, self.db.sessions() as s:
                job = s.get(Job, job_id)
                if job is None or job.removed_at is not None:
                    return 0
                _, exiting = self._held(job)
                if not any(p.index in wanted and p.id in exiting for p in job.procs):
                    break
            if time.monotonic() >= deadline:
                log.warning("job %s: a held proc's runner has not exited after 5 s; releasing the others", job_id)
                break
            time.sleep(0.05)
        released = 0
        with self._lock, self.db.session() as s:
            job = s.get(Job, job_id)
            if job is None or job.removed_at is not None:
                return 0
            writer = EventLogWriter(str(self.stage_root / job_id / "job.log"))
            held, _ = self._held(job)
            for p in job.procs:
                if p.index in wanted and p.id in held:
                    writer.released(p.cluster, p.proc, "released by its owner (via pocketgrid)")
                    p.local_state, p.pid, p.pid_started = "queued", None, None
                    released += 1
        if released:
            self._wake.set()
            self._site_changed()  # no longer held: the load report says so at once
        return released

    def _held(self, job: Job) -> tuple[set[int], set[int]]:
        """Row ids of the job's procs on hold: (held, exiting).

        Held: marked so when their runner exited, or (a runner of an earlier
        version, which exited as if done) held according to the event log.
        Exiting: still marked running, but the log says held: the runner
        wrote the hold and is about to exit.
        """
        held = {p.id for p in job.procs if p.local_state == "held"}
        exiting: set[int] = set()
        if any(p.local_state in ("done", "running") for p in job.procs):
            reader = EventLogReader(str(self.stage_root / job.id / "job.log"))
            reader.update()
            reader.close()
            for p in job.procs:
                status = reader.procs.get((p.cluster, p.proc))
                if status is None or status.state.value != "held":
                    continue
                if p.local_state == "done":
                    held.add(p.id)
                elif p.local_state == "running":
                    exiting.add(p.id)
        return held, exiting

    def _signal(self, p: Proc, signum: int) -> bool:
        """Signal a proc's runner, making sure the pid was not reused."""
        if p.pid is None:
            return False
        try:
            proc = psutil.Process(p.pid)
            if p.pid_started is not None and abs(proc.create_time() - p.pid_started) > 1.0:
                return False
            proc.send_signal(signum)
            return True
        except psutil.Error:
            return False

    # ---- life cycle -------------------------------------------------------
    def start(self) -> None:
        _ = self.isolation  # probe now and say it at start, not at the first job
        self._recover()
        self._thread = threading.Thread(target=self._loop, name="local-executor", daemon=True)
        self._thread.start()

    def stop(self, evict: bool = True, timeout: float = 10.0) -> None:
        """Stop scheduling; evict running procs so they run again after restart."""
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout)
        if not evict:
            return
        with self._lock:
            for pid, popen in list(self._children.values()):
                try:
                    popen.send_signal(signal.SIGUSR1)
                except ProcessLookupError:
                    pass
            for proc in list(self._adopted.values()):  # runners adopted after a crash, too
                try:
                    proc.send_signal(signal.SIGUSR1)
                except psutil.Error:
                    pass
            for pid, popen in list(self._children.values()):
                try:
                    popen.wait(timeout)
                except subprocess.TimeoutExpired:
                    log.warning("runner %d did not stop in %.0f s", pid, timeout)

    def describe(self) -> dict[str, object]:
        return {"name": self.name, "slots": self.slots, "running": len(self._children) + len(self._adopted),
                "isolation": self.isolation.describe(), "procs": self._site_counts_or_none()}

    def _site_counts_or_none(self) -> dict[str, int] | None:
        """For /healthz, which must answer whatever the database does."""
        try:
            return self.site_counts()
        except Exception as exc:  # noqa: BLE001 - health says "unknown" rather than fail
            log.debug("site counts unavailable: %s", exc)
            return None

    # ---- recovery ---------------------------------------------------------
    def _recover(self) -> None:
        with self._lock, self.db.session() as s:
            running = s.scalars(select(Proc).where(Proc.executor == self.name, Proc.local_state == "running")).all()
            readers: dict[str, EventLogReader] = {}
            for p in running:
                alive = self._alive(p)
                if alive is not None:
                    self._adopted[p.id] = alive
                    log.info("adopted running proc %d.%d of %s (pid %d)", p.cluster, p.proc, p.job_id, p.pid)
                    continue
                reader = readers.get(p.job_id)
                if reader is None:
                    reader = EventLogReader(str(self.stage_root / p.job_id / "job.log"))
                    reader.update()
                    readers[p.job_id] = reader
                status = reader.procs.get((p.cluster, p.proc))
                if status is not None and status.state.value == "held":
                    p.local_state = "held"  # until its owner releases (or kills) it
                elif status is not None and status.state.is_terminal:
                    p.local_state = "done"
                elif status is not None and status.evictions > p.restarts and status.state.value == "idle":
                    p.local_state = "queued"  # evicted at shutdown: run again
                    p.restarts = status.evictions
                else:
                    self._lost(p, "the proc was lost when the peer stopped")

    def _alive(self, p: Proc) -> psutil.Process | None:
        if p.pid is None:
            return None
        try:
            proc = psutil.Process(p.pid)
            if p.pid_started is not None and abs(proc.create_time() - p.pid_started) > 1.0:
                return None
            if proc.status() == psutil.STATUS_ZOMBIE:
                return None
            return proc
        except psutil.Error:
            return None

    def _lost(self, p: Proc, why: str) -> None:
        """Record a proc whose runner vanished; queue it again or give up.

        A proc of a job the user removed is never queued again: a runner
        signalled before it had installed its handlers dies without writing
        its verdict, and the removal must still be the end of it.
        """
        writer = EventLogWriter(str(self.stage_root / p.job_id / "job.log"))
        p.restarts += 1
        p.pid = None
        if p.job.removed_at is not None:
            writer.aborted(p.cluster, p.proc, "removed by user")
            p.local_state = "done"
        elif p.restarts > self.max_restarts:
            writer.aborted(p.cluster, p.proc, f"{why}; gave up after {self.max_restarts} restarts")
            p.local_state = "done"
        else:
            writer.shadow_exception(p.cluster, p.proc, f"{why}; it will run again")
            p.local_state = "queued"
        log.warning("proc %d.%d of %s: %s", p.cluster, p.proc, p.job_id, why)

    # ---- scheduling loop --------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._reap()
                self._fill()
            except Exception:  # keep scheduling whatever one round hit
                log.exception("local executor round failed")
            self._wake.wait(self.poll_interval)
            self._wake.clear()

    def _reap(self) -> None:
        finished: list[tuple[int, int | None]] = []
        with self._lock:
            for row_id, (pid, popen) in list(self._children.items()):
                rc = popen.poll()
                if rc is not None:
                    finished.append((row_id, rc))
                    del self._children[row_id]
            for row_id, proc in list(self._adopted.items()):
                if not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE:
                    finished.append((row_id, None))
                    del self._adopted[row_id]
        if not finished:
            return
        held = False
        with self.db.session() as s:
            for row_id, rc in finished:
                stopped = row_id in self._stopping  # removed alone (remove_proc): never queued again
                self._stopping.discard(row_id)
                p = s.get(Proc, row_id)
                if p is None:
                    continue
                if stopped and rc not in (EXIT_DONE, None):
                    EventLogWriter(str(self.stage_root / p.job_id / "job.log")).aborted(
                        p.cluster, p.proc, "removed by pocketgrid")
                    p.local_state = "done"
                elif rc == EXIT_EVICTED and p.job.removed_at is not None:
                    EventLogWriter(str(self.stage_root / p.job_id / "job.log")).aborted(
                        p.cluster, p.proc, "removed by user")
                    p.local_state = "done"
                elif rc == EXIT_EVICTED:
                    p.local_state = "queued"
                elif rc == EXIT_HELD and p.job.removed_at is not None:  # killed while it was being held
                    EventLogWriter(str(self.stage_root / p.job_id / "job.log")).aborted(
                        p.cluster, p.proc, "removed by user")
                    p.local_state = "done"
                elif rc == EXIT_HELD:
                    p.local_state = "held"  # until its owner releases (or kills) it; not about to use a slot
                    held = True
                elif rc in (EXIT_DONE, None):
                    p.local_state = "done"
                    if rc is None:
                        self._check_adopted_verdict(p)
                else:
                    self._lost(p, f"the local runner failed with exit status {rc}")
        self._wake.set()
        if held:
            self._site_changed()

    def _check_adopted_verdict(self, p: Proc) -> None:
        """An adopted runner is not our child: its exit status is unknown, the log has it."""
        reader = EventLogReader(str(self.stage_root / p.job_id / "job.log"))
        reader.update()
        status = reader.procs.get((p.cluster, p.proc))
        if status is not None and status.state.value == "held":
            p.local_state = "held"
        elif status is None or not status.state.is_terminal:
            p.local_state = "running"  # _lost decides
            self._lost(p, "the local runner vanished without a verdict")
        elif status.state.value == "held":
            p.local_state = "held"

    def _fill(self) -> None:
        """Start queued procs up to the free slots.

        Each proc's "running" state is committed BEFORE its runner starts, one
        proc at a time: an error (or a crash) can then leave a proc marked
        running that never started, which recovery treats as lost and queues
        again, but never a runner whose row still says queued (it would run
        twice).
        """
        isolation = self.isolation
        if isolation.refusal:
            return  # queued procs (from before) wait: they would run unisolated
        with self._lock:
            free = self.slots - len(self._children) - len(self._adopted)
            if free <= 0:
                return
            with self.db.sessions() as s:
                queued = s.scalars(
                    select(Proc.id)
                    .join(Job)
                    .where(Proc.executor == self.name, Proc.local_state == "queued", Job.removed_at.is_(None))
                    .order_by(Job.created_at, Proc.index)
                    .limit(free)
                ).all()
            for row_id in queued:
                with self.db.session() as s:
                    p = s.get(Proc, row_id)
                    if p is None or p.local_state != "queued":
                        continue
                    p.local_state, p.pid, p.pid_started = "running", None, None
                    job_id, index = p.job_id, p.index
                spec = _spec_path(self.stage_root / job_id, index)
                try:
                    with open(spec.with_suffix(".runner.log"), "ab") as runner_log:
                        popen = subprocess.Popen(
                            [sys.executable, "-m", "peer.executors.local_runner", str(spec),
                             "--sandbox", isolation.to_json()],
                            stdin=subprocess.DEVNULL,
                            stdout=runner_log,
                            stderr=runner_log,
                            start_new_session=True,
                            close_fds=True,
                        )
                except OSError as exc:
                    log.error("cannot start the runner of %s input %d: %s", job_id, index, exc)
                    with self.db.session() as s:
                        p = s.get(Proc, row_id)
                        if p is not None:
                            p.local_state = "queued"  # it never started: try again next round
                    return
                self._children[row_id] = (popen.pid, popen)
                try:
                    started = psutil.Process(popen.pid).create_time()
                except psutil.Error:
                    started = None
                with self.db.session() as s:
                    p = s.get(Proc, row_id)
                    if p is not None:
                        p.pid, p.pid_started = popen.pid, started
