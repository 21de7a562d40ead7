"""``GET /api/v1/jobs/<job_id>/events``: a job's status pushed live (Server-Sent Events).

One event per status change::

    id: <version>            the status version (the status ETag without quotes)
    event: status
    data: <the status JSON, one line>

On connect the current status is sent at once, unless ``Last-Event-ID``
equals the current version (a reconnect that already has it).  At a final
state (completed, failed, removed) the final status is followed by
``event: end`` and the stream closes.  A ``: keepalive`` comment goes out
every ``sse_keepalive_seconds``; after ``sse_stream_seconds`` the stream
sends ``retry: 1000`` and closes, and the browser's EventSource reconnects
with ``Last-Event-ID``, missing nothing.

**Through the front** (every request in production) the front holds the
stream of a job whose home is this peer on its event loop
(peer/front/proxy.py): the app answers at once with the events due
(:func:`events_now`) and ``X-Pocketgrid-Front-Wait``; the front sends them,
writes the keepalives, waits for the app's change feed (peer/front/changes.py)
and asks the app again with ``Last-Event-ID`` -- authorised afresh each time --
for the next events; it counts the streams per user
(``sse_max_streams_per_user``, 429 beyond) and closes each after
``sse_stream_seconds``.  No app thread is held.

**Otherwise** -- a stream of a job whose home is another peer (relayed there,
peer/proxy.py passes the events through as they arrive; the home's front
holds the stream there), or a request that did not come through the front --
the stream is served here from a thread: it waits on the job record's version
(peer/record_store.py: a condition the job manager's commits notify), waking
at most every 0.25 s to notice a client that left, and renders the record
again only when the version moved.  Each such stream parks one server thread
(one worker process with ``--threads`` threads, peer/server.py).  Hence at
most ``sse_max_streams_per_user`` streams per user on each peer (429 with
Retry-After beyond), a place among the peer's parked requests
(peer/parking.py: relayed long-polls and streams together never take the
threads kept for short requests), and a bounded duration so a forgotten tab
frees its thread (docs/architecture.md).
"""
from __future__ import annotations

import select
import threading
import time
from typing import Any, Callable, Iterator

from flask import Blueprint, Response, current_app, request

from pocketgrid.errors import PocketgridError, TooManyRequests

from . import job_routes
from .auth import identity
from .front.headers import ENVIRON_FRONT_WAITS, WAIT, wait_header
from .job_home import JobHome
from .on_close import call_on_close

bp = Blueprint("events", __name__)

FINAL_STATES = frozenset({"completed", "failed", "removed"})
#: The longest a stream waits on the record's version before it looks at its client again.
POLL_SECONDS = 0.25
#: What the browser waits before reconnecting after the stream's time is up.
RETRY_MS = 1000


class StreamLimiter:
    """Open event streams per user on this peer."""

    def __init__(self, per_user: int) -> None:
        self.per_user = per_user
        self._open: dict[str, int] = {}
        self._lock = threading.Lock()

    def acquire(self, user: str) -> bool:
        with self._lock:
            n = self._open.get(user, 0)
            if n >= self.per_user:
                return False
            self._open[user] = n + 1
            return True

    def release(self, user: str) -> None:
        with self._lock:
            n = self._open.get(user, 0) - 1
            if n > 0:
                self._open[user] = n
            else:
                self._open.pop(user, None)

    def open_streams(self, user: str) -> int:
        return self._open.get(user, 0)


def _limiter() -> StreamLimiter:
    ext = current_app.extensions
    limiter = ext.get("pocketgrid.sse_streams")
    if limiter is None:
        limiter = ext.setdefault("pocketgrid.sse_streams",
                                 StreamLimiter(ext["pocketgrid"].config.sse_max_streams_per_user))
    return limiter


def _event(version: str, body: bytes) -> bytes:
    return b"id: " + version.encode() + b"\nevent: status\ndata: " + body.rstrip(b"\n") + b"\n\n"


