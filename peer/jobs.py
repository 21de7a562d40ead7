"""The job service: submit (entry and target side), status, kill, outputs.

Entry side (any peer a client talks to): validate, de-duplicate by
Idempotency-Key, ask the broker for a ranking, forward to the first peer that
accepts.  Target side (the peer that runs it): de-duplicate by origin, stage,
queue with the executor, commit, answer the job ID.  Status, kill and outputs
of a job owned by another peer are proxied there (see ``peer.api_jobs``);
this module handles the jobs this peer owns.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import shutil
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import requests
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from broker.runtimes import history_key
from pocketgrid.http import never_reached
from pocketgrid.errors import BadGateway, BadRequest, Conflict, NotFound, PocketgridError, Unavailable

from .db import Database
from .digests import DigestCache
from .event_log import EventLogReader, ProcState, ProcStatus, overall_state
from .executors.base import Executor
from .membership import Membership
from .models import IdempotencyKey, Job, JobPlacement, Proc
from .placement_record import checked_record, decision_record, placement_view
from .publishing import PublishingArea, check_name
from .proc_stderr import recorded_names, stderr_fields
from .staging import META_DIR, InputSource, Stager, StagedJob
from .submit_description import ParsedSubmit, Policy, SubmitDescriptionError, parse

log = logging.getLogger(__name__)

#: In a staged job's META_DIR: the inputs' paths on the entry peer (for "run again").
INPUTS_FILE = "inputs.json"
#: What ``GET /api/v1/jobs/<id>?history=1&placement=1`` may add to a status (never cached).
STATUS_EXTRAS = frozenset({"history", "placement"})


def _counts(states: dict[int, str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for state in states.values():
        counts[state] = counts.get(state, 0) + 1
    return counts


def _key_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and 0 < len(value) <= 64 else None


@dataclass
class SubmitRequest:
    """A submission as the entry peer received it."""

    name: str
    executable: bytes
    executable_name: str
    submit_text: str
    submit_name: str
    inputs: list[str]  #: paths in the entry peer's publishing area

    def fingerprint(self) -> str:
        """Hash of everything that defines the job: same key + other body = 409."""
        h = hashlib.sha256()
        for part in (self.name, self.executable_name, self.submit_name, self.submit_text, json.dumps(self.inputs)):
            h.update(part.encode())
            h.update(b"\x00")
        h.update(hashlib.sha256(self.executable).digest())
        return h.hexdigest()


@dataclass(frozen=True)
class _StatusBody:
    """The last status body of a job, valid while its event log keeps this size."""

    owner: str
    log_size: int
    body: dict[str, Any]
    json: bytes


class AmbiguousForward(Unavailable):
    """A forward was sent but no answer came: the job may exist on that peer.

    Trying another peer could create a second job, so the client is told to
    retry with the same Idempotency-Key, which goes back to the same peer.
    """

    def __init__(self, peer: str) -> None:
        super().__init__(
            f"no answer from {peer} after sending it the job; it may have been created there. "
            "Retry with the same Idempotency-Key to get it (no second job will be made)",
            retry_after=5,
        )


def validate_names(executable_name: str, submit_name: str, input_names: list[str]) -> None:
    check_name(executable_name, "executable name")
    check_name(submit_name, "submit file name")
    if executable_name == submit_name:
        raise BadRequest("the executable and the submit file must have different names")
    for n in input_names:
        check_name(n, "input file name")
        if n in (executable_name, submit_name):
            raise BadRequest(
                f"input file {n!r} has the same name as the executable or submit file; rename one of them"
            )


def peer_of(job_id: str) -> str:
    peer, dot, rest = job_id.partition(".")
    if not dot or not peer or not rest:
        raise NotFound(f"no such job {job_id!r}: a job ID looks like <peer>.<id>")
    return peer


class JobService:
    def __init__(
        self,
        *,
        name: str,
        url: str,
        db: Database,
        publishing: PublishingArea,
        stager: Stager,
        executor: Executor,
        membership: Membership,
        digests: DigestCache,
        http: requests.Session,
        place: Callable[[str, int, int, str | None], dict[str, Any]],
        report_failure: Callable[[str], None] = lambda peer: None,
        report_placed: Callable[[str, str, str, list[dict[str, str]]], None] = lambda key, peer, job_id, failed: None,
        policy: Policy | None = None,
        peer_timeout: float = 10.0,
        max_inputs: int = 1000,
    ) -> None:
        self.name = name
        self.max_inputs = max_inputs
        self.url = url
        self.db = db
        self.publishing = publishing
        self.stager = stager
        self.executor = executor
        self.membership = membership
        self.digests = digests
        self.http = http
        self.place = place
        self.report_failure = report_failure
        self.report_placed = report_placed
        self.policy = policy or Policy()
        self.peer_timeout = peer_timeout
        self._readers: OrderedDict[str, EventLogReader] = OrderedDict()
        self._reader_locks: dict[str, threading.Lock] = {}
        self._readers_lock = threading.Lock()
        self.max_cached_readers = 1024
        self._status_bodies: OrderedDict[str, _StatusBody] = OrderedDict()
        self._inflight: set[tuple[str, str]] = set()
        self._inflight_lock = threading.Lock()

    # ======================================================================
    # Entry side
    # ======================================================================
    def submit(self, req: SubmitRequest, *, owner: str, idempotency_key: str | None,
               proof: Callable[[str], dict[str, str]] | None = None) -> tuple[dict[str, Any], bool]:
        """Place and forward a job.  Returns (job summary, replayed?).

        ``proof(peer)``: the headers proving to ``peer`` that ``owner`` submits
        (peer/auth.py ``relay_headers``); a forward without them is refused there.
        """
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
        try:  # fail fast, before placement
            parse(req.submit_text, self.policy, input_names=[p.name for p in input_paths])
        except SubmitDescriptionError as exc:
            raise BadRequest(f"submit file {req.submit_name!r}: {exc}") from None

        fingerprint = req.fingerprint()
        previous_target = None
        if idempotency_key:
            if len(idempotency_key) > 200:
                raise BadRequest("Idempotency-Key is longer than 200 characters")
            existing, previous_target = self._claim_key(idempotency_key, owner, fingerprint)
            if existing is not None:
                return existing, True
            with self._inflight_lock:
                if (idempotency_key, owner) in self._inflight:
                    raise Unavailable("a submission with this Idempotency-Key is in progress; retry shortly",
                                      retry_after=2)
                self._inflight.add((idempotency_key, owner))
            try:
                return self._place_and_forward(req, owner, idempotency_key, fingerprint, input_paths, previous_target,
                                               proof)
            finally:
                with self._inflight_lock:
                    self._inflight.discard((idempotency_key, owner))
        return self._place_and_forward(req, owner, None, fingerprint, input_paths, None, proof)

    def _place_and_forward(self, req: SubmitRequest, owner: str, idempotency_key: str | None, fingerprint: str,
                      input_paths: list[Path], previous_target: str | None,
                      proof: Callable[[str], dict[str, str]] | None = None) -> tuple[dict[str, Any], bool]:
        if idempotency_key:
            origin_key = hashlib.sha256(f"{owner}\x00{idempotency_key}".encode()).hexdigest()
        else:
            origin_key = secrets.token_hex(16)

        key = history_key(owner, hashlib.sha256(req.executable).hexdigest())
        decision = self.place(origin_key, len(input_paths), sum(p.stat().st_size for p in input_paths), key)
        ranking = list(decision["ranking"])
        if previous_target is not None:
            # An earlier attempt may have created the job there: ask it first.
            url = self.membership.url_of(previous_target)
            ranking = [c for c in ranking if c["name"] != previous_target]
            if url is not None:
                ranking.insert(0, {"name": previous_target, "url": url, "score": None,
                                   "reason": "retry: an earlier attempt of this submission was sent there"})
        if not ranking:
            raise Unavailable("no peer is available to run the job; try again shortly", retry_after=5)
        inputs = [
            {
                "name": p.name,
                "path": self.publishing.relative(p),
                "size": p.stat().st_size,
                "sha256": self.digests.sha256(p),
            }
            for p in input_paths
        ]
        meta = {
            "name": req.name,
            "owner": owner,
            "executable_name": req.executable_name,
            "submit_name": req.submit_name,
            "submit_text": req.submit_text,
            "entry_peer": self.name,
            "entry_url": self.url,
            "origin_key": origin_key,
            "inputs": inputs,
            "history_key": key,
        }
        errors = []
        failed: list[dict[str, str]] = []
        for candidate in ranking:
            if idempotency_key:
                self._record_target(idempotency_key, owner, candidate["name"])
            meta["placement"] = decision_record(decision, ranking, candidate["name"], failed)
            try:
                if candidate["name"] == self.name:
                    summary = self.accept(meta, req.executable)
                else:
                    summary = self._forward(candidate, meta, req.executable,
                                            proof(candidate["name"]) if proof is not None else {})
            except AmbiguousForward:
                raise
            except (BadGateway, Unavailable) as exc:
                log.warning("peer %s could not take the job: %s", candidate["name"], exc.message)
                self.report_failure(candidate["name"])
                errors.append(f"{candidate['name']}: {exc.message}")
                failed.append({"name": candidate["name"], "error": exc.message[:500]})
                continue
            if idempotency_key:
                with self.db.session() as s:
                    row = s.get(IdempotencyKey, (idempotency_key, owner))
                    if row is not None:
                        row.job_id = summary["id"]
            self.report_placed(origin_key, candidate["name"], summary["id"], failed)
            return summary, False
        raise Unavailable("every candidate peer failed: " + "; ".join(errors), retry_after=5)

    def _record_target(self, key: str, owner: str, target: str) -> None:
        with self.db.session() as s:
            row = s.get(IdempotencyKey, (key, owner))
            if row is not None:
                row.target = target

    def _claim_key(self, key: str, owner: str, fingerprint: str) -> tuple[dict[str, Any] | None, str | None]:
        """Record the key; or return the job a previous identical request created
        (or, if that request did not finish, the peer it was sent to)."""
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
                    return None, None
                if row.request_hash != fingerprint:
                    raise Conflict(
                        "this Idempotency-Key was already used for a different request; "
                        "use a new key for a new job"
                    )
                if row.job_id is None:
                    return None, row.target  # earlier attempt did not finish: redo it there
                return {"id": row.job_id, "peer": peer_of(row.job_id)}, None
        raise Conflict("concurrent submissions with the same Idempotency-Key; retry")

    def _forward(self, candidate: dict[str, Any], meta: dict[str, Any], executable: bytes,
                 headers: dict[str, str]) -> dict[str, Any]:
        url = f"{candidate['url']}/api/v1/peer/jobs"
        try:
            r = self.http.post(
                url,
                headers=headers,  # the owner's proof: the target checks the owner DN against it
                data={"meta": json.dumps(meta)},
                files={"executable": (meta["executable_name"], executable, "application/octet-stream")},
                timeout=max(self.peer_timeout, 120.0),  # staging may download inputs
            )
        except (requests.ConnectTimeout, requests.ConnectionError) as exc:
            if never_reached(exc):
                raise BadGateway(f"cannot reach {candidate['name']}: {type(exc).__name__}") from None
            raise AmbiguousForward(candidate["name"]) from None
        except requests.RequestException:
            raise AmbiguousForward(candidate["name"]) from None
        if r.status_code >= 500:
            raise BadGateway(f"{candidate['name']} answered {r.status_code}: {r.text[:200]}")
        body = r.json()
        if not r.ok:
            raise PocketgridError(body.get("error", r.text), status=r.status_code)
        return body

    # ======================================================================
    # Target side
    # ======================================================================
    def accept(self, meta: dict[str, Any], executable: bytes) -> dict[str, Any]:
        """Stage and queue a job placed here; idempotent on (entry peer, origin key)."""
        existing = self._by_origin(meta["entry_peer"], meta["origin_key"])
        if existing is not None:
            return existing
        input_meta = meta["inputs"]
        validate_names(meta["executable_name"], meta["submit_name"], [i["name"] for i in input_meta])
        try:
            parsed = parse(meta["submit_text"], self.policy)
        except SubmitDescriptionError as exc:
            raise BadRequest(f"submit file {meta['submit_name']!r}: {exc}") from None
        if meta["entry_peer"] == self.name:
            sources = [InputSource(name=i["name"], local_path=self.publishing.file(i["path"])) for i in input_meta]
        else:
            base = meta["entry_url"].rstrip("/")
            sources = [
                InputSource(
                    name=i["name"],
                    url=f"{base}/api/v1/peer/files/{requests.utils.quote(i['path'])}",
                    sha256=i["sha256"],
                    size=i["size"],
                )
                for i in input_meta
            ]
        job_id = f"{self.name}.{int(time.time()):x}{secrets.token_hex(4)}"
        try:
            staged = self.stager.stage(
                job_id,
                executable=executable,
                executable_name=meta["executable_name"],
                submit_text=meta["submit_text"],
                submit_name=meta["submit_name"],
                inputs=sources,
            )
        except PocketgridError:
            raise
        except Exception as exc:
            log.exception("staging %s failed", job_id)
            raise BadGateway(f"staging failed on {self.name}: {exc}") from None
        try:
            # Where the inputs came from, for "run again" (spec): paths in the entry peer's publishing area.
            (staged.meta_dir / INPUTS_FILE).write_text(json.dumps(
                {"entry_peer": meta["entry_peer"], "inputs": [i.get("path", i["name"]) for i in input_meta]}))
            with self.db.session() as s:
                job = Job(
                    id=job_id,
                    name=meta["name"],
                    owner=meta["owner"],
                    created_at=time.time(),
                    executor=self.executor.name,
                    executable_name=meta["executable_name"],
                    submit_name=meta["submit_name"],
                    submit_text=meta["submit_text"],
                    input_names=staged.input_names,
                    entry_peer=meta["entry_peer"],
                    origin_key=meta["origin_key"],
                    warnings=list(parsed.warnings),
                )
                s.add(job)
                record = checked_record(meta.get("placement"))
                if record is not None or _key_or_none(meta.get("history_key")):
                    job.placement = JobPlacement(record=record or {}, history_key=_key_or_none(meta.get("history_key")))
                s.flush()
                self.executor.prepare(s, job, staged, parsed)
        except IntegrityError:
            shutil.rmtree(staged.root, ignore_errors=True)
            existing = self._by_origin(meta["entry_peer"], meta["origin_key"])
            if existing is None:
                raise
            return existing
        except SubmitDescriptionError as exc:
            shutil.rmtree(staged.root, ignore_errors=True)
            raise BadRequest(f"submit file {meta['submit_name']!r}: {exc}") from None
        except BaseException:
            shutil.rmtree(staged.root, ignore_errors=True)
            raise
        self.executor.committed(job_id)
        log.info("job %s (%s) accepted from %s: %d inputs", job_id, meta["name"], meta["entry_peer"], len(sources))
        return self._summary(job_id)

    def _by_origin(self, entry_peer: str, origin_key: str) -> dict[str, Any] | None:
        with self.db.sessions() as s:
            job = s.scalars(select(Job).where(Job.entry_peer == entry_peer, Job.origin_key == origin_key)).first()
            return None if job is None else self._summary(job.id)

    def _summary(self, job_id: str) -> dict[str, Any]:
        with self.db.sessions() as s:
            job = s.get(Job, job_id)
            assert job is not None
            return {
                "id": job.id,
                "peer": self.name,
                "name": job.name,
                "inputs": len(job.input_names),
                "clusters": sorted({p.cluster for p in job.procs}),
                "warnings": job.warnings,
            }

    # ======================================================================
    # Status
    # ======================================================================
    def _job(self, job_id: str, owner: str, is_admin: bool = False) -> Job:
        with self.db.sessions() as s:
            job = s.get(Job, job_id)
            if job is None or not (is_admin or job.owner == owner):
                raise NotFound(f"no such job {job_id!r}")
            job.procs  # load while the session is open
            return job

    def _reader_lock(self, job_id: str) -> threading.Lock:
        with self._readers_lock:
            return self._reader_locks.setdefault(job_id, threading.Lock())

    def _reader(self, job: Job) -> EventLogReader:
        with self._readers_lock:
            reader = self._readers.get(job.id)
            if reader is not None:
                self._readers.move_to_end(job.id)
                return reader
        path = str(self.stager.job_root(job.id) / "job.log")
        reader = EventLogReader.from_state(path, job.reader_state) if job.reader_state else EventLogReader(path)
        with self._readers_lock:
            self._readers[job.id] = reader
            while len(self._readers) > self.max_cached_readers:
                self._readers.popitem(last=False)
        return reader

    def status(self, job_id: str, owner: str, *, is_admin: bool = False) -> dict[str, Any]:
        """The job's status, from only the events appended since last time.

        The body only changes when the event log grows, so the last one is kept
        per job with the log's size: an unchanged poll (a phone's usual one)
        costs a ``stat`` and no database read (benchmarks/auth_throughput.py).
        """
        return self.status_entry(job_id, owner, is_admin=is_admin).body

    def status_entry(self, job_id: str, owner: str, *, is_admin: bool = False,
                     extras: frozenset[str] = frozenset()) -> "_StatusBody":
        """:meth:`status` with the body already serialised (the poll path sends these bytes as is).

        ``extras`` (:data:`STATUS_EXTRAS`) asks for a larger body, rendered
        afresh and never cached: ``history`` (each input's past states and
        reasons), ``placement`` (the ranking's score details).
        """
        cached = None if extras else self._status_bodies.get(job_id)
        if cached is not None:
            if not (is_admin or cached.owner == owner):
                raise NotFound(f"no such job {job_id!r}")
            if cached.log_size == self.log_size(job_id):
                return cached
        with self._reader_lock(job_id):
            size = self.log_size(job_id)  # before reading: growth after this makes the next poll re-read
            job = self._job(job_id, owner, is_admin)  # under the lock: its version matches the reader
            reader = self._reader(job)
            version = job.status_version or 0
            if reader.update():
                with self.db.session() as s:
                    row = s.get(Job, job_id)
                    if row is not None:
                        row.reader_state = reader.state_dict()
                        row.status_version = (row.status_version or 0) + 1
                        version = row.status_version
            statuses = dict(reader.procs)
            body = self._render_status(job, statuses, version, extras)
            entry = _StatusBody(job.owner, size, body, json.dumps(body, separators=(",", ":")).encode() + b"\n")
            if not extras:
                with self._readers_lock:
                    self._status_bodies[job_id] = entry
                    while len(self._status_bodies) > self.max_cached_readers:
                        self._status_bodies.popitem(last=False)
        return entry

    def _render_status(self, job: Job, statuses: dict[tuple[int, int], ProcStatus], version: int,
                       extras: frozenset[str] = frozenset()) -> dict[str, Any]:
        inputs = []
        counts: dict[str, int] = {}
        ordered = []
        stderr_names = None
        for p in job.procs:
            st = statuses.get((p.cluster, p.proc)) or ProcStatus(cluster=p.cluster, proc=p.proc)
            ordered.append(st)
            d: dict[str, Any] = {"index": p.index, "input": p.input_name}
            # Only what is known: an unchanged poll from a phone stays small.
            d.update({k: v for k, v in st.to_dict().items()
                      if v is not None and k != "history" and not (k == "evictions" and v == 0)})
            if "history" in extras:
                d["history"] = st.history
            if st.state in (ProcState.FAILED, ProcState.HELD):  # why: its stderr (final once the event is logged)
                if stderr_names is None:
                    stderr_names = recorded_names(self.stager.job_root(job.id) / META_DIR) or []
                name = stderr_names[p.index] if p.index < len(stderr_names) else None
                d.update(stderr_fields(self.proc_dir(job.id, p.index), name))
            counts[st.state.value] = counts.get(st.state.value, 0) + 1
            inputs.append(d)
        state = overall_state(ordered)
        body = {
            "id": job.id,
            "name": job.name,
            "peer": self.name,
            #: Bumped whenever the event log changed what this status says: the ETag.
            "version": version,
            "owner": job.owner,
            "executor": job.executor,
            "created_at": job.created_at,
            "state": state,
            "counts": counts,
            "inputs": inputs,
            "warnings": job.warnings,
        }
        if job.placement is not None and job.placement.record:
            body["placement"] = placement_view(job.placement.record, detail="placement" in extras)
        return body

    def log_size(self, job_id: str) -> int:
        try:
            return os.stat(self.stager.job_root(job_id) / "job.log").st_size
        except FileNotFoundError:
            return 0

    def list_jobs(self, owner: str, *, is_admin: bool = False, limit: int = 100) -> list[dict[str, Any]]:
        with self.db.sessions() as s:
            q = select(Job).order_by(Job.created_at.desc()).limit(limit)
            if not is_admin:
                q = q.where(Job.owner == owner)
            ids = [j.id for j in s.scalars(q)]
        out = []
        for job_id in ids:
            st = self.status(job_id, owner, is_admin=is_admin)
            out.append({k: st[k] for k in ("id", "name", "peer", "state", "counts", "created_at")})
        return out

    # ======================================================================
    # Kill
    # ======================================================================
    def kill(self, job_id: str, owner: str, *, is_admin: bool = False) -> dict[str, Any]:
        self._job(job_id, owner, is_admin)
        with self.db.session() as s:
            row = s.get(Job, job_id)
            if row is not None and row.removed_at is None:
                row.removed_at = time.time()
        removed = self.executor.remove(job_id)
        log.info("job %s: remove requested, %d procs affected", job_id, removed)
        return {"id": job_id, "removed_procs": removed}

    # ======================================================================
    # Release
    # ======================================================================
    def release(self, job_id: str, owner: str, *, is_admin: bool = False,
                indexes: list[int] | None = None) -> dict[str, Any]:
        """Release the job's held inputs (all of them, or those of ``indexes``); same ownership rules as kill.

        Nothing held among them is a 409 that says what they are instead;
        an index the job does not have is a 400.  Either changes nothing.
        """
        job = self._job(job_id, owner, is_admin)
        n = len(job.input_names)
        if indexes is not None:
            bad = sorted({i for i in indexes if not 0 <= i < n})
            if bad:
                raise BadRequest(f"job {job_id} has inputs 0 to {n - 1}; no input {', '.join(map(str, bad))}")
        states = {i["index"]: i["state"] for i in self.status(job_id, owner, is_admin=is_admin)["inputs"]}
        asked = sorted(set(indexes)) if indexes is not None else sorted(states)
        held = [i for i in asked if states.get(i) == ProcState.HELD.value]
        if indexes is not None and len(held) < len(asked):
            others = ", ".join(f"input {i} is {states.get(i, 'idle')}" for i in asked if i not in held)
            raise Conflict(f"only held inputs can be released: {others}; nothing was released", held=held)
        if not held:
            raise Conflict(f"job {job_id} has no held input: nothing to release", states=_counts(states))
        released = self.executor.release(job_id, held)
        log.info("job %s: release of inputs %s requested, %d procs released", job_id, held, released)
        return {"id": job_id, "released_procs": released, "inputs": held}

    # ======================================================================
    # Outputs
    # ======================================================================
    def proc_dir(self, job_id: str, index: int) -> Path:
        return self.stager.job_root(job_id) / str(index)

    def outputs(self, job_id: str, owner: str, *, is_admin: bool = False) -> dict[str, Any]:
        """Files each proc created so far (not the staged ones), with size and SHA-256."""
        job = self._job(job_id, owner, is_admin)
        status = {i["index"]: i["state"] for i in self.status(job_id, owner, is_admin=is_admin)["inputs"]}
        staged = {job.executable_name, job.submit_name}
        result = []
        for p in job.procs:
            d = self.proc_dir(job_id, p.index)
            files = []
            for dirpath, dirnames, filenames in os.walk(d):
                dirnames.sort()
                for fn in sorted(filenames):
                    full = Path(dirpath) / fn
                    rel = full.relative_to(d).as_posix()
                    if rel in staged or rel == p.input_name or full.is_symlink() or not full.is_file():
                        continue
                    st = full.stat()
                    files.append(
                        {"name": rel, "size": st.st_size, "mtime": st.st_mtime, "sha256": self.digests.sha256(full)}
                    )
            result.append(
                {
                    "index": p.index,
                    "input": p.input_name,
                    "state": status.get(p.index, "idle"),
                    "final": ProcState(status.get(p.index, "idle")).is_terminal,
                    "files": files,
                }
            )
        return {"id": job_id, "peer": self.name, "outputs": result}

    # ======================================================================
    # Run again
    # ======================================================================
    def spec(self, job_id: str, owner: str, *, is_admin: bool = False) -> dict[str, Any]:
        """What the job was submitted with, to submit it again (with other inputs)."""
        job = self._job(job_id, owner, is_admin)
        try:
            recorded = json.loads((self.stager.job_root(job_id) / META_DIR / INPUTS_FILE).read_text())
        except (OSError, ValueError):  # staged before inputs were recorded: the names are all we know
            recorded = {"entry_peer": job.entry_peer, "inputs": list(job.input_names)}
        return {"id": job.id, "name": job.name, "executable_name": job.executable_name,
                "submit_name": job.submit_name, "submit_text": job.submit_text,
                "inputs": recorded["inputs"], "input_names": list(job.input_names),
                "entry_peer": recorded.get("entry_peer", job.entry_peer)}

    def executable_path(self, job_id: str, owner: str, *, is_admin: bool = False) -> Path:
        job = self._job(job_id, owner, is_admin)
        path = self.stager.job_root(job_id) / META_DIR / "files" / job.executable_name
        if not path.is_file():
            raise NotFound(f"the executable of job {job_id} is no longer on {self.name}")
        return path

    def output_file(self, job_id: str, owner: str, index: int, name: str, *, is_admin: bool = False) -> Path:
        job = self._job(job_id, owner, is_admin)
        if index < 0 or index >= len(job.input_names):
            raise NotFound(f"job {job_id} has no input number {index}")
        area = PublishingArea(self.proc_dir(job_id, index))
        path = area.file(name)
        if area.relative(path) in {job.executable_name, job.submit_name}:
            raise NotFound(f"{name!r} is not an output of input {index}")
        return path
