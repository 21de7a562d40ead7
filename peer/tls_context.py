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
authentication changes.  A presented certificate must verify, or the
handshake fails; presenting none is allowed (phones log in with tokens).

The front (peer/front/server.py) builds one context at start and a new one on
SIGHUP (renewed certificates): new connections get the new context, open ones
keep the one they were made with.
"""
from __future__ import annotations

import logging
import ssl
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


def server_context(config: PeerConfig) -> ssl.SSLContext:
    """The peer's TLS server context: the site certificate, client certificates optional but verified, SNI."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=config.tls_ca)
    ctx.load_cert_chain(certfile=config.tls_cert, keyfile=config.tls_key)
    # CERT_OPTIONAL: peers and agents present host certificates (mutual TLS); phones and browsers present
    # none and log in with a bearer token instead (docs/security.md).
    ctx.verify_mode = ssl.CERT_OPTIONAL
    if config.web_tls_cert:
        web = web_context(config, ctx)
        own = site_names(config)

        def choose(sslobj: ssl.SSLObject, server_name: str | None, _ctx: ssl.SSLContext) -> None:
            if server_name and server_name.lower() not in own:
                sslobj.context = web

        ctx.sni_callback = choose
        log.info("web-facing certificate %s for names other than %s", config.web_tls_cert,
                 ", ".join(sorted(own)) or "(none)")
    return ctx
