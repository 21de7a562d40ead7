"""Relaying a client's request to the job's home, and from the home to the site holding an output.

Every peer is an entry point, and a phone may reach only one of them, so
status, kill, release and output requests for a job whose home is another peer
are relayed there (not redirected), a request's small JSON body with them; the
home in turn relays an output download to the site whose piece holds it.
Bodies stream through in 256 KiB pieces, event streams
(``text/event-stream``, peer/api_events.py) piece by piece as they arrive; the
validators that make polling and resuming cheap (ETag, If-None-Match, Range,
If-Range, Last-Event-ID) pass through unchanged.
"""
from __future__ import annotations

from typing import Iterator
from urllib.parse import quote

import requests
import urllib3
from flask import Response, request

from pocketgrid.errors import BadGateway, NotFound

from .auth import identity, relay_headers
from .membership import Membership

#: Client headers passed on.  The client's ``Authorization`` and cookie are not:
#: the owner peer gets the user's proof in ``X-Pocketgrid-User-Token`` (the
#: user's token, or a delegation for it alone), over mutual TLS only, and
#: verifies it itself (peer/auth.py); our host certificate alone proves no user.
#: ``Accept-Encoding`` too (``identity`` when the client sent none): the answer's bytes are passed on as they
#: come, in the encoding the client accepts (peer/compression.py), with its ``Content-Encoding``.
_REQUEST_HEADERS = ("Accept", "Accept-Encoding", "If-None-Match", "If-Range", "Range", "Idempotency-Key",
                    "Last-Event-ID")
_RESPONSE_HEADERS = (
    "Content-Type",
    "Content-Encoding",
    "Vary",
    "Content-Length",
    "Content-Range",
    "Accept-Ranges",
    "ETag",
    "Last-Modified",
    "Cache-Control",
    "Retry-After",
    "X-Checksum-Sha256",
)


#: The peers a relayed request passed through, comma-separated (a request is relayed at most twice).
RELAYED_BY = "X-Pocketgrid-Relayed-By"


def relayed_by() -> list[str]:
    """The peers this request was relayed through (empty: it came from a client)."""
    return [h.strip() for h in request.headers.get(RELAYED_BY, "").split(",") if h.strip()]


def relay(http: requests.Session, membership: Membership, peer: str, *,
          timeout: float | tuple[float, float], path: str | None = None, second_hop: bool = False) -> Response:
    """Send this request on to ``peer``: to the same path (a job's home, by its ID), or to ``path``
    (a job's home fetching an output from the site that holds the piece: never relayed further).
    ``second_hop``: a relayed request going on to the job's manager (a replica's holder knows it)."""
    url = membership.url_of(peer)
    if url is None:
        if path is not None:
            raise BadGateway(f"site {peer} holding these outputs is not a member of this system any more", peer=peer)
        raise NotFound(f"no such job: peer {peer!r} named in the job ID is not a member of this system")
    if path is None and RELAYED_BY in request.headers and not second_hop:
        # The home's URL we know points at a peer that is not the home either: stop here.
        raise BadGateway(f"peer {peer} is unreachable: its address is out of date (relay loop)", peer=peer)
    headers = {"Accept-Encoding": "identity",  # not requests' own default: the client's bytes are passed on
               **{h: request.headers[h] for h in _REQUEST_HEADERS if h in request.headers}}
    headers[RELAYED_BY] = ",".join([*relayed_by(), membership.name]) if second_hop else membership.name
    who = identity(required=False)
    if who is not None:
        headers.update(relay_headers(who, peer))
    target = quote(path if path is not None else request.path)  # re-encode: '#', '?', '%' in a file name
    if path is None and request.query_string:
        target += "?" + request.query_string.decode("latin-1")
    data = request.get_data() or None  # a small JSON body (e.g. which inputs to release), bounded by MAX_CONTENT_LENGTH
    if data is not None and request.content_type:
        headers["Content-Type"] = request.content_type
    try:
        upstream = http.request(
            request.method,
            f"{url}{target}",
            headers=headers,
            data=data,
            stream=True,
            timeout=timeout,
            allow_redirects=False,
        )
    except requests.RequestException as exc:
        raise BadGateway(
            f"peer {peer} is unreachable: " + ("it holds these outputs" if path is not None else "the job's home") +
            f" cannot be reached now ({type(exc).__name__}); retry later",
            peer=peer,
            unreachable=True,
        ) from None

    def body() -> Iterator[bytes]:
        try:
            yield from upstream.raw.stream(256 * 1024, decode_content=False)
        finally:
            upstream.close()

    def events() -> Iterator[bytes]:
        """Whatever has arrived, at once (read1): an event must not wait for 256 KiB to fill."""
        try:
            while True:
                data = upstream.raw.read1(64 * 1024, decode_content=False)
                if not data:
                    return
                yield data
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError):
            return  # the owner went away: end the stream; the browser reconnects with Last-Event-ID
        finally:
            upstream.close()

    streaming = upstream.headers.get("Content-Type", "").startswith("text/event-stream")
    out = Response(events() if streaming else body(), status=upstream.status_code, direct_passthrough=True)
    if streaming:
        out.headers["X-Accel-Buffering"] = "no"
    for h in _RESPONSE_HEADERS:
        if h in upstream.headers:
            out.headers[h] = upstream.headers[h]
    return out
