"""What a job's home answers its owner: submit, status, list, kill, retry, outputs, "run again".

The peer a client submits to is the job's **home** (docs/architecture.md,
*Jobs across sites*): it validates the job, claims the Idempotency-Key and
commits the job's record (every input pending) in one transaction, then
answers ``201`` with the job ID ``<home>.<hex>`` at once; staging happens
later, at the sites the manager (peer/job_manager.py) sends pieces to.  The
home keeps the executable and the submit file (``<state>/records/<job>/``)
and renders the job's status from its record (peer/records.py).  Requests
for a job whose home is another peer are relayed there (peer/api_jobs.py).
"""
from __future__ import annotations

import hashlib
import json
import logging
import secrets
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote

import requests
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import selectinload

from broker.runtimes import history_key
from pocketgrid.errors import BadGateway, BadRequest, Conflict, NotFound, PocketgridError, Unavailable

from . import records
from .db import Database
from .digests import DigestCache
from .event_log import ProcState
from .jobs import JobService, NotYours, validate_names
from .membership import Membership
from .models import IdempotencyKey, JobPlacement, JobRecord
from .placement_record import placement_view
from .publishing import PublishingArea
from .record_store import RecordStore
from .submit_description import Policy, SubmitDescriptionError, parse

log = logging.getLogger(__name__)


@dataclass
class SubmitRequest:
    """A submission as the home received it."""

    name: str
    executable: bytes
    executable_name: str
    submit_text: str
    submit_name: str
    inputs: list[str]  #: paths in the home's publishing area

    def fingerprint(self) -> str:
        """Hash of everything that defines the job: same key + other body = 409."""
        h = hashlib.sha256()
        for part in (self.name, self.executable_name, self.submit_name, self.submit_text, json.dumps(self.inputs)):
            h.update(part.encode())
            h.update(b"\x00")
        h.update(hashlib.sha256(self.executable).digest())
        return h.hexdigest()


@dataclass(frozen=True)
class StatusBody:
    """A rendered status and its bytes (the poll path sends these as they are)."""

    owner: str
    version: int
    body: dict[str, Any]
    json: bytes


