"""Send the TLS alert when a handshake fails (asyncio's SSL transport drops it: CPython gh-98078).

When a client presents a certificate the site CA did not issue (or an expired
one), OpenSSL writes a fatal alert ("unknown ca", "certificate expired") for
the client, and a blocking ``ssl.SSLSocket`` (gunicorn's, before the front)
sends it: the client reads *why* it was refused.  asyncio's ``SSLProtocol``
closes the transport without flushing that alert, so the client sees only a
dropped connection.  CPython fixed this (gh-98078: flush the outgoing buffer
before the fatal error); this applies the same one line to older interpreters.
On an interpreter that has the fix, flushing an already empty buffer does
nothing.  uvloop has its own SSL code and is not touched.
"""
from __future__ import annotations

import logging
from asyncio import sslproto
from typing import Any

log = logging.getLogger(__name__)

_MARK = "_pocketgrid_sends_alerts"


def install() -> None:
    cls = sslproto.SSLProtocol
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
