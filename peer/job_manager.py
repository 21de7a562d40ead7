"""The job manager: the one loop per peer that drives the jobs whose home this peer is.

Every tick (docs/architecture.md, *Jobs across sites*, *Life of a job*):

1. **Dispatch.**  Pending attempts whose backoff is over are split by the
   broker (``POST /api/v1/broker/placements`` with ``"split": true``, per
   set of sites to avoid); each share becomes a piece, recorded as
   *dispatching* (site, origin key) in one transaction, then sent in the
   background (peer/dispatch.py).  A piece whose answer was lost is sent
   again with the same origin key.  A definite failure (the site refused or
   failed to stage it, or was never reached) loses those attempts.
2. **Watch.**  One status request per site holding active pieces
   (``POST /api/v1/peer/pieces/status`` with the versions already seen; the
   peer's own pieces are read directly); each proc's status becomes a
   verdict (peer/holds.py) folded into its attempt by peer/records.py (the
   one-result rule, re-runs with backoff).  A site that has not answered for
   ``site_lost_after`` loses every attempt there that may still change (and
   the results there, while the job is unfinished).
3. **Clean.**  Attempts whose site still has something to do (stop a killed
   job's procs; stop and delete a lost or superseded attempt) are carried out
   there, now or whenever the site answers again.

Its own pieces are looked at every tick (``min(monitor_interval, 0.5)`` s),
other sites every ``monitor_interval``.  Calls to sites run in a small
thread pool, so one silent site never holds up the others.  The loop wakes
at once on new work (a submit, a kill, a retry).  Nothing here lives only in
memory that a restart could not rebuild from the records: a restarted home
sends again what was being sent (same origin keys) and gives every site a
fresh ``site_lost_after`` to answer.
"""
from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, wait
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote

import htcondor2
import requests
from sqlalchemy import or_, select
from sqlalchemy.orm import selectinload

from pocketgrid.errors import NotFound, PocketgridError, Unavailable

from . import records
from .dispatch import Dispatcher, piece_key, piece_meta
from .holds import classify
from .jobs import JobService
from .membership import Membership
from .models import JobAttempt, JobPlacement, JobRecord
from .placement_record import round_record
from .record_store import RecordStore
from .storage import PURGE_HINT

log = logging.getLogger(__name__)

#: The longest a tick waits: the peer's own pieces are looked at this often at least.
LOCAL_TICK = 0.5


def success_exit_code(submit_text: str) -> int | None:
    """The submit file's ``success_exit_code``, when it is a plain integer."""
    try:
        sub = htcondor2.Submit(submit_text)
    except Exception:  # the text was checked at submit; a parser that changed its mind means "none"
        return None
    for key, value in sub.items():
        if key.lower() == "success_exit_code":
            try:
                return int(str(value).strip())
            except ValueError:
                return None
    return None


class _Calls:
    """At most ``size`` calls to sites at once, each in a daemon thread.

    Not a ThreadPoolExecutor: its threads are joined at interpreter exit, so
    one call stuck on a silent site (a piece's send may wait 120 s) would hold
    up the peer's shutdown.
    """

    def __init__(self, size: int) -> None:
        self._slots = threading.BoundedSemaphore(size)
        self._closed = False

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        if self._closed:
            raise RuntimeError("the peer is stopping")
        future: Future = Future()

        def run() -> None:
            with self._slots:
                if not future.set_running_or_notify_cancel():
                    return
                try:
                    future.set_result(fn(*args))
                except BaseException as exc:  # handed to whoever waits on the future
                    future.set_exception(exc)

        threading.Thread(target=run, name="job-manager-call", daemon=True).start()
        return future

    def close(self) -> None:
        self._closed = True


