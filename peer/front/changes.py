"""The app's word to the front that a job changed: datagrams on a private Unix socket.

The front holds waiting status long-polls on its event loop
(peer/front/waits.py) and must learn when a job's status version moves.  The
record store publishes every committed version (peer/record_store.py); the app
sends each as a line ``<job ID, percent-encoded> <version>`` in a datagram to
``<run dir>/changes.sock``, which the front bound before starting the app.

Why datagrams: sending never holds an app thread nor waits for the front (the
socket is non-blocking), a restarted worker simply sends again, and on Linux a
Unix datagram is never lost in transit.  Only a full receive queue refuses one
(the front's loop stalled): the sender then remembers it and starts its next
datagram with ``*``, which wakes every waiter to ask the app again.  A new
worker says ``*`` first too (it may have committed changes nobody heard of).

A notification carries no authority: a waiter that wakes only *asks the app
again*, which authorises the request afresh, so a forged or spurious datagram
costs a re-ask, never an answer.  The socket is 0600 in the peer's 0700 run
directory all the same.
"""
from __future__ import annotations

import logging
import socket
import threading
from typing import Callable, Iterable
from urllib.parse import quote, unquote

log = logging.getLogger(__name__)

#: A datagram's payload at most (lines are packed up to this; a job ID is short).
DATAGRAM_BYTES = 16 * 1024
#: The first line of a datagram that says "notifications were lost: everything may have changed".
EVERYTHING = b"*"


def job_key(job_id: str) -> str:
    """A job ID as it travels in a datagram or a header: no spaces, no control characters."""
    return quote(job_id, safe="")


def encode(changes: Iterable[tuple[str, int]]) -> list[bytes]:
    """``(job ID, version)`` pairs as datagram payloads, each at most :data:`DATAGRAM_BYTES`."""
    out: list[bytes] = []
    current = bytearray()
    for job_id, version in changes:
        line = f"{job_key(job_id)} {int(version)}\n".encode("ascii")
        if current and len(current) + len(line) > DATAGRAM_BYTES:
            out.append(bytes(current))
            current = bytearray()
        current += line
    if current:
        out.append(bytes(current))
    return out


def decode(payload: bytes) -> tuple[bool, list[tuple[str, int]]]:
    """(everything may have changed, the ``(job ID, version)`` pairs) of one datagram; bad lines are skipped."""
    everything = False
    pairs: list[tuple[str, int]] = []
    for line in payload.split(b"\n"):
        if not line:
            continue
        if line == EVERYTHING:
            everything = True
            continue
        key, _, version = line.partition(b" ")
        try:
            pairs.append((unquote(key.decode("ascii")), int(version)))
        except (UnicodeDecodeError, ValueError):
            continue
    return everything, pairs


class ChangeSender:
    """In the app: sends the record store's published versions to the front (never blocks)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setblocking(False)
        self._lock = threading.Lock()
        self._lost = True  # a new worker: the front must ask again about everything it holds
        self.sent = 0
        self.refused = 0

    def everything(self) -> None:
        """Tell the front that anything may have changed (a new worker)."""
        with self._lock:
            self._send([])

    def __call__(self, touched: dict[str, tuple[str, int]]) -> None:
        """A record-store listener: ``touched`` maps job IDs to (owner, version)."""
        with self._lock:
            self._send([(job_id, seen[1]) for job_id, seen in touched.items()])

    def _send(self, pairs: list[tuple[str, int]]) -> None:
        payloads = encode(pairs)
        if self._lost:
            payloads = [EVERYTHING + b"\n" + (payloads[0] if payloads else b"")] + payloads[1:]
        for payload in payloads:
            try:
                self._sock.sendto(payload, self.path)
                self.sent += 1
                self._lost = False
            except (BlockingIOError, ConnectionRefusedError, FileNotFoundError) as exc:
                # a full queue (the front's loop is stalled) or no front listening: say "*" next time
                if not self._lost:
                    log.warning("could not tell the front that jobs changed (%s): its waiting long-polls will "
                                "ask again at the next change or at their deadline", exc)
                self._lost = True
                self.refused += 1
            except OSError as exc:
                log.error("change feed to the front: %s", exc)
                self._lost = True
                self.refused += 1

    def close(self) -> None:
        self._sock.close()


def bind_receiver(path: str, on_datagram: Callable[[bytes], None]) -> Callable[[], None]:
    """In the front: bind ``path`` (a datagram socket), call ``on_datagram`` for each datagram on the running
    loop; returns a function that stops and removes it."""
    import asyncio
    import os

    loop = asyncio.get_running_loop()
    if os.path.exists(path):
        os.unlink(path)  # a stale socket of a previous run
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    os.chmod(path, 0o600)
    sock.setblocking(False)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024 * 1024)
    except OSError:
        pass

    def readable() -> None:
        for _ in range(256):  # then let other work run; the reader is called again
            try:
                payload = sock.recv(DATAGRAM_BYTES + 64)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.error("front: change feed: %s", exc)
                return
            on_datagram(payload)

    loop.add_reader(sock.fileno(), readable)

    def stop() -> None:
        loop.remove_reader(sock.fileno())
        sock.close()
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass

    return stop
