"""The site side of jobs: pieces (some inputs of a job, sent by its home), their status, removal, outputs.

A piece is staged and queued as a whole job was before jobs spread over
sites (docs/architecture.md, *Jobs across sites*): de-duplicated by (home,
origin key), staged as ``<stage>/<piece>/<index>/`` with each input's index
in the job, queued with the executor, committed, and its ID answered.  The
job's home asks for the status of its pieces (one request per site), removes
an input it no longer needs (a lost or superseded attempt) and relays the
user's output downloads here.  Pieces are not jobs to users: the user's job
is the record at its home (peer/job_home.py).
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import requests
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from pocketgrid.errors import BadGateway, BadRequest, Conflict, NotFound, PocketgridError

from .db import Database
from .digests import DigestCache
from .event_log import EventLogReader, ProcState, ProcStatus, overall_state
from .executors.base import Executor, RemovalPending
from .models import Job, Proc
from .publishing import PublishingArea, check_name
from .proc_stderr import recorded_names, stderr_fields
from .staging import META_DIR, InputSource, Stager
from .storage import Quotas
from .submit_description import Policy, SubmitDescriptionError, parse

log = logging.getLogger(__name__)


class NotYours(NotFound):
    """The job exists but belongs to someone else: answered exactly as an unknown job (404), and audited
    as a probe (peer/app.py records it, rate-limited, peer/audit.py)."""

    def __init__(self, job_id: str, owner: str, message: str | None = None) -> None:
        super().__init__(message or f"no such job {job_id!r}")
        self.job_id = job_id
        self.owner = owner


#: Where a piece's input may come from besides the home's publishing area: a job's manager's copy of it
#: (``/api/v1/peer/records/<job>/inputs/<i>``, peer/replicas.py), for a job taken over from its home.
REPLICA_SOURCE = "/api/v1/peer/records/"

#: What ``?history=1`` adds to a piece's status (each proc's past states and reasons): never cached.
STATUS_EXTRAS = frozenset({"history"})


def _no_replicas(job_id: str, index: int) -> Path:
    raise NotFound(f"this peer keeps no copy of job {job_id}'s input {index}")


def _counts(states: dict[int, str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for state in states.values():
        counts[state] = counts.get(state, 0) + 1
    return counts


def _key_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and 0 < len(value) <= 64 else None


def finished_time(statuses: list[ProcStatus]) -> float | None:
    """When the last proc reached its final state, if every proc has; None while any may still change."""
    if not statuses or not all(st.state.is_terminal for st in statuses):
        return None
    return max((st.finished_at for st in statuses if st.finished_at is not None), default=None)


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
    """The peer a job ID names: the job's home (for a piece ID, the site that runs it)."""
    peer, dot, rest = job_id.partition(".")
    if not dot or not peer or not rest:
        raise NotFound(f"no such job {job_id!r}: a job ID looks like <peer>.<id>")
    return peer


@dataclass(frozen=True)
class _StatusBody:
    """The last status body of a piece, valid while its event log keeps this size (and the executor's
    annotations their stamp)."""

    owner: str
    log_size: int
    body: dict[str, Any]
    json: bytes
    stamp: int = 0


