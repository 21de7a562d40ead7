"""How many client connections the front holds, per address and in all; and its connection-level log.

A connection is counted from the moment it is accepted (before its TLS
handshake: a half-sent ClientHello holds a socket too) until it closes.  Beyond
``front_max_connections_per_address`` from one address, or
``front_max_connections`` in all, a new connection is **closed at once,
before any TLS**: an HTTP answer (429 with Retry-After) would first need the
handshake, the CPU and the waiting the limit exists to refuse, to someone who
already holds that many connections.  Well-behaved clients never get near the
limits (a browser opens about six connections to a host, the CLI and a peer a
few); a peer behind a NAT or a reverse proxy that gathers many users on one
address raises the per-address limit (0 turns it off).

The front logs connection-level events only (refusals, handshake, header and
body timeouts, bodies over the limit, long-polls refused for the limits on
waits, peer/front/waits.py): the app logs every request it serves.
Under a flood those events come in thousands, so :class:`EventLog` writes the
first of each kind at once and then one summary line per kind and interval.
"""
from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass

log = logging.getLogger("pocketgrid.front")


class Lease:
    """One counted connection; :meth:`release` is idempotent (a handshake failure and a close may both call it)."""

    __slots__ = ("address", "_limits")

    def __init__(self, limits: "ConnectionLimits", address: str) -> None:
        self.address = address
        self._limits: ConnectionLimits | None = limits

    def release(self) -> None:
        limits, self._limits = self._limits, None
        if limits is not None:
            limits._release(self.address)


@dataclass(frozen=True)
class Refusal:
    kind: str
    why: str


class ConnectionLimits:
    def __init__(self, total: int, per_address: int) -> None:
        self.total_limit = total
        self.per_address_limit = per_address  # 0: no per-address limit
        self.open = 0
        self._by_address: dict[str, int] = {}

    def admit(self, address: str) -> Lease | Refusal:
        """A lease for a new connection from ``address``, or why it is refused."""
        if self.open >= self.total_limit:
            return Refusal("total-limit", f"the front holds {self.open} connections (front_max_connections)")
        held = self._by_address.get(address, 0)
        if self.per_address_limit and held >= self.per_address_limit:
            return Refusal("address-limit",
                           f"{held} connections from that address already (front_max_connections_per_address)")
        self._by_address[address] = held + 1
        self.open += 1
        return Lease(self, address)

    def held_by(self, address: str) -> int:
        return self._by_address.get(address, 0)

    def _release(self, address: str) -> None:
        self.open -= 1
        held = self._by_address.get(address, 0) - 1
        if held > 0:
            self._by_address[address] = held
        else:
            self._by_address.pop(address, None)


#: Each kind of event: how one is logged, and how a summary of many is.
EVENTS = {
    "total-limit": ("connection refused: front_max_connections reached", "connections refused (front_max_connections)"),
    "address-limit": ("connection refused: front_max_connections_per_address reached",
                      "connections refused (front_max_connections_per_address)"),
    "handshake-timeout": ("TLS handshake not finished within front_handshake_timeout",
                          "TLS handshakes not finished within front_handshake_timeout"),
    "handshake-failed": ("TLS handshake failed", "TLS handshakes failed"),
    "header-timeout": ("connection closed: no complete request head within front_header_timeout",
                       "connections closed: no complete request head within front_header_timeout"),
    "body-timeout": ("request answered 408: its body stalled for front_body_timeout",
                     "requests answered 408: the body stalled for front_body_timeout"),
    "body-too-large": ("request answered 413: body over max_body_bytes", "requests answered 413: body over max_body_bytes"),
    "app-unavailable": ("request answered 503/502: the app process did not answer",
                        "requests answered 503/502: the app process did not answer"),
    "wait-refused": ("long-poll answered 429: a limit on waits (front_max_waits*) reached",
                     "long-polls answered 429: a limit on waits (front_max_waits*) reached"),
}

#: A client that connects and goes (a port probe, a phone losing its link) is no warning.
_LEVELS = {"handshake-failed": logging.INFO}


class EventLog:
    """Connection-level events: the first of a kind at once, then a summary per kind every ``interval`` s."""

    def __init__(self, interval: float = 10.0, clock=time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        self.totals: Counter[str] = Counter()  # since start
        self._pending: dict[str, Counter[str]] = {}
        self._last: dict[str, float] = {}

    def note(self, kind: str, address: str, detail: str = "") -> None:
        self.totals[kind] += 1
        now = self.clock()
        if kind not in self._pending and now - self._last.get(kind, -self.interval) >= self.interval:
            self._last[kind] = now
            log.log(_LEVELS.get(kind, logging.WARNING), "front: %s (from %s)%s", EVENTS[kind][0], address,
                    f": {detail}" if detail else "")
            return
        self._pending.setdefault(kind, Counter())[address] += 1

    def flush(self, force: bool = False) -> None:
        """Write the summaries that are due (all of them with ``force``)."""
        now = self.clock()
        for kind in list(self._pending):
            if not force and now - self._last.get(kind, 0.0) < self.interval:
                continue
            by_address = self._pending.pop(kind)
            self._last[kind] = now
            top = ", ".join(f"{a} ({n})" for a, n in by_address.most_common(3))
            log.log(_LEVELS.get(kind, logging.WARNING), "front: %d more %s in the last %.0f s; most from %s",
                    sum(by_address.values()), EVENTS[kind][1], self.interval, top)
