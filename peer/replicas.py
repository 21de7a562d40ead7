"""A job's record on a second peer: the deputy's replica, its input copies, the takeover, and the return.

docs/architecture.md, *Jobs across sites*, *The home dies*.  Words:

* The **manager** of a job is the peer that drives it (``JobRecord.manager``; the home at submit,
  epoch 1).  Its **deputy** (``JobRecord.deputy``, another member, chosen at submit) holds a
  **replica**: the record as a document (peer/records.py ``to_document``), pushed by the manager at
  submit and after every change (``PUT /api/v1/peer/records/<id>``, coalesced: at most about once a
  second per record), plus the executable and **copies of the inputs**, which the deputy fetches
  itself from the manager (``GET /api/v1/peer/records/<id>/executable`` and ``.../inputs/<i>``,
  resumable, SHA-256 verified) into ``<state>/records/<job>/``.
* A replica is a row in the deputy's ``job_records`` whose ``manager`` is another peer: the deputy's
  job manager never manages it; status, outputs and downloads are answered from it when the manager
  does not answer (peer/api_jobs.py).
* **Takeover**: the deputy asks each manager of its replicas every ``monitor_interval``; one that has
  not answered for ``site_lost_after`` and that the last question could not even reach (refused, no
  connection: not merely slow) loses its jobs to the deputy (peer/records.py ``take_over``: manager = the
  deputy, epoch + 1, what ran at the old manager runs again elsewhere from the deputy's copies).
  The new manager picks a deputy of its own and pushes to it.
* **The return**: a peer starting up asks the deputy of each record it manages; a higher claim there
  (records.py ``claim``: epoch, then version) wins: the record becomes a replica here (manager = the
  one that took over), and requests for it are relayed to the manager.  A push refused with a higher
  claim (409, a partition healed) makes the pusher yield the same way.
"""
from __future__ import annotations

import logging
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Callable

import requests
from sqlalchemy import or_, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import selectinload

from pocketgrid.errors import BadRequest, Conflict, NotFound, Unavailable
from pocketgrid.http import never_reached
from pocketgrid.transfer import download

from . import records
from .digests import DigestCache
from .job_manager import _Calls
from .membership import Membership
from .models import JobAttempt, JobRecord
from .publishing import PublishingArea
from .record_store import RecordStore

log = logging.getLogger(__name__)

#: Least time between two pushes of one record (its changes in between travel together).
PUSH_INTERVAL = 1.0
#: How long a peer relays a job's requests first to the holder it found when the job's home did not answer.
LOCATED_SECONDS = 30.0


def check_document(doc: Any) -> None:
    """A pushed record document has the shape of one (else 400, nothing applied): the record's identity
    and claim, its inputs, and each attempt's input, number and state."""
    def bad(why: str) -> BadRequest:
        return BadRequest(f"not a record document: {why}")

    rec = doc.get("record") if isinstance(doc, dict) else None
    attempts = doc.get("attempts") if isinstance(doc, dict) else None
    if not isinstance(rec, dict) or not isinstance(attempts, list):
        raise bad('expected {"record": {...}, "attempts": [...]}')
    for key in ("id", "name", "owner", "home", "manager", "executable_name", "submit_name", "submit_text"):
        if not isinstance(rec.get(key), str) or not rec[key]:
            raise bad(f"the record's {key!r} must be a non-empty string")
    for key in ("manager_epoch", "version"):
        if not isinstance(rec.get(key), int) or isinstance(rec.get(key), bool) or rec[key] < 0:
            raise bad(f"the record's {key!r} must be an integer >= 0")
    inputs = rec.get("inputs")
    if not isinstance(inputs, list) or not all(isinstance(i, dict) and isinstance(i.get("name"), str)
                                               for i in inputs):
        raise bad("the record's 'inputs' must be a list of objects with a name")
    for a in attempts:
        if not isinstance(a, dict):
            raise bad("each attempt must be an object")
        for key in ("index", "number"):
            if not isinstance(a.get(key), int) or isinstance(a.get(key), bool) or not 0 <= a[key] < 1_000_000:
                raise bad(f"an attempt's {key!r} must be an integer >= 0")
        if a["index"] >= len(inputs) or a.get("job_id") != rec["id"]:
            raise bad("an attempt names an input or a job the record does not have")


