"""One request through the front: read it whole, hand it to the app, stream the answer back.

**The body** is read by the front before the app sees anything, so a slow or
stalled client costs a coroutine and a buffer, never one of the app's
threads:

* a ``Content-Length`` over ``max_body_bytes`` is answered 413 at once, unread;
  a chunked body is counted as it comes and answered 413 when it passes the limit;
* ``front_body_timeout`` is the longest silence allowed while a body arrives
  (nginx's ``client_body_timeout``): a body that stalls that long is answered
  408 and the connection closed; a slow but steady upload (a phone on a bad
  link) is never cut;
* up to :data:`MEMORY_BYTES` stay in memory, the rest goes to an unnamed file in
  the peer's private run directory (``<state>/run``), so a 64 MiB upload does not
  sit in memory;
* a resumable-upload chunk (tus ``PATCH`` with ``application/offset+octet-stream``)
  whose client went away or stalled is still handed to the app with the bytes
  that did arrive (a shorter PATCH): tus keeps what arrived, and the client
  resumes from the peer's offset, as it did when the app read the socket itself.
  The next request for the same upload (the client's ``HEAD`` after it
  reconnected) waits until those bytes are stored, so the offset it gets
  counts them; and if the front has not yet noticed that the old connection
  is gone (a phone whose link dropped sends no FIN), that request ends the
  old chunk's read at once (as tusd does with its upload locks): the client
  has moved on.

**The answer** is streamed back as the app sends it: ``Content-Length`` kept,
chunks relayed as they come (Server-Sent Events are flushed event by event),
and each write waits for the client to take it (backpressure), so a large
download never sits in the front's memory, and a slow reader slows the app's
sending down instead.

**The app** is reached through a pool of keep-alive connections on its Unix
socket, as many as it has threads: requests beyond wait here, on the event
loop.  The app never sees the client's hop-by-hop headers nor anything the
client claims to be the front's (peer/front/headers.py).

**Waiting status long-polls** (``GET /api/v1/jobs/<id>?wait=N`` with
``If-None-Match``) are held here, on the event loop, not in an app thread
(:meth:`Proxy.hold`).  A ``GET`` with ``wait`` in its query (or to a path
ending in ``/events``) goes to the app with ``X-Pocketgrid-Front-Waits``; for a long-poll of a job whose home is this
peer, the app authorises it and answers at once: the status (200) if it
changed, else 304 with ``X-Pocketgrid-Front-Wait`` (the job, the version the
client has, a digest of the user, the wait granted).  The front then takes a
place among the waits (peer/front/waits.py: per user, per address, in all;
429 + ``Retry-After`` beyond), waits for the app's change feed
(peer/front/changes.py) to name the job at another version, the deadline, or
the client to leave, and asks the app again -- which authorises it again --
until it answers something other than 304 or the deadline has passed; that
answer goes to the client.

**Event streams** (``GET /api/v1/jobs/<id>/events``) of a job whose home is
this peer are held the same way (:meth:`Proxy.hold_stream`): the app answers
at once with the events due and the wait header; the front sends them, writes
a keepalive comment every ``sse_keepalive_seconds``, and on each change asks
the app again with ``Last-Event-ID`` for the next events, until the job is
final (the app's ``event: end``), ``sse_stream_seconds`` pass (``retry:``,
the browser reconnects) or the client leaves.  An answer other than events
on a re-ask (the token expired: 401) ends the stream with ``event: error``.
A client that accepts gzip gets the stream in gzip, flushed event by event
(peer/front/gzip_stream.py).

A long-poll or a stream relayed to the job's home still parks an app thread
here, at the entry peer (peer/parking.py); the home's front holds it there.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError
from multidict import CIMultiDict
from yarl import URL

from peer.request_ids import accept as accept_request_id

from .connection import ClientConnection
from .gzip_stream import GzipStream, accepts_gzip
from .headers import HOP_BY_HOP, WAIT, header_text, is_front_header, parse_wait_header, request_headers
from .limits import EventLog
from .waits import WaitRefusal, Waits

log = logging.getLogger("pocketgrid.front")

#: Body bytes kept in memory; beyond, the body goes to an unnamed file in the run directory.
MEMORY_BYTES = 1024 * 1024
#: Answers up to this size are read whole and sent with their headers in one write; larger ones are streamed.
SMALL_BODY_BYTES = 64 * 1024
#: tus: a chunk that was cut or stalled is still worth the bytes that arrived.
TUS_CHUNK_TYPE = "application/offset+octet-stream"
#: How long a request for an upload waits for its cut chunk to be stored before it goes on anyway.
CHUNK_HANDOFF_SECONDS = 60
#: aiohttp's client must add nothing the client did not send.
_NO_AUTO_HEADERS = ("User-Agent", "Accept-Encoding", "Content-Type", "Accept")
_NO_BODY_STATUSES = frozenset({204, 304})
#: What a long-poll refused for the limits on waits tells the client to wait before it asks again.
WAIT_RETRY_AFTER = 5
#: ... and a refused event stream (as the app said when it held them).
STREAM_RETRY_AFTER = 10
#: What a held event stream tells the browser to wait before it reconnects (peer/api_events.py's RETRY_MS).
STREAM_RETRY_MS = 1000


def _error_event(message: str) -> bytes:
    return b"event: error\ndata: " + message.encode("utf-8", "replace")[:500].replace(b"\n", b" ") + b"\n\n"


class Body:
    """A request body as it arrives: in memory up to MEMORY_BYTES, then in an unnamed temporary file."""

    def __init__(self, spool_dir: Path) -> None:
        self.size = 0
        self._spool_dir = spool_dir
        self._memory = bytearray()
        self._file: Any = None

    def add(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self._file is None:
            if self.size <= MEMORY_BYTES:
                self._memory += chunk
                return
            self._file = tempfile.TemporaryFile(dir=self._spool_dir)
            self._file.write(self._memory)
            self._memory = bytearray()
        self._file.write(chunk)

    def payload(self) -> Any:
        if self._file is None:
            return self._memory
        self._file.flush()
        self._file.seek(0)
        return self._file

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


class BodyIncomplete(Exception):
    def __init__(self, why: str, body: Body) -> None:
        super().__init__(why)
        self.why = why  # "stalled" | "gone" | "superseded"
        self.body = body


class BodyTooLarge(Exception):
    pass


class ChunkSuperseded(Exception):
    """A newer request for the same upload arrived while this chunk's body was still arriving."""


