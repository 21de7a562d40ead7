"""Placement policies: pure functions of (peer table, job, clock) -> ranked peers.

No I/O here, so policies can be unit-tested and driven by a simulator.  A
policy returns every eligible peer, best first; the entry peer forwards to the
first and falls back to the next when a peer fails.

Convention (see ema_agent.coefficient): a LOWER load coefficient means a LESS
loaded peer.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence


@dataclass(frozen=True)
class PeerState:
    """What the broker knows of one peer at decision time."""

    name: str
    url: str
    coefficient: float | None  #: None: no report yet
    report_age: float | None  #: seconds since the report was sampled
    interval: float = 15.0
    in_flight: int = 0  #: procs placed since the report
    pool: dict | None = None


@dataclass(frozen=True)
class JobRequest:
    """What placement needs to know of a job."""

    n_procs: int
    input_bytes: dict[str, int] = field(default_factory=dict)  #: bytes of inputs per holding peer
    entry_peer: str = ""


@dataclass(frozen=True)
class Ranked:
    name: str
    url: str
    score: float | None  #: None when the peer has no fresh report
    reason: str


Policy = Callable[[Sequence[PeerState], JobRequest, float], list[Ranked]]


def _is_fresh(peer: PeerState, stale_factor: float) -> bool:
    return peer.report_age is not None and peer.report_age <= stale_factor * peer.interval


def min_coefficient(
    peers: Sequence[PeerState], job: JobRequest, now: float, *, stale_factor: float = 3.0
) -> list[Ranked]:
    """The paper's policy: the minimum last-reported coefficient wins.

    Peers whose report is stale (older than ``stale_factor`` intervals) or
    missing are still returned, after all fresh ones, as a last resort: a
    peer that just joined should not make a submission fail.
    """
    fresh = [p for p in peers if _is_fresh(p, stale_factor) and p.coefficient is not None]
    rest = [p for p in peers if p not in fresh]
    ranked = [
        Ranked(p.name, p.url, float(p.coefficient), "min coefficient")  # type: ignore[arg-type]
        for p in sorted(fresh, key=lambda p: (p.coefficient, p.name))
    ]
    ranked += [
        Ranked(p.name, p.url, None, "no fresh report")
        for p in sorted(rest, key=lambda p: p.name)
    ]
    return ranked


POLICIES: dict[str, Policy] = {
    "min-coefficient": min_coefficient,
}


def get_policy(name: str) -> Policy:
    try:
        return POLICIES[name]
    except KeyError:
        raise ValueError(
            f"unknown placement policy {name!r}; choose one of {', '.join(sorted(POLICIES))}"
        ) from None
