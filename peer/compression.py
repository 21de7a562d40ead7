"""gzip for the API's JSON answers a phone fetches again and again.

A job's status is its whole record: a 1,000-input job's is a few hundred KB,
sent again on every change while a phone watches it.  JSON shrinks about ten
times under gzip, so an answer of at least :data:`MIN_BYTES` is compressed
when the client accepts gzip (browsers, ``requests`` and so the thin client
do by default, and decode it themselves).  Small answers (an unchanged
poll, a small job) are left as they are: not worth the CPU.

Left alone: anything but a whole ``200`` JSON body built in memory -- files
(``send_file``: ranges, resumable downloads, their own ETags), relayed
answers (already in the client's encoding, passed through as they are), and
event streams (the front compresses a held stream itself, event by event:
peer/front/gzip_stream.py).

A compressed answer's ``ETag`` becomes weak (``W/"12"``): the same version,
another encoding.  ``If-None-Match`` compares weakly (RFC 9110 8.8.3.2), so a
client that sends the weak tag back still gets its ``304``
(:func:`strong_tag` is what a view compares).
"""
from __future__ import annotations

import gzip

from flask import Flask, Response, request
from werkzeug.http import parse_etags, quote_etag

#: Answers shorter than this go as they are (about one packet: gzip would save nothing a phone notices).
MIN_BYTES = 1400
#: zlib's level: 5 gives nearly all of 9's saving on JSON for half the CPU.
LEVEL = 5


def strong_tag(header: str | None) -> str | None:
    """An ``If-None-Match`` of one tag as the strong tag a view compares with (``W/"12"`` -> ``"12"``);
    anything else (a list, ``*``, garbage) as it came: it matches no tag, so the view answers in full."""
    if header is None:
        return None
    tags = parse_etags(header).as_set(include_weak=True)
    if len(tags) == 1:
        (tag,) = tags
        try:
            return quote_etag(tag) if tag else header
        except ValueError:  # a quote inside
            return header
    return header


def compress(response: Response) -> Response:
    """``after_request``: gzip a large JSON answer for a client that accepts gzip."""
    if (response.status_code != 200 or response.direct_passthrough or response.is_streamed
            or response.mimetype != "application/json" or "Content-Encoding" in response.headers):
        return response
    response.vary.add("Accept-Encoding")
    if request.accept_encodings["gzip"] <= 0:
        return response
    body = response.get_data()
    if len(body) < MIN_BYTES:
        return response
    response.set_data(gzip.compress(body, compresslevel=LEVEL, mtime=0))
    response.headers["Content-Encoding"] = "gzip"
    tag, weak = response.get_etag()
    if tag is not None and not weak:
        response.set_etag(tag, weak=True)
    return response


def install(app: Flask) -> None:
    app.after_request(compress)
