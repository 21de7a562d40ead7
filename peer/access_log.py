"""The access log: one line per request (logger ``pocketgrid.access``, config ``access_log``, on by default).

    10.0.0.5 "CN=Alice,O=example" "GET /api/v1/jobs/site-a.67?wait=25" 304 - 25012ms

(address, the caller's DN or ``-``, request line, status, bytes or ``-``,
time until the last byte was handed to the server), plus the request ID
(peer/request_ids.py) in the line's ``[id]`` / ``request_id`` field.  The
line is written when the response is closed, so a download's line comes at
its end and its time is the whole transfer.

Never logged: headers (so no ``Authorization``, cookie or
``X-Pocketgrid-User-Token``), bodies, and query values other than the
harmless parameters in :data:`SHOWN_QUERY_KEYS`; any other parameter's value
(``?code=``, ``?token=``, ...) is written as ``[redacted]``.
"""
from __future__ import annotations

import logging
import time
from urllib.parse import parse_qsl, quote

from flask import Flask, Response, g, request

from pocketgrid.logging_setup import request_id_var

from .on_close import call_on_close

log = logging.getLogger("pocketgrid.access")

#: Query parameters of the API whose values are shown (none of them carries a secret).
SHOWN_QUERY_KEYS = frozenset({"wait", "local", "detail", "limit", "action", "all", "checksum", "path", "glob",
                              "regex", "icase", "dry_run", "at"})
REDACTED = "[redacted]"


def query_for_log(query_string: bytes) -> str:
    """The query string with every value not in SHOWN_QUERY_KEYS replaced by [redacted]."""
    if not query_string:
        return ""
    pairs = parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)
    shown = [f"{quote(k, safe='')}={quote(v, safe='/*,.-_') if k in SHOWN_QUERY_KEYS else REDACTED}"
             for k, v in pairs]
    return "?" + "&".join(shown) if shown else "?" + REDACTED


def install(app: Flask) -> None:
    app.before_request(_start)
    app.after_request(_arrange)


def _start() -> None:
    g.access_started = time.monotonic()


def _arrange(response: Response) -> Response:
    started = g.get("access_started", time.monotonic())
    who = g.get("pocketgrid_identity")
    dn = who.dn if who is not None else "-"
    line = (request.remote_addr or "-", dn, f"{request.method} {quote(request.path, safe='/:@!$&()*+,;=-._~')}"
            f"{query_for_log(request.query_string)}")
    request_id = g.get("request_id")
    status, length = response.status_code, response.content_length

    def write() -> None:
        token = request_id_var.set(request_id)  # the request's context is gone when a stream ends
        try:
            log.info('%s "%s" "%s" %d %s %dms', line[0], line[1].replace('"', "'"), line[2], status,
                     "-" if length is None else length, (time.monotonic() - started) * 1000)
        finally:
            request_id_var.reset(token)

    call_on_close(response, write)
    return response
