"""What the front tells the app about a request, and how the app decides to believe it.

The app sees requests on a Unix socket, not the client's TCP connection, so
the front passes on what only the connection knows:

* ``X-Pocketgrid-Front-Address``: the client's IP address (logins, pairing
  and audit records are per address);
* ``X-Pocketgrid-Front-Certificate``: the client's TLS certificate (DER,
  base64), present only when the client presented one **and the TLS handshake
  verified it against the site CA** -- a peer's host certificate (mutual TLS)
  or a user's certificate;
* ``X-Pocketgrid-Front``: a random secret made at each start of the peer and
  handed to the app through a pipe (never the command line or the
  environment), proving the request came through the front.

The front removes every header of that family (``X-Pocketgrid-Front*``, also
spelt with ``_``) that a client sent before adding its own.  The app
(:class:`TrustFront`, a WSGI middleware) removes them all from every request
and believes them only when the secret matches; otherwise the request has no
certificate and no address.  The socket is also private (0600 in a 0700
directory): the secret is the second lock, not the only one.
"""
from __future__ import annotations

import base64
import binascii
import hmac
import logging
from typing import Any, Callable, Iterable

from pocketgrid.client_certificate import ENVIRON_CERTIFICATE

log = logging.getLogger(__name__)

SECRET = "X-Pocketgrid-Front"
ADDRESS = "X-Pocketgrid-Front-Address"
CERTIFICATE = "X-Pocketgrid-Front-Certificate"
_PREFIX = "x-pocketgrid-front"
_ENVIRON_PREFIX = "HTTP_X_POCKETGRID_FRONT"

#: Hop-by-hop headers (RFC 9110 7.6.1), and those the front settles itself: never passed on either way.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization",
                        "te", "trailer", "transfer-encoding", "upgrade", "expect", "content-length"})


def header_text(raw: bytes) -> str:
    """A header's bytes as text that aiohttp writes back as the same bytes (it encodes UTF-8) when they are UTF-8
    (ASCII included: nearly always); other bytes are read as Latin-1 (and then change: never seen in practice)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def is_front_header(name: str) -> bool:
    """A header only the front may set (any spelling WSGI would map onto the same variable)."""
    return name.lower().replace("_", "-").startswith(_PREFIX)


def request_headers(raw: Iterable[tuple[bytes, bytes]], secret: str, address: str,
                    certificate_der: bytes | None) -> list[tuple[str, str]]:
    """The client's headers as the app gets them: hop-by-hop and front headers dropped, the front's added."""
    connection_named: set[str] = set()
    out: list[tuple[str, str]] = []
    for name_b, value_b in raw:
        name = name_b.decode("latin-1")
        lower = name.lower()
        if lower == "connection":
            connection_named.update(t.strip().lower() for t in value_b.decode("latin-1").split(","))
        if lower in HOP_BY_HOP or is_front_header(lower):
            continue
        out.append((name, header_text(value_b)))
    if connection_named:
        out = [(k, v) for k, v in out if k.lower() not in connection_named]
    out.append((SECRET, secret))
    out.append((ADDRESS, address))
    if certificate_der:
        out.append((CERTIFICATE, base64.b64encode(certificate_der).decode("ascii")))
    return out


class TrustFront:
    """WSGI middleware in the app: the front's headers become the connection's facts, if the secret matches."""

    def __init__(self, app: Callable[..., Any], secret: str, scheme: str) -> None:
        if not secret:
            raise ValueError("the front's secret is empty: nothing could prove a request came through the front")
        self.app = app
        self._secret = secret.encode()
        self.scheme = scheme

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        given = environ.get("HTTP_X_POCKETGRID_FRONT", "")
        address = environ.get("HTTP_X_POCKETGRID_FRONT_ADDRESS", "")
        certificate = environ.get("HTTP_X_POCKETGRID_FRONT_CERTIFICATE", "")
        for key in [k for k in environ if k.startswith(_ENVIRON_PREFIX)]:
            del environ[key]
        environ.pop(ENVIRON_CERTIFICATE, None)  # only this middleware puts it there
        if given and hmac.compare_digest(given.encode("latin-1"), self._secret):
            environ["REMOTE_ADDR"] = address
            environ["wsgi.url_scheme"] = self.scheme
            if certificate:
                try:
                    environ[ENVIRON_CERTIFICATE] = base64.b64decode(certificate, validate=True)
                except (binascii.Error, ValueError):  # the front wrote it: cannot happen, but never believe garbage
                    log.error("the front sent a malformed client certificate header: ignored")
        else:
            log.warning("a request on the app's socket without the front's secret: its certificate and address "
                        "headers are ignored (%s %s)", environ.get("REQUEST_METHOD"), environ.get("PATH_INFO", "")[:200])
            environ["REMOTE_ADDR"] = ""
        return self.app(environ, start_response)
