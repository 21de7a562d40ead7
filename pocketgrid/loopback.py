"""Running things on loopback: a free port, and waiting on a condition with a deadline.

Shared by the demo, the tests and the benchmarks, which all start real peer
processes and must wait for them without fixed sleeps.
"""
from __future__ import annotations

import socket
import time
from typing import Any, Callable

import requests

#: What a predicate may raise while the thing it watches is still coming up.
TRANSIENT = (requests.RequestException, ValueError, KeyError, OSError)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05,
               what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns a truthy value (returned); ``TimeoutError`` at the deadline.

    Transient errors (connection refused while a server starts, a half-written
    JSON answer) count as "not yet"; the last one is named in the timeout message.
    """
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except TRANSIENT as exc:
            last = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}" + (f": {last!r}" if last else ""))


def report_load(broker_url: str, peer: Any, coefficient: float, *, session: Any = requests,
                metrics: dict[str, Any] | None = None) -> None:
    """Act as ``peer``'s EMA agent (anything with ``name`` and ``url``): one load
    report through the broker API, which also resets its in-flight count.
    With TLS, ``session`` must present ``peer``'s host certificate.  ``metrics``:
    the host figures to report (e.g. ``{"cores": 10}``: placement then counts
    10 slots there; none: slots unknown, counted as one).  A peer that no
    longer holds the broker role answers 409 naming the broker: the report
    goes there, as the agent's does (ema_agent/reporter.py)."""
    body = {"peer": peer.name, "url": peer.url, "coefficient": coefficient, "metrics": metrics or {},
            "sampled_at": time.time(), "interval": 15}
    r = session.post(f"{broker_url}/api/v1/broker/reports", json=body, timeout=5)
    broker = (r.json().get("broker") or {}) if r.status_code == 409 else {}
    if broker.get("url") and broker["url"] != broker_url:
        r = session.post(f"{broker['url']}/api/v1/broker/reports", json=body, timeout=5)
    r.raise_for_status()
