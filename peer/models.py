"""The peer's own tables: job records and attempts (at a job's home), pieces and their procs (at the
sites that run them), idempotency keys, membership."""
from __future__ import annotations

import time
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Float, ForeignKey, Integer, String, Text, UniqueConstraint, false
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    pass


class JobRecord(Base):
    """A user's job, at its home (the peer it was submitted to): what the user sees.

    The job's inputs run in *pieces* at sites (table ``jobs``, here or at
    other peers); each run of one input is a :class:`JobAttempt`.  A record
    and its attempts serialise to one JSON document and back
    (peer/records.py ``to_document``/``from_document``).
    """

    __tablename__ = "job_records"

    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    owner: Mapped[str] = mapped_column(String(500), index=True)
    #: The owner's VO (for the delegation the home signs when it sends a piece to a site).
    owner_vo: Mapped[str | None] = mapped_column(String(200), nullable=True)
    created_at: Mapped[float] = mapped_column(Float, default=time.time, index=True)
    executable_name: Mapped[str] = mapped_column(String(255))
    submit_name: Mapped[str] = mapped_column(String(255))
    submit_text: Mapped[str] = mapped_column(Text)
    #: One entry per input: name, path (in the home's publishing area), size, sha256.
    inputs: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    warnings: Mapped[list[str]] = mapped_column(JSON, default=list)
    #: Bumped whenever what the user sees changes: the status ETag.
    version: Mapped[int] = mapped_column(Integer, default=1)
    #: ``state`` and ``counts`` as last rendered (the job list reads no attempts).
    summary: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    removed_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    #: Every input has a result or a final verdict: the manager stops watching.  The retention sweeper
    #: removes the record (and its pieces) ``job_retention_seconds`` later unless it is pinned.
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True, index=True)
    #: Kept whatever its age (``pocketgrid pin``); passed on to the sites holding its pieces.
    pinned: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    #: Expired or purged: gone for its owner (404); the row stays only until every site removed its
    #: pieces (attempts with ``cleanup`` "purge"), then it goes too.
    purged_at: Mapped[float | None] = mapped_column(Float, nullable=True, index=True)
    home: Mapped[str] = mapped_column(String(200))
    #: The peer managing the job now, and its claim's epoch (the home, 1; each takeover raises it by one).
    #: A record whose manager is another peer is a *replica* here: kept, shown, never managed.
    manager: Mapped[str] = mapped_column(String(200), index=True)
    manager_epoch: Mapped[int] = mapped_column(Integer, default=1)
    #: Owner + executable SHA-256, hashed (broker/runtimes.py): the split asks for this program's run times.
    history_key: Mapped[str | None] = mapped_column(String(64), nullable=True)
    #: The member holding a replica of this record (peer/replicas.py), chosen by its manager.
    deputy: Mapped[str | None] = mapped_column(String(200), nullable=True)
    #: At the manager: the record's version the deputy last acknowledged (None: never pushed).  The job
    #: manager pushes the record again while ``version`` is newer (at most about once a second).
    replica_version: Mapped[int | None] = mapped_column(Integer, nullable=True)

    attempts: Mapped[list["JobAttempt"]] = relationship(
        back_populates="record", order_by="[JobAttempt.index, JobAttempt.number]", cascade="all, delete-orphan"
    )


