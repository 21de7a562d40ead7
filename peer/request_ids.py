"""Request IDs that follow a request through relays: ``X-Request-ID``.

Each request gets an ID: the client's ``X-Request-ID`` when it is well formed
(1 to 128 characters of letters, digits and ``._:-``, starting with a letter or
digit), else a new random one.  While the request is served, the ID is in
:data:`pocketgrid.logging_setup.request_id_var`, so

* every log line of the request carries it (the log handler's filter),
* every peer-to-peer call made while serving it (relay, forward, placement,
  the fan-outs) sends it on as ``X-Request-ID`` (:class:`RequestIdAdapter`
  on the peer's HTTP session; thread pools copy the context), so the next
  peer logs the same ID,
* the answer echoes it, and the access log line (peer/access_log.py) has it.

A malformed ID (spaces, quotes, line breaks, too long) is replaced, never
logged: the header is the client's text, and log lines must stay lines.
"""
from __future__ import annotations

import re
import secrets
from typing import Any

from flask import Flask, Response, g, request
from requests.adapters import HTTPAdapter

from pocketgrid.logging_setup import request_id_var

HEADER = "X-Request-ID"
_WELL_FORMED = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


def accept(value: str | None) -> str:
    """The client's ID if well formed, else a new one."""
    if value is not None and _WELL_FORMED.fullmatch(value):
        return value
    return secrets.token_hex(8)


def current() -> str | None:
    return request_id_var.get()


def install(app: Flask) -> None:
    """Register first, before any other ``before_request``: their log lines carry the ID too."""
    app.before_request(_begin)
    app.after_request(_echo)
    app.teardown_request(_end)


def _begin() -> None:
    g.request_id = accept(request.headers.get(HEADER))
    g.request_id_token = request_id_var.set(g.request_id)


def _echo(response: Response) -> Response:
    if "request_id" in g:
        response.headers[HEADER] = g.request_id
    return response


def _end(_exc: BaseException | None) -> None:
    token = g.pop("request_id_token", None)
    if token is not None:
        request_id_var.reset(token)  # the thread serves another request next


class RequestIdAdapter(HTTPAdapter):
    """Sends the current request's ID on every peer-to-peer call made while serving it."""

    def add_headers(self, request: Any, **kwargs: Any) -> None:
        request_id = request_id_var.get()
        if request_id and HEADER not in request.headers:
            request.headers[HEADER] = request_id