class JobManager:
    def __init__(
        self,
        *,
        name: str,
        url: str,
        store: RecordStore,
        jobs: JobService,
        dispatcher: Dispatcher,
        http: requests.Session,
        membership: Membership,
        split: Callable[[str, int, list[int], list[str]], list[dict[str, Any]]],
        report_failure: Callable[[str], None],
        report_placed: Callable[[str, str, str, list[dict[str, str]]], None] = lambda key, site, job, failed: None,
        check_input: Callable[[dict[str, Any]], str | None] = lambda meta: None,
        check_copy: Callable[[JobRecord, int], str | None] = lambda record, index: None,
        purge_local: Callable[[str], str] = lambda piece: "purged",
        records_root: Path,
        limits: records.Limits,
        monitor_interval: float = 2.0,
        site_lost_after: float = 120.0,
        peer_timeout: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.url = url
        self.store = store
        self.jobs = jobs
        self.dispatcher = dispatcher
        self.http = http
        self.membership = membership
        self.split = split
        self.report_failure = report_failure
        self.report_placed = report_placed
        self.check_input = check_input
        #: For a job taken over from its home: whether this peer's copy of an input can run (else why not).
        self.check_copy = check_copy
        #: peer/replicas.py: set by the app (None: no replicas, a peer alone or a unit test).
        self.replicas: Any = None
        #: Remove one of this site's pieces whole (its record expired or was purged): "purged" once done.
        self.purge_local = purge_local
        self.records_root = records_root
        self.limits = limits
        self.monitor_interval = monitor_interval
        self.site_lost_after = site_lost_after
        self.peer_timeout = peer_timeout
        self.clock = clock
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool = _Calls(8)
        self._lock = threading.Lock()
        self._sending: dict[str, str] = {}  # piece key being sent -> its site
        #: calls under way: (piece, index or None for the whole piece), ("pin", site)
        self._cleaning: set[tuple[str, int | None]] = set()
        self._last_ok: dict[str, float] = {}  # site -> when it last answered (or was first needed)
        self._last_failed: dict[str, float] = {}  # site -> when a call to it last failed
        self._last_remote = 0.0
        #: piece key -> the broker's decision key it came from, and the sites that failed that decision
        #: so far (for the outcome the broker shows administrators; in memory, best effort)
        self._decisions: dict[str, str] = {}
        #: Jobs whose last split held inputs back (late binding): asked again no sooner than this.
        self._held: dict[str, float] = {}
        self._decision_failed: dict[str, list[dict[str, str]]] = {}
        self._success_codes: dict[str, int | None] = {}

    # ---- life cycle -------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="job-manager", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._pool.close()
        if self.replicas is not None:
            self.replicas.close()

    def watch_local(self) -> None:
        """Fold the statuses of this site's own pieces into their records now (at start-up, before the
        peer answers anyone: a restarted or upgraded peer shows what its pieces did meanwhile)."""
        try:
            self._watch(self.clock(), False)
        except Exception:  # the loop tries again every tick
            log.exception("reading this site's pieces at start-up failed")

    def wake(self) -> None:
        """New work (a submit, a kill, a retry): act now, not at the next tick."""
        self._wake.set()

    def _loop(self) -> None:
        tick = min(self.monitor_interval, LOCAL_TICK)
        while not self._stop.is_set():
            self._wake.clear()
            try:
                self.cycle()
            except Exception:  # keep managing whatever one round hit
                log.exception("job manager round failed")
            self._wake.wait(tick)

    def cycle(self) -> None:
        """One round: dispatch, watch (other sites every ``monitor_interval``), clean."""
        now = self.clock()
        remote = now - self._last_remote >= self.monitor_interval
        if remote:
            self._last_remote = now
        for step in (lambda: self._dispatch(now, remote), lambda: self._watch(now, remote),
                     lambda: self._clean(remote), lambda: self._pins(remote), lambda: self._replicas(now, remote)):
            try:
                step()
            except Exception:  # one failing step must not stop the others
                log.exception("job manager step failed")

    @property
    def _mine(self):  # noqa: ANN202 - an SQL condition
        """The records this peer manages (not the replicas it keeps for other managers)."""
        return JobRecord.manager == self.name

    def _replicas(self, now: float, remote: bool) -> None:
        """Replicas (peer/replicas.py): push changes to deputies, copy inputs, watch other managers."""
        if self.replicas is not None:
            self.replicas.tick(now, remote)

    # ---- what the status shows about sites -----------------------------------------
    def unreachable_sites(self) -> frozenset[str]:
        """Sites whose last call failed (and have not answered since)."""
        with self._lock:
            return frozenset(s for s, t in self._last_failed.items() if t > self._last_ok.get(s, 0.0))

    def _ok(self, site: str) -> None:
        with self._lock:
            self._last_ok[site] = self.clock()

    def _failed(self, site: str) -> None:
        with self._lock:
            self._last_failed[site] = self.clock()

    def _silent_for(self, site: str, now: float) -> float:
        with self._lock:
            return now - self._last_ok.setdefault(site, now)

    # ---- 1. dispatch ----------------------------------------------------------------------
    def _dispatch(self, now: float, remote: bool) -> None:
        with self.store.db.sessions() as s:
            pending = s.scalars(
                select(JobAttempt).join(JobRecord).where(
                    JobAttempt.state == "pending", JobRecord.removed_at.is_(None), self._mine,
                    or_(JobAttempt.not_before.is_(None), JobAttempt.not_before <= now))
            ).all()
            unsent = s.scalars(
                select(JobAttempt).join(JobRecord).where(self._mine, JobAttempt.piece.is_(None),
                                                         JobAttempt.piece_key.is_not(None),
                                         or_(JobAttempt.state == "dispatching",
                                             JobAttempt.cleanup.in_(("remove", "delete"))))
            ).all()
        groups: dict[tuple[str, tuple[str, ...], tuple[str, ...]], list[JobAttempt]] = {}
        for a in pending:
            key = (a.job_id, tuple(sorted(a.avoid or [])), tuple(sorted(a.refused or {})))
            groups.setdefault(key, []).append(a)
        self._held = {j: t for j, t in self._held.items() if t > now}
        for (job_id, avoid, refused), atts in groups.items():
            if job_id in self._held:
                continue
            if not self._split_and_send(job_id, list(avoid), atts, now, exclude=list(refused)):
                break  # no broker answers (an election?): the other jobs wait for the next round too
        resend: dict[str, list[JobAttempt]] = {}
        for a in unsent:
            resend.setdefault(a.piece_key, []).append(a)  # type: ignore[arg-type]
        for key, atts in resend.items():
            if remote or atts[0].site == self.name:
                self._resend(key, atts, now)

    def _split_and_send(self, job_id: str, avoid: list[str], atts: list[JobAttempt], now: float, *,
                        exclude: list[str] = ()) -> bool:  # type: ignore[assignment]
        """Split pending attempts and send their pieces; False when no broker answered.  ``exclude``:
        the sites that refused these inputs for good (they get none of them)."""
        with self.store.db.sessions() as s:
            record = s.get(JobRecord, job_id)
            if record is None:
                return True
            if record.manager != self.name:
                return True  # a replica here (its manager changed meanwhile): not ours to place
            problems = {a.index: (self.check_input(record.inputs[a.index]) if record.home == self.name
                                  else self.check_copy(record, a.index)) for a in atts}
        if any(problems.values()):  # an input that is no longer what was submitted fails, with the reason
            self._fail_inputs(job_id, {i: p for i, p in problems.items() if p}, now)
            atts = [a for a in atts if not problems[a.index]]
            if not atts:
                return True
        with self.store.db.sessions() as s:
            record = s.get(JobRecord, job_id)
            if record is None:
                return True
            sizes = [int(record.inputs[a.index].get("size") or 0) for a in atts]
            history_key = record.history_key  # the broker's estimate of this program's run time
        atts.sort(key=lambda a: a.index)
        decision_key = f"{job_id}/{atts[0].index}.{atts[0].number}"
        try:
            answer = self.split(decision_key, len(atts), sizes, avoid, exclude=list(exclude),
                                history_key=history_key)
        except Unavailable as exc:
            log.info("job %s: %d inputs wait for a placement: %s", job_id, len(atts), exc.message)
            return False
        shares = answer.get("shares") or []
        if answer.get("unassigned"):  # held back until sites free slots: not every tick, every monitor round
            self._held[job_id] = now + self.monitor_interval
        if not shares and answer.get("refused_all"):  # every live site refused them for good
            self._fail_inputs(job_id, {a.index: refused_everywhere(a.refused or {}) for a in atts}, now,
                              details={a.index: _quota_details(a.refused or {}) for a in atts})
            return True
        if not shares:  # (late binding: the usual wait for free slots, logged at debug level)
            log.log(logging.DEBUG if answer.get("unassigned") else logging.INFO,
                    "job %s: no site can take its %d pending inputs yet", job_id, len(atts))
            return True
        orders: list[tuple[str, str | None, str]] = []
        with self.store.session() as s:
            record = s.get(JobRecord, job_id)
            if record is None or record.removed_at is not None:
                return True
            fresh = {(a.index, a.number): a for a in record.attempts}
            todo = [fresh.get((a.index, a.number)) for a in atts]
            todo = [a for a in todo if a is not None and a.state == "pending"]
            start = 0
            for share in shares:
                chunk = todo[start:start + int(share["count"])]
                start += len(chunk)
                if not chunk:
                    continue
                key = piece_key(job_id, share["name"], [(a.index, a.number) for a in chunk])
                for a in chunk:
                    a.state, a.site, a.piece_key, a.dispatched_at = "dispatching", share["name"], key, now
                orders.append((key, share.get("url"), share["name"]))
                with self._lock:
                    if len(self._decisions) > 10_000:  # sends that never ended: forget them
                        self._decisions.clear()
                        self._decision_failed.clear()
                    self._decisions[key] = decision_key
            if orders:
                # the split, as the owner's status shows it (placement): shares and the ranking with scores
                s.add(JobPlacement(job_id=job_id, decided_at=now,
                                   record=round_record(answer, [a.index for a in todo])))
                self.store.touch(s, record)
        for key, url, site in orders:
            self._send_async(job_id, key, site, url)
        return True

    def _fail_inputs(self, job_id: str, problems: dict[int, str], now: float,
                     details: dict[int, dict[str, Any]] | None = None) -> None:
        with self.store.session() as s:
            record = s.get(JobRecord, job_id)
            if record is None:
                return
            for a in record.attempts:
                if a.index in problems and a.state == "pending":
                    a.state, a.reason, a.finished_at = "failed", problems[a.index], now
                    if details and details.get(a.index):
                        a.status = {**(a.status or {}), **details[a.index]}
                    log.warning("job %s input %d: %s", job_id, a.index, problems[a.index])
            self.store.touch(s, record)

    def _resend(self, key: str, atts: list[JobAttempt], now: float) -> None:
        with self._lock:
            if key in self._sending:
                return
        site = atts[0].site or ""
        first = min(a.dispatched_at or now for a in atts)
        waiting = [a for a in atts if a.state == "dispatching"]
        if waiting and now - first > self.site_lost_after and self._silent_for(site, now) > self.site_lost_after:
            # Lost, but their cleanup stays: sent again whenever the site answers, the piece (if it was
            # made) is found by its key and deleted there.
            self._give_up_sending(atts[0].job_id, key, f"no answer from {site} to its piece for {now - first:.0f} s")
            return
        self._send_async(atts[0].job_id, key, site, self.membership.url_of(site))

    def _send_async(self, job_id: str, key: str, site: str, url: str | None) -> None:
        with self._lock:
            if key in self._sending:
                return
            self._sending[key] = site
        try:
            self._pool.submit(self._send, job_id, key, site, url)
        except RuntimeError:  # the pool is shut down: the peer is stopping
            with self._lock:
                self._sending.pop(key, None)

    def _send(self, job_id: str, key: str, site: str, url: str | None) -> None:
        try:
            with self.store.db.sessions() as s:
                record = s.scalars(select(JobRecord).where(JobRecord.id == job_id, self._mine)
                                   .options(selectinload(JobRecord.attempts))).first()
                if record is None:
                    return
                atts = [a for a in record.attempts if a.piece_key == key]
                if not atts:
                    return
                meta = piece_meta(record, atts, home=self.name, home_url=self.url, key=key)
                vo = record.owner_vo
                exe = self.records_root / job_id / "files" / record.executable_name
            outcome = self.dispatcher.send(site, url or self.membership.url_of(site), meta, exe, vo)
            if outcome.ok:
                self._ok(site)
                self._dispatched(job_id, key, site, outcome.piece, bool(meta.get("pinned")),  # type: ignore[arg-type]
                                 outcome.warnings)
                self._report_outcome(key, site, job_id, None)
            elif outcome.refusal is not None:
                self._ok(site)  # it answered: healthy, and not to be banned
                log.info("job %s: %s refused its piece: %s", job_id, site, outcome.refusal.get("message"))
                self._refused(job_id, key, site, outcome.refusal)
                self._report_outcome(key, site, job_id, str(outcome.refusal.get("message") or "refused"))
            elif outcome.failure is not None:
                self._failed(site)
                log.warning("job %s: %s did not take its piece: %s", job_id, site, outcome.failure)
                self._dispatch_failed(job_id, key, site, outcome.failure, ban=True)
                self._report_outcome(key, site, job_id, outcome.failure)
            else:
                self._failed(site)
                log.warning("job %s: no answer from %s to its piece; it will be sent again", job_id, site)
        except Exception:
            log.exception("job %s: sending a piece to %s failed", job_id, site)
        finally:
            with self._lock:
                self._sending.pop(key, None)
            self.wake()

    def _dispatched(self, job_id: str, key: str, site: str, piece: str, pinned: bool = False,
                    warnings: tuple[str, ...] = ()) -> None:
        with self.store.session() as s:
            record = s.get(JobRecord, job_id)
            if record is None:
                return
            changed = False
            new = [w for w in warnings if w not in (record.warnings or [])]
            if new:  # what the site said taking its piece (no slot of it matches...): the user sees it
                record.warnings = [*(record.warnings or []), *new]
                changed = True
            for a in record.attempts:
                if a.piece_key != key:
                    continue
                a.piece = piece
                a.site_pinned = pinned  # as the piece was sent: a pin since then is passed on
                if a.state == "dispatching":
                    a.state = "idle"
                    changed = True
            if changed:
                self.store.touch(s, record)
        log.info("job %s: piece %s at %s", job_id, piece, site)

    def _report_outcome(self, key: str, site: str, job_id: str, error: str | None) -> None:
        """Tell the broker how its decision went for this piece (the admins' decision list): who took
        it, or who failed first.  Best effort, off the manager's loop."""
        with self._lock:
            decision = self._decisions.pop(key, None)
            if decision is None:
                return
            if error is not None:
                self._decision_failed.setdefault(decision, []).append({"name": site, "error": error[:500]})
                return
            failed = self._decision_failed.pop(decision, [])
        try:
            self.report_placed(decision, site, job_id, failed)
        except Exception:  # noqa: BLE001 - the broker's list is not worth a failed dispatch
            log.debug("reporting the placement of %s failed", job_id, exc_info=True)

    def _refused(self, job_id: str, key: str, site: str, refusal: dict[str, Any]) -> None:
        """The site refused these inputs for good (quota, "not here"): they wait to be placed again at
        once, without it; no attempt is used up, the site made nothing."""
        with self.store.session() as s:
            record = s.get(JobRecord, job_id)
            if record is None:
                return
            changed = False
            for a in record.attempts:
                if a.piece_key != key or a.piece is not None or a.state != "dispatching":
                    continue
                a.refused = {**(a.refused or {}), site: refusal}
                a.state, a.site, a.piece_key, a.dispatched_at, a.cleanup = "pending", None, None, None, None
                changed = True
            if changed:
                self.store.touch(s, record)

    def _dispatch_failed(self, job_id: str, key: str, site: str, why: str, *, ban: bool) -> None:
        """The site refused or failed the piece, or was never reached: it has no piece under this key."""
        self._lose_unsent(job_id, key, f"{site}: {why}", keep_cleanup=False)
        if ban:
            self.report_failure(site)

    def _give_up_sending(self, job_id: str, key: str, why: str) -> None:
        self._lose_unsent(job_id, key, why, keep_cleanup=True)

    def _lose_unsent(self, job_id: str, key: str, why: str, *, keep_cleanup: bool) -> None:
        with self.store.session() as s:
            record = s.get(JobRecord, job_id)
            if record is None:
                return
            before = _fingerprint(record)
            groups = records.by_input(record.attempts)
            now = self.clock()
            for a in list(record.attempts):
                if a.piece_key != key or a.piece is not None:
                    continue
                if a.state == "dispatching":
                    successor = records.lose(record, groups[a.index], a, why, now, self.limits)
                    if successor is not None:
                        record.attempts.append(successor)
                        groups[a.index].append(successor)
                if not keep_cleanup and a.cleanup in records.CLEANUP_DONE:
                    a.cleanup = None  # the site made nothing under this key: nothing to do there
            if _fingerprint(record) != before:
                self.store.touch(s, record)

    # ---- 2. watch -------------------------------------------------------------------------
    def _watch(self, now: float, remote: bool) -> None:
        with self.store.db.sessions() as s:
            rows = s.execute(
                select(JobAttempt.site, JobAttempt.piece, JobAttempt.piece_version).join(JobRecord).where(
                    JobAttempt.piece.is_not(None), self._mine,
                    or_(JobAttempt.state.in_(("idle", "running", "held")),
                        (JobAttempt.state == "completed") & JobAttempt.result & JobRecord.finished_at.is_(None)))
            ).all()
            waiting = set(s.scalars(select(JobAttempt.site).join(JobRecord).where(
                JobAttempt.state == "dispatching", self._mine)).all())
        by_site: dict[str, dict[str, int | None]] = {}
        for site, piece, version in rows:
            by_site.setdefault(site, {})[piece] = version
        answers: dict[str, dict[str, Any] | None] = {}
        if self.name in by_site:
            answers[self.name] = self.jobs.piece_statuses(by_site[self.name])
        if remote:
            futures: dict[str, Future] = {}
            for site, known in by_site.items():
                if site != self.name:
                    futures[site] = self._pool.submit(self._ask_statuses, site, known)
            if futures:
                wait(futures.values(), timeout=self.peer_timeout + 5)
            for site, future in futures.items():
                answers[site] = future.result() if future.done() else None
        for site, answer in answers.items():
            if answer is None:
                self._failed(site)
                continue
            self._ok(site)
            self._apply(site, answer)
        if remote:
            with self._lock:
                sending = set(self._sending.values())  # a piece being sent (and staged) there is contact
            for site in (set(by_site) | waiting) - {self.name} - sending:
                silent = self._silent_for(site, now)
                if silent > self.site_lost_after:
                    self._lose_site(site, f"{site} did not answer for {silent:.0f} s")

    def _ask_statuses(self, site: str, known: dict[str, int | None]) -> dict[str, Any] | None:
        url = self.membership.url_of(site)
        if url is None:
            return None
        try:
            r = self.http.post(f"{url}/api/v1/peer/pieces/status", json={"pieces": known}, timeout=self.peer_timeout)
        except requests.RequestException as exc:
            log.info("%s did not answer the pieces' status: %s", site, type(exc).__name__)
            return None
        if not r.ok:
            log.warning("%s answered %d to the pieces' status: %s", site, r.status_code, r.text[:200])
            return None
        try:
            body = r.json()
        except ValueError:
            return None
        return body if isinstance(body, dict) else None

    def _success_code(self, record: JobRecord) -> int | None:
        if record.id not in self._success_codes:
            if len(self._success_codes) > 10_000:
                self._success_codes.clear()
            self._success_codes[record.id] = success_exit_code(record.submit_text)
        return self._success_codes[record.id]

    def _apply(self, site: str, answer: dict[str, Any]) -> None:
        pieces = answer.get("pieces") or {}
        missing = set(answer.get("missing") or [])
        if not pieces and not missing:
            return
        now = self.clock()
        with self.store.session() as s:
            ids = list(pieces) + list(missing)
            atts = s.scalars(select(JobAttempt).where(JobAttempt.piece.in_(ids))).all()
            job_ids = {a.job_id for a in atts}
            recs = s.scalars(select(JobRecord).where(JobRecord.id.in_(job_ids), self._mine)
                             .options(selectinload(JobRecord.attempts))).all()
            for record in recs:
                before = _fingerprint(record)
                groups = records.by_input(record.attempts)
                by_piece_index = {(a.piece, a.index): a for a in record.attempts if a.piece is not None}
                for piece_id, body in pieces.items():
                    for proc in body.get("procs") or []:
                        a = by_piece_index.get((piece_id, proc.get("index")))
                        if a is None:
                            continue
                        a.piece_version = body.get("version")
                        verdict = classify(proc, removed_by_user=record.removed_at is not None,
                                           max_evictions=self.limits.max_evictions,
                                           success_exit_code=self._success_code(record))
                        if verdict.kind == "lost":
                            log.warning("job %s input %d (attempt %d) lost at %s: %s", record.id, a.index, a.number,
                                        site, verdict.reason)
                        successor = records.apply_verdict(record, groups[a.index], a, verdict, proc, now,
                                                          self.limits)
                        if successor is not None:
                            record.attempts.append(successor)
                            groups[a.index].append(successor)
                if missing & {a.piece for a in record.attempts}:
                    for successor in records.lose_site(record, site, f"{site} no longer has the piece", now,
                                                       self.limits, pieces=missing):
                        record.attempts.append(successor)
                if _fingerprint(record) != before:
                    self.store.touch(s, record)

    def _lose_site(self, site: str, reason: str) -> None:
        now = self.clock()
        with self.store.session() as s:
            job_ids = set(s.scalars(select(JobAttempt.job_id).join(JobRecord).where(
                JobAttempt.site == site, JobRecord.finished_at.is_(None), self._mine)).all())
            recs = s.scalars(select(JobRecord).where(JobRecord.id.in_(job_ids), self._mine)
                             .options(selectinload(JobRecord.attempts))).all()
            for record in recs:
                before = _fingerprint(record)
                for successor in records.lose_site(record, site, reason, now, self.limits):
                    record.attempts.append(successor)
                for a in record.attempts:  # pieces being sent there: lost too (the answer never came)
                    if a.site == site and a.state == "dispatching":
                        successor = records.lose(record, records.by_input(record.attempts)[a.index], a, reason,
                                                 now, self.limits)
                        if successor is not None:
                            record.attempts.append(successor)
                if _fingerprint(record) != before:
                    log.warning("job %s: attempts at %s lost: %s", record.id, site, reason)
                    self.store.touch(s, record)
        if job_ids:
            self.wake()

    # ---- 3. clean ----------------------------------------------------------------------------
    def _clean(self, remote: bool) -> None:
        with self.store.db.sessions() as s:
            todo = records.to_clean(s.scalars(select(JobAttempt).join(JobRecord).where(
                JobAttempt.cleanup.in_(tuple(records.CLEANUP_DONE)), self._mine)).all())
        for (piece, index), (site, what) in _cleanup_calls(todo).items():
            if site != self.name and not remote:
                continue
            with self._lock:
                if (piece, index) in self._cleaning:
                    continue
                self._cleaning.add((piece, index))
            try:
                self._pool.submit(self._clean_one, site, piece, index, what)
            except RuntimeError:
                with self._lock:
                    self._cleaning.discard((piece, index))

    def remove_now(self, job_id: str, timeout: float) -> None:
        """Carry out a killed job's removals at its sites now, waiting at most ``timeout`` s (what is not
        done by then is asked again every round, and the status says so)."""
        with self.store.db.sessions() as s:
            todo = records.to_clean(s.scalars(select(JobAttempt).where(
                JobAttempt.job_id == job_id, JobAttempt.cleanup == "remove")).all())
        futures = []
        for (piece, index), (site, what) in _cleanup_calls(todo).items():
            with self._lock:
                if (piece, index) in self._cleaning:
                    continue
                self._cleaning.add((piece, index))
            try:
                futures.append(self._pool.submit(self._clean_one, site, piece, index, what, min(timeout, 5.0)))
            except RuntimeError:
                with self._lock:
                    self._cleaning.discard((piece, index))
        if futures:
            wait(futures, timeout=timeout)

    def _clean_one(self, site: str, piece: str, index: int | None, what: str, timeout: float | None = None) -> None:
        try:
            done, pending = self._carry_out(site, piece, index, what, timeout or self.peer_timeout)
            self._cleaned(piece, index, what, done, pending)
        except Exception:
            log.exception("cleanup of %s at %s failed", piece, site)
        finally:
            with self._lock:
                self._cleaning.discard((piece, index))

    def _carry_out(self, site: str, piece: str, index: int | None, what: str,
                   timeout: float) -> tuple[bool, str | None]:
        """Remove a piece (``index`` None: stop it, or with ``what`` "purge" remove it whole) or one input
        of it at its site.  (done there?, the site's pending-removal sentence, if it gave one)."""
        if site == self.name:
            try:
                if what == "purge":
                    return self.purge_local(piece) == "purged", None
                if index is None:
                    answer = self.jobs.kill(piece)
                    return not answer.get("removal"), answer.get("removal")
                return self.jobs.remove_input(piece, index, "superseded or lost")["state"] == "deleted", None
            except NotFound:
                return True, None
            except PocketgridError as exc:
                log.warning("cleanup of %s here: %s", piece, exc.message)
                return False, None
        url = self.membership.url_of(site)
        if url is None:
            return False, None
        path = f"/api/v1/peer/pieces/{quote(piece)}" + ("" if index is None else f"/inputs/{index}")
        try:
            r = self.http.delete(f"{url}{path}", params={"purge": 1} if what == "purge" else None, timeout=timeout)
        except requests.RequestException:
            self._failed(site)
            return False, None
        self._ok(site)
        if r.status_code == 404:
            return True, None  # nothing of it there
        if not r.ok:
            log.warning("cleanup of %s at %s: %d %s", piece, site, r.status_code, r.text[:200])
            return False, None
        try:
            body = r.json()
        except ValueError:
            return False, None
        if what == "purge":
            return body.get("state") == "purged", None
        if index is None:
            return not body.get("removal"), body.get("removal")
        return body.get("state") == "deleted", None

    def _cleaned(self, piece: str, index: int | None, what: str, done: bool, pending: str | None) -> None:
        with self.store.session() as s:
            q = select(JobAttempt).join(JobRecord).where(JobAttempt.piece == piece, JobAttempt.cleanup == what,
                                                         self._mine)
            if index is not None:
                q = q.where(JobAttempt.index == index)
            atts = s.scalars(q).all()
            changed: set[str] = set()
            for a in atts:
                said = (a.status or {}).get("removal")
                if done:
                    a.cleanup = records.CLEANUP_DONE[what]
                    if said:
                        a.status = {k: v for k, v in a.status.items() if k != "removal"}
                    changed.add(a.job_id)
                elif pending and said != pending:
                    a.status = {**(a.status or {}), "removal": pending}
                    changed.add(a.job_id)
            for job_id in changed:
                record = s.get(JobRecord, job_id)
                if record is None:
                    continue
                if record.purged_at is not None:
                    if not any(a.cleanup in records.CLEANUP_DONE for a in record.attempts):
                        s.delete(record)  # every site removed its pieces: the record goes too
                        log.info("job %s: every piece removed; its record is gone", job_id)
                    continue
                self.store.touch(s, record)

    # ---- 4. pins ------------------------------------------------------------------------------
    def _pins(self, remote: bool) -> None:
        """Pass a job's pin or unpin on to the sites holding its pieces (asked again until they answer)."""
        with self.store.db.sessions() as s:
            rows = s.execute(
                select(JobAttempt.site, JobAttempt.piece, JobRecord.pinned).join(JobRecord).where(
                    JobAttempt.piece.is_not(None), JobRecord.purged_at.is_(None), self._mine,
                    JobAttempt.site_pinned != JobRecord.pinned)
            ).all()
        by_site: dict[str, dict[str, bool]] = {}
        for site, piece, pinned in rows:
            by_site.setdefault(site, {})[piece] = bool(pinned)
        for site, pins in by_site.items():
            if site != self.name and not remote:
                continue
            with self._lock:
                if ("pin", site) in self._cleaning:
                    continue
                self._cleaning.add(("pin", site))  # type: ignore[arg-type]
            try:
                self._pool.submit(self._pin_site, site, pins)
            except RuntimeError:
                with self._lock:
                    self._cleaning.discard(("pin", site))  # type: ignore[arg-type]

    def _pin_site(self, site: str, pins: dict[str, bool]) -> None:
        try:
            if site == self.name:
                self.jobs.set_pinned(pins)
            else:
                url = self.membership.url_of(site)
                if url is None:
                    return
                try:
                    r = self.http.post(f"{url}/api/v1/peer/pieces/pin", json={"pieces": pins},
                                       timeout=self.peer_timeout)
                except requests.RequestException:
                    self._failed(site)
                    return
                self._ok(site)
                if not r.ok:
                    log.warning("pinning pieces at %s: %d %s", site, r.status_code, r.text[:200])
                    return
            with self.store.db.session() as s:
                for a in s.scalars(select(JobAttempt).join(JobRecord).where(
                        JobAttempt.site == site, JobAttempt.piece.in_(list(pins)), self._mine)):
                    a.site_pinned = pins[a.piece]  # type: ignore[index]
        except Exception:
            log.exception("pinning pieces at %s failed", site)
        finally:
            with self._lock:
                self._cleaning.discard(("pin", site))  # type: ignore[arg-type]


def _cleanup_calls(todo: list[JobAttempt]) -> dict[tuple[str, int | None], tuple[str, str]]:
    """One call per piece (stop it, or purge it) or per piece input (delete it): (piece, index) -> (site, what)."""
    calls: dict[tuple[str, int | None], tuple[str, str]] = {}
    for a in todo:
        target = (a.piece, a.index) if a.cleanup == "delete" else (a.piece, None)
        calls[target] = (a.site, a.cleanup)  # type: ignore[index,assignment]
    return calls


def _quota_details(refused: dict[str, Any]) -> dict[str, Any]:
    """The sites' quota numbers (per site: used, limit, needed, the largest things to remove), shown
    with the failed input as a quota refusal shows them."""
    quota = [q for r in refused.values() if r.get("kind") == "quota" for q in r.get("quota") or []]
    return {"quota": quota} if quota else {}


def refused_everywhere(refused: dict[str, Any]) -> str:
    """Why an input failed when every site refused it: each site's reason; for a quota, the numbers and
    what to purge (as peer/storage.py's QuotaExceeded.every_site says it)."""
    quotas = [q for r in refused.values() if r.get("kind") == "quota" for q in r.get("quota") or []]
    parts = []
    for site, r in sorted(refused.items()):
        if r.get("kind") == "quota":
            shown = [str(q.get("summary") or "") for q in r.get("quota") or [] if q.get("summary")]
            parts.extend(shown or [f"{site}: {r.get('message')}"])
        else:
            message = str(r.get("message") or "")
            parts.append(message if message.startswith(site) else f"{site}: {message}")
    text = "no site will take this input: " + "; ".join(parts)
    if quotas:
        text += f". {PURGE_HINT}"
    return text


def _fingerprint(record: JobRecord) -> list[tuple[Any, ...]]:
    """What the user may see of a record's attempts (to know whether a round changed it)."""
    return [(a.index, a.number, a.state, a.site, a.result, a.reason, a.cleanup, repr(a.status))
            for a in record.attempts]
