"""PROTOTYPE (not product code): the peer app under gunicorn with settings the product does not offer.

Used for the candidates that need another process layout than peer/server.py's one gthread worker:

* ``--workers 2``: two request processes (the once-per-peer rule is broken on purpose: every worker runs
  ``create_app`` and so its own executor, elector, readers; only /healthz and status polls are measured);
* ``--threads 1000 --worker-connections 2000``: the cost of one thread per waiting request;
* ``--worker-class gevent --worker-connections 3000 --max-parked 2000``: gunicorn's async (gevent) worker, the
  whole app monkey-patched (threads become greenlets);
* ``--bind unix:PATH --trusted-cert-header``: the backend behind a TLS-terminating front (nginx or the
  aiohttp front).  TLS is then off in gunicorn, but the app still runs in TLS mode (tokens, ACLs): the
  front passes the VERIFIED client certificate in ``X-Pg-Client-Cert`` (PEM, URL-escaped, as nginx's
  ``$ssl_client_escaped_cert``) with ``X-Pg-Client-Verify: SUCCESS``, and the client address in
  ``X-Forwarded-For``.  Trusting those headers is only sound because the Unix socket is 0600 and only the
  front can connect; the product would have to enforce that.

    python -m benchmarks.connection_model.proto_gunicorn --fixture DIR [--workers N] [--threads N]
        [--worker-connections N] [--port P | --bind unix:PATH --trusted-cert-header]
"""
from __future__ import annotations

import argparse
import os
import ssl
import sys
import threading
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from cryptography import x509

from pocketgrid.config import PeerConfig
from pocketgrid.logging_setup import configure_logging
from peer.server import PeerServer
from peer.tls_context import server_context

from .fixture import load

CERT_HEADER = "HTTP_X_PG_CLIENT_CERT"
VERIFY_HEADER = "HTTP_X_PG_CLIENT_VERIFY"


def install_trusted_cert_header() -> None:
    """Make the app read the client certificate from the front's header instead of the TLS socket."""
    from flask import request

    import broker.api
    import peer.api_peer
    import peer.auth
    from pocketgrid import client_certificate as cc
    from pocketgrid.pki import common_name, identity_of, is_host_certificate

    cache: dict[str, cc.CertIdentity] = {}
    lock = threading.Lock()

    def from_header() -> cc.CertIdentity | None:
        if request.environ.get(VERIFY_HEADER) != "SUCCESS":
            return None
        raw = request.environ.get(CERT_HEADER)
        if not raw:
            return None
        found = cache.get(raw)
        if found is None:
            pem = unquote(raw)
            cert = x509.load_pem_x509_certificate(pem.encode())
            dn, vo = identity_of(cert)
            found = cc.CertIdentity(dn, vo, is_host_certificate(cert), common_name(cert), pem)
            with lock:
                if len(cache) > 1024:
                    cache.clear()
                cache[raw] = found
        return found

    for module in (cc, peer.auth, broker.api, peer.api_peer):
        module.tls_client_certificate = from_header


class ProtoServer(PeerServer):
    def __init__(self, config: PeerConfig, args: argparse.Namespace) -> None:
        self.args = args
        super().__init__(config, socket_path="", secret="")  # not behind the product's front: see load()

    def load_config(self) -> None:
        c, a = self.peer_config, self.args
        settings: dict[str, Any] = {
            "bind": [a.bind] if a.bind else [f"127.0.0.1:{a.port}"],
            "workers": a.workers, "worker_class": a.worker_class, "threads": a.threads,
            "worker_connections": a.worker_connections, "timeout": 120, "graceful_timeout": 20,
            "keepalive": 30, "loglevel": c.log_level.lower(), "accesslog": None, "errorlog": "-",
            "proc_name": f"proto-{c.name}", "limit_request_field_size": 16384,
            "control_socket_disable": True, "umask": 0o077,
        }
        if not a.bind:
            settings.update(certfile=c.tls_cert, keyfile=c.tls_key, ca_certs=c.tls_ca, cert_reqs=ssl.CERT_OPTIONAL,
                            ssl_context=lambda _conf, _factory: server_context(c))
        for key, value in settings.items():
            if key in self.cfg.settings:
                self.cfg.set(key, value)

    def load(self):
        from peer.app import create_app

        if self.args.trusted_cert_header:
            install_trusted_cert_header()
        app = create_app(self.peer_config)  # without the product front's TrustFront: this prototype has its own
        PeerServer.current_services = app.extensions["pocketgrid"]
        if self.args.trusted_cert_header:
            from werkzeug.middleware.proxy_fix import ProxyFix

            app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1)
        return app


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fixture", type=Path, required=True)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=32)
    p.add_argument("--worker-class", default="gthread", help="gthread (the product's) or gevent")
    p.add_argument("--worker-connections", type=int, default=1000)
    p.add_argument("--port", type=int)
    p.add_argument("--bind", help="e.g. unix:/path/backend.sock (then no TLS in gunicorn)")
    p.add_argument("--trusted-cert-header", action="store_true")
    p.add_argument("--max-parked", type=int, default=0, help="max_parked_requests (0: the product default)")
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    fx = load(args.fixture)
    args.port = args.port or fx["port"]
    os.umask(0o077)
    config = PeerConfig.load(overrides={
        "name": fx["name"], "port": args.port, "state_dir": fx["state"], "pki_dir": fx["pki"],
        "admins": [fx["admin_dn"]], "agent": False, "threads": args.threads, "log_level": args.log_level,
        "public_url": f"https://127.0.0.1:{args.port}", "max_parked_requests": args.max_parked,
    })
    config.resolve_tls()
    configure_logging(config.log_level, config.log_format, None, name=config.name)
    ProtoServer(config, args).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