class JobHome:
    def __init__(
        self,
        *,
        name: str,
        db: Database,
        store: RecordStore,
        publishing: PublishingArea,
        digests: DigestCache,
        jobs: JobService,
        membership: Membership,
        http: requests.Session,
        records_root: Path,
        wake: Callable[[], None] = lambda: None,
        unreachable: Callable[[], frozenset[str]] = frozenset,
        policy: Policy | None = None,
        max_inputs: int = 1000,
        peer_timeout: float = 10.0,
        retention_seconds: float = 0.0,
        remove_now: Callable[[str, float], None] = lambda job_id, timeout: None,
        replicas: Any = None,
        site_lost_after: float = 120.0,
    ) -> None:
        self.name = name
        self.db = db
        self.store = store
        self.publishing = publishing
        self.digests = digests
        self.jobs = jobs
        self.membership = membership
        self.http = http
        self.records_root = records_root
        self.records_root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.records_root.chmod(0o700)  # every user's executables: the peer's alone
        self.wake = wake
        self.unreachable = unreachable
        self.policy = policy or Policy()
        self.max_inputs = max_inputs
        self.peer_timeout = peer_timeout
        #: Finished jobs are removed this long after they finished, unless pinned (0: never; peer/retention.py).
        self.retention_seconds = retention_seconds
        #: The job manager carrying out a kill at the pieces' sites now (waiting at most the timeout).
        self.remove_now = remove_now
        #: peer/replicas.py: the deputy chosen at submit, the first push (None: no replicas).
        self.replicas = replicas
        self.site_lost_after = site_lost_after
        self._inflight: set[tuple[str, str]] = set()
        self._inflight_lock = threading.Lock()

    # ======================================================================
    # Submit
    # ======================================================================
    def submit(self, req: SubmitRequest, *, owner: str, owner_vo: str | None = None,
               idempotency_key: str | None) -> tuple[dict[str, Any], bool]:
        """Record a job here (its home).  Returns (summary, replayed?)."""
        if not req.name or len(req.name) > 200:
            raise BadRequest("a job needs a name of 1 to 200 characters")
        if not req.executable:
            raise BadRequest("the executable is empty")
        if not req.inputs:
            raise BadRequest("a job needs at least one input file from the publishing area")
        if len(req.inputs) > self.max_inputs:
            raise BadRequest(f"at most {self.max_inputs} inputs per job on this site (this job has {len(req.inputs)}); "
                             "split it into several jobs", max_inputs=self.max_inputs)
        input_paths = [self.publishing.file(p) for p in req.inputs]
        validate_names(req.executable_name, req.submit_name, [p.name for p in input_paths])
        try:
            parsed = parse(req.submit_text, self.policy, input_names=[p.name for p in input_paths])
        except SubmitDescriptionError as exc:
            raise BadRequest(f"submit file {req.submit_name!r}: {exc}") from None
        if idempotency_key is not None and len(idempotency_key) > 200:
            raise BadRequest("Idempotency-Key is longer than 200 characters")
        fingerprint = req.fingerprint()
        if not idempotency_key:
            return self._create(req, owner, owner_vo, None, input_paths, list(parsed.warnings)), False
        existing = self._claim_key(idempotency_key, owner, fingerprint)
        if existing is not None:
            return existing, True
        with self._inflight_lock:
            if (idempotency_key, owner) in self._inflight:
                raise Unavailable("a submission with this Idempotency-Key is in progress; retry shortly", retry_after=2)
            self._inflight.add((idempotency_key, owner))
        try:
            existing = self._claim_key(idempotency_key, owner, fingerprint)  # it may have finished meanwhile
            if existing is not None:
                return existing, True
            return self._create(req, owner, owner_vo, idempotency_key, input_paths, list(parsed.warnings)), False
        finally:
            with self._inflight_lock:
                self._inflight.discard((idempotency_key, owner))

    def _claim_key(self, key: str, owner: str, fingerprint: str) -> dict[str, Any] | None:
        """Record the key; or return the job an earlier identical request made."""
        for _ in range(2):
            with self.db.session() as s:
                row = s.get(IdempotencyKey, (key, owner))
                if row is None:
                    s.add(IdempotencyKey(key=key, owner=owner, request_hash=fingerprint, created_at=time.time()))
                    try:
                        s.flush()
                    except IntegrityError:
                        s.rollback()
                        continue
                    return None
                if row.request_hash != fingerprint:
                    raise Conflict("this Idempotency-Key was already used for a different request; "
                                   "use a new key for a new job")
                if row.job_id is None:
                    return None  # the earlier request did not get as far as the record: make it now
                job_id = row.job_id
            return self._summary(job_id)
        raise Conflict("concurrent submissions with the same Idempotency-Key; retry")

    def _create(self, req: SubmitRequest, owner: str, owner_vo: str | None, key: str | None,
                input_paths: list[Path], warnings: list[str]) -> dict[str, Any]:
        inputs = [{"name": p.name, "path": self.publishing.relative(p), "size": p.stat().st_size,
                   "sha256": self.digests.sha256(p)} for p in input_paths]
        job_id = f"{self.name}.{int(time.time()):x}{secrets.token_hex(4)}"
        deputy = self.replicas.deputy_for() if self.replicas is not None else None
        files = self._keep_files(job_id, req)
        try:
            with self.store.session() as s:
                now = time.time()
                record = JobRecord(id=job_id, name=req.name, owner=owner, owner_vo=owner_vo, created_at=now,
                                   executable_name=req.executable_name, submit_name=req.submit_name,
                                   submit_text=req.submit_text, inputs=inputs, warnings=warnings, version=0,
                                   home=self.name, manager=self.name, manager_epoch=1, deputy=deputy,
                                   # learned run times are kept per user and program (broker/runtimes.py)
                                   history_key=history_key(owner, hashlib.sha256(req.executable).hexdigest()))
                s.add(record)
                record.attempts.extend(records.first_attempts(record, now))
                self.store.touch(s, record)
                if key is not None:
                    row = s.get(IdempotencyKey, (key, owner))
                    if row is not None:
                        row.job_id = job_id
        except BaseException:
            shutil.rmtree(files, ignore_errors=True)
            raise
        log.info("job %s (%s) recorded for %s: %d inputs", job_id, req.name, owner, len(inputs))
        self.wake()
        if deputy is not None:
            # the replica reaches the deputy before the job ID goes back, unless the deputy is slow to
            # answer: then the job manager pushes it from its next round on (peer/replicas.py)
            self.replicas.push(job_id, timeout=min(self.peer_timeout, 2.0))
        return self._summary(job_id)

    def _keep_files(self, job_id: str, req: SubmitRequest) -> Path:
        """The executable and the submit file, in ``<state>/records/<job>/files/`` (built aside, then renamed)."""
        final = self.records_root / job_id
        tmp = self.records_root / f".tmp-{job_id}"
        tmp.mkdir(mode=0o700)
        (tmp / "files").mkdir(mode=0o700)
        try:
            exe = tmp / "files" / req.executable_name
            exe.write_bytes(req.executable)
            exe.chmod(0o700)
            (tmp / "files" / req.submit_name).write_text(req.submit_text)
            tmp.rename(final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final

    def sweep_incomplete(self) -> None:
        """Leftovers of a crash: half-written file sets, and file sets of records that were never committed."""
        with self.db.sessions() as s:
            known = set(s.scalars(select(JobRecord.id)).all())
        for p in self.records_root.iterdir():
            if p.name.startswith(".tmp-") or (p.is_dir() and p.name not in known):
                shutil.rmtree(p, ignore_errors=True)

    def _summary(self, job_id: str) -> dict[str, Any]:
        with self.db.sessions() as s:
            record = s.get(JobRecord, job_id)
            if record is None:
                raise NotFound(f"no such job {job_id!r}")
            return {"id": record.id, "peer": record.home, "name": record.name, "inputs": len(record.inputs),
                    "warnings": list(record.warnings or [])}

    # ======================================================================
    # Reading records
    # ======================================================================
    def _record(self, job_id: str, owner: str, is_admin: bool) -> JobRecord:
        with self.db.sessions() as s:
            record = s.scalars(select(JobRecord).where(JobRecord.id == job_id)
                               .options(selectinload(JobRecord.attempts))).first()
            if record is None or record.purged_at is not None:
                raise NotFound(f"no such job {job_id!r}")
            if not (is_admin or record.owner == owner):
                raise NotYours(job_id, record.owner)  # the same 404, audited as a probe
            return record

    def manager_of(self, job_id: str) -> str | None:
        """The manager of the record held here (this peer, or the one a replica here names); None when
        this peer holds no record of the job."""
        with self.db.sessions() as s:
            record = s.get(JobRecord, job_id)
            return None if record is None or record.purged_at is not None else record.manager

    def _managed(self, job_id: str, owner: str, is_admin: bool) -> JobRecord:
        """The record, for a change: refused (503) when it is a replica of another manager's."""
        record = self._record(job_id, owner, is_admin)
        if record.manager != self.name:
            from .replicas import not_managed_here

            raise not_managed_here(record, self.name, self.site_lost_after)
        return record

    def _still_managed(self, record: JobRecord) -> None:
        """Inside the change's transaction: the record did not become a replica meanwhile (this peer
        yielded the job to a deputy that took it over)."""
        if record.manager != self.name:
            from .replicas import not_managed_here

            raise not_managed_here(record, self.name, self.site_lost_after)

    def known_version(self, job_id: str, owner: str, is_admin: bool) -> int | None:
        """The record's version from memory, if this process knows it and the caller may see it."""
        seen = self.store.known(job_id)
        if seen is None or not (is_admin or seen[0] == owner):
            return None
        return seen[1]

    def status(self, job_id: str, owner: str, *, is_admin: bool = False, history: bool = False,
               placement: bool = False) -> StatusBody:
        """The job's status from its record; ``history``: each input's attempts and its current proc's
        past states (asked of the sites holding them); ``placement``: every dispatch round in detail."""
        record = self._record(job_id, owner, is_admin)
        self.store.remember(record)
        body = records.render(record, history=history, unreachable=self.unreachable(),
                              retention_seconds=self.retention_seconds)
        view = placement_view(self._rounds(job_id), detail=placement)
        if view is not None:
            body["placement"] = view
        if history:
            self._proc_histories(record, body)
        return StatusBody(record.owner, record.version, body,
                          json.dumps(body, separators=(",", ":")).encode() + b"\n")

    def _rounds(self, job_id: str) -> list[dict[str, Any]]:
        with self.db.sessions() as s:
            return [r.record for r in s.scalars(select(JobPlacement).where(JobPlacement.job_id == job_id)
                                                .order_by(JobPlacement.id))]

    def _proc_histories(self, record: JobRecord, body: dict[str, Any]) -> None:
        """Add each input's current proc ``history`` (its past states and reasons), asked of its site:
        one request per site, all at once; a site that does not answer leaves those inputs without."""
        groups = records.by_input(record.attempts)
        wanted: dict[str, dict[str, list[int]]] = {}  # site -> piece -> input indexes
        for i, atts in groups.items():
            a = records.shown_attempt(atts)
            if a.piece is not None and a.site is not None and a.state not in ("lost", "superseded"):
                wanted.setdefault(a.site, {}).setdefault(a.piece, []).append(i)

        def ask(site: str) -> tuple[str, dict[str, Any] | None]:
            known: dict[str, int | None] = {piece: None for piece in wanted[site]}
            try:
                if site == self.name:
                    return site, self.jobs.piece_statuses(known, history=True)
                url = self.membership.url_of(site)
                if url is None:
                    return site, None
                r = self.http.post(f"{url}/api/v1/peer/pieces/status", json={"pieces": known, "history": True},
                                   timeout=self.peer_timeout)
                return site, r.json() if r.ok else None
            except (requests.RequestException, ValueError, PocketgridError) as exc:
                log.info("the procs' history at %s: %s", site, exc)
                return site, None

        if not wanted:
            return
        with ThreadPoolExecutor(max_workers=min(8, len(wanted))) as pool:
            answers = dict(pool.map(ask, list(wanted)))
        by_index = {item["index"]: item for item in body["inputs"]}
        for site, pieces in wanted.items():
            answer = (answers.get(site) or {}).get("pieces") or {}
            for piece, indexes in pieces.items():
                procs = {p.get("index"): p for p in (answer.get(piece) or {}).get("procs") or []}
                for i in indexes:
                    if i in by_index and isinstance(procs.get(i, {}).get("history"), list):
                        by_index[i]["history"] = procs[i]["history"]

    def wait(self, job_id: str, version: int, timeout: float) -> int | None:
        return self.store.wait(job_id, version, timeout)

    def list_jobs(self, owner: str, *, is_admin: bool = False, limit: int = 100) -> list[dict[str, Any]]:
        with self.db.sessions() as s:
            q = select(JobRecord).where(JobRecord.purged_at.is_(None)).order_by(JobRecord.created_at.desc()).limit(limit)
            if not is_admin:
                q = q.where(JobRecord.owner == owner)
            # a replica here is listed too (its manager may be silent); the list keeps, per job, the copy
            # with the highest claim (manager_epoch, then version)
            return [{"id": r.id, "name": r.name, "peer": r.home, "state": (r.summary or {}).get("state", "idle"),
                     "counts": (r.summary or {}).get("counts", {}), "created_at": r.created_at,
                     "manager": r.manager, "manager_epoch": r.manager_epoch, "version": r.version}
                    for r in s.scalars(q)]

    # ======================================================================
    # Kill and retry
    # ======================================================================
    def kill(self, job_id: str, owner: str, *, is_admin: bool = False) -> dict[str, Any]:
        self._managed(job_id, owner, is_admin)
        with self.store.session() as s:
            record = s.get(JobRecord, job_id)
            assert record is not None
            self._still_managed(record)
            stopped = records.kill(record, time.time())
            self.store.touch(s, record)
        log.info("job %s: removed by %s, %d inputs stopped", job_id, owner, stopped)
        # carried out at the sites now, for a few seconds; what is not done by then is asked again
        # every round, and the answer (and the status) says where it is pending
        self.remove_now(job_id, min(self.peer_timeout, 5.0))
        self.wake()
        pending = records.render(self._record(job_id, owner, is_admin), unreachable=self.unreachable()).get("removal")
        return {"id": job_id, "removed_procs": stopped, **({"removal": pending} if pending else {})}

    def release(self, job_id: str, owner: str, *, is_admin: bool = False,
                indexes: list[int] | None = None) -> dict[str, Any]:
        """Release the job's held inputs (all, or those of ``indexes``) at the sites holding their current
        attempts.  409 when none of them is held (saying what they are), 400 for an input the job does
        not have, 502 when no site holding them answers; either changes nothing."""
        record = self._managed(job_id, owner, is_admin)
        groups = records.by_input(record.attempts)
        _check_indexes(record, indexes)
        states = {i: records.view_state(atts) for i, atts in groups.items()}
        asked = sorted(set(indexes)) if indexes is not None else sorted(states)
        held = [i for i in asked if states[i] == "held"]
        if indexes is not None and len(held) < len(asked):
            others = ", ".join(f"input {i} is {states[i]}" for i in asked if i not in held)
            raise Conflict(f"only held inputs can be released: {others}; nothing was released", held=held)
        if not held:
            counts: dict[str, int] = {}
            for state in states.values():
                counts[state] = counts.get(state, 0) + 1
            raise Conflict(f"job {job_id} has no held input: nothing to release", states=counts)
        pieces: dict[tuple[str, str], list[int]] = {}
        for i in held:
            a = records.current(groups[i])
            pieces.setdefault((a.site, a.piece), []).append(i)  # type: ignore[arg-type]
        released, done, silent = 0, [], []
        for (site, piece), wanted in sorted(pieces.items()):
            try:
                if site == self.name:
                    answer = self.jobs.release(piece, None, indexes=wanted)
                else:
                    url = self.membership.url_of(site)
                    if url is None:
                        raise BadGateway(f"{site} is not a member any more")
                    r = self.http.post(f"{url}/api/v1/peer/pieces/{quote(piece)}/release", json={"inputs": wanted},
                                       timeout=self.peer_timeout)
                    if r.status_code == 409:  # no longer held there (released, or killed): nothing to do
                        continue
                    if not r.ok:
                        raise BadGateway(f"{site} answered {r.status_code}: {r.text[:200]}")
                    answer = r.json()
            except Conflict:
                continue
            except (requests.RequestException, BadGateway, PocketgridError) as exc:
                log.warning("job %s: releasing inputs %s at %s: %s", job_id, wanted, site, exc)
                silent.append(site)
                continue
            released += int(answer.get("released_procs") or 0)
            done += wanted
        if not silent and not done:
            raise Conflict(f"job {job_id}: inputs {held} are no longer held at their sites: nothing to release")
        if silent and not done:
            raise BadGateway(f"the held inputs are at {', '.join(sorted(set(silent)))}, which did not answer the "
                             "release: try again later", unreachable=sorted(set(silent)))
        self.wake()  # their new state comes with the sites' next statuses
        log.info("job %s: %s released inputs %s", job_id, owner, done)
        return {"id": job_id, "released_procs": released, "inputs": sorted(done),
                **({"unreachable": sorted(set(silent))} if silent else {})}

    def retry(self, job_id: str, owner: str, *, is_admin: bool = False, indexes: list[int] | None = None,
              failed: bool = False) -> dict[str, Any]:
        self._managed(job_id, owner, is_admin)
        with self.store.session() as s:
            record = s.get(JobRecord, job_id)
            assert record is not None
            self._still_managed(record)
            _check_indexes(record, indexes)
            try:
                chosen = records.retryable(record, indexes=indexes, failed=failed)
            except ValueError as exc:
                raise Conflict(str(exc)) from None
            if not chosen:
                raise Conflict("nothing to retry: no input of this job has failed" if failed and indexes is None
                               else "nothing to retry: name the inputs to run again")
            started = records.retry(record, chosen, time.time())
            record.attempts.extend(started)
            self.store.touch(s, record)
            attempts = {a.index: a.number for a in started}
        self.wake()
        log.info("job %s: %s asked to run inputs %s again", job_id, owner, chosen)
        return {"id": job_id, "inputs": chosen, "attempts": attempts}

    # ======================================================================
    # Outputs
    # ======================================================================
    def outputs(self, job_id: str, owner: str, *, is_admin: bool = False, start: int = 0, limit: int | None = None,
                proof: Callable[[str], dict[str, str]] = lambda site: {}) -> dict[str, Any]:
        """Per input, the files of its result (or, while it runs, of its current attempt), with its site.

        ``start``/``limit``: only inputs ``start`` to ``start + limit - 1`` (only their sites are asked);
        ``next`` is the ``start`` of the page after, or None.  ``proof(site)``: the headers proving the
        user to ``site`` (computed in the request's context).
        """
        record = self._record(job_id, owner, is_admin)
        total = len(record.inputs)
        end = total if limit is None else min(total, start + limit)
        groups = {i: atts for i, atts in records.by_input(record.attempts).items() if start <= i < end}
        shown = {i: records.shown_attempt(atts) for i, atts in groups.items()}
        pieces: dict[tuple[str, str], list[int]] = {}
        for i, a in shown.items():
            if a.piece is not None and a.site is not None and a.state not in ("lost", "superseded"):
                pieces.setdefault((a.site, a.piece), []).append(i)
        headers = {site: proof(site) for site, _ in pieces if site != self.name}
        listings: dict[tuple[str, str], dict[int, list[dict[str, Any]]] | None] = {}

        def fetch(key: tuple[str, str]) -> tuple[tuple[str, str], dict[int, list[dict[str, Any]]] | None]:
            site, piece = key
            try:
                if site == self.name:
                    body = self.jobs.outputs(piece, record.owner, is_admin=True)
                else:
                    url = self.membership.url_of(site)
                    if url is None:
                        return key, None
                    r = self.http.get(f"{url}/api/v1/peer/pieces/{quote(piece)}/outputs", headers=headers[site],
                                      timeout=self.peer_timeout)
                    if r.status_code == 404:
                        return key, {}
                    r.raise_for_status()
                    body = r.json()
                return key, {o["index"]: o["files"] for o in body["outputs"]}
            except NotFound:
                return key, {}
            except (requests.RequestException, ValueError, KeyError, PocketgridError) as exc:
                log.info("outputs of %s at %s: %s", piece, site, exc)
                return key, None

        if pieces:
            with ThreadPoolExecutor(max_workers=min(8, len(pieces))) as pool:
                for key, listing in pool.map(fetch, list(pieces)):
                    listings[key] = listing
        unreachable = sorted({site for (site, _), listing in listings.items() if listing is None})
        out = []
        for i, atts in sorted(groups.items()):
            a = shown[i]
            state = records.view_state(atts)
            listing = listings.get((a.site, a.piece)) if a.piece is not None and a.site is not None else None
            item: dict[str, Any] = {"index": i, "input": record.inputs[i]["name"], "state": state,
                                    "final": ProcState(state).is_terminal, "site": a.site, "attempt": a.number,
                                    "files": (listing or {}).get(i, [])}
            if a.site in unreachable:
                item["unreachable"] = True
            out.append(item)
        return {"id": job_id, "peer": self.name, "outputs": out, "unreachable_sites": unreachable,
                "start": start, "total": total, "next": end if end < total else None}

    def output_location(self, job_id: str, owner: str, index: int, *, is_admin: bool = False) -> tuple[str, str, str]:
        """(site, piece, owner) of input ``index``'s shown attempt: where its outputs are."""
        record = self._record(job_id, owner, is_admin)
        groups = records.by_input(record.attempts)
        if index not in groups:
            raise NotFound(f"job {job_id} has no input number {index}")
        a = records.shown_attempt(groups[index])
        if a.piece is None or a.site is None or a.state in ("lost", "superseded"):
            raise NotFound(f"input {index} of job {job_id} has no outputs yet (it has not started anywhere)")
        return a.site, a.piece, record.owner

    # ======================================================================
    # Run again
    # ======================================================================
    def spec(self, job_id: str, owner: str, *, is_admin: bool = False) -> dict[str, Any]:
        """What the job was submitted with, to submit it again (with other inputs)."""
        record = self._record(job_id, owner, is_admin)
        return {"id": record.id, "name": record.name, "executable_name": record.executable_name,
                "submit_name": record.submit_name, "submit_text": record.submit_text,
                "inputs": [i["path"] for i in record.inputs], "input_names": [i["name"] for i in record.inputs],
                "entry_peer": record.home}

    def executable_path(self, job_id: str, owner: str, *, is_admin: bool = False) -> Path:
        record = self._record(job_id, owner, is_admin)
        path = self.records_root / job_id / "files" / record.executable_name
        if not path.is_file():
            raise NotFound(f"the executable of job {job_id} is no longer on {self.name}")
        return path


def _check_indexes(record: JobRecord, indexes: list[int] | None) -> None:
    """400 for input numbers the job does not have (before anything is changed)."""
    bad = sorted({i for i in indexes or () if not 0 <= i < len(record.inputs)})
    if bad:
        raise BadRequest(f"job {record.id} has inputs 0 to {len(record.inputs) - 1}; "
                         f"no input {', '.join(map(str, bad))}")
