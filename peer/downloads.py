"""File responses with Range / If-Range / ETag, via Werkzeug's ``send_file``.

Werkzeug seeks to a range's start only if the response iterable is seekable.
The ``wsgi.file_wrapper`` of gunicorn (and waitress) is not, so Werkzeug would
read and discard every byte before the range: resuming near the end of a
1 GiB file would cost a whole read (werkzeug#2476, waitress#359).  For range
requests we therefore hand Werkzeug an environ without the server's wrapper;
it then uses its own seekable ``FileWrapper`` and seeks.  Full downloads keep
the server's wrapper (gunicorn can use ``sendfile`` for those).  A suffix range
longer than the file (``bytes=-8192`` of a 34-byte output) gets the whole file,
as RFC 9110 says, not Werkzeug's 416.
"""
from __future__ import annotations

import mimetypes
from pathlib import Path

from flask import current_app, request
from werkzeug.http import parse_range_header
from werkzeug.utils import send_file
from werkzeug.wrappers import Response


def _whole_file_for_long_suffix(header: str, size: int) -> str:
    """``bytes=-N`` with N over the file's size selects the whole file (RFC 9110, 14.1.2):
    Werkzeug answers 416 instead, which would break "the tail of a growing output" on a
    file still shorter than the tail asked for."""
    parsed = parse_range_header(header)
    if parsed is not None and parsed.units == "bytes" and len(parsed.ranges) == 1:
        start, end = parsed.ranges[0]
        if end is None and start < 0 and -start > size:
            return "bytes=0-" if size else header
    return header


def send_ranged(path: Path, *, sha256: str | None = None) -> Response:
    environ = request.environ
    if "HTTP_RANGE" in environ:
        environ = {k: v for k, v in environ.items() if k != "wsgi.file_wrapper"}
        environ["HTTP_RANGE"] = _whole_file_for_long_suffix(environ["HTTP_RANGE"], path.stat().st_size)
    mimetype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    response = send_file(
        str(path),
        environ=environ,
        mimetype=mimetype,
        as_attachment=False,
        conditional=True,
        etag=True,
        max_age=0,
        response_class=current_app.response_class,
        _root_path=current_app.root_path,
    )
    response.headers["Accept-Ranges"] = "bytes"
    if sha256:
        response.headers["X-Checksum-Sha256"] = sha256
    services = current_app.extensions.get("pocketgrid")  # a peer's app (not a bare Flask app)
    if services is not None:
        services.metrics.file_response(response)  # bytes downloaded (peer/metrics.py)
    return response
