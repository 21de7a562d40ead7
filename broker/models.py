"""The broker role's tables.  Soft state: rebuilt from the peers' next reports.

They live in the database of whichever peer holds the role, beside (but
independent of) that peer's own tables, so ``broker`` never imports ``peer``.
"""
from __future__ import annotations

import time
from typing import Any

from sqlalchemy import Float, Integer, JSON, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class BrokerBase(DeclarativeBase):
    pass


class Registration(BrokerBase):
    """A peer that registered with this broker, with its join sequence number."""

    __tablename__ = "broker_registrations"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    url: Mapped[str] = mapped_column(String(500))
    seq: Mapped[int] = mapped_column(Integer)
    registered_at: Mapped[float] = mapped_column(Float, default=time.time)
    #: Last heartbeat, registration or load report: a peer silent for longer
    #: than the detection window leaves the placement table.
    last_seen: Mapped[float | None] = mapped_column(Float, nullable=True)
    #: The peer's host certificate (PEM) from the mutual-TLS handshake of its
    #: registration: every peer learns every other peer's key through the
    #: membership, to check tokens that peer issued even when it is down.
    cert: Mapped[str | None] = mapped_column(Text, nullable=True)


class LoadReport(BrokerBase):
    """The latest EMA report of one peer, plus work placed on it since."""

    __tablename__ = "broker_load"

    peer: Mapped[str] = mapped_column(String(200), primary_key=True)
    url: Mapped[str] = mapped_column(String(500))
    coefficient: Mapped[float] = mapped_column(Float)
    paper_coefficient: Mapped[float | None] = mapped_column(Float, nullable=True)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    pool: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    sampled_at: Mapped[float] = mapped_column(Float)
    received_at: Mapped[float] = mapped_column(Float)
    interval: Mapped[float] = mapped_column(Float, default=15.0)
    #: Procs placed on this peer since its last report (reset by a report).
    in_flight: Mapped[int] = mapped_column(Integer, default=0)


class Placement(BrokerBase):
    """One placement decision, kept for inspection (the most recent ``BrokerRole.keep_placements``)."""

    __tablename__ = "broker_placements"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_key: Mapped[str] = mapped_column(String(200), index=True)
    chosen: Mapped[str] = mapped_column(String(200))
    ranking: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    policy: Mapped[str] = mapped_column(String(50))
    decided_at: Mapped[float] = mapped_column(Float, default=time.time)


class PlacementOutcome(BrokerBase):
    """How a decision ended, as the entry peer reported it: who took the job, which candidates failed first.

    A table of its own so databases made before it gain it by ``create_all``.
    """

    __tablename__ = "broker_placement_outcomes"

    placement_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    accepted_by: Mapped[str] = mapped_column(String(200))
    job_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    #: ``[{"name": peer, "error": why}]`` in the order they were tried.
    failed: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    reported_at: Mapped[float] = mapped_column(Float, default=time.time)


class RunTimes(BrokerBase):
    """A peer's run-time statistics from its last report that had them (``runtimes`` in the report).

    Optional in reports (older peers and standalone agents send none), kept in
    a table of its own so databases made before it gain it by ``create_all``.
    """

    __tablename__ = "broker_runtimes"

    peer: Mapped[str] = mapped_column(String(200), primary_key=True)
    stats: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    received_at: Mapped[float] = mapped_column(Float)


class PeerHealth(BrokerBase):
    """Failed submissions to one peer, reported by entry peers, and its ban.

    A separate table (not columns on ``broker_load``) so that a ban survives
    the peer's next load report and older databases gain it by ``create_all``.
    """

    __tablename__ = "broker_peer_health"

    peer: Mapped[str] = mapped_column(String(200), primary_key=True)
    #: Consecutive failures (reset by a success or by ``Backoff.forget_after``).
    failures: Mapped[int] = mapped_column(Integer, default=0)
    last_failure_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    banned_until: Mapped[float | None] = mapped_column(Float, nullable=True)


class LinkRate(BrokerBase):
    """Measured transfer rate from one peer to another (bytes/s, smoothed)."""

    __tablename__ = "broker_link_rates"

    src: Mapped[str] = mapped_column(String(200), primary_key=True)
    dst: Mapped[str] = mapped_column(String(200), primary_key=True)
    bytes_per_second: Mapped[float] = mapped_column(Float)
    samples: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[float] = mapped_column(Float)