def not_managed_here(record: JobRecord, me: str, site_lost_after: float) -> Unavailable:
    """The answer to a change asked of a replica here (kill, retry, release, pin, purge) while its
    manager cannot be reached: only the manager changes a job."""
    return Unavailable(
        f"job {record.id} is managed by {record.manager}, which does not answer now; {me} keeps a copy of it "
        f"and shows it, but only its manager changes it. If {record.manager} stays silent, "
        f"{record.manager if record.deputy is None else record.deputy} takes the job over within "
        f"{site_lost_after:.0f} s: retry then", retry_after=max(1, int(site_lost_after)), manager=record.manager)


def choose_deputy(me: str, members: list[str],
                  exclude: set[str] = frozenset()) -> str | None:  # type: ignore[assignment]
    """The deputy of a record ``me`` manages: the next member after ``me`` in name order (wrapping),
    skipping ``exclude`` (a silent peer); None when ``me`` is alone.  Deterministic, and spreads the
    replicas of several homes over different deputies."""
    ring = sorted(set(members) - {me} - set(exclude))
    if not ring:
        return None
    return next((m for m in ring if m > me), ring[0])


def apply_document(s: Any, doc: dict[str, Any]) -> JobRecord:
    """Write the document's record and attempts over the local copy (or as a new row) in session ``s``.

    Attempt row IDs are this database's own; ``replica_version`` stays what it was here.
    """
    incoming = records.from_document(doc)
    existing = s.scalars(select(JobRecord).where(JobRecord.id == incoming.id)
                         .options(selectinload(JobRecord.attempts))).first()
    attempts = []
    for a in incoming.attempts:
        values = {k: getattr(a, k) for k in _attempt_keys() if k != "id" and getattr(a, k) is not None}
        attempts.append(JobAttempt(**values))
    incoming.attempts.clear()
    if existing is None:
        incoming.replica_version = None
        s.add(incoming)
        s.flush()
        incoming.attempts.extend(attempts)
        return incoming
    keep = existing.replica_version
    for key in _record_keys():
        value = getattr(incoming, key)
        if key not in ("id", "replica_version") and (value is not None or _nullable(key)):
            setattr(existing, key, value)
    existing.replica_version = keep
    existing.attempts.clear()
    s.flush()  # the old attempts go before the new ones take their (job, input, number)
    existing.attempts.extend(attempts)
    return existing


def _nullable(key: str) -> bool:
    return bool(JobRecord.__table__.columns[key].nullable)


def _record_keys() -> list[str]:
    from sqlalchemy import inspect as sa_inspect

    return [c.key for c in sa_inspect(JobRecord).column_attrs]


def _attempt_keys() -> list[str]:
    from sqlalchemy import inspect as sa_inspect

    return [c.key for c in sa_inspect(JobAttempt).column_attrs]


