"""Security headers on every response of a peer: the web app's and the API's.

The web app (peer/webapp.py) runs under a strict Content-Security-Policy: its
own scripts, styles and images only, no inline script or style, no other
origin, no framing.  Its files (HTML, scripts -- a service worker's policy
comes from its own script's answer -- SVG) get that policy.  API answers get
a stricter and shorter one, ``default-src 'none'; frame-ancestors 'none'``
(a JSON body opened in a tab loads and runs nothing, and cannot be framed),
which keeps a phone's unchanged status poll about 190 bytes smaller.  The
other three headers go on every answer.
"""
from __future__ import annotations

from flask import Flask, Response, request

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; worker-src 'self'; manifest-src 'self'; font-src 'self'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)

#: For API answers: nothing may load or run, nothing may frame it.
API_CONTENT_SECURITY_POLICY = "default-src 'none'; frame-ancestors 'none'"

HEADERS: dict[str, str] = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
}


def add_security_headers(response: Response) -> Response:
    """``after_request``: set the headers unless a view chose its own value."""
    app_file = request.blueprint == "webapp"  # every HTML, script and SVG a peer serves is the app's
    response.headers.setdefault("Content-Security-Policy",
                                CONTENT_SECURITY_POLICY if app_file else API_CONTENT_SECURITY_POLICY)
    for name, value in HEADERS.items():
        response.headers.setdefault(name, value)
    return response


def install(app: Flask) -> None:
    app.after_request(add_security_headers)
