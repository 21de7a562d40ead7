"""Requests that park a server thread while they wait: long-polls and event streams relayed to the job's home.

The app is one worker process with ``threads`` threads (peer/server.py).
Status long-polls and event streams of a job whose home is this peer wait in
the front (peer/front/waits.py) and hold no thread.  One for a job whose home
is another peer is relayed there by a blocking call and holds its thread on
this, the entry peer, for up to a minute (the home's front holds it there
without a thread); so does any waiting request that reaches the app without
the front (none in production).  Left
alone, a few dozen phones watching jobs would hold every thread and stall
``/healthz``, logins, submits and the peer-to-peer calls the whole grid
depends on.  So at most ``limit`` requests may park at once; the rest of
the threads are kept for short requests.  A waiting request beyond the limit
answers 429 with ``Retry-After`` at once (the clients back off and poll
again); a plain status poll without ``wait`` is never refused.

This bounds the damage of the thread-per-request model for the waiting
requests that still park.  Idle and slow connections never reach the app:
the front (peer/front/) holds them on its event loop and hands the app
complete requests only.
"""
from __future__ import annotations

import threading

from pocketgrid.errors import TooManyRequests

#: What a refused waiting request tells the client to wait before it asks again.
RETRY_AFTER_SECONDS = 5


def default_limit(threads: int) -> int:
    """Threads that may park: all but a reserve of a quarter (at least 2) for short requests."""
    return max(1, threads - max(2, threads // 4))


class Parking:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._parked = 0
        self._lock = threading.Lock()

    @property
    def parked(self) -> int:
        return self._parked

    def enter(self, what: str) -> None:
        """Take a place or raise 429; pair every successful call with :meth:`leave`."""
        with self._lock:
            if self._parked >= self.limit:
                raise TooManyRequests(
                    f"this peer is holding as many waiting requests as it can ({self.limit}); "
                    f"{what}: retry in {RETRY_AFTER_SECONDS} s, or poll without waiting",
                    retry_after=RETRY_AFTER_SECONDS)
            self._parked += 1

    def leave(self) -> None:
        with self._lock:
            self._parked = max(0, self._parked - 1)
