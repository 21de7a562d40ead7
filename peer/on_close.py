"""Run something when the server is done with a response (its last byte sent, or the client gone).

Werkzeug's ``Response.call_on_close`` does not work for responses with
``direct_passthrough`` (file downloads from ``send_file``, relayed bodies):
their WSGI iterable is handed to the server as it is, and the server closes
that iterable, never the ``Response``, so the callbacks are silently dropped.
:func:`call_on_close` works for both: it chains onto the iterable's own
``close`` (a file wrapper keeps its identity, so gunicorn can still use
``sendfile``) or wraps a generator in a ``ClosingIterator``.
"""
from __future__ import annotations

from typing import Callable

from werkzeug.wrappers import Response
from werkzeug.wsgi import ClosingIterator


def call_on_close(response: Response, fn: Callable[[], None]) -> None:
    if not response.direct_passthrough:
        response.call_on_close(fn)
        return
    body = response.response
    original = getattr(body, "close", None)

    def close() -> None:
        try:
            if original is not None:
                original()
        finally:
            fn()

    try:
        body.close = close  # type: ignore[union-attr]  # a file wrapper: same object, sendfile still possible
    except AttributeError:  # a generator (its close is read-only): wrap it
        response.response = ClosingIterator(body, [close])