def client_gone_check(sock: Any) -> Callable[[], bool]:
    """Whether the client closed its connection: during a stream the client sends nothing, so a socket
    that turns readable (TLS close_notify, FIN) means it left.  Frees the thread and the user's stream
    place at once instead of at the next write.  (A pipelined request would also end the stream early:
    harmless, the browser reconnects.)"""
    if sock is None or not hasattr(sock, "fileno"):
        return lambda: False

    def gone() -> bool:
        try:
            readable, _, _ = select.select([sock], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(readable)

    return gone


def status_events(home: JobHome, job_id: str, owner: str, *, is_admin: bool, last_event_id: str | None,
                  stream_seconds: float, keepalive_seconds: float, history: bool = False,
                  client_gone: Callable[[], bool] = lambda: False) -> Iterator[bytes]:
    """The event stream of one job whose home is this peer (ownership already checked by the caller)."""
    start = time.monotonic()
    deadline = start + stream_seconds
    keepalive_at = start + keepalive_seconds
    sent = last_event_id
    yield f"retry: {RETRY_MS}\n\n".encode()
    while True:
        try:
            entry = home.status(job_id, owner, is_admin=is_admin, history=history)
        except PocketgridError as exc:  # e.g. the database went away: say so, let the browser retry
            yield b"event: error\ndata: " + exc.message.encode()[:500].replace(b"\n", b" ") + b"\n\n"
            return
        version = str(entry.version)
        if version != sent:
            yield _event(version, entry.json)
            sent = version
        if entry.body["state"] in FINAL_STATES:
            yield b"event: end\ndata: {}\n\n"
            return
        while str(home.known_version(job_id, owner, is_admin) or "") == version:
            if client_gone():
                return
            now = time.monotonic()
            if now >= deadline:
                yield f"retry: {RETRY_MS}\n\n".encode()
                return
            if now >= keepalive_at:
                yield b": keepalive\n\n"  # also how a closed connection is noticed
                keepalive_at = now + keepalive_seconds
            home.wait(job_id, int(version), min(POLL_SECONDS, deadline - now, max(0.0, keepalive_at - now)))


def events_now(home: JobHome, job_id: str, owner: str, *, is_admin: bool, last_event_id: str | None,
               history: bool, stream_seconds: float) -> Response:
    """The stream through the front, which holds it (peer/front/proxy.py): the events due now, and unless the
    job is final, ``X-Pocketgrid-Front-Wait`` telling the front to ask again (with ``Last-Event-ID``) when the
    job changes.  No thread is held, so no place among the parked requests: the front counts streams."""
    entry = home.status(job_id, owner, is_admin=is_admin, history=history)  # 404 / 403 now
    version = str(entry.version)
    body = b"" if last_event_id else f"retry: {RETRY_MS}\n\n".encode()  # a reconnecting EventSource has it
    if version != last_event_id:
        body += _event(version, entry.json)
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    if entry.body["state"] in FINAL_STATES:
        body += b"event: end\ndata: {}\n\n"
    else:
        headers[WAIT] = wait_header(job_id, entry.version, owner, stream_seconds)
    return Response(body, mimetype="text/event-stream", headers=headers)


@bp.get("/api/v1/jobs/<job_id>/events")
def job_events(job_id: str):
    svc = current_app.extensions["pocketgrid"]
    config = svc.config
    who = identity()
    if request.environ.get(ENVIRON_FRONT_WAITS) and not job_routes.remote(svc, job_id):
        # the front waits on its event loop: answer the events due now (peer/front/proxy.py hold_stream)
        return events_now(svc.home, job_id, who.dn, is_admin=who.is_admin,
                          last_event_id=request.headers.get("Last-Event-ID"),
                          history=request.args.get("history", "0").lower() in {"1", "true", "yes"},
                          stream_seconds=config.sse_stream_seconds)
    limiter = _limiter()
    if not limiter.acquire(who.dn):
        raise TooManyRequests(
            f"you already have {limiter.per_user} live status streams open on this peer (other tabs or devices); "
            "close one, or poll GET /api/v1/jobs/<id>?wait=25 instead",
            retry_after=10,
        )
    try:
        svc.parking.enter("a live status stream")
    except BaseException:
        limiter.release(who.dn)
        raise

    def release() -> None:
        svc.parking.leave()
        limiter.release(who.dn)

    try:
        # The read timeout must outlast the owner's keepalive interval.
        response = job_routes.forward(svc, job_id,
                                      timeout=(config.peer_timeout, config.sse_keepalive_seconds + config.peer_timeout))
        if response is None:
            svc.home.status(job_id, who.dn, is_admin=who.is_admin)  # 404 now, not inside the stream
            body = status_events(svc.home, job_id, who.dn, is_admin=who.is_admin,
                                 last_event_id=request.headers.get("Last-Event-ID"),
                                 history=request.args.get("history", "0").lower() in {"1", "true", "yes"},
                                 stream_seconds=config.sse_stream_seconds,
                                 keepalive_seconds=config.sse_keepalive_seconds,
                                 client_gone=client_gone_check(request.environ.get("gunicorn.socket")))
            response = Response(body, mimetype="text/event-stream")
            response.headers["Cache-Control"] = "no-cache"
            response.headers["X-Accel-Buffering"] = "no"  # a reverse proxy must not buffer the stream
    except BaseException:
        release()
        raise
    call_on_close(response, release)  # also for a relayed stream (Response.call_on_close would never run)
    return response