class Replicas:
    def __init__(
        self,
        *,
        name: str,
        url: str,
        store: RecordStore,
        membership: Membership,
        http: requests.Session,
        records_root: Path,
        publishing: PublishingArea,
        digests: DigestCache,
        limits: records.Limits,
        site_lost_after: float = 120.0,
        peer_timeout: float = 10.0,
        chunk_bytes: int = 1 << 20,
        wake: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.url = url
        self.store = store
        self.membership = membership
        self.http = http
        self.records_root = records_root
        self.publishing = publishing
        self.digests = digests
        self.limits = limits
        self.site_lost_after = site_lost_after
        self.peer_timeout = peer_timeout
        self.chunk_bytes = chunk_bytes
        self.wake = wake
        self.clock = clock
        self._lock = threading.Lock()
        self._busy: set[tuple[str, str]] = set()  # ("push" | "copy" | "probe", job or peer) under way
        self._pushed_at: dict[str, float] = {}
        self._manager_ok: dict[str, float] = {}  # manager of replicas here -> when it last answered
        self._manager_down: dict[str, float] = {}  # manager -> when a question last could not reach it
        #: Copies verified complete (job ID): not looked at again.
        self._copied: set[str] = set()
        #: deputy -> since when pushes to it fail (a deputy silent for ``site_lost_after`` is replaced)
        self._deputy_failing: dict[str, float] = {}
        self._probe_next: dict[str, int] = {}  # manager -> which of its replicas the next probe names
        #: job ID -> (holder of its record found by asking the members, until when to go there first)
        self._located: dict[str, tuple[str, float]] = {}
        self._quick = _Calls(4)  # pushes and probes: small requests
        self._slow = _Calls(2)  # copies of executables and inputs

    # ---- the manager's side ---------------------------------------------------------------
    def deputy_for(self, exclude: set[str] = frozenset()) -> str | None:  # type: ignore[assignment]
        """A deputy for a record managed here: not in ``exclude``, and not a peer whose pushes fail now
        unless no other one is left."""
        members = [m["name"] for m in self.membership.members()]
        with self._lock:
            failing = set(self._deputy_failing)
        return choose_deputy(self.name, members, set(exclude) | failing) or choose_deputy(self.name, members, exclude)

    def push(self, job_id: str, timeout: float | None = None) -> bool:
        """Send the record (managed here) to its deputy; True once the deputy has this version."""
        with self.store.db.sessions() as s:
            record = s.scalars(select(JobRecord).where(JobRecord.id == job_id)
                               .options(selectinload(JobRecord.attempts))).first()
            if record is None or record.manager != self.name or not record.deputy:
                return False
            doc = records.to_document(record)
            deputy, version = record.deputy, record.version
        url = self.membership.url_of(deputy)
        if url is None:
            return False
        doc["record"]["replica_version"] = None
        try:
            r = self.http.put(f"{url}/api/v1/peer/records/{job_id}", json={"document": doc},
                              timeout=timeout or self.peer_timeout)
        except requests.RequestException as exc:
            log.info("job %s: its deputy %s did not take the replica: %s", job_id, deputy, type(exc).__name__)
            if never_reached(exc):  # not there at all (a slow deputy is not replaced)
                with self._lock:
                    self._deputy_failing.setdefault(deputy, self.clock())
            return False
        with self._lock:
            self._deputy_failing.pop(deputy, None)
        if r.status_code == 409:
            try:
                theirs = r.json().get("document")
            except ValueError:
                theirs = None
            if isinstance(theirs, dict):
                self.yield_to(theirs, f"its deputy {deputy} holds a newer claim")
            return False
        if not r.ok:
            log.warning("job %s: its deputy %s answered %d to the replica: %s", job_id, deputy, r.status_code,
                        r.text[:200])
            return False
        with self.store.db.session() as s:
            record = s.get(JobRecord, job_id)
            if record is not None and record.manager == self.name and (record.replica_version or 0) < version:
                record.replica_version = version
        return True

    def yield_to(self, doc: dict[str, Any], why: str) -> bool:
        """A copy with a higher claim than ours exists: ours becomes a replica of it (True if applied)."""
        job_id = doc.get("record", {}).get("id")
        with self.store.session() as s:
            record = s.get(JobRecord, job_id)
            local = records.claim(record) if record is not None else None
            if records.newer_claim(local, records.claim(doc["record"])) != "newer":
                return False
            applied = apply_document(s, doc)
            s.info.setdefault("touched", {})[applied.id] = (applied.owner, applied.version)
        log.warning("job %s: managed by %s now (epoch %s): %s; this peer keeps a replica", job_id,
                    doc["record"].get("manager"), doc["record"].get("manager_epoch"), why)
        return True

    def reconcile(self) -> None:
        """At start-up, before the job manager runs: ask the deputy of each record managed here whether
        it took the job over meanwhile (a higher claim there wins: see the module's docstring)."""
        with self.store.db.sessions() as s:
            rows = s.execute(select(JobRecord.id, JobRecord.deputy).where(
                JobRecord.manager == self.name, JobRecord.deputy.is_not(None),
                JobRecord.purged_at.is_(None))).all()
        silent: set[str] = set()
        for job_id, deputy in rows:
            if deputy in silent:
                continue
            url = self.membership.url_of(deputy)
            if url is None:
                continue
            r = None
            for _ in range(2):  # a deputy that is only slow is asked twice: it may well have taken over
                try:
                    r = self.http.get(f"{url}/api/v1/peer/records/{job_id}", params={"document": 1},
                                      timeout=self.peer_timeout)
                    break
                except requests.RequestException as exc:
                    if never_reached(exc):
                        break
            if r is None:
                silent.add(deputy)
                log.warning("job %s: its deputy %s does not answer; managing it from this peer's copy (a push "
                            "meeting a newer claim there makes it yield later)", job_id, deputy)
                continue
            if r.ok:
                doc = (r.json() or {}).get("document")
                if isinstance(doc, dict):
                    self.yield_to(doc, f"its deputy {deputy} took it over while this peer was away")

    # ---- the deputy's side -----------------------------------------------------------------
    def receive(self, doc: dict[str, Any]) -> dict[str, Any]:
        """A manager's push.  Applied when its claim is newer; 409 (with our document) when ours is."""
        check_document(doc)
        incoming = records.claim(doc["record"])
        job_id = doc["record"]["id"]
        with self.store.session() as s:
            record = s.scalars(select(JobRecord).where(JobRecord.id == job_id)
                               .options(selectinload(JobRecord.attempts))).first()
            local = records.claim(record) if record is not None else None
            verdict = records.newer_claim(local, incoming)
            if verdict == "older":
                raise Conflict(f"this peer holds job {job_id} with a newer claim (manager {record.manager}, epoch "
                               f"{record.manager_epoch}): yield to it", document=records.to_document(record))
            if verdict == "newer":
                try:
                    applied = apply_document(s, doc)
                    s.flush()
                except (ValueError, TypeError, SQLAlchemyError) as exc:
                    raise BadRequest(f"not a record document: {type(exc).__name__}: {str(exc)[:200]}") from None
                if applied.manager == self.name:
                    raise Conflict("a replica must name its manager, not this peer")
                s.info.setdefault("touched", {})[applied.id] = (applied.owner, applied.version)
                purged = applied.purged_at is not None
            else:
                purged = False
        self._manager_ok[str(doc["record"].get("manager"))] = self.clock()  # its manager pushed it: alive
        if purged:
            self.drop(job_id)
        self.wake()
        return {"id": job_id, "applied": verdict == "newer", "manager_epoch": incoming[0], "version": incoming[1]}

    def drop(self, job_id: str) -> None:
        """Forget a replica (its manager purged the job): the row and the copies."""
        with self.store.session() as s:
            record = s.get(JobRecord, job_id)
            if record is not None and record.manager != self.name:
                s.delete(record)
        shutil.rmtree(self.records_root / job_id, ignore_errors=True)
        self._copied.discard(job_id)

    def describe(self, job_id: str, *, document: bool = False) -> dict[str, Any]:
        """Who holds this record here and how far its copies are (``GET /api/v1/peer/records/<id>``)."""
        with self.store.db.sessions() as s:
            record = s.scalars(select(JobRecord).where(JobRecord.id == job_id)
                               .options(selectinload(JobRecord.attempts))).first()
            if record is None or record.purged_at is not None:
                raise NotFound(f"no record of job {job_id!r} here")
            body: dict[str, Any] = {
                "id": record.id, "holder": self.name, "home": record.home, "manager": record.manager,
                "manager_epoch": record.manager_epoch, "deputy": record.deputy, "version": record.version,
                "copies": self._copies(record)}
            if document:
                body["document"] = records.to_document(record)
            return body

    def _copies(self, record: JobRecord) -> dict[str, Any]:
        have = sum(1 for i in range(len(record.inputs)) if self._have_input(record, i))
        exe = (self.records_root / record.id / "files" / record.executable_name).is_file()
        return {"executable": exe, "inputs": have, "of": len(record.inputs)}

    def _input_copy(self, job_id: str, index: int, name: str) -> Path:
        return self.records_root / job_id / "inputs" / str(index) / name

    def _have_input(self, record: JobRecord, index: int) -> bool:
        if record.home == self.name:
            return True
        return self._input_copy(record.id, index, record.inputs[index]["name"]).is_file()

    def input_path(self, job_id: str, index: int) -> Path:
        """The file of input ``index`` of a job held here: the home's own file, or the copy here."""
        with self.store.db.sessions() as s:
            record = s.get(JobRecord, job_id)
            if record is None or record.purged_at is not None:
                raise NotFound(f"no record of job {job_id!r} here")
            if not 0 <= index < len(record.inputs):
                raise NotFound(f"job {job_id} has no input {index}")
            meta = dict(record.inputs[index])
            home = record.home
        if home == self.name:
            return self.publishing.file(meta["path"])
        path = self._input_copy(job_id, index, meta["name"])
        if not path.is_file():
            raise NotFound(f"input {index} of job {job_id} has not been copied to {self.name}")
        return path

    def executable_path(self, job_id: str) -> Path:
        with self.store.db.sessions() as s:
            record = s.get(JobRecord, job_id)
            if record is None or record.purged_at is not None:
                raise NotFound(f"no record of job {job_id!r} here")
            path = self.records_root / job_id / "files" / record.executable_name
        if not path.is_file():
            raise NotFound(f"the executable of job {job_id} is not on {self.name}")
        return path

    def check_copy(self, record: JobRecord, index: int) -> str | None:
        """Whether the copy of input ``index`` here can run (None) or why not (the input fails)."""
        meta = record.inputs[index]
        path = self._input_copy(record.id, index, meta["name"])
        try:
            if path.stat().st_size == meta.get("size") and self.digests.sha256(path) == meta.get("sha256"):
                return None
        except OSError:
            pass
        return (f"input lost with the job's home {record.home}: its copy had not reached {self.name} (the "
                "deputy) when the home stopped answering; submit the job again")

    def _fetch_copies(self, job_id: str) -> None:
        """Copy the executable, the submit file and every input of a replica from its manager."""
        try:
            with self.store.db.sessions() as s:
                record = s.get(JobRecord, job_id)
                if record is None or record.manager == self.name or record.purged_at is not None:
                    return
                manager, exe_name, submit_name, submit_text = (record.manager, record.executable_name,
                                                               record.submit_name, record.submit_text)
                inputs = [dict(i) for i in record.inputs]
            url = self.membership.url_of(manager)
            if url is None:
                return
            files = self.records_root / job_id / "files"
            files.mkdir(mode=0o700, parents=True, exist_ok=True)
            exe = files / exe_name
            if not exe.is_file():
                download(self.http, f"{url}/api/v1/peer/records/{job_id}/executable", exe, fsync=True,
                         timeout=self.peer_timeout, max_stalls=2)
                exe.chmod(0o700)
            if not (files / submit_name).is_file():
                (files / submit_name).write_text(submit_text)
            for i, meta in enumerate(inputs):
                dest = self._input_copy(job_id, i, meta["name"])
                if dest.is_file():
                    continue
                dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                download(self.http, f"{url}/api/v1/peer/records/{job_id}/inputs/{i}", dest,
                         expected_sha256=meta.get("sha256"), expected_size=meta.get("size"),
                         chunk_bytes=self.chunk_bytes,
                         timeout=self.peer_timeout, max_stalls=2)
            self._copied.add(job_id)
            log.info("job %s: executable and %d inputs copied from %s", job_id, len(inputs), manager)
        except Exception as exc:  # noqa: BLE001 - asked again next round
            log.info("job %s: copying its files from its manager: %s", job_id, exc)
        finally:
            with self._lock:
                self._busy.discard(("copy", job_id))

    # ---- every round of the job manager -------------------------------------------------------
    def close(self) -> None:
        self._quick.close()
        self._slow.close()

    def tick(self, now: float, remote: bool) -> None:
        """Push what changed to deputies, copy what replicas lack, watch the managers of replicas here
        and take over from one silent for ``site_lost_after``.  Calls run in the background, in pools of
        their own: a job manager busy sending pieces never delays a probe (a probe that could not run
        would look like a silent manager)."""
        quick, slow = self._quick.submit, self._slow.submit
        with self.store.db.sessions() as s:
            # the records managed here whose deputy lacks their last version (or that have no deputy)
            mine = s.execute(select(JobRecord.id, JobRecord.deputy, JobRecord.version, JobRecord.replica_version)
                             .where(JobRecord.manager == self.name, JobRecord.purged_at.is_(None),
                                    or_(JobRecord.replica_version.is_(None),
                                        JobRecord.replica_version < JobRecord.version))).all()
            theirs = s.execute(select(JobRecord.id, JobRecord.manager, JobRecord.deputy, JobRecord.home,
                                      JobRecord.finished_at).where(
                JobRecord.manager != self.name, JobRecord.purged_at.is_(None))).all()
        if remote:
            with self._lock:
                gone = {d for d, since in self._deputy_failing.items() if now - since > self.site_lost_after}
            again = [job_id for job_id, deputy, _, _ in mine if deputy is None]
            if gone:
                with self.store.db.sessions() as s:
                    again += list(s.scalars(select(JobRecord.id).where(
                        JobRecord.manager == self.name, JobRecord.purged_at.is_(None),
                        JobRecord.deputy.in_(gone))))
                with self._lock:  # replaced: it may serve again later, once it answers
                    for deputy in gone:
                        self._deputy_failing.pop(deputy, None)
            if again:
                self._choose_deputies(again, exclude=gone)
        for job_id, deputy, version, acked in mine:
            if deputy is None or (acked is not None and acked >= version):
                continue
            if now - self._pushed_at.get(job_id, 0.0) < PUSH_INTERVAL:
                continue
            if self._claim(("push", job_id)):
                self._pushed_at[job_id] = now
                self._run(quick, ("push", job_id), self.push, job_id)
        if not remote:
            return
        managers: dict[str, list[str]] = {}
        deputy_of: dict[str, list[str]] = {}  # manager -> the replicas here this peer is the deputy of
        for job_id, manager, deputy, home, finished_at in theirs:
            managers.setdefault(manager, []).append(job_id)
            if deputy != self.name:
                continue  # a replica kept by a home that yielded: shown, relayed for, never taken over
            deputy_of.setdefault(manager, []).append(job_id)
            # inputs are copied while the job may still need them (a finished job's are not: a retry
            # after a takeover fails them, saying so)
            if home != self.name and finished_at is None and job_id not in self._copied \
                    and self._claim(("copy", job_id)):
                self._run(slow, ("copy", job_id), self._fetch_copies, job_id)
        for manager, jobs in managers.items():
            last_ok = self._manager_ok.setdefault(manager, now)
            silent = now - last_ok
            # taken over only when nothing was heard of it for site_lost_after and the last question could
            # not even reach it (kill -9, a machine gone): never for being slow
            if silent > self.site_lost_after and self._manager_down.get(manager, 0.0) > last_ok \
                    and deputy_of.get(manager):
                self.take_over(manager, deputy_of[manager], f"its manager {manager} did not answer for {silent:.0f} s")
                self._manager_ok.pop(manager, None)
                self._manager_down.pop(manager, None)
            elif self._claim(("probe", manager)):
                self._probe_next[manager] = (self._probe_next.get(manager, 0) + 1) % len(jobs)
                self._run(quick, ("probe", manager), self._probe, manager, jobs[self._probe_next[manager]])

    def _claim(self, key: tuple[str, str]) -> bool:
        with self._lock:
            if key in self._busy:
                return False
            self._busy.add(key)
            return True

    def _run(self, submit: Callable[..., Any], key: tuple[str, str], fn: Callable[..., Any], *args: Any) -> None:
        def call() -> None:
            try:
                fn(*args)
            finally:
                with self._lock:
                    self._busy.discard(key)
        try:
            submit(call)
        except RuntimeError:  # the pool is shut down: the peer is stopping
            with self._lock:
                self._busy.discard(key)

    def _choose_deputies(self, job_ids: list[str], exclude: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        """Records managed here without a deputy (taken over, submitted while alone) or whose deputy is
        silent: choose one (not a silent peer, nor the job's home when it was taken over from it)."""
        now = self.clock()
        silent = {m for m, t in self._manager_ok.items() if now - t > self.site_lost_after} | set(exclude)
        with self.store.db.session() as s:
            for record in s.scalars(select(JobRecord).where(JobRecord.id.in_(job_ids))):
                deputy = self.deputy_for(exclude={record.home, *silent} if record.home != self.name else silent)
                if deputy is not None and deputy != record.deputy:
                    log.info("job %s: %s is its deputy now", record.id, deputy)
                    record.deputy, record.replica_version = deputy, None

    def _probe(self, manager: str, job_id: str) -> None:
        url = self.membership.url_of(manager)
        if url is None:
            return
        try:
            r = self.http.get(f"{url}/api/v1/peer/records/{job_id}", timeout=self.peer_timeout)
        except requests.RequestException as exc:
            if never_reached(exc):  # refused, unresolvable, no connection: the peer is not there
                self._manager_down[manager] = self.clock()
            else:  # it took the connection and is slow to answer: a busy peer is not a dead one
                self._manager_ok[manager] = self.clock()
            return
        # any answer, a 5xx too (its front answers for an app that is busy or restarting): it lives
        self._manager_ok[manager] = self.clock()
        if r.status_code == 404:  # the manager removed the record (expired, purged): the replica goes too
            log.info("job %s: its manager %s no longer has it; its replica here goes", job_id, manager)
            self.drop(job_id)

    def take_over(self, manager: str, job_ids: list[str], reason: str) -> None:
        found = self._sent_pieces(manager, job_ids)
        now = self.clock()
        taken = []
        with self.store.session() as s:
            recs = s.scalars(select(JobRecord).where(JobRecord.id.in_(job_ids), JobRecord.manager == manager)
                             .options(selectinload(JobRecord.attempts))).all()
            for record in recs:
                records.take_over(record, self.name, reason, now, self.limits, found)
                self.store.touch(s, record)
                taken.append(record.id)
        for job_id in taken:
            log.warning("job %s: taken over from %s (%s): this peer manages it now", job_id, manager, reason)
        if taken:
            self.wake()

    def _sent_pieces(self, manager: str, job_ids: list[str]) -> dict[str, str]:
        """Ask each site the silent manager was sending pieces to whether it made them (origin key ->
        piece ID): made, they are adopted; a site that does not answer has none as far as we know."""
        asked: dict[str, dict[str, str]] = {}
        with self.store.session() as s:
            recs = s.scalars(select(JobRecord).where(JobRecord.id.in_(job_ids), JobRecord.manager == manager)
                             .options(selectinload(JobRecord.attempts))).all()
            for record in recs:
                for a in records.being_sent(record):
                    if a.site != manager:
                        asked.setdefault(a.site, {})[a.piece_key] = manager
        found: dict[str, str] = {}
        for site, origins in asked.items():
            url = self.membership.url_of(site)
            if url is None:
                continue
            try:
                r = self.http.post(f"{url}/api/v1/peer/pieces/status", json={"pieces": {}, "origins": origins},
                                   timeout=min(self.peer_timeout, 5.0))
                answer = r.json().get("found") if r.ok else None
            except (requests.RequestException, ValueError, AttributeError) as exc:
                log.info("takeover from %s: %s did not say which of its pieces it made: %s", manager, site, exc)
                continue
            if isinstance(answer, dict):
                found.update({k: v for k, v in answer.items() if k in origins and isinstance(v, str)})
        if found:
            log.info("takeover from %s: %d piece(s) it was sending were made; adopted", manager, len(found))
        return found

    # ---- finding a record's holder (a job whose home does not answer) -----------------------------
    def located(self, job_id: str) -> str | None:
        """The holder :meth:`locate` found for ``job_id`` lately (None: none, or too long ago)."""
        with self._lock:
            found = self._located.get(job_id)
            if found is None or found[1] < self.clock():
                self._located.pop(job_id, None)
                return None
            return found[0]

    def forget_located(self, job_id: str) -> None:
        with self._lock:
            self._located.pop(job_id, None)

    def locate(self, job_id: str, skip: set[str]) -> str | None:
        """Ask the other members who holds ``job_id``'s record; the holder to relay to: the manager, if it
        answered, else the holder with the highest claim.  None when nobody holds it."""
        found: list[tuple[tuple[int, int], bool, str]] = []
        for m in self.membership.members():
            name = m["name"]
            if name == self.name or name in skip:
                continue
            try:
                r = self.http.get(f"{m['url']}/api/v1/peer/records/{job_id}", timeout=min(self.peer_timeout, 3.0))
            except requests.RequestException:
                continue
            if not r.ok:
                continue
            try:
                body = r.json()
                found.append(((int(body["manager_epoch"]), int(body["version"])), body.get("manager") == name, name))
            except (ValueError, KeyError, TypeError):
                continue
        if not found:
            return None
        found.sort(reverse=True)
        with self._lock:
            if len(self._located) > 10_000:
                self._located.clear()
            self._located[job_id] = (found[0][2], self.clock() + LOCATED_SECONDS)
        return found[0][2]
