"""Status long-polls and event streams held on the front's event loop: who waits for which job, how many may.

A waiting long-poll costs the front a coroutine and a future, and the app
nothing: the app answers at once (304: unchanged, and *how* to wait, in
``X-Pocketgrid-Front-Wait``), and the front waits here until the app's change
feed (peer/front/changes.py) says the job's version moved, or the deadline
passes; then it asks the app again (peer/front/proxy.py).

An event stream (``/events``) waits the same way between its events.

Limits, counted here per user (the app names the user, by a digest of their
DN, in its answer: the front never decides who someone is) -- long-polls and
streams each against their own limit --, per client address and in all.
Beyond any of them the request is answered 429 with ``Retry-After`` at once;
a plain poll without ``wait`` is never refused.

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

    def __init__(self, waits: "Waits", user: tuple[str, str], address: str) -> None:
        self.user = user
        self.address = address
        self._waits: Waits | None = waits

    def release(self) -> None:
        waits, self._waits = self._waits, None
        if waits is not None:
            waits._release(self)


class Waits:
    def __init__(self, total: int, per_user: int, per_address: int, streams_per_user: int = 0,
                 max_known: int = 100_000) -> None:
        self.total_limit = total
        self.per_user_limit = per_user  # long-polls; 0: none
        self.streams_per_user_limit = streams_per_user  # event streams; 0: none
        self.per_address_limit = per_address  # 0: none
        self.held = 0
        self.refused = 0
        self.generation = 0
        self.max_known = max_known
        self._by_user: dict[tuple[str, str], int] = {}
        self._by_address: dict[str, int] = {}
        self._waiters: dict[str, dict[asyncio.Future[None], int]] = {}  # job -> {future: the version it has}
        self._latest: OrderedDict[str, int] = OrderedDict()

    # ---- places -----------------------------------------------------------------------------------
    def admit(self, user: str, address: str, stream: bool = False) -> WaitPlace | WaitRefusal:
        """A place for a long-poll (or, ``stream``, an event stream) of ``user`` from ``address``, or why not."""
        key = ("stream" if stream else "poll", user)
        per_user = self.streams_per_user_limit if stream else self.per_user_limit
        if self.held >= self.total_limit:
            why = f"this peer is holding as many waiting requests as it may ({self.total_limit}, front_max_waits)"
        elif per_user and self._by_user.get(key, 0) >= per_user:
            why = (f"you already have {per_user} live status streams open on this peer (other tabs or devices, "
                   "sse_max_streams_per_user); close one" if stream else
                   f"you already have {per_user} waiting requests on this peer "
                   "(front_max_waits_per_user: other tabs or devices)")
        elif self.per_address_limit and self._by_address.get(address, 0) >= self.per_address_limit:
            why = (f"your address already has {self.per_address_limit} waiting requests on this peer "
                   "(front_max_waits_per_address)")
        else:
            self.held += 1
            self._by_user[key] = self._by_user.get(key, 0) + 1
            self._by_address[address] = self._by_address.get(address, 0) + 1
            return WaitPlace(self, key, address)
        self.refused += 1
        return WaitRefusal(why)

    def _release(self, place: WaitPlace) -> None:
        self.held -= 1
        for counts, key in ((self._by_user, place.user), (self._by_address, place.address)):
            n = counts.get(key, 0) - 1  # type: ignore[call-overload]
            if n > 0:
                counts[key] = n  # type: ignore[index]
            else:
                counts.pop(key, None)  # type: ignore[call-overload]

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
        for future, has in self._waiters.get(job_id, {}).items():
            if has != version and not future.done():
                future.set_result(None)

    async def wait(self, job_id: str, version: int, timeout: float, generation: int,
                   gone: "asyncio.Future[None] | None" = None) -> bool:
        """Wait until ``job_id`` is heard at a version other than ``version`` (True), ``timeout`` passes or the
        client goes away (False).  ``generation``: :attr:`generation` when the app was asked."""
        latest = self._latest.get(job_id)
        if generation != self.generation or (latest is not None and latest > version):
            return True  # it changed (or may have) since the app answered
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters = self._waiters.setdefault(job_id, {})
        waiters[future] = version
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
            waiters.pop(future, None)
            if not waiters:
                self._waiters.pop(job_id, None)
