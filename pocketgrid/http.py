"""HTTP plumbing every role shares: a session that keeps its own CA, and "was it ever delivered?".

The client, the EMA agent and the peer all talk HTTPS to peers verified
against the site CA, and all need to know whether a failed request reached
its server (only then is it unsafe to send it elsewhere).  Needs only
``requests``, so the thin client can import it.
"""
from __future__ import annotations

import requests
from urllib3.exceptions import ConnectTimeoutError, MaxRetryError, NameResolutionError, NewConnectionError


class Session(requests.Session):
    """A requests session whose own ``verify`` (the site CA) is not overridden by the environment.

    Plain requests lets ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE`` replace a
    session's CA bundle whenever a call does not pass ``verify`` itself
    (psf/requests#3829), so a peer signed by the site CA would fail to
    verify on any machine that sets those variables.

    ``verify``: the CA bundle to check servers against; ``cert``: a
    ``(certificate, key)`` pair to present (mutual TLS, as peers and agents do).
    """

    def __init__(self, *, verify: str | bool | None = None, cert: tuple[str, str] | None = None) -> None:
        super().__init__()
        if verify is not None:
            self.verify = verify
        if cert is not None:
            self.cert = cert

    def merge_environment_settings(self, url, proxies, stream, verify, cert):  # type: ignore[override]
        if verify is None:
            verify = self.verify
        return super().merge_environment_settings(url, proxies, stream, verify, cert)


def never_reached(exc: requests.RequestException) -> bool:
    """True if the request was not delivered (refused, unresolvable, connect timeout)."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return True
    reason = exc.args[0] if exc.args else None
    if isinstance(reason, MaxRetryError):
        reason = reason.reason
    return isinstance(reason, (NewConnectionError, ConnectTimeoutError, NameResolutionError))
