"""The peer's TLS server context: the site certificate, and optionally a web-facing chain.

Peers and agents know the site CA; phones and desktop browsers trust public
CAs only.  An operator may therefore give the peer a second certificate
chain (``web_tls_cert``/``web_tls_key``, e.g. from an ACME CA) for the names
people type into a browser.  Which certificate a connection gets is decided
by the name the client asks for in the TLS handshake (SNI):

* no SNI (a connection to an IP address, as peers on loopback make it) or
  the host name of this peer's own URL (``public_url``, what the other
  peers and agents use): the **site certificate**;
* any other name (``grid.example.org``): the **web certificate**.

Client certificates are checked against the site CA on both (mutual TLS
between peers, certificate login from a desktop browser), so nothing about
authentication changes.  The context is built once per worker process and
reused for every connection (gunicorn's default factory would build it per
connection).
"""
from __future__ import annotations

import logging
import ssl
from typing import Any, Callable
from urllib.parse import urlsplit

from pocketgrid.config import PeerConfig

log = logging.getLogger(__name__)


def site_names(config: PeerConfig) -> set[str]:
    """Server names that get the site certificate (besides connections without SNI)."""
    host = urlsplit(config.url).hostname
    return {host.lower()} if host else set()


def web_context(config: PeerConfig, template: ssl.SSLContext) -> ssl.SSLContext:
    """A server context presenting the web chain, verifying client certificates like ``template``."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=config.tls_ca)
    ctx.load_cert_chain(certfile=config.web_tls_cert, keyfile=config.web_tls_key)
    ctx.verify_mode = template.verify_mode
    return ctx


def make_hook(config: PeerConfig) -> Callable[[Any, Callable[[], ssl.SSLContext]], ssl.SSLContext]:
    """gunicorn's ``ssl_context`` server hook for this peer."""
    built: list[ssl.SSLContext] = []

    def ssl_context(_conf: Any, default_factory: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
        if built:
            return built[0]
        ctx = default_factory()
        if config.web_tls_cert:
            web = web_context(config, ctx)
            own = site_names(config)

            def choose(sslobj: ssl.SSLObject, server_name: str | None, _ctx: ssl.SSLContext) -> None:
                if server_name and server_name.lower() not in own:
                    sslobj.context = web

            ctx.sni_callback = choose
            log.info("web-facing certificate %s for names other than %s", config.web_tls_cert,
                     ", ".join(sorted(own)) or "(none)")
        built.append(ctx)
        return ctx

    return ssl_context
