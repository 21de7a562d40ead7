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
  environment), proving the request came through the front;
* ``X-Pocketgrid-Front-Waits``: on a ``GET`` or ``HEAD``, "the front holds waiting long-polls itself":
  the app answers a status long-poll at once instead of parking a thread
  (peer/api_jobs.py, peer/front/waits.py);
* ``X-Pocketgrid-Front-Waits-Held``: on ``/healthz``, how many long-polls the front holds now.

The app's answer may carry ``X-Pocketgrid-Front-Wait`` (how the front should
wait: :func:`wait_header`); the front takes every header of the family out of
the answers it relays, so a client never sees one.

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
import hashlib
import hmac
import logging
import math
from dataclasses import dataclass
from urllib.parse import quote, unquote
from typing import Any, Callable, Iterable

from pocketgrid.client_certificate import ENVIRON_CERTIFICATE

log = logging.getLogger(__name__)

SECRET = "X-Pocketgrid-Front"
ADDRESS = "X-Pocketgrid-Front-Address"
CERTIFICATE = "X-Pocketgrid-Front-Certificate"
WAITS = "X-Pocketgrid-Front-Waits"
WAIT = "X-Pocketgrid-Front-Wait"
WAITS_HELD = "X-Pocketgrid-Front-Waits-Held"
#: In the app's WSGI environ: how many long-polls the front holds (on /healthz only).
ENVIRON_WAITS_HELD = "pocketgrid.front_waits_held"
#: In the app's WSGI environ: the request came through the front, which holds waiting long-polls itself.
ENVIRON_FRONT_WAITS = "pocketgrid.front_waits"
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
                    certificate_der: bytes | None, *, front_waits: bool = False,
                    waits_held: int | None = None) -> list[tuple[str, str]]:
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
    if front_waits:
        out.append((WAITS, "1"))
    if waits_held is not None:
        out.append((WAITS_HELD, str(waits_held)))
    return out


@dataclass(frozen=True)
class WaitSpec:
    """What the app's 304 tells the front: the job, the version the client has, whose wait it is, how long."""

    job_id: str
    version: int
    user: str
    seconds: float


def wait_header(job_id: str, version: int, owner_dn: str, seconds: float) -> str:
    """``X-Pocketgrid-Front-Wait`` for a 304: the user is a digest of their DN (a counting key, nothing more)."""
    user = hashlib.sha256(owner_dn.encode("utf-8")).hexdigest()[:24]
    return f"{seconds:g} {int(version)} {user} {quote(job_id, safe='')}"


def parse_wait_header(value: str) -> WaitSpec | None:
    try:
        seconds, version, user, job = value.split(" ")
        spec = WaitSpec(unquote(job), int(version), user, float(seconds))
    except ValueError:
        return None
    return spec if math.isfinite(spec.seconds) and spec.seconds >= 0 else None


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
        front_waits = environ.get("HTTP_X_POCKETGRID_FRONT_WAITS", "") == "1"
        waits_held = environ.get("HTTP_X_POCKETGRID_FRONT_WAITS_HELD", "")
        address = environ.get("HTTP_X_POCKETGRID_FRONT_ADDRESS", "")
        certificate = environ.get("HTTP_X_POCKETGRID_FRONT_CERTIFICATE", "")
        for key in [k for k in environ if k.startswith(_ENVIRON_PREFIX)]:
            del environ[key]
        environ.pop(ENVIRON_CERTIFICATE, None)  # only this middleware puts them there
        environ.pop(ENVIRON_FRONT_WAITS, None)
        environ.pop(ENVIRON_WAITS_HELD, None)
        if given and hmac.compare_digest(given.encode("latin-1"), self._secret):
            environ["REMOTE_ADDR"] = address
            environ["wsgi.url_scheme"] = self.scheme
            if front_waits:
                environ[ENVIRON_FRONT_WAITS] = True
            if waits_held.isdigit():
                environ[ENVIRON_WAITS_HELD] = int(waits_held)
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
