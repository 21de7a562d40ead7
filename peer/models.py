"""The peer's own tables: jobs, their procs, idempotency keys, membership."""
from __future__ import annotations

import time
from typing import Any

from sqlalchemy import JSON, BigInteger, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    pass


class Job(Base):
    """A user's job: one executable + submit file, one proc per input file."""

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

    procs: Mapped[list["Proc"]] = relationship(
        back_populates="job", order_by="Proc.index", cascade="all, delete-orphan"
    )
    #: Where and why the broker placed it (None: placed by a peer that did not send the decision).
    placement: Mapped["JobPlacement | None"] = relationship(
        back_populates="job", cascade="all, delete-orphan", lazy="joined", uselist=False
    )


class Proc(Base):
    """One input of a job = one Condor proc; maps cluster.proc -> (job, input)."""

    __tablename__ = "procs"
    __table_args__ = (UniqueConstraint("cluster", "proc", "executor", name="uq_cluster_proc"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    index: Mapped[int] = mapped_column(Integer)
    input_name: Mapped[str] = mapped_column(String(255))
    executor: Mapped[str] = mapped_column(String(20))
    cluster: Mapped[int] = mapped_column(Integer)
    proc: Mapped[int] = mapped_column(Integer)
    #: LocalExecutor bookkeeping: queued | running | held | done.
    local_state: Mapped[str] = mapped_column(String(20), default="queued", index=True)
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    pid_started: Mapped[float | None] = mapped_column(Float, nullable=True)
    restarts: Mapped[int] = mapped_column(Integer, default=0)

    job: Mapped[Job] = relationship(back_populates="procs")


class JobPlacement(Base):
    """The broker's decision for a job, as the entry peer forwarded it with the job.

    ``record``: ``chosen``, ``policy``, ``decided_at``, ``ranking`` (each
    candidate's name, score, reason and detail) and ``failed`` (candidates
    that could not take the job before the chosen one accepted it).  A table
    of its own rather than a column of ``jobs``, so a database made before it
    existed gains it with ``create_all``.
    """

    __tablename__ = "job_placements"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    #: The job's history key (owner + executable, hashed: peer/runtime_stats.py), for learned run times.
    history_key: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    record: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)

    job: Mapped[Job] = relationship(back_populates="placement")


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