class JobAttempt(Base):
    """One run of one input of a job, in one piece at one site (peer/records.py has the rules)."""

    __tablename__ = "job_attempts"
    __table_args__ = (UniqueConstraint("job_id", "index", "number", name="uq_attempt"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("job_records.id", ondelete="CASCADE"), index=True)
    index: Mapped[int] = mapped_column(Integer)
    #: 1, 2, ... per input.
    number: Mapped[int] = mapped_column(Integer)
    #: pending | dispatching | idle | running | held | completed | failed | removed | lost | superseded
    state: Mapped[str] = mapped_column(String(20), index=True)
    site: Mapped[str | None] = mapped_column(String(200), nullable=True, index=True)
    piece: Mapped[str | None] = mapped_column(String(200), nullable=True)
    #: The origin key its piece was sent with (job, site and attempt numbers): a resend finds the same piece.
    piece_key: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    #: The piece's status version last seen (what the next status request sends).
    piece_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[float] = mapped_column(Float, default=time.time)
    #: A pending attempt is not sent before this time (backoff after a site failure).
    not_before: Mapped[float | None] = mapped_column(Float, nullable=True)
    dispatched_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    #: Why it ended as it did (a site's message, a hold reason, "superseded by attempt 3"...).
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    #: Started by the user's retry (a new round: not counted against max_attempts with the earlier ones).
    retry: Mapped[bool] = mapped_column(Boolean, default=False)
    #: This attempt's outputs are the input's result.
    result: Mapped[bool] = mapped_column(Boolean, default=False)
    #: Sites to avoid when sending this (pending) attempt: those the input was lost on.
    avoid: Mapped[list[str]] = mapped_column(JSON, default=list)
    #: The proc's status as its site reports it (exit code, hold reason, times, stderr tail...).
    status: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    #: What is still to do at its site: "remove" (stop it: the job was killed), "delete" (stop it and
    #: delete its directory: lost or superseded), "purge" (remove the whole piece: the record expired or
    #: was purged); once done "removed", "deleted", "purged"; None: nothing.
    cleanup: Mapped[str | None] = mapped_column(String(10), nullable=True, index=True)
    #: Sites that refused this input for good while it was being placed (site -> why: quota, "not
    #: here"); it is not sent there again in this round, and fails naming them when no site takes it.
    refused: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    #: The pin state its site was last told (the home passes a pin or unpin on to the piece's site).
    site_pinned: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    record: Mapped[JobRecord] = relationship(back_populates="attempts")


class Job(Base):
    """A *piece*: what this site runs of a job (some of its inputs), one proc per input.

    Its ``entry_peer`` is the job's home, which sent it; ``Proc.index`` is
    the input's index in the job.  (The table keeps its old name.)
    """

    __tablename__ = "jobs"
    __table_args__ = (UniqueConstraint("entry_peer", "origin_key", name="uq_job_origin"),)

    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    owner: Mapped[str] = mapped_column(String(500), default="anonymous")
    created_at: Mapped[float] = mapped_column(Float, default=time.time)
    executor: Mapped[str] = mapped_column(String(20))
    executable_name: Mapped[str] = mapped_column(String(255))
    submit_name: Mapped[str] = mapped_column(String(255))
    submit_text: Mapped[str] = mapped_column(Text)
    input_names: Mapped[list[str]] = mapped_column(JSON)
    #: The peer the client talked to, and the client's Idempotency-Key hashed
    #: there: a retried forward after a lost answer finds this row again.
    entry_peer: Mapped[str] = mapped_column(String(200))
    origin_key: Mapped[str] = mapped_column(String(200))
    warnings: Mapped[list[str]] = mapped_column(JSON, default=list)
    #: Incremental event-log reader state (offset + per-proc statuses).
    reader_state: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    #: Bumped whenever the job's visible status changes; the status ETag.
    status_version: Mapped[int] = mapped_column(Integer, default=0)
    removed_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    #: When every proc had reached a final state (the latest final event's time), as the retention
    #: sweeper last saw it (peer/retention.py); None while any proc may still change.
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True, index=True)
    #: A pinned piece is never removed by the retention sweeper (its job was pinned at its home).
    pinned: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    #: The job's ID at its home (None for a job of a release before pieces: it is its own record).
    record_id: Mapped[str | None] = mapped_column(String(200), nullable=True, index=True)
    #: Its job's history key (owner + executable, hashed: broker/runtimes.py): the run times of its procs
    #: are learned under it (peer/runtime_stats.py).
    history_key: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)

    procs: Mapped[list["Proc"]] = relationship(
        back_populates="job", order_by="Proc.index", cascade="all, delete-orphan"
    )