@dataclasses.dataclass
class _Chunk:
    """A tus chunk in flight: its body's stream (a newer request for the upload ends it) and when it is done
    (its bytes, all or those that arrived, are stored, or were refused)."""

    content: Any
    done: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)

    def supersede(self) -> None:
        if not self.done.is_set():
            self.content.set_exception(ChunkSuperseded())


class AppUnavailable(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Proxy:
    def __init__(self, *, app_socket: str, secret: str, app_connections: int, max_body_bytes: int,
                 body_timeout: float, spool_dir: Path, events: EventLog, waits: Waits | None = None,
                 keepalive_seconds: float = 15.0) -> None:
        self.app_socket = app_socket
        self.secret = secret
        self.app_connections = app_connections
        self.max_body_bytes = max_body_bytes
        self.body_timeout = body_timeout
        self.spool_dir = spool_dir
        self.events = events
        self.waits = waits
        self.keepalive_seconds = keepalive_seconds
        #: upload path -> its tus chunk in flight (one per upload: a newer request ends the older one)
        self._chunks: dict[str, _Chunk] = {}
        self.session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.UnixConnector(path=self.app_socket, limit=self.app_connections, keepalive_timeout=30)
        self.session = aiohttp.ClientSession(
            connector=connector, auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar(),
            timeout=aiohttp.ClientTimeout(total=None, connect=10, sock_connect=10, sock_read=None),
            skip_auto_headers=_NO_AUTO_HEADERS, read_bufsize=256 * 1024, max_field_size=65536, max_line_size=65536)

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()

    # ---- one request ----------------------------------------------------------------------------
    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        connection: ClientConnection = request.protocol  # type: ignore[assignment]
        connection.request_started()
        try:
            return await self._handle(request, connection)
        except ConnectionError:
            # The client went away (mid-body, mid-answer): nothing to answer.  Returning (not raising) keeps
            # aiohttp from logging a disconnection as a server error; writing this fails quietly.
            return web.Response(status=499)
        finally:
            connection.request_finished()

    async def _handle(self, request: web.BaseRequest, connection: ClientConnection) -> web.StreamResponse:
        address = connection.lease.address
        announced = request.content_length
        if announced is not None and announced > self.max_body_bytes:
            self.events.note("body-too-large", address, f"{request.method} {request.path[:100]}: {announced} bytes")
            return self._error(request, 413, f"the body ({announced} bytes) is over this peer's limit of "
                               f"{self.max_body_bytes} bytes (max_body_bytes): send less, or in chunks",
                               close=True, max_body_bytes=self.max_body_bytes)
        await self._after_chunk_in_flight(request.path)
        if request.method == "PATCH" and request.content_type == TUS_CHUNK_TYPE:
            chunk = self._chunks[request.path] = _Chunk(request.content)
            try:
                return await self._handle_body(request, connection)
            finally:
                chunk.done.set()
                if self._chunks.get(request.path) is chunk:
                    del self._chunks[request.path]
        return await self._handle_body(request, connection)

    async def _after_chunk_in_flight(self, path: str) -> None:
        """A request for an upload whose chunk is still in flight: end that chunk's read (the client has
        moved on) and wait until what arrived of it is stored, so the offset this request sees counts it."""
        chunk = self._chunks.get(path)
        if chunk is None:
            return
        chunk.supersede()
        try:
            async with asyncio.timeout(CHUNK_HANDOFF_SECONDS):
                await chunk.done.wait()
        except TimeoutError:
            log.warning("front: the cut chunk of %s was not stored within %d s: going on", path[:100],
                        CHUNK_HANDOFF_SECONDS)

    async def _handle_body(self, request: web.BaseRequest, connection: ClientConnection) -> web.StreamResponse:
        address = connection.lease.address
        if request.body_exists and request.headers.get("Expect", "").lower() == "100-continue":
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        try:
            body = await self._read_body(request)
        except BodyTooLarge:
            self.events.note("body-too-large", address, f"{request.method} {request.path[:100]}: chunked body")
            return self._error(request, 413, f"the body is over this peer's limit of {self.max_body_bytes} bytes "
                               "(max_body_bytes): send less, or in chunks", close=True,
                               max_body_bytes=self.max_body_bytes)
        except RequestPayloadError as exc:
            return self._error(request, 400, f"malformed request body: {exc}", close=True)
        except BodyIncomplete as cut:
            return await self._incomplete(request, connection, cut)
        try:
            return await self._forward_and_relay(request, connection, body)
        finally:
            if body is not None:
                body.close()

    async def hold(self, request: web.BaseRequest, connection: ClientConnection, upstream: aiohttp.ClientResponse,
                   wait_value: str, generation: int) -> aiohttp.ClientResponse | web.StreamResponse:
        """A waiting long-poll the app answered 304 + ``X-Pocketgrid-Front-Wait``: wait here, on the loop, and
        ask the app again on a change or at the deadline.  Returns the app's final answer (to relay), or the
        front's own (429).  ``generation``: the change feed's when the app was asked (peer/front/waits.py)."""
        assert self.waits is not None
        waits = self.waits
        started = asyncio.get_running_loop().time()
        place = None
        try:
            while True:
                spec = parse_wait_header(wait_value)
                if spec is None:
                    log.error("front: the app sent a malformed %s header (%r): answering as it is", WAIT,
                              wait_value[:200])
                    return upstream
                if place is None:
                    admitted = waits.admit(spec.user, connection.lease.address)
                    if isinstance(admitted, WaitRefusal):
                        upstream.release()
                        self.events.note("wait-refused", connection.lease.address, admitted.why)
                        return self._error(request, 429, f"{admitted.why}: retry in {WAIT_RETRY_AFTER} s, or poll "
                                           "without waiting", retry_after=WAIT_RETRY_AFTER)
                    place = admitted
                    deadline = started + spec.seconds
                left = deadline - asyncio.get_running_loop().time()
                if left <= 0:
                    return upstream  # asked again at (or after) the deadline: unchanged, say so
                upstream.release()
                await waits.wait(spec.job_id, spec.version, left, generation, connection.gone())
                if connection.transport is None:  # the client left: nobody to answer
                    raise ConnectionResetError("the client closed the connection while its long-poll waited")
                generation = waits.generation
                upstream = await self._forward(request, connection, None, front_waits=True)
                wait_value = upstream.headers.get(WAIT, "")
                if upstream.status != 304 or not wait_value:
                    return upstream
        finally:
            if place is not None:
                place.release()

    async def hold_stream(self, request: web.BaseRequest, connection: ClientConnection,
                          upstream: aiohttp.ClientResponse, wait_value: str, generation: int) -> web.StreamResponse:
        """An event stream (peer/api_events.py) the app answered with the events due and
        ``X-Pocketgrid-Front-Wait``: send them, then hold the stream here -- keepalives, the app's change feed --
        and ask the app again (``Last-Event-ID``: the version sent) for the next events, until the job is final,
        the stream's time (``sse_stream_seconds``) is up, or the client leaves."""
        assert self.waits is not None
        loop = asyncio.get_running_loop()
        spec = parse_wait_header(wait_value)
        if spec is None:
            log.error("front: the app sent a malformed %s header (%r)", WAIT, wait_value[:200])
            upstream.close()
            return self._error(request, 502, "this peer's app process answered the event stream badly: retry")
        admitted = self.waits.admit(spec.user, connection.lease.address, stream=True)
        if isinstance(admitted, WaitRefusal):
            upstream.close()
            self.events.note("wait-refused", connection.lease.address, admitted.why)
            return self._error(request, 429, f"{admitted.why}, or poll GET /api/v1/jobs/<id>?wait=25 instead: "
                               f"retry in {STREAM_RETRY_AFTER} s", retry_after=STREAM_RETRY_AFTER)
        try:
            headers = self._answer_headers(upstream)
            gz = GzipStream() if accepts_gzip(request) and "Content-Encoding" not in headers else None
            if gz is not None:  # each event flushed whole (peer/front/gzip_stream.py)
                headers["Content-Encoding"] = "gzip"
                headers.add("Vary", "Accept-Encoding")

            async def send(data: bytes) -> None:
                if gz is not None:
                    data = await loop.run_in_executor(None, gz.encode, data) if len(data) > 65536 else gz.encode(data)
                await response.write(data)

            response = web.StreamResponse(status=200, headers=headers)
            try:
                first = await upstream.read()
            finally:
                upstream.release()
            await response.prepare(request)
            await send(first)
            now = loop.time()
            deadline = now + spec.seconds
            keepalive_at = now + self.keepalive_seconds
            while True:
                now = loop.time()
                if now >= deadline:
                    await send(f"retry: {STREAM_RETRY_MS}\n\n".encode())  # the browser reconnects
                    break
                if now >= keepalive_at:
                    await send(b": keepalive\n\n")  # also how a closed connection is noticed
                    keepalive_at = now + self.keepalive_seconds
                changed = await self.waits.wait(spec.job_id, spec.version, min(deadline, keepalive_at) - now,
                                                generation, connection.gone())
                if connection.transport is None:
                    raise ConnectionResetError("the client closed its event stream")
                if not changed:
                    continue
                generation = self.waits.generation
                events, wait_value = await self._next_events(request, connection, spec.version)
                if events:
                    await send(events)
                if wait_value is None:
                    break  # the job is final (its end event is sent), or the app could not answer
                next_spec = parse_wait_header(wait_value)
                if next_spec is None:
                    break
                spec = dataclasses.replace(next_spec, seconds=spec.seconds)
            if gz is not None:
                await response.write(gz.finish())
            await response.write_eof()
            return response
        finally:
            admitted.release()

    async def _next_events(self, request: web.BaseRequest, connection: ClientConnection,
                           version: int) -> tuple[bytes, str | None]:
        """Ask the app for the events after ``version``: (the events, its next wait or None when the stream ends)."""
        try:
            upstream = await self._forward(request, connection, None, front_waits=True, last_event_id=str(version))
        except AppUnavailable as exc:
            return _error_event(exc.message), None
        try:
            body = await upstream.read()
        except aiohttp.ClientError as exc:
            upstream.close()
            return _error_event(f"this peer's app process broke off ({exc}): reconnect"), None
        upstream.release()
        if upstream.status != 200 or upstream.content_type != "text/event-stream":
            try:  # e.g. 401 (the token expired meanwhile), 404 (the job was purged): the browser reconnects
                message = json.loads(body)["error"]
            except (ValueError, KeyError, TypeError):
                message = f"the peer answered {upstream.status}"
            return _error_event(str(message)), None
        return body, upstream.headers.get(WAIT)

    def _answer_headers(self, upstream: aiohttp.ClientResponse) -> CIMultiDict[str]:
        headers: CIMultiDict[str] = CIMultiDict()
        for name_b, value_b in upstream.raw_headers:  # the app's own spelling (ETag, not Etag) and order
            name = name_b.decode("latin-1")
            if name.lower() not in HOP_BY_HOP and not is_front_header(name):  # the app's word to the front only
                headers.add(name, header_text(value_b))
        return headers

    async def _read_body(self, request: web.BaseRequest) -> Body | None:
        if not request.body_exists:
            return None
        body = Body(self.spool_dir)
        content = request.content
        try:
            while True:
                try:
                    async with asyncio.timeout(self.body_timeout):
                        chunk = await content.readany()
                except TimeoutError:
                    raise BodyIncomplete("stalled", body) from None
                except ChunkSuperseded:
                    raise BodyIncomplete("superseded", body) from None
                if not chunk:
                    return body
                if body.size + len(chunk) > self.max_body_bytes:
                    raise BodyTooLarge()
                body.add(chunk)
        except BodyIncomplete:
            raise  # it carries the body: _incomplete closes it
        except ConnectionError:
            raise BodyIncomplete("gone", body) from None
        except BaseException:
            body.close()
            raise

    async def _incomplete(self, request: web.BaseRequest, connection: ClientConnection,
                          cut: BodyIncomplete) -> web.StreamResponse:
        body = cut.body
        try:
            if (request.method == "PATCH" and request.content_type == TUS_CHUNK_TYPE and body.size > 0):
                try:  # tus keeps what arrived: the app stores it, the client resumes from the peer's offset
                    upstream = await self._forward(request, connection, body)
                    upstream.close()
                except AppUnavailable:
                    pass
        finally:
            body.close()
        if cut.why == "gone":
            raise ConnectionResetError("the client closed the connection while sending its body")
        if cut.why == "superseded":
            return self._error(request, 409, f"a newer request for this upload arrived while this chunk was "
                               f"arriving ({body.size} bytes stored): ask the upload's offset and go on from there",
                               close=True)
        self.events.note("body-timeout", connection.lease.address,
                         f"{request.method} {request.path[:100]}: {body.size} of {request.content_length or '?'} bytes")
        return self._error(request, 408, f"the request body stalled for {self.body_timeout:g} s "
                           f"({body.size} bytes arrived): send it again", close=True)

    # ---- the app ------------------------------------------------------------------------------
    async def _forward(self, request: web.BaseRequest, connection: ClientConnection,
                       body: Body | None, *, front_waits: bool = False,
                       last_event_id: str | None = None) -> aiohttp.ClientResponse:
        assert self.session is not None
        headers = request_headers(request.raw_headers, self.secret, connection.lease.address,
                                  connection.client_certificate(), front_waits=front_waits,
                                  waits_held=self.waits.held if self.waits is not None and request.path == "/healthz"
                                  else None)
        if last_event_id is not None:  # a held event stream asks for the events after the ones it sent
            headers = [(k, v) for k, v in headers if k.lower() != "last-event-id"] + [("Last-Event-ID", last_event_id)]
        if body is not None:
            headers.append(("Content-Length", str(body.size)))
        try:
            return await self.session.request(request.method, URL("http://app" + request.raw_path, encoded=True),
                                              headers=headers, data=None if body is None else body.payload(),
                                              allow_redirects=False)
        except aiohttp.ClientConnectorError:
            raise AppUnavailable(503, "this peer is starting or restarting: retry in a moment") from None
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
            raise AppUnavailable(502, f"this peer's app process dropped the request ({exc}): retry") from None

    async def _forward_and_relay(self, request: web.BaseRequest, connection: ClientConnection,
                                 body: Body | None) -> web.StreamResponse:
        front_waits = (self.waits is not None and body is None and request.method in ("GET", "HEAD")
                       and ("wait" in request.query or request.path.endswith("/events")))
        upstream: aiohttp.ClientResponse | None = None
        generation = self.waits.generation if self.waits is not None else 0  # before the app is asked
        try:
            upstream = await self._forward(request, connection, body, front_waits=front_waits)
            wait_value = upstream.headers.get(WAIT) if front_waits else None
            if wait_value and upstream.status == 200 and upstream.content_type == "text/event-stream":
                return await self.hold_stream(request, connection, upstream, wait_value, generation)
            if wait_value and upstream.status == 304:
                held = await self.hold(request, connection, upstream, wait_value, generation)
                if isinstance(held, web.StreamResponse):
                    return held  # the front's own answer (429): the app's was released
                upstream = held
        except AppUnavailable as exc:
            self.events.note("app-unavailable", connection.lease.address, exc.message)
            return self._error(request, exc.status, exc.message, retry_after=1)
        except ValueError as exc:  # a header aiohttp will not send on (a control character)
            return self._error(request, 400, f"malformed request header: {exc}", close=True)
        except BaseException:
            if upstream is not None:
                upstream.close()
            raise
        complete = False
        try:
            response = await self._relay(request, upstream)
            complete = True
            return response
        finally:
            if complete:
                upstream.release()
            else:
                upstream.close()  # the client left, or the app broke off: never reuse that connection

    async def _relay(self, request: web.BaseRequest, upstream: aiohttp.ClientResponse) -> web.StreamResponse:
        headers = self._answer_headers(upstream)
        has_body = request.method != "HEAD" and upstream.status not in _NO_BODY_STATUSES
        length = upstream.content_length
        if has_body and length is not None and length <= SMALL_BODY_BYTES and "Content-Type" in headers:
            # Most answers (a status, a 304's sibling, an error): headers and body leave in one TLS record.
            return web.Response(status=upstream.status, reason=upstream.reason, headers=headers,
                                body=await upstream.read())
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=headers)
        if length is not None and upstream.status not in _NO_BODY_STATUSES:
            response.content_length = length
        await response.prepare(request)
        if has_body:
            sent = 0
            try:
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)  # waits while the client is slower than the app
                    sent += len(chunk)
            except ConnectionError:
                raise  # the client went away (aiohttp's write error is a ClientError too)
            except aiohttp.ClientError as exc:  # the app broke off (its worker died): the client must see a cut
                log.warning("front: the app broke off its answer to %s %s after %d bytes (%s)", request.method,
                            request.path[:200], sent, exc)
                request.protocol.force_close()
                return response
        await response.write_eof()
        return response

    # ---- the front's own answers ------------------------------------------------------------
    def _error(self, request: web.BaseRequest, status: int, message: str, *, close: bool = False,
               retry_after: int | None = None, **details: Any) -> web.Response:
        headers = {"X-Request-ID": accept_request_id(request.headers.get("X-Request-ID")),
                   "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
        if retry_after is not None:
            headers["Retry-After"] = str(retry_after)
        response = web.Response(status=status, headers=headers, content_type="application/json",
                                text=json.dumps({"error": message, "status": status, **details}))
        if close:
            response.force_close()
        return response
