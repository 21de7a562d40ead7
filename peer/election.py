"""Broker failure detection and the bully election.

Every plain peer heartbeats the broker every ``interval`` seconds.  A failed
heartbeat makes the peer *suspect* the broker and retry every
``interval / misses`` seconds (so a broker that comes back is noticed at
once); the broker is declared dead when no heartbeat has been answered for
``misses × interval`` seconds **and** at least ``misses`` heartbeats in a row
failed (:class:`FailureDetector`).  A heartbeat waits for its answer until
that window would close: a broker too busy to answer within the usual
timeout (a 40-input job landing on a two-core site) is slow, not dead.
Then the peer runs the bully algorithm over the persisted membership list
(ordered by join sequence number):

* if a live peer with a lower sequence number exists, that peer will win:
  wait (bounded) for its proclamation;
* otherwise proclaim itself broker with ``epoch + 1`` and push the new
  membership to everyone.

Peers accept the highest epoch; on equal epochs the claimant with the lower
sequence number wins (see :meth:`Membership.better`), so two claimants
converge to one.  A broker that sees a better claim steps down.

How long it takes, and why the window is counted from the last answer:
the broker stops answering somewhere between two heartbeats, so it is
declared dead between ``(misses - 1) × interval`` and ``misses × interval``
after it stopped (10 to 15 s with the defaults, 5 s × 3), and the new broker
is agreed on right after (benchmarks/failover.py measures it).  Counting
failed attempts alone (the suspicion retries are ``interval / misses``
apart) declared a broker dead ``2 × interval / misses`` after the first
failure, 4 s after a clean stop with the defaults: faster than documented,
and a broker restarted within seconds lost its role for good.

A clean shutdown (SIGTERM) does **not** hand the role over: the peers cannot
tell it from a crash and wait the same window, so a broker restarted within
``(misses - 1) × interval`` keeps its role (it starts without ``--join``,
asks the members, and finds itself still the broker).  One restarted later
finds that a new broker was elected and follows it as a plain peer; the
role does not come back to it.

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


class FailureDetector:
    """When is the broker dead?  A pure state machine over heartbeat results and a clock.

    Dead = no heartbeat answered for ``misses × interval`` seconds and at
    least ``misses`` failures in a row.  The window starts at the last
    answer, or when watching began (a new broker, or after an election).

    A heartbeat may wait for its answer until the window closes
    (:meth:`patience`): a broker busy enough to take seconds to answer is
    alive, and deposing it would only move the load.  A heartbeat that
    waited ``w`` seconds in vain counts as the failures that would have fit
    in ``w`` at the suspicion rate (``w / (interval / misses)``, at least
    one): asked the whole window long, a silent broker is dead when the
    window closes, as one refusing connections is.
    """

    def __init__(self, interval: float, misses: int, now: float) -> None:
        self.interval = float(interval)
        self.misses = max(1, int(misses))
        self.window = self.interval * self.misses
        self.reset(now)

    def reset(self, now: float) -> None:
        """Start watching afresh (a new broker, an election done): as if it had just answered."""
        self.last_answer = now
        self.failures = 0

    def answered(self, now: float) -> None:
        self.reset(now)

    def missed(self, now: float, waited: float = 0.0) -> bool:
        """Record a failed heartbeat that waited ``waited`` seconds for its answer; True when the
        broker is now to be declared dead."""
        self.failures += max(1, int(waited / (self.interval / self.misses)))
        return self.failures >= self.misses and now - self.last_answer >= self.window

    def patience(self, now: float, least: float) -> float:
        """How long a heartbeat sent now may wait for its answer: until the window closes, at least ``least``."""
        return max(least, self.last_answer + self.window - now)

    def delay(self) -> float:
        """Seconds until the next heartbeat: the period, or ``interval / misses`` while suspecting."""
        return self.interval if self.failures == 0 else self.interval / self.misses

    @property
    def suspecting(self) -> bool:
        return self.failures > 0


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
        self.detector: FailureDetector | None = None

    # ---- life cycle -------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="elector", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.timeout + 1)

    def _loop(self) -> None:
        detector = self.detector = FailureDetector(self.interval, self.misses, time.monotonic())
        watched = None
        while not self._stop.is_set():
            broker = self.membership.broker
            if broker is not None and (broker["name"], self.membership.epoch) != watched:
                watched = (broker["name"], self.membership.epoch)
                detector.reset(time.monotonic())  # a new broker gets a full window
            if self.membership.is_broker or self.membership.broker is None:
                detector.reset(time.monotonic())
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
            asked = time.monotonic()
            try:
                ok = self.heartbeat(timeout=detector.patience(asked, self.timeout))
            except Exception:  # never let the detector die
                log.exception("heartbeat failed unexpectedly")
                ok = False
            now = time.monotonic()
            if ok:
                detector.answered(now)
            elif detector.missed(now, waited=now - asked):
                log.warning("broker %s missed %d heartbeats (no answer for %.1f s): starting an election",
                            self.membership.broker["name"], detector.failures, now - detector.last_answer)
                self.elect()
                detector.reset(time.monotonic())
                continue
            self._stop.wait(detector.delay())

    # ---- heartbeat --------------------------------------------------------
    def heartbeat(self, timeout: float | None = None) -> bool:
        """One heartbeat to the broker, waiting ``timeout`` seconds (default: the elector's timeout) for
        its answer; True when the broker answered (even to refuse it)."""
        broker = self.membership.broker
        if broker is None:
            return False
        body = {"name": self.membership.name, "url": self.membership.url, "epoch": self.membership.epoch}
        try:
            r = self.http.post(f"{broker['url']}/api/v1/broker/heartbeat", json=body,
                               timeout=self.timeout if timeout is None else timeout)
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