class JobService:
    """Pieces at this site (the executor's jobs)."""

    def __init__(
        self,
        *,
        name: str,
        db: Database,
        publishing: PublishingArea,
        stager: Stager,
        executor: Executor,
        digests: DigestCache,
        policy: Policy | None = None,
        max_inputs: int = 1000,
        quotas: Quotas | None = None,
        retention_seconds: float = 0.0,
    ) -> None:
        self.name = name
        self.quotas = quotas
        #: Finished jobs are removed this long after they finished, unless pinned (0: never; peer/retention.py).
        self.retention_seconds = retention_seconds
        self.max_inputs = max_inputs
        self.db = db
        self.publishing = publishing
        self.stager = stager
        self.executor = executor
        self.digests = digests
        self.policy = policy or Policy()
        #: (job ID, input index) -> this peer's copy of that input, for a piece this peer sends itself of a
        #: job it took over (peer/replicas.py ``Replicas.input_path``; set by the app).
        self.replica_input: Callable[[str, int], Path] = _no_replicas
        self._readers: OrderedDict[str, EventLogReader] = OrderedDict()
        self._reader_locks: dict[str, threading.Lock] = {}
        self._readers_lock = threading.Lock()
        self.max_cached_readers = 1024
        self._status_bodies: OrderedDict[str, _StatusBody] = OrderedDict()

    # ======================================================================
    # Accepting a piece
    # ======================================================================
    def accept(self, meta: dict[str, Any], executable: bytes) -> dict[str, Any]:
        """Stage and queue a piece sent here by a job's home; idempotent on (home, origin key)."""
        existing = self._by_origin(meta["entry_peer"], meta["origin_key"])
        if existing is not None:
            return existing
        input_meta = list(meta["inputs"])
        if not input_meta:
            raise BadRequest("a piece needs at least one input")
        if not any("index" in item for item in input_meta):  # a whole job, as peers sent them before pieces
            input_meta = [{**item, "index": n} for n, item in enumerate(input_meta)]
        indexes = [item.get("index") for item in input_meta]
        if len(set(indexes)) != len(indexes) or any(not isinstance(i, int) or isinstance(i, bool) or i < 0
                                                    for i in indexes):
            raise BadRequest("each input needs its own index in the job (an integer >= 0)")
        input_meta.sort(key=lambda item: item["index"])
        indexes.sort()
        if len(input_meta) > self.max_inputs:
            raise BadRequest(f"at most {self.max_inputs} inputs per piece on this site", max_inputs=self.max_inputs)
        validate_names(meta["executable_name"], meta["submit_name"], [i["name"] for i in input_meta])
        try:
            parsed = parse(meta["submit_text"], self.policy)
        except SubmitDescriptionError as exc:
            raise BadRequest(f"submit file {meta['submit_name']!r}: {exc}") from None
        if self.quotas is not None:  # before staging: the inputs would be copied here
            self.quotas.check(meta["owner"], len(executable) + len(meta["submit_text"].encode())
                              + sum(int(i["size"]) for i in input_meta), f"job {meta['name']!r}")
        for i in input_meta:
            source = i.get("source")
            if source is not None and (not isinstance(source, str) or not source.startswith(REPLICA_SOURCE)
                                       or ".." in source.split("/")):
                raise BadRequest(f"an input's source must be a path under {REPLICA_SOURCE}")
        if meta["entry_peer"] == self.name:
            sources = [InputSource(name=i["name"], index=i["index"],
                                   local_path=(self.replica_input(str(meta.get("job_id")), i["index"]) if i.get("source")
                                               else self.publishing.file(i["path"])))
                       for i in input_meta]
        else:
            base = meta["entry_url"].rstrip("/")
            sources = [
                InputSource(
                    name=i["name"],
                    url=(f"{base}{i['source']}" if i.get("source")
                         else f"{base}/api/v1/peer/files/{requests.utils.quote(i['path'])}"),
                    sha256=i["sha256"],
                    size=i["size"],
                    index=i["index"],
                )
                for i in input_meta
            ]
        piece_id = f"{self.name}.{int(time.time()):x}{secrets.token_hex(4)}"
        try:
            staged = self.stager.stage(
                piece_id,
                executable=executable,
                executable_name=meta["executable_name"],
                submit_text=meta["submit_text"],
                submit_name=meta["submit_name"],
                inputs=sources,
            )
        except PocketgridError:
            raise
        except Exception as exc:
            log.exception("staging %s failed", piece_id)
            raise BadGateway(f"staging failed on {self.name}: {exc}") from None
        try:
            with self.db.session() as s:
                job = Job(
                    id=piece_id,
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
                    pinned=bool(meta.get("pinned")),
                    record_id=meta.get("job_id") if isinstance(meta.get("job_id"), str) else None,
                    # owner + executable, hashed: the run times its procs take are learned under it
                    history_key=_key_or_none(meta.get("history_key")),
                )
                s.add(job)
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
        self.executor.committed(piece_id)
        log.info("piece %s (%s) accepted from %s: inputs %s", piece_id, meta["name"], meta["entry_peer"],
                 _ranges(indexes))
        return self._summary(piece_id)

    def find_by_origin(self, origins: dict[str, str]) -> dict[str, str]:
        """``{origin key: the home that sent it}`` -> ``{origin key: piece ID}`` for the pieces this site holds.

        A job's new manager asks this after a takeover: a piece its predecessor was sending when it died
        may have been made here, and it is adopted, not run a second time."""
        if not origins:
            return {}
        with self.db.sessions() as s:
            rows = s.execute(select(Job.id, Job.entry_peer, Job.origin_key).where(Job.origin_key.in_(list(origins))))
            return {key: piece for piece, home, key in rows if origins.get(key) == home}

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
                "inputs": [p.index for p in job.procs],
                "clusters": sorted({p.cluster for p in job.procs}),
                "warnings": job.warnings,
            }

    # ======================================================================
    # Status
    # ======================================================================
    def _job(self, job_id: str, owner: str | None, is_admin: bool = False) -> Job:
        """The piece (``owner`` None: any owner, for its home's host-to-host calls)."""
        with self.db.sessions() as s:
            job = s.get(Job, job_id)
            if job is None:
                raise NotFound(f"no such piece {job_id!r} here")
            if not (is_admin or owner is None or job.owner == owner):
                raise NotYours(job_id, job.owner, f"no such piece {job_id!r} here")
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

    def status(self, job_id: str, owner: str | None, *, is_admin: bool = False) -> dict[str, Any]:
        """The piece's status, from only the events appended since last time."""
        return self.status_entry(job_id, owner, is_admin=is_admin).body

    def status_entry(self, job_id: str, owner: str | None, *, is_admin: bool = False,
                     extras: frozenset[str] = frozenset()) -> "_StatusBody":
        """:meth:`status` with the body already serialised.

        The body only changes when the event log grows (or what the executor adds to it), so the last
        one is kept per piece with the log's size: an unchanged poll costs a ``stat`` and no database
        read.  ``extras`` (:data:`STATUS_EXTRAS`) asks for a larger body, rendered afresh and never
        cached: ``history`` (each proc's past states and reasons).
        """
        if extras:
            with self._reader_lock(job_id):
                job = self._job(job_id, owner, is_admin)
                reader = self._reader(job)
                reader.update()
                body = self._render_status(job, dict(reader.procs), job.status_version or 0, extras)
                self._annotate(job, body)
            return _StatusBody(job.owner, 0, body, json.dumps(body, separators=(",", ":")).encode() + b"\n")
        cached = self._status_bodies.get(job_id)
        stamp = self.executor.annotation_stamp()
        if cached is not None:
            if not (is_admin or owner is None or cached.owner == owner):
                raise NotYours(job_id, cached.owner, f"no such piece {job_id!r} here")
            if cached.log_size == self.log_size(job_id) and cached.stamp == stamp:
                return cached
        with self._reader_lock(job_id):
            size = self.log_size(job_id)  # before reading: growth after this makes the next poll re-read
            job = self._job(job_id, owner, is_admin)  # under the lock: its version matches the reader
            reader = self._reader(job)
            version = job.status_version or 0
            grew = reader.update()
            if grew:
                with self.db.session() as s:
                    row = s.get(Job, job_id)
                    if row is not None:
                        row.reader_state = reader.state_dict()
                        row.status_version = (row.status_version or 0) + 1
                        version = row.status_version
            statuses = dict(reader.procs)
            body = self._render_status(job, statuses, version)
            annotated = self._annotate(job, body)
            if not grew and (cached.body != body if cached is not None else annotated):
                body["version"] = self._bump_version(job_id)  # what the executor says changed: a new ETag
            entry = _StatusBody(job.owner, size, body, json.dumps(body, separators=(",", ":")).encode() + b"\n",
                                stamp)
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
        for position, p in enumerate(job.procs):  # in index order, as staged
            st = statuses.get((p.cluster, p.proc)) or ProcStatus(cluster=p.cluster, proc=p.proc)
            ordered.append(st)
            d: dict[str, Any] = {"index": p.index, "input": p.input_name}
            # Only what is known: an unchanged poll stays small.
            d.update({k: v for k, v in st.to_dict().items()
                      if v is not None and k != "history" and not (k in ("evictions", "retries") and v == 0)})
            if "history" in extras:
                d["history"] = st.history
            if st.state in (ProcState.FAILED, ProcState.HELD):  # why: its stderr (final once the event is logged)
                if stderr_names is None:
                    stderr_names = recorded_names(self.stager.job_root(job.id) / META_DIR) or []
                name = stderr_names[position] if position < len(stderr_names) else None
                d.update(stderr_fields(self.proc_dir(job.id, p.index), name))
            counts[st.state.value] = counts.get(st.state.value, 0) + 1
            inputs.append(d)
        state = overall_state(ordered)
        finished = finished_time(ordered)
        if finished is None and state in ("completed", "failed", "removed"):
            finished = job.finished_at  # final events without a time: when the sweeper first saw it final
        expires = None if finished is None or job.pinned or not self.retention_seconds else finished + self.retention_seconds
        return {
            "id": job.id,
            "name": job.name,
            "peer": self.name,
            #: Bumped whenever the event log changed what this status says.
            "version": version,
            "owner": job.owner,
            "executor": job.executor,
            "created_at": job.created_at,
            "state": overall_state(ordered),
            "counts": counts,
            "inputs": inputs,
            "warnings": job.warnings,
            #: Retention (peer/retention.py): a pinned job is kept; else it goes at expires_at.
            "pinned": bool(job.pinned),
            "finished_at": finished,
            "expires_at": expires,
        }

    def update_job(self, job_id: str, **values: Any) -> None:
        """Change a job's row (``pinned``) and its status version, so that pollers see the change (ETag)."""
        with self._reader_lock(job_id):  # no status body is being built from the old row meanwhile
            with self.db.session() as s:
                row = s.get(Job, job_id)
                if row is None:
                    raise NotFound(f"no such job {job_id!r}")
                for key, value in values.items():
                    setattr(row, key, value)
                row.status_version = (row.status_version or 0) + 1
            with self._readers_lock:
                self._status_bodies.pop(job_id, None)

    def set_pinned(self, pins: dict[str, bool]) -> dict[str, Any]:
        """Pin or unpin pieces (their job was pinned or unpinned at its home); names those not here."""
        done, missing = [], []
        for piece_id, pinned in pins.items():
            try:
                self.update_job(piece_id, pinned=bool(pinned))
                done.append(piece_id)
            except NotFound:
                missing.append(piece_id)
        return {"pinned": done, "missing": missing}

    def forget(self, job_id: str) -> None:
        """Drop what is cached about a job that was removed."""
        with self._readers_lock:
            self._readers.pop(job_id, None)
            self._status_bodies.pop(job_id, None)
            self._reader_locks.pop(job_id, None)

    def _annotate(self, job: Job, body: dict[str, Any]) -> bool:
        """Add what the executor knows beyond the event log: a kill not carried out yet (``removal``),
        why an idle proc waits (``match``).  True when it added anything."""
        extra = self.executor.annotate(job, {i["index"]: i["state"] for i in body["inputs"]})
        if extra.get("removal"):
            body["removal"] = extra["removal"]
        procs = extra.get("procs") or {}
        for item in body["inputs"]:
            item.update(procs.get(item["index"], {}))
        return bool(extra.get("removal") or procs)

    def _bump_version(self, job_id: str) -> int:
        with self.db.session() as s:
            row = s.get(Job, job_id)
            if row is None:
                return 0
            row.status_version = (row.status_version or 0) + 1
            return row.status_version

    def change_marker(self, job_id: str) -> tuple[int, int]:
        """Changes whenever the job's status may have: its event log grew, or what the executor adds
        to statuses (a pending removal, why idle procs wait) changed.  Long-polls and event streams
        wait on this."""
        return self.log_size(job_id), self.executor.annotation_stamp()

    def log_size(self, job_id: str) -> int:
        try:
            return os.stat(self.stager.job_root(job_id) / "job.log").st_size
        except FileNotFoundError:
            return 0

    def piece_statuses(self, known: dict[str, int | None], *, history: bool = False) -> dict[str, Any]:
        """Statuses of many pieces for their home: only those whose version differs from ``known``'s.

        ``{"pieces": {id: {"version", "state", "procs": [...], "removal"?}}, "missing": [ids]}``;
        ``missing`` names pieces this site does not have (it lost them, or never made them).
        ``history``: each proc's past states too (asked when the job's owner asks for them).
        """
        changed: dict[str, Any] = {}
        missing: list[str] = []
        for piece_id, version in known.items():
            try:
                body = self.status_entry(piece_id, None, extras=frozenset({"history"}) if history else frozenset()).body
            except NotFound:
                missing.append(piece_id)
                continue
            if body["version"] != version:
                changed[piece_id] = {"version": body["version"], "state": body["state"], "procs": body["inputs"],
                                     **({"removal": body["removal"]} if body.get("removal") else {})}
        return {"pieces": changed, "missing": missing}

    # ======================================================================
    # Removal
    # ======================================================================
    def kill(self, job_id: str) -> dict[str, Any]:
        """Remove every unfinished proc of a piece (the job was killed)."""
        self._job(job_id, None)
        with self.db.session() as s:
            row = s.get(Job, job_id)
            if row is not None and row.removed_at is None:
                row.removed_at = time.time()
        try:
            removed = self.executor.remove(job_id)
        except RemovalPending as exc:  # remembered by the executor; carried out when it can
            return {"id": job_id, "removed_procs": 0, "removal": exc.message}
        log.info("piece %s: remove requested, %d procs affected", job_id, removed)
        return {"id": job_id, "removed_procs": removed}

    def remove_input(self, job_id: str, index: int, reason: str) -> dict[str, Any]:
        """Stop input ``index`` of a piece and delete its directory (idempotent).

        ``{"state": "stopping"}`` while its proc still runs (ask again);
        ``{"state": "deleted"}`` once it is gone (also for a piece or input this
        site does not have: there is nothing left to delete).
        """
        with self.db.sessions() as s:
            known = s.scalars(select(Proc.id).where(Proc.job_id == job_id, Proc.index == index)).first()
        if known is None:
            return {"id": job_id, "index": index, "state": "deleted"}
        outcome = self.executor.remove_proc(job_id, index, reason)
        if outcome == "stopping":
            return {"id": job_id, "index": index, "state": "stopping"}
        shutil.rmtree(self.proc_dir(job_id, index), ignore_errors=True)
        log.info("piece %s: input %d removed and its directory deleted (%s)", job_id, index, reason)
        return {"id": job_id, "index": index, "state": "deleted"}

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
        have = {p.index for p in job.procs}  # a piece's inputs are numbered as in its job
        if indexes is not None:
            bad = sorted({i for i in indexes if i not in have})
            if bad:
                raise BadRequest(f"piece {job_id} has inputs {sorted(have)}; no input {', '.join(map(str, bad))}")
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

    def output_file(self, job_id: str, owner: str, index: int, name: str, *, is_admin: bool = False) -> Path:
        job = self._job(job_id, owner, is_admin)
        if index not in {p.index for p in job.procs}:
            raise NotFound(f"piece {job_id} has no input number {index}")
        area = PublishingArea(self.proc_dir(job_id, index))
        path = area.file(name)
        if area.relative(path) in {job.executable_name, job.submit_name}:
            raise NotFound(f"{name!r} is not an output of input {index}")
        return path


def _ranges(indexes: list[int]) -> str:
    """``0-3,7``: a piece's input indexes for a log line."""
    out: list[str] = []
    for i in sorted(indexes):
        if out and "-" not in out[-1].split(",")[-1] and int(out[-1].split(",")[-1]) == i - 1:
            out[-1] = f"{out[-1]}-{i}"
        elif out and "-" in out[-1] and int(out[-1].rsplit("-", 1)[1]) == i - 1:
            out[-1] = f"{out[-1].rsplit('-', 1)[0]}-{i}"
        else:
            out.append(str(i))
    return ",".join(out)
