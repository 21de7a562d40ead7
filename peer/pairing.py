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

Any peer redeems any code.  A code lives in the memory of the peer that
issued it (its *home*); a peer that does not know a code asks the other
members (:func:`ask_members`, ``POST /api/v1/peer/pairing/redeem`` over
mutual TLS, with the phone's address for the home's audit log), and the home
pops it (single use holds: it is redeemed once, at home) and answers the
grant.  The redeeming peer then issues the device token itself (any peer
checks any peer's tokens).  Failures are counted where the phone asked, per
the phone's address: the home counts nothing for a relayed lookup, so one
phone's wrong guesses never lock out the relaying peer's own address.
"""
from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

import requests

from pocketgrid.errors import TooManyRequests, Unauthorized

from .fanout import ask_others
from .membership import Membership

ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no I, O, 0, 1
CODE_LENGTH = 8
#: Everyone's failures together may reach this many times the per-address limit.
GLOBAL_FACTOR = 20


@dataclass(frozen=True)
class PairingGrant:
    dn: str
    vo: str | None
    expires_at: float
    #: The peer that issued the code, when it is not this one.
    home: str | None = None


@dataclass(frozen=True)
class RemoteLookup:
    """What the other members said about a code this peer did not know."""

    grant: PairingGrant | None = None
    #: The code was found at its home but had expired (and is now spent).
    expired: bool = False
    #: Members that did not answer: the code may have been issued by one of them.
    unreachable: list[str] = field(default_factory=list)


#: Path of the home side of a relayed redemption (peer/api_peer.py).
REDEEM_PATH = "/api/v1/peer/pairing/redeem"


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

    def redeem(self, code: str, source: str, *,
               elsewhere: Callable[[str, str], RemoteLookup] | None = None) -> PairingGrant:
        """Use a code once; raise 429 while ``source`` is locked out, 401 for a bad code.

        A code this peer did not issue is looked up with ``elsewhere(code, source)``
        (the other members, see :func:`ask_members`); a miss there counts here.
        """
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
        expired = grant is not None
        unreachable: list[str] = []
        if grant is None and elsewhere is not None and len(normalise(code)) == CODE_LENGTH:
            found = elsewhere(code, source)  # outside the lock: a network round trip
            if found.grant is not None:
                return found.grant
            expired, unreachable = found.expired, found.unreachable
        self._count_failure(source)
        if expired:
            raise Unauthorized("this pairing code has expired: ask for a new one on your logged-in device")
        if unreachable:
            names = ", ".join(sorted(unreachable))
            raise Unauthorized(
                f"unknown or already used pairing code; {'peer' if len(unreachable) == 1 else 'peers'} {names} "
                "did not answer: if the code came from there, try again when it is back, or ask for a new code"
            )
        raise Unauthorized("unknown or already used pairing code: check it, or ask for a new one")

    def take(self, code: str) -> PairingGrant | None:
        """The home side of a redemption another peer relays: pop the code if it was issued here.

        The grant comes back even when expired (the caller says so); nothing is
        counted here, because the relaying peer counts failures per phone.
        """
        with self._lock:
            self._purge(time.time())
            return self._codes.pop(_digest(code), None)

    def _count_failure(self, source: str) -> None:
        now = time.time()
        with self._lock:
            self._failures.setdefault(source, deque()).append(now)
            self._all_failures.append(now)

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


def ask_members(http: requests.Session, membership: Membership, code: str, source: str, *,
                timeout: float) -> RemoteLookup:
    """Ask every other member whether it issued ``code``; the one that did redeems it there.

    A member answers 200 with ``{dn, vo, expires_at}`` (the code was valid,
    and is now spent), 410 (it was issued there but expired) or 404 (not
    issued there).  Members that do not answer are listed as unreachable.
    """
    replies, unreachable = ask_others(http, membership, "POST", REDEEM_PATH, timeout=timeout,
                                      json={"code": code, "source": source})
    expired = False
    for reply in replies:
        body: Any = reply.body
        if reply.status == 200 and isinstance(body, dict) and isinstance(body.get("dn"), str):
            vo = body.get("vo")
            return RemoteLookup(PairingGrant(body["dn"], vo if isinstance(vo, str) else None,
                                             float(body.get("expires_at") or 0), home=reply.peer))
        if reply.status == 410:
            expired = True
        elif reply.status != 404:
            unreachable.append(reply.peer)  # answered, but not with a lookup result (e.g. an old version)
    return RemoteLookup(expired=expired, unreachable=unreachable)


def members_lookup(http: requests.Session, membership: Membership, *,
                   timeout: float) -> Callable[[str, str], RemoteLookup]:
    """``elsewhere`` for :meth:`PairingService.redeem`: ask the other members of ``membership``."""
    return lambda code, source: ask_members(http, membership, code, source, timeout=timeout)
