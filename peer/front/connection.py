"""One client connection of the front: aiohttp's HTTP/1.1 protocol, plus a header deadline and a lease.

aiohttp closes a connection that stays idle between requests after its
keep-alive timeout (``front_keepalive_seconds``), which is what an idle phone
should cost: a protocol object and a socket, for a minute or so.  It has no
deadline for a request *head*, though: a client that opens a connection and
sends nothing, or part of a request line, would be held for the whole
keep-alive time.  So this class adds one: a new connection, or an idle one
that starts sending, must deliver a complete request head within
``front_header_timeout``, or it is closed (as nginx's
``client_header_timeout`` does; nothing is answered, as no request was made).
Bodies have their own deadline in peer/front/proxy.py.

Each connection holds a :class:`~peer.front.limits.Lease` from the moment it
was accepted; closing it gives the place back.
"""
from __future__ import annotations

import asyncio
from typing import Any

from aiohttp.web_protocol import RequestHandler

from .limits import EventLog, Lease


class ClientConnection(RequestHandler):
    __slots__ = ("lease", "_header_timeout", "_header_handle", "_in_request", "_events", "_certificate", "_gone")

    def __init__(self, manager: Any, *, lease: Lease, header_timeout: float, events: EventLog, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self.lease = lease
        self._header_timeout = header_timeout
        self._header_handle: asyncio.TimerHandle | None = None
        self._in_request = False
        self._events = events
        self._certificate: bytes | None | bool = False  # False: not looked at yet
        self._gone: asyncio.Future[None] | None = None

    # ---- asyncio.Protocol ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm()  # the first request head is due now

    def data_received(self, data: bytes) -> None:
        if not self._in_request and self._header_handle is None:
            self._arm()  # an idle connection starts a request: its head is due within the deadline
        super().data_received(data)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        self.lease.release()
        if self._gone is not None and not self._gone.done():
            self._gone.set_result(None)
        super().connection_lost(exc)

    # ---- called by the proxy around each request -------------------------------------------------
    def request_started(self) -> None:
        self._in_request = True
        self._disarm()

    def request_finished(self) -> None:
        self._in_request = False

    def gone(self) -> "asyncio.Future[None]":
        """Done when the client's connection closes (a waiting long-poll stops waiting for nobody)."""
        if self._gone is None:
            self._gone = self._loop.create_future()
            if self.transport is None:
                self._gone.set_result(None)
        return self._gone

    def client_certificate(self) -> bytes | None:
        """The client's certificate (DER) if it presented one: the handshake verified it against the site CA."""
        if self._certificate is False:
            ssl_object = self.transport.get_extra_info("ssl_object") if self.transport is not None else None
            self._certificate = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        return self._certificate  # type: ignore[return-value]

    # ---- the header deadline -----------------------------------------------------------------------
    def _arm(self) -> None:
        self._header_handle = self._loop.call_later(self._header_timeout, self._header_expired)

    def _disarm(self) -> None:
        if self._header_handle is not None:
            self._header_handle.cancel()
            self._header_handle = None

    def _header_expired(self) -> None:
        self._header_handle = None
        if not self._in_request and self.transport is not None:
            self._events.note("header-timeout", self.lease.address)
            self.force_close()
