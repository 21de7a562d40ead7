"""Status long-polls held on the front's event loop: who waits for which job, and how many may.

A waiting long-poll costs the front a coroutine and a future, and the app
nothing: the app answers at once (304: unchanged, and *how* to wait, in
``X-Pocketgrid-Front-Wait``), and the front waits here until the app's change
feed (peer/front/changes.py) says the job's version moved, or the deadline
passes; then it asks the app again (peer/front/proxy.py).

Limits, counted here per user (the app names the user, by a digest of their
DN, in its answer: the front never decides who someone is), per client
address and in all.  Beyond any of them the long-poll is answered 429 with
``Retry-After`` at once; a plain poll without ``wait`` is never refused.

Versions only grow, so the front keeps the last version it heard of for each
job (bounded, the oldest forgotten): a change that arrived between the app's
304 and this wait is not missed.  A ``*`` from the app (notifications were
lost, or a new worker) wakes every waiter, and so does one that started
before it (:attr:`Waits.generation`).
"""
from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass

from .changes import decode


@dataclass(frozen=True)
class WaitRefusal:
    why: str


class WaitPlace:
    """One counted waiting long-poll; :meth:`release` is idempotent."""

    __slots__ = ("user", "address", "_waits")

    def __init__(self, waits: "Waits", user: str, address: str) -> None:
        self.user = user
        self.address = address
        self._waits: Waits | None = waits

    def release(self) -> None:
        waits, self._waits = self._waits, None
        if waits is not None:
            waits._release(self)


class Waits:
    def __init__(self, total: int, per_user: int, per_address: int, max_known: int = 100_000) -> None:
        self.total_limit = total
        self.per_user_limit = per_user  # 0: none
        self.per_address_limit = per_address  # 0: none
        self.held = 0
        self.refused = 0
        self.generation = 0
        self.max_known = max_known
        self._by_user: dict[str, int] = {}
        self._by_address: dict[str, int] = {}
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}
        self._latest: OrderedDict[str, int] = OrderedDict()

    # ---- places -----------------------------------------------------------------------------------
    def admit(self, user: str, address: str) -> WaitPlace | WaitRefusal:
        if self.held >= self.total_limit:
            why = f"this peer is holding as many waiting requests as it may ({self.total_limit}, front_max_waits)"
        elif self.per_user_limit and self._by_user.get(user, 0) >= self.per_user_limit:
            why = (f"you already have {self.per_user_limit} waiting requests on this peer "
                   "(front_max_waits_per_user: other tabs or devices)")
        elif self.per_address_limit and self._by_address.get(address, 0) >= self.per_address_limit:
            why = (f"your address already has {self.per_address_limit} waiting requests on this peer "
                   "(front_max_waits_per_address)")
        else:
            self.held += 1
            self._by_user[user] = self._by_user.get(user, 0) + 1
            self._by_address[address] = self._by_address.get(address, 0) + 1
            return WaitPlace(self, user, address)
        self.refused += 1
        return WaitRefusal(why)

    def _release(self, place: WaitPlace) -> None:
        self.held -= 1
        for counts, key in ((self._by_user, place.user), (self._by_address, place.address)):
            n = counts.get(key, 0) - 1
            if n > 0:
                counts[key] = n
            else:
                counts.pop(key, None)

    # ---- changes ----------------------------------------------------------------------------------
    def heard(self, payload: bytes) -> None:
        """One datagram of the app's change feed."""
        everything, pairs = decode(payload)
        if everything:
            self.generation += 1
            for futures in self._waiters.values():
                for future in futures:
                    if not future.done():
                        future.set_result(None)
        for job_id, version in pairs:
            self.changed(job_id, version)

    def changed(self, job_id: str, version: int) -> None:
        latest = self._latest.get(job_id)
        if latest is None or version > latest:
            self._latest[job_id] = version
            self._latest.move_to_end(job_id)
            while len(self._latest) > self.max_known:
                self._latest.popitem(last=False)
        for future in self._waiters.get(job_id, ()):
            if not future.done():
                future.set_result(None)

    async def wait(self, job_id: str, version: int, timeout: float, generation: int,
                   gone: "asyncio.Future[None] | None" = None) -> bool:
        """Wait until ``job_id`` is heard at a version other than ``version`` (True), ``timeout`` passes or the
        client goes away (False).  ``generation``: :attr:`generation` when the app was asked."""
        latest = self._latest.get(job_id)
        if generation != self.generation or (latest is not None and latest > version):
            return True  # it changed (or may have) since the app answered
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters = self._waiters.setdefault(job_id, set())
        waiters.add(future)
        try:
            if gone is None:
                await asyncio.wait_for(asyncio.shield(future), timeout)
                return True
            done, _ = await asyncio.wait({future, gone}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            return future in done
        except TimeoutError:
            return False
        finally:
            if not future.done():
                future.cancel()
            waiters.discard(future)
            if not waiters:
                self._waiters.pop(job_id, None)
