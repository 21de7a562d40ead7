"""Retention: what a peer removes by itself, so that a site can run for years.

* **Finished jobs, at their home.**  A job's record (peer/records.py) whose
  every input has a result or a final verdict (its ``finished_at``) is
  removed ``job_retention_seconds`` later (30 days by default; 0 = never):
  the record, its files (``<state>/records/<job>/``), and then the job's
  pieces at their sites (``DELETE /api/v1/peer/pieces/<piece>?purge=1``; a
  piece here at once; at a site that does not answer, the record stays as a
  tombstone, gone for its owner, with each attempt's ``cleanup`` "purge"
  asked again by the job manager until the site has removed it).  Not while
  it is **pinned** (``pocketgrid pin``, passed on to the pieces' sites), not
  while a proc of its pieces here is still with the executor, and not while
  one of its outputs or its executable is being downloaded (peer/in_use.py).
* **Pieces of other homes' jobs** (a site's safety net, for pieces whose home
  is gone): a finished piece is removed ``2 × job_retention_seconds`` after
  it finished (twice: its home removes it with the record before that, and
  the record expires only after the job's LAST input finished), unless it is
  pinned; a piece of this home's that no record names any more goes after
  ``job_retention_seconds``.
* **Finished uploads** (``uploads/u-<hash>/`` of the publishing area, from tus
  or ``PUT /api/v1/files/uploads``) are removed ``upload_retention_seconds``
  after their last write, unless a job whose home is this peer and that has
  not finished names it as an input, or it is being downloaded or staged
  from right now.  Unfinished tus uploads expire on their own after
  ``upload_expiry_seconds`` (peer/resumable_uploads.py); the sweeper runs
  that sweep too.
* **Idempotency keys** older than ``idempotency_key_seconds`` (7 days).
* **Orphans**: a staging directory with no piece row (a crash between
  removing the row and the directory) is removed after a day.

One sweeper thread per peer (started by ``PeerServices.start``) runs every
``retention_sweep_interval`` seconds.  :meth:`Retention.sweep` with
``dry_run=True`` returns the same plan without removing anything (``GET
/api/v1/admin/gc``, ``pocketgrid gc --dry-run``).  Time comes from ``clock``
(or ``now=``), so tests move it instead of sleeping.

A user may also remove a finished job at once (``pocketgrid purge``: the
record and its pieces, pinned or not), or an upload, e.g. after a quota
refusal (peer/storage.py).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from sqlalchemy import delete, func, or_, select

from pocketgrid.errors import Conflict, NotFound

from .db import Database
from . import records as record_rules
from .in_use import InUse, file_key, job_key
from .models import FileDigest, IdempotencyKey, Job, JobAttempt, JobRecord, Proc
from .publishing import PublishingArea
from .staging import Stager
from .storage import tree_bytes
from .uploads import UPLOADS, check_visible

log = logging.getLogger(__name__)

#: A staging directory without a job row is an orphan only after this long (staging renames the
#: directory into place a moment before the row is committed).
ORPHAN_GRACE_SECONDS = 86400.0
#: The first sweep after start-up waits at most this long (then every interval).
FIRST_SWEEP_SECONDS = 60.0
#: Procs in these executor states are not done yet, whatever the event log says.
ACTIVE_LOCAL_STATES = ("queued", "running")


@dataclass
class Item:
    """One thing the sweeper looked at: ``action`` remove or keep (``reason`` says why it stays)."""

    kind: str  # job | piece | upload | idempotency-keys | orphan
    name: str  # job ID, piece ID, publishing-area path, or a count
    owner: str
    bytes: int
    since: float  # finished / last written / created
    expires_at: float
    action: str  # remove | keep
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Retention:
    def __init__(self, *, name: str, db: Database, jobs: Any, stager: Stager, publishing: PublishingArea,
                 in_use: InUse, job_seconds: float, upload_seconds: float, idempotency_seconds: float,
                 interval: float = 300.0, clock: Callable[[], float] = time.time,
                 quotas: Any = None, store: Any = None, records_root: Path | None = None,
                 wake: Callable[[], None] = lambda: None, site_lost_after: float = 120.0) -> None:
        self.name = name
        self.site_lost_after = site_lost_after
        self.store = store  # the job records (peer/record_store.py): None on a peer without a home side
        self.records_root = records_root
        self.wake = wake  # the job manager: pieces at other sites to remove, pins to pass on
        self.db = db
        self.jobs = jobs
        self.stager = stager
        self.publishing = publishing
        self.in_use = in_use
        self.job_seconds = job_seconds
        self.upload_seconds = upload_seconds
        self.idempotency_seconds = idempotency_seconds
        self.interval = interval
        self.clock = clock
        self.quotas = quotas  # told about removed jobs (it keeps finished jobs' sizes)
        #: More housekeeping run with every sweep (expired tus uploads, audit summaries).
        self.also: list[Callable[[], Any]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sweep_lock = threading.Lock()

    # ---- the thread -----------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._loop, name="retention", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        delay = min(self.interval, FIRST_SWEEP_SECONDS)
        while not self._stop.wait(delay):
            delay = self.interval
            try:
                self.sweep()
            except Exception:  # keep sweeping whatever one round hit
                log.exception("retention sweep failed")

    # ---- finished jobs ----------------------------------------------------------
    def refresh(self) -> None:
        """Record ``finished_at`` for the jobs that finished since the last look (from their event logs)."""
        with self.db.sessions() as s:
            unfinished = list(s.scalars(select(Job.id).where(Job.finished_at.is_(None))))
        for job_id in unfinished:
            self._refresh_one(job_id)

    def _refresh_one(self, job_id: str) -> dict[str, Any] | None:
        try:
            body = self.jobs.status(job_id, "", is_admin=True)
        except NotFound:
            return None
        except Exception:  # one unreadable event log must not stop the sweep
            log.exception("retention: cannot read the status of job %s", job_id)
            return None
        if body["state"] in ("completed", "failed", "removed"):
            with self.db.session() as s:
                row = s.get(Job, job_id)
                if row is not None and row.finished_at is None:
                    row.finished_at = body.get("finished_at") or self.clock()
        return body

    def _executor_done(self, job_id: str) -> bool:
        with self.db.sessions() as s:
            active = s.scalar(select(func.count()).select_from(Proc).where(
                Proc.job_id == job_id, Proc.local_state.in_(ACTIVE_LOCAL_STATES)))
        return not active

    def _referenced_pieces(self) -> set[str]:
        """Pieces named by a record this peer manages (they go with their record, not by their own age; a
        replica kept here for another manager does not keep them: the safety net applies)."""
        with self.db.sessions() as s:
            return set(s.scalars(select(JobAttempt.piece).join(JobRecord).where(
                JobAttempt.piece.is_not(None), JobAttempt.site == self.name, JobRecord.manager == self.name)))

    def _local_pieces(self, job_id: str) -> list[str]:
        with self.db.sessions() as s:
            return sorted(set(s.scalars(select(JobAttempt.piece).where(
                JobAttempt.job_id == job_id, JobAttempt.site == self.name, JobAttempt.piece.is_not(None),
                or_(JobAttempt.cleanup.is_(None), JobAttempt.cleanup.not_in(("purged",)))))))

    def _record_bytes(self, job_id: str) -> int:
        seen: set[tuple[int, int]] = set()
        total = tree_bytes(self.records_root / job_id, seen) if self.records_root is not None else 0
        return total + sum(tree_bytes(self.stager.job_root(p), seen) for p in self._local_pieces(job_id))

    def _record_items(self, now: float) -> list[Item]:
        if self.job_seconds <= 0:
            return []
        with self.db.sessions() as s:
            rows = list(s.execute(select(JobRecord.id, JobRecord.owner, JobRecord.finished_at, JobRecord.pinned).where(
                JobRecord.purged_at.is_(None), JobRecord.finished_at.is_not(None),
                JobRecord.manager == self.name,  # a replica goes when its manager removes the record
                JobRecord.finished_at <= now - self.job_seconds).order_by(JobRecord.finished_at)))
        items = []
        for job_id, owner, finished, pinned in rows:
            reason = ""
            if pinned:
                reason = "pinned"
            elif not all(self._executor_done(p) for p in self._local_pieces(job_id)):
                reason = "a proc is still with the executor"
            elif self.in_use.count(job_key(job_id)) or any(self.in_use.count(job_key(p))
                                                           for p in self._local_pieces(job_id)):
                reason = "being downloaded"
            items.append(Item("job", job_id, owner, self._record_bytes(job_id), finished,
                              finished + self.job_seconds, "keep" if reason else "remove", reason))
        return items

    def _piece_items(self, now: float) -> list[Item]:
        """Finished pieces past their time that no record here removes: other homes' (twice the job
        retention: the safety net when the home is gone) and this home's that no record names any more."""
        if self.job_seconds <= 0:
            return []
        with self.db.sessions() as s:
            rows = list(s.execute(select(Job.id, Job.owner, Job.finished_at, Job.pinned, Job.entry_peer).where(
                Job.finished_at.is_not(None), Job.finished_at <= now - self.job_seconds).order_by(Job.finished_at)))
        referenced = self._referenced_pieces() if rows else set()
        items = []
        for piece_id, owner, finished, pinned, home in rows:
            if piece_id in referenced:
                continue  # its record removes it (or keeps it: pinned, still shown)
            seconds = self.job_seconds * (2 if home != self.name else 1)
            if finished > now - seconds:
                continue
            reason = ""
            if pinned:
                reason = "pinned"
            elif not self._executor_done(piece_id):
                reason = "a proc is still with the executor"
            elif self.in_use.count(job_key(piece_id)):
                reason = "being downloaded"
            items.append(Item("piece", piece_id, owner, tree_bytes(self.stager.job_root(piece_id)), finished,
                              finished + seconds, "keep" if reason else "remove", reason))
        return items

    def remove_job(self, job_id: str) -> int:
        """Remove a piece's rows, files and cached digests; 409 while it is being downloaded.  Bytes freed."""
        key = job_key(job_id)
        if not self.in_use.claim(key):
            raise Conflict(f"job {job_id} is being downloaded right now: retry when the download is over")
        try:
            root = self.stager.job_root(job_id)
            size = tree_bytes(root)
            with self.db.session() as s:
                job = s.get(Job, job_id)
                if job is None:
                    return 0
                s.delete(job)  # its procs go with it (cascade)
                s.execute(delete(FileDigest).where(FileDigest.path.startswith(f"{root}/", autoescape=True)))
            self.jobs.forget(job_id)
            if self.quotas is not None:
                self.quotas.forget(job_id)
            _remove_tree(root)
            return size
        finally:
            self.in_use.unclaim(key)

    def purge_piece(self, piece_id: str) -> str:
        """Remove one piece here whole (its job's record expired or was purged at its home): "stopping"
        while a proc still runs (ask again), "purged" once it is gone (also when it never was here)."""
        with self.db.sessions() as s:
            if s.get(Job, piece_id) is None:
                return "purged"
        if not self._executor_done(piece_id):
            try:
                self.jobs.kill(piece_id)
            except NotFound:
                return "purged"
            if not self._executor_done(piece_id):
                return "stopping"
        try:
            freed = self.remove_job(piece_id)
        except Conflict:
            return "stopping"  # being downloaded: asked again later
        log.info("retention: piece %s removed (its record is gone; %d bytes)", piece_id, freed)
        return "purged"

    def remove_record(self, job_id: str) -> int:
        """Remove a job's record and its files, and its pieces (here at once; at other sites through the
        job manager, which asks until they answer).  409 while it is being downloaded.  Bytes freed here."""
        key = job_key(job_id)
        if not self.in_use.claim(key):
            raise Conflict(f"job {job_id} is being downloaded right now: retry when the download is over")
        try:
            size = self._record_bytes(job_id)
            with self.store.session() as s:
                record = s.get(JobRecord, job_id)
                if record is None or record.purged_at is not None:
                    return 0
                record.purged_at = self.clock()
                remote = False
                for a in record.attempts:
                    if a.piece is not None and a.site is not None:
                        a.cleanup = "purge"
                        remote = remote or a.site != self.name
                    elif a.cleanup in record_rules.CLEANUP_DONE:
                        a.cleanup = None  # a piece never made (or never answered): nothing to remove
            if self.records_root is not None:
                _remove_tree(self.records_root / job_id)
            for piece in self._local_pieces(job_id):
                if self.purge_piece(piece) == "purged":
                    with self.store.session() as s:
                        for a in s.scalars(select(JobAttempt).where(JobAttempt.piece == piece,
                                                                    JobAttempt.cleanup == "purge")):
                            a.cleanup = "purged"
            with self.store.session() as s:
                record = s.get(JobRecord, job_id)
                if record is not None and not any(a.cleanup in record_rules.CLEANUP_DONE for a in record.attempts):
                    s.delete(record)  # nothing left anywhere: no tombstone needed
            if remote:
                self.wake()
            return size
        finally:
            self.in_use.unclaim(key)

    def _tombstones(self) -> None:
        """Records gone for their owners whose pieces are all removed: their rows go too."""
        with self.store.session() as s:
            for record in s.scalars(select(JobRecord).where(JobRecord.purged_at.is_not(None))):
                if not any(a.cleanup in record_rules.CLEANUP_DONE for a in record.attempts):
                    s.delete(record)

    # ---- uploads --------------------------------------------------------------------
    def _live_inputs(self) -> set[str]:
        """Publishing-area paths named as inputs by this home's jobs that have not finished."""
        with self.db.sessions() as s:
            inputs = list(s.scalars(select(JobRecord.inputs).where(JobRecord.finished_at.is_(None),
                                                                   JobRecord.purged_at.is_(None))))
        return {i["path"] for items in inputs for i in items or [] if isinstance(i, dict) and isinstance(i.get("path"), str)}

    def _upload_items(self, now: float) -> list[Item]:
        if self.upload_seconds <= 0:
            return []
        root = self.publishing.root / UPLOADS
        live: set[str] | None = None
        items = []
        for user_dir in sorted(root.glob("u-*")):
            for dirpath, dirnames, filenames in os.walk(user_dir):
                dirnames.sort()
                for fn in sorted(filenames):
                    full = Path(dirpath) / fn
                    try:
                        st = full.lstat()
                    except FileNotFoundError:
                        continue
                    if st.st_mtime > now - self.upload_seconds:
                        continue
                    rel = full.relative_to(self.publishing.root).as_posix()
                    if live is None:
                        live = self._live_inputs()
                    reason = ""
                    if rel in live:
                        reason = "a job that has not finished uses it"
                    elif self.in_use.count(file_key(rel)):
                        reason = "being downloaded or staged from"
                    items.append(Item("upload", rel, user_dir.name, st.st_size, st.st_mtime,
                                      st.st_mtime + self.upload_seconds, "keep" if reason else "remove", reason))
        return items

    def remove_upload(self, rel: str, live: set[str] | None = None) -> int:
        """Remove one file of an upload area (and folders it leaves empty); 409 while it is read or a live
        job uses it (``live``: those inputs, if the caller has them already)."""
        key = file_key(rel)
        if rel in (self._live_inputs() if live is None else live):
            raise Conflict(f"{rel} is an input of a job that has not finished here: remove it when the job is done")
        if not self.in_use.claim(key):
            raise Conflict(f"{rel} is being downloaded or staged from right now: retry in a moment")
        try:
            path = self.publishing.root / rel
            try:
                size = path.lstat().st_size
                path.unlink()
            except FileNotFoundError:
                return 0
            with self.db.session() as s:
                s.execute(delete(FileDigest).where(FileDigest.path == str(path)))
            top = self.publishing.root / UPLOADS
            parent = path.parent
            while parent != top and top in parent.parents:
                try:
                    parent.rmdir()  # only if empty
                except OSError:
                    break
                parent = parent.parent
            return size
        finally:
            self.in_use.unclaim(key)

    # ---- idempotency keys and orphans ---------------------------------------------------------
    def _key_items(self, now: float) -> list[Item]:
        if self.idempotency_seconds <= 0:
            return []
        cutoff = now - self.idempotency_seconds
        with self.db.sessions() as s:
            n, oldest = s.execute(select(func.count(), func.min(IdempotencyKey.created_at)).where(
                IdempotencyKey.created_at <= cutoff)).one()
        if not n:
            return []
        return [Item("idempotency-keys", f"{n} keys", "", 0, oldest, oldest + self.idempotency_seconds, "remove")]

    def _orphan_items(self, now: float) -> list[Item]:
        with self.db.sessions() as s:
            known = set(s.scalars(select(Job.id)))
        items = []
        for d in self.stager.root.iterdir():
            if d.name.startswith(".") or d.name in known or not d.is_dir():
                continue
            mtime = d.stat().st_mtime
            if mtime <= now - ORPHAN_GRACE_SECONDS:
                items.append(Item("orphan", d.name, "", tree_bytes(d), mtime, mtime + ORPHAN_GRACE_SECONDS, "remove",
                                  "a staging directory without a job"))
        return items

    # ---- the sweep ---------------------------------------------------------------------------
    def plan(self, now: float | None = None) -> list[Item]:
        """Everything past its time: what a sweep at ``now`` would remove, and what it would keep and why."""
        now = self.clock() if now is None else now
        self.refresh()
        records = self._record_items(now) if self.store is not None else []
        return records + self._piece_items(now) + self._upload_items(now) + self._key_items(now) + self._orphan_items(now)

    def sweep(self, now: float | None = None, *, dry_run: bool = False) -> dict[str, Any]:
        """Remove what is past its time (or, ``dry_run``, only say what would go)."""
        now = self.clock() if now is None else now
        with self._sweep_lock:
            items = self.plan(now)
            if not dry_run:
                live = self._live_inputs() if any(i.kind == "upload" and i.action == "remove" for i in items) else set()
                for item in items:
                    if item.action == "remove":
                        self._remove(item, now, live)
                if self.store is not None:
                    self._tombstones()
                for extra in self.also:
                    try:
                        extra()
                    except Exception:
                        log.exception("retention: housekeeping step %r failed", extra)
        removed = [i for i in items if i.action == "remove"]
        kept = [i for i in items if i.action == "keep"]
        if removed and not dry_run:
            log.info("retention: removed %d jobs, %d pieces, %d uploads, %d orphans (%d bytes)%s",
                     sum(i.kind == "job" for i in removed), sum(i.kind == "piece" for i in removed),
                     sum(i.kind == "upload" for i in removed),
                     sum(i.kind == "orphan" for i in removed), sum(i.bytes for i in removed),
                     f"; kept {len(kept)} past their time" if kept else "")
        return {"at": now, "dry_run": dry_run, "remove": [i.to_dict() for i in removed],
                "keep": [i.to_dict() for i in kept], "bytes": sum(i.bytes for i in removed)}

    def _remove(self, item: Item, now: float, live: set[str]) -> None:
        try:
            if item.kind == "job":
                self.remove_record(item.name)
                log.info("retention: removed job %s of %s (finished %s, %d bytes here)", item.name, item.owner,
                         time.strftime("%Y-%m-%d %H:%M", time.localtime(item.since)), item.bytes)
            elif item.kind == "piece":
                self.remove_job(item.name)
                log.info("retention: removed piece %s of %s (finished %s, %d bytes)", item.name, item.owner,
                         time.strftime("%Y-%m-%d %H:%M", time.localtime(item.since)), item.bytes)
            elif item.kind == "upload":
                self.remove_upload(item.name, live)
                log.info("retention: removed upload %s (%d bytes)", item.name, item.bytes)
            elif item.kind == "idempotency-keys":
                with self.db.session() as s:
                    s.execute(delete(IdempotencyKey).where(IdempotencyKey.created_at <= now - self.idempotency_seconds))
            elif item.kind == "orphan":
                _remove_tree(self.stager.job_root(item.name))
        except Conflict as exc:  # a download began since the plan was made
            item.action, item.reason = "keep", exc.message

    # ---- what users do (at the job's home) ---------------------------------------------------
    def _owned(self, job_id: str, owner: str, is_admin: bool) -> JobRecord:
        with self.db.sessions() as s:
            record = s.get(JobRecord, job_id)
            if record is None or record.purged_at is not None:
                raise NotFound(f"no such job {job_id!r}")
            if not (is_admin or record.owner == owner):
                from .jobs import NotYours

                raise NotYours(job_id, record.owner)
            record.attempts  # load while the session is open
            if record.manager != self.name:  # a replica kept here for another manager
                from .replicas import not_managed_here

                raise not_managed_here(record, self.name, self.site_lost_after)
            return record

    def pin(self, job_id: str, owner: str, *, is_admin: bool, pinned: bool) -> dict[str, Any]:
        """Pin (keep for ever) or unpin one of the caller's jobs; its pieces' sites are told (the job
        manager asks until they answer)."""
        self._owned(job_id, owner, is_admin)  # 404 for another user's job
        with self.store.session() as s:
            record = s.get(JobRecord, job_id)
            assert record is not None
            record.pinned = pinned
            self.store.touch(s, record)
            finished = record.finished_at
            expires = record_rules.expires_at(record, self.job_seconds)
        self.wake()
        return {"id": job_id, "pinned": pinned, "finished_at": finished, "expires_at": expires}

    def purge(self, job_id: str, owner: str, *, is_admin: bool) -> dict[str, Any]:
        """Remove one of the caller's finished jobs now (pinned or not), with its pieces everywhere."""
        record = self._owned(job_id, owner, is_admin)  # 404 for another user's job
        state = (record.summary or {}).get("state") or record_rules.summary(record)["state"]
        if not record_rules.record_finished(record) or not all(
                self._executor_done(p) for p in self._local_pieces(job_id)):
            raise Conflict(f"job {job_id} is {state}: kill it first (`pocketgrid kill {job_id}`), "
                           "then purge it once it has stopped", state=state)
        freed = self.remove_record(job_id)
        log.info("job %s of %s purged by its owner (%d bytes here)", job_id, owner, freed)
        return {"id": job_id, "removed": True, "bytes": freed}

    def delete_upload(self, who: Any, rel_path: str) -> dict[str, Any]:
        """Remove one of the caller's uploads (``uploads/u-.../NAME``) now."""
        check_visible(self.publishing, who, rel_path)  # another user's upload: 404, as if it did not exist
        real = self.publishing.file(rel_path)  # 404 when there is no such file
        rel = self.publishing.relative(real)
        if not rel.startswith(f"{UPLOADS}/u-"):
            raise NotFound(f"no such upload {rel_path!r}: only files in an upload area (uploads/u-...) can be removed")
        return {"path": rel, "removed": True, "bytes": self.remove_upload(rel)}


def _remove_tree(root: Path) -> None:
    def report(_func: Any, path: str, exc_info: Any) -> None:
        log.warning("retention: could not remove %s: %s", path, exc_info[1])

    if root.exists():
        shutil.rmtree(root, onerror=report)
