"""Broker failure detection and the bully election.

Every plain peer heartbeats the broker every ``interval`` seconds.  A failed
heartbeat makes the peer *suspect* the broker and retry every
``interval / misses`` seconds; after ``misses`` consecutive failures it runs
the bully algorithm over the persisted membership list (ordered by join
sequence number):

* if a live peer with a lower sequence number exists, that peer will win:
  wait (bounded) for its proclamation;
* otherwise proclaim itself broker with ``epoch + 1`` and push the new
  membership to everyone.

Peers accept the highest epoch; on equal epochs the claimant with the lower
sequence number wins (see :meth:`Membership.better`), so two claimants
converge to one.  A broker that sees a better claim steps down.

Why suspicion speeds up retries: with a fixed period, ``misses = 3`` failed
heartbeats alone would take three periods; retrying faster once the first
fails detects a dead broker in about ``interval * (1 + (misses-1)/misses)``
and the lowest live peer proclaims at once, so all peers agree in under
three periods (benchmarks/failover.py measures it).

Not covered (as HTCondor's HAD documents for itself): a real network
partition without quorum can elect one broker per side; when the sides meet
again the better claim wins and the other side's broker steps down, but
placements made on the losing side are not undone (they are real jobs on
real peers, still reachable by their IDs).
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

import requests

from .membership import Membership

log = logging.getLogger(__name__)


class Elector:
    def __init__(
        self,
        membership: Membership,
        http: requests.Session,
        *,
        interval: float = 5.0,
        misses: int = 3,
        take_role: Callable[[int], None],
        announce: Callable[[], None] | None = None,
        timeout: float | None = None,
    ) -> None:
        #: The broker pushes its claim again every ``misses`` intervals, so two
        #: claimants (a lost push, a healed partition) hear of each other and
        #: the worse one steps down.
        self.announce = announce
        self.membership = membership
        self.http = http
        self.interval = interval
        self.misses = max(1, misses)
        self.take_role = take_role
        self.timeout = timeout if timeout is not None else max(0.5, interval / 2)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.elections = 0

    # ---- life cycle -------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="elector", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.timeout + 1)

    def _loop(self) -> None:
        failures = 0
        while not self._stop.is_set():
            if self.membership.is_broker or self.membership.broker is None:
                failures = 0
                if self.membership.is_broker and self.announce is not None:
                    rounds = getattr(self, "_rounds", 0) + 1
                    self._rounds = rounds
                    if rounds % self.misses == 0:
                        try:
                            self.announce()
                        except Exception:  # best effort, next round tries again
                            log.exception("re-announcing the broker claim failed")
                self._stop.wait(self.interval)
                continue
            try:
                ok = self.heartbeat()
            except Exception:  # never let the detector die
                log.exception("heartbeat failed unexpectedly")
                ok = False
            if ok:
                failures = 0
                self._stop.wait(self.interval)
                continue
            failures += 1
            if failures >= self.misses:
                log.warning("broker %s missed %d heartbeats: starting an election", self.membership.broker["name"], failures)
                self.elect()
                failures = 0
            else:
                self._stop.wait(self.interval / self.misses)

    # ---- heartbeat --------------------------------------------------------
    def heartbeat(self) -> bool:
        broker = self.membership.broker
        if broker is None:
            return False
        body = {"name": self.membership.name, "url": self.membership.url, "epoch": self.membership.epoch}
        try:
            r = self.http.post(f"{broker['url']}/api/v1/broker/heartbeat", json=body, timeout=self.timeout)
        except requests.RequestException:
            return False
        if r.status_code == 409:
            view = _json(r)
            other = view.get("broker") if view else None
            if other and other.get("name") != broker["name"]:
                self.membership.follow(other, int(view.get("epoch") or 0))
            else:
                log.warning("broker %s refuses our heartbeat: %s", broker["name"], (view or {}).get("error"))
            return True  # it answered: it is alive
        if r.status_code >= 500 and r.status_code not in (502, 503, 504):
            log.warning("broker %s answered our heartbeat with %d", broker["name"], r.status_code)
            return True  # alive but unwell: no reason to depose it
        if not r.ok:
            return False
        view = _json(r)
        if view and "members" in view:
            self.membership.apply(view)
        return True

    # ---- election ---------------------------------------------------------
    def elect(self) -> None:
        """Bully: the lowest-sequence live peer becomes broker."""
        self.elections += 1
        dead = self.membership.broker
        old_epoch = self.membership.epoch
        my_seq = self.membership.seq
        lower = [
            m for m in self.membership.members()
            if m["name"] not in (self.membership.name, dead["name"] if dead else None)
            and my_seq is not None and m["seq"] < my_seq
        ]
        for m in sorted(lower, key=lambda m: m["seq"]):
            if not self._alive(m["url"]):
                continue
            log.info("election: %s (seq %d) is alive and outranks us; waiting for its claim", m["name"], m["seq"])
            if self._wait_for_new_epoch(old_epoch, self.interval * self.misses):
                return
            log.warning("election: %s did not claim the role in time", m["name"])
        if self.membership.epoch > old_epoch:
            return  # someone claimed meanwhile
        new_epoch = old_epoch + 1
        log.warning("election: proclaiming %s broker with epoch %d", self.membership.name, new_epoch)
        self.take_role(new_epoch)

    def _alive(self, url: str) -> bool:
        try:
            return self.http.get(f"{url}/healthz", timeout=self.timeout).ok
        except requests.RequestException:
            return False

    def _wait_for_new_epoch(self, old_epoch: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self._stop.is_set():
            if self.membership.epoch > old_epoch:
                return True
            self._stop.wait(min(0.05, self.interval / 10))
        return self.membership.epoch > old_epoch


def _json(r: requests.Response) -> dict[str, Any] | None:
    try:
        body = r.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None