class Proc(Base):
    """One input of a piece = one Condor proc; maps cluster.proc -> (piece, input index in the job)."""

    __tablename__ = "procs"
    __table_args__ = (UniqueConstraint("cluster", "proc", "executor", name="uq_cluster_proc"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    index: Mapped[int] = mapped_column(Integer)
    input_name: Mapped[str] = mapped_column(String(255))
    executor: Mapped[str] = mapped_column(String(20))
    cluster: Mapped[int] = mapped_column(Integer)
    proc: Mapped[int] = mapped_column(Integer)
    #: LocalExecutor bookkeeping: queued | running | done | held (its policy or a missing file held it) |
    #: unmatchable (this host does not match its requirements: never started, as HTCondor keeps it idle).
    local_state: Mapped[str] = mapped_column(String(20), default="queued", index=True)
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    pid_started: Mapped[float | None] = mapped_column(Float, nullable=True)
    restarts: Mapped[int] = mapped_column(Integer, default=0)

    job: Mapped[Job] = relationship(back_populates="procs")


class JobPlacement(Base):
    """One dispatch round's split decision for a job, kept at its home (peer/placement_record.py).

    ``record``: ``inputs`` (the input indexes placed), ``policy``, ``decided_at``, ``shares`` (site,
    count, estimate, reason), ``ranking`` (each candidate's name, score, reason and the estimate's
    parts), and the broker's decision ``id``.  The job's status shows the latest (``placement``).
    """

    __tablename__ = "job_placements"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("job_records.id", ondelete="CASCADE"), index=True)
    decided_at: Mapped[float] = mapped_column(Float, default=time.time)
    record: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class IdempotencyKey(Base):
    """A client's submit key as seen by the entry peer."""

    __tablename__ = "idempotency_keys"

    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    owner: Mapped[str] = mapped_column(String(500), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    job_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    #: The peer the job was last forwarded to, recorded BEFORE forwarding: a
    #: retry after a crash goes back there (it de-duplicates) instead of
    #: creating a second job on another peer.
    target: Mapped[str | None] = mapped_column(String(200), nullable=True)
    created_at: Mapped[float] = mapped_column(Float, default=time.time)


class Counter(Base):
    """Monotonic counters (local cluster IDs)."""

    __tablename__ = "counters"

    name: Mapped[str] = mapped_column(String(50), primary_key=True)
    value: Mapped[int] = mapped_column(Integer, default=0)


class Member(Base):
    """A peer this peer knows of (pushed by the broker, persisted)."""

    __tablename__ = "members"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    url: Mapped[str] = mapped_column(String(500))
    seq: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[float] = mapped_column(Float, default=time.time)
    #: Its host certificate (PEM), as the broker saw it (see broker/models.py).
    cert: Mapped[str | None] = mapped_column(Text, nullable=True)


class FileDigest(Base):
    """SHA-256 of a file (input or output), valid while its size and mtime are unchanged."""

    __tablename__ = "file_digests"

    path: Mapped[str] = mapped_column(String(1000), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    mtime_ns: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))


class Setting(Base):
    """Small persisted facts about this peer (broker, epoch, own sequence number)."""

    __tablename__ = "settings"

    key: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[Any] = mapped_column(JSON)


class IssuedToken(Base):
    """A bearer token this peer issued (login or paired device), so it can be listed and revoked."""

    __tablename__ = "issued_tokens"

    jti: Mapped[str] = mapped_column(String(64), primary_key=True)
    dn: Mapped[str] = mapped_column(String(500), index=True)
    vo: Mapped[str | None] = mapped_column(String(200), nullable=True)
    kind: Mapped[str] = mapped_column(String(20))  # login | device
    device: Mapped[str | None] = mapped_column(String(200), nullable=True)
    created_at: Mapped[float] = mapped_column(Float, default=time.time)
    expires_at: Mapped[float] = mapped_column(Float)
    revoked_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class RevokedToken(Base):
    """A revoked token ID (issued here or anywhere in the system), kept until it expires."""

    __tablename__ = "revoked_tokens"

    jti: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[float] = mapped_column(Float)


class AuditEvent(Base):
    """One security-relevant action: who, from where, what, and how it ended."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[float] = mapped_column(Float, default=time.time, index=True)
    action: Mapped[str] = mapped_column(String(40), index=True)
    outcome: Mapped[str] = mapped_column(String(20))  # ok | denied | failed
    dn: Mapped[str] = mapped_column(String(500))
    source: Mapped[str] = mapped_column(String(200))
    detail: Mapped[str] = mapped_column(Text, default="")


class ResumableUpload(Base):
    """A tus upload (peer/resumable_uploads.py); its bytes are in ``<state>/uploads-incoming/<id>.part``."""

    __tablename__ = "resumable_uploads"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(500), index=True)
    #: Path below the owner's ``uploads/u-<hash>/`` directory.
    filename: Mapped[str] = mapped_column(String(1000))
    length: Mapped[int] = mapped_column(BigInteger)
    #: Bytes stored (and synced) so far.
    offset: Mapped[int] = mapped_column(BigInteger, default=0)
    sha256: Mapped[str] = mapped_column(String(64))
    #: The Upload-Metadata header as sent (HEAD echoes it).
    upload_metadata: Mapped[str] = mapped_column(Text, default="")
    state: Mapped[str] = mapped_column(String(20), default="incomplete")  # incomplete | complete | failed
    path: Mapped[str | None] = mapped_column(String(1000), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[float] = mapped_column(Float, default=time.time)
    expires_at: Mapped[float] = mapped_column(Float, index=True)
