"""A held event stream in gzip, event by event.

A job's event stream sends the whole status on every change: for a big job,
hundreds of KB each time, to a phone.  When the client accepts gzip (every
browser's EventSource does), the front compresses the stream it holds
(peer/front/proxy.py, ``hold_stream``) with one zlib stream for the whole
answer, flushed after every write (``Z_SYNC_FLUSH``, as nginx's gzip does for
event streams): each event reaches the browser whole and at once, and later
events compress against the earlier ones (a status that changed in one input
costs little more than that input).
"""
from __future__ import annotations

import zlib

from aiohttp import web
from werkzeug.http import parse_accept_header

#: As peer/compression.py.
LEVEL = 5


def accepts_gzip(request: web.BaseRequest) -> bool:
    """Whether the client's ``Accept-Encoding`` gives gzip a non-zero quality (``*`` included)."""
    return parse_accept_header(request.headers.get("Accept-Encoding", ""))["gzip"] > 0


class GzipStream:
    """What :meth:`encode` returns goes on the wire: the gzip bytes of everything so far, flushed."""

    def __init__(self) -> None:
        self._z = zlib.compressobj(LEVEL, zlib.DEFLATED, 16 + zlib.MAX_WBITS)  # 16+: the gzip wrapper

    def encode(self, data: bytes) -> bytes:
        return self._z.compress(data) + self._z.flush(zlib.Z_SYNC_FLUSH)

    def finish(self) -> bytes:
        return self._z.flush(zlib.Z_FINISH)
