"""Pairing a phone: a short code issued to a logged-in user (device flow).

A phone has no certificate.  The user, logged in on a laptop, asks the peer
for a code (``POST /api/v1/auth/pairing``) and types it on the phone, which
redeems it (``POST /api/v1/auth/pair``) for its own device token for the
same DN, revocable on its own.

A code is 8 characters from a 32-symbol alphabet without look-alikes
(40 bits), valid for minutes, used once, and kept only as a SHA-256
hash.  Guessing is rate-limited per source address and globally: after
``max_failures`` wrong codes from one address in ``window`` seconds (or 20
times that from everyone), redemption answers 429 until the window moves.
"""
from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass

from pocketgrid.errors import TooManyRequests, Unauthorized

ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no I, O, 0, 1
CODE_LENGTH = 8
#: Everyone's failures together may reach this many times the per-address limit.
GLOBAL_FACTOR = 20


@dataclass(frozen=True)
class PairingGrant:
    dn: str
    vo: str | None
    expires_at: float


def normalise(code: str) -> str:
    return "".join(ch for ch in code.upper() if ch.isalnum())


def _digest(code: str) -> str:
    return hashlib.sha256(normalise(code).encode()).hexdigest()


class PairingService:
    def __init__(self, *, lifetime: float, max_failures: int, window: float) -> None:
        self.lifetime = lifetime
        self.max_failures = max_failures
        self.window = window
        self._codes: dict[str, PairingGrant] = {}
        self._failures: dict[str, deque[float]] = {}
        self._all_failures: deque[float] = deque()
        self._lock = threading.Lock()

    def new_code(self, dn: str, vo: str | None) -> tuple[str, float]:
        """A fresh code for ``dn``, formatted ``XXXX-XXXX``, and its expiry."""
        raw = "".join(secrets.choice(ALPHABET) for _ in range(CODE_LENGTH))
        expires_at = time.time() + self.lifetime
        with self._lock:
            self._purge(time.time())
            self._codes[_digest(raw)] = PairingGrant(dn, vo, expires_at)
        return f"{raw[:4]}-{raw[4:]}", expires_at

    def redeem(self, code: str, source: str) -> PairingGrant:
        """Use a code once; raise 429 while ``source`` is locked out, 401 for a bad code."""
        now = time.time()
        with self._lock:
            self._purge(now)
            mine = self._failures.get(source, deque())
            if len(mine) >= self.max_failures or len(self._all_failures) >= self.max_failures * GLOBAL_FACTOR:
                oldest = mine[0] if len(mine) >= self.max_failures else self._all_failures[0]
                raise TooManyRequests(
                    "too many wrong pairing codes: wait before trying again", retry_after=int(oldest + self.window - now) + 1
                )
            grant = self._codes.pop(_digest(code), None)
            if grant is not None and grant.expires_at >= now:
                return grant
            mine.append(now)
            self._failures[source] = mine
            self._all_failures.append(now)
        if grant is not None:
            raise Unauthorized("this pairing code has expired: ask for a new one on your logged-in device")
        raise Unauthorized("unknown or already used pairing code: check it, or ask for a new one")

    def _purge(self, now: float) -> None:
        """Drop failures older than the window.  Expired codes stay until purged by age, so a late
        redeem can be told "expired" rather than "unknown"; they are dropped after one more lifetime."""
        horizon = now - self.window
        for source in list(self._failures):
            q = self._failures[source]
            while q and q[0] < horizon:
                q.popleft()
            if not q:
                del self._failures[source]
        while self._all_failures and self._all_failures[0] < horizon:
            self._all_failures.popleft()
        for key in [k for k, g in self._codes.items() if g.expires_at + self.lifetime < now]:
            del self._codes[key]
