"""Running a peer under gunicorn: one worker process, many threads.

Why one process: the LocalExecutor's scheduler, the event-log readers, the
in-process EMA agent and the join/election timers must exist once per peer.
gunicorn's ``gthread`` worker gives concurrency with threads (long-polls park
a thread each), and the master restarts the worker if it dies; the worker
rebuilds its state from the database (see LocalExecutor recovery).
"""
from __future__ import annotations

import logging
import os
import signal
import ssl
from typing import Any

from gunicorn.app.base import BaseApplication

from pocketgrid.config import PeerConfig
from pocketgrid.logging_setup import configure_logging, gunicorn_logconfig_dict

from .tls_context import make_hook

log = logging.getLogger(__name__)


class PeerServer(BaseApplication):
    def __init__(self, config: PeerConfig) -> None:
        self.peer_config = config
        self.services = None
        super().__init__()

    def load_config(self) -> None:
        c = self.peer_config
        settings: dict[str, Any] = {
            "bind": [f"{c.host}:{c.port}"],
            "workers": 1,
            "worker_class": "gthread",
            "threads": c.threads,
            "timeout": 120,
            "graceful_timeout": 20,
            "keepalive": 30,
            "loglevel": c.log_level.lower(),
            "accesslog": None,  # the peer writes its own access log (peer/access_log.py): request IDs, no secrets
            "errorlog": "-",
            # gunicorn's own lines (start-up, worker restarts) through the peer's handler: same format and file
            "logconfig_dict": gunicorn_logconfig_dict(c.log_level),
            "proc_name": f"pocketgrid-{c.name}",
            "worker_exit": _worker_exit,
            "limit_request_field_size": 16384,
        }
        if not c.insecure_http:
            # TLS with the site CA.  CERT_OPTIONAL: peers and agents present
            # host certificates (mutual TLS); phones and browsers present none
            # and log in with a bearer token instead (docs/security.md).  A
            # certificate that is presented must verify, or the handshake fails.
            settings.update(certfile=c.tls_cert, keyfile=c.tls_key, ca_certs=c.tls_ca, cert_reqs=ssl.CERT_OPTIONAL,
                            ssl_context=make_hook(c))  # one context per worker; the web chain by SNI
        if "control_socket_disable" in self.cfg.settings:
            # gunicorn >= 24 opens a control socket at one path per account
            # ($HOME/.gunicorn/gunicorn.ctl): two peers of one account would
            # share it.  pocketgrid never uses it (signals and the API do), so off.
            settings["control_socket_disable"] = True
        for key, value in settings.items():
            self.cfg.set(key, value)

    def load(self):
        """Runs in the worker process: build the app (and its background work) there."""
        from .app import create_app

        app = create_app(self.peer_config)
        PeerServer.current_services = app.extensions["pocketgrid"]
        return app


def _worker_exit(server, worker) -> None:  # gunicorn hook, in the worker
    services = getattr(PeerServer, "current_services", None)
    if services is not None:
        log.info("stopping peer services")
        services.stop()


def serve(config: PeerConfig) -> int:
    os.umask(0o077)  # files the peer writes (database, outputs, uploads) are its own: 0600 / 0700
    configure_logging(config.log_level, config.log_format, config.log_file or None,
                      config.log_max_bytes, config.log_backups, name=config.name)
    if config.insecure_http:
        banner = "!" * 72
        log.warning("%s", banner)
        log.warning("INSECURE: plain HTTP and NO authentication: anyone who reaches %s may do anything.", config.url)
        log.warning("For local development only. In production give --pki DIR (see `pocketgrid pki`).")
        log.warning("%s", banner)
    PeerServer(config).run()
    return 0
