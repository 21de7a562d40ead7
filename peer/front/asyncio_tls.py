"""Two adjustments of asyncio's SSL transport for a server that holds thousands of TLS connections.

**The alert when a handshake fails** (CPython gh-98078).  When a client
presents a certificate the site CA did not issue (or an expired one),
OpenSSL writes a fatal alert ("unknown ca", "certificate expired") for it,
and a blocking ``ssl.SSLSocket`` (gunicorn's, before the front) sends it: the
client reads *why* it was refused.  asyncio's ``SSLProtocol`` closes the
transport without flushing that alert, so the client sees only a dropped
connection.  CPython fixed this (flush the outgoing buffer before the fatal
error); :func:`install` applies the same one line to older interpreters.  On
an interpreter that has the fix, flushing an already empty buffer does nothing.

**The receive buffer.**  ``SSLProtocol`` gives every connection a 256 KiB
buffer for the encrypted bytes it receives, zero-filled at once, so an idle
phone cost the front about 290 KiB (measured: 1,100 held connections added
~320 MiB).  A TLS record holds at most 16 KiB, so 16 KiB per read is enough;
an upload takes more reads, each still a full record.

uvloop (``front_uvloop``) has its own SSL code and is not touched.
"""
from __future__ import annotations

import logging
from asyncio import sslproto
from typing import Any

log = logging.getLogger(__name__)

#: Bytes asyncio reads from a TLS socket at once (a TLS record is at most 16 KiB + 256 bytes of overhead).
READ_BUFFER_BYTES = 16 * 1024 + 256
_MARK = "_pocketgrid_sends_alerts"


def install() -> None:
    cls = sslproto.SSLProtocol
    cls.max_size = READ_BUFFER_BYTES
    original = cls._on_handshake_complete
    if getattr(original, _MARK, False):
        return

    def _on_handshake_complete(self: Any, handshake_exc: BaseException | None) -> None:
        if handshake_exc is not None and getattr(self, "_transport", None) is not None:
            try:
                self._process_outgoing()  # the alert OpenSSL left for the peer
            except Exception as exc:  # noqa: BLE001 - best effort: the handshake fails either way
                log.debug("could not send the TLS alert: %s", exc)
        original(self, handshake_exc)

    setattr(_on_handshake_complete, _MARK, True)
    cls._on_handshake_complete = _on_handshake_complete  # type: ignore[method-assign]
