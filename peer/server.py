"""A peer is two processes: the front (peer/front/) and the app (gunicorn: one worker, many threads).

``pocketgrid serve`` runs :func:`serve`: the front, an asyncio server that
owns the network side (TLS, idle and slow connections, limits) and starts the
app as its child.  The app is this module's :class:`PeerServer`: a gunicorn
master and ONE ``gthread`` worker on a private Unix socket, no TLS.

Why one app process: the LocalExecutor's scheduler, the event-log readers, the
in-process EMA agent, the election and join timers and about twenty in-memory
structures must exist once per peer (benchmarks/connection_model/INVENTORY.md).
gunicorn's ``gthread`` worker gives concurrency with threads (status
long-polls wait in the front, peer/front/waits.py; event streams and relayed
long-polls park a thread each, peer/parking.py), and the master restarts the worker if it dies;
the worker rebuilds its state from the database (see LocalExecutor recovery).
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Any

from gunicorn.app.base import BaseApplication

from pocketgrid.config import PeerConfig
from pocketgrid.logging_setup import configure_logging, gunicorn_logconfig_dict

from .front.app_process import AppSpec, die_with_parent
from .front.changes import ChangeSender
from .front.headers import TrustFront

log = logging.getLogger(__name__)


class PeerServer(BaseApplication):
    """The app: gunicorn master + one gthread worker on the front's Unix socket."""

    def __init__(self, config: PeerConfig, socket_path: str, secret: str, changes: str = "") -> None:
        self.peer_config = config
        self.socket_path = socket_path
        self.secret = secret
        self.changes = changes
        self.services = None
        super().__init__()

    def load_config(self) -> None:
        c = self.peer_config
        settings: dict[str, Any] = {
            "bind": [f"unix:{self.socket_path}"],
            "umask": 0o177,  # the socket: 0600 (and its directory is 0700)
            "workers": 1,
            "worker_class": "gthread",
            "threads": c.threads,
            "timeout": 120,
            "graceful_timeout": 20,
            "keepalive": 60,  # the front's pool closes its idle connections after 30 s: it always goes first
            "loglevel": c.log_level.lower(),
            "accesslog": None,  # the peer writes its own access log (peer/access_log.py): request IDs, no secrets
            "errorlog": "-",
            # gunicorn's own lines (start-up, worker restarts) through the peer's handler: same format and file
            "logconfig_dict": gunicorn_logconfig_dict(c.log_level),
            "proc_name": f"pocketgrid-{c.name}",
            "post_fork": _post_fork,
            "worker_exit": _worker_exit,
            "limit_request_field_size": 16384,
            # Only the front speaks to this socket, and it says who the client is in its own headers
            # (peer/front/headers.py): gunicorn must take no X-Forwarded-* header from anyone.
            "forwarded_allow_ips": "",
            "secure_scheme_headers": {},
        }
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
        services = PeerServer.current_services = app.extensions["pocketgrid"]
        if self.changes:  # tell the front when a job's status changes: it holds the waiting long-polls
            sender = ChangeSender(self.changes)
            services.home.store.listeners.append(sender)
            sender.everything()  # a new worker: whatever the front holds, ask again
        app.wsgi_app = TrustFront(app.wsgi_app, self.secret, "http" if self.peer_config.insecure_http else "https")
        return app


def _post_fork(server, worker) -> None:  # gunicorn hook, in the worker
    die_with_parent(server.pid)  # the master killed (it dies with the front): the worker goes too


def _worker_exit(server, worker) -> None:  # gunicorn hook, in the worker
    services = getattr(PeerServer, "current_services", None)
    if services is not None:
        log.info("stopping peer services")
        services.stop()


def serve(config: PeerConfig) -> int:
    """``pocketgrid serve``: the front, which starts the app and serves until SIGTERM."""
    from .front.server import run

    os.umask(0o077)  # files the peer writes (database, outputs, uploads) are its own: 0600 / 0700
    configure_logging(config.log_level, config.log_format, config.log_file or None,
                      config.log_max_bytes, config.log_backups, name=config.name)
    if config.insecure_http:
        banner = "!" * 72
        log.warning("%s", banner)
        log.warning("INSECURE: plain HTTP and NO authentication: anyone who reaches %s may do anything.", config.url)
        log.warning("For local development only. In production give --pki DIR (see `pocketgrid pki`).")
        log.warning("%s", banner)
    return run(config)


def main() -> int:
    """The app process (started by the front, peer/front/app_process.py): its spec comes on standard input."""
    spec = AppSpec.read(sys.stdin)
    die_with_parent(spec.parent)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)  # the spec's pipe is done with
    os.close(devnull)
    config = spec.peer_config()
    os.umask(0o077)
    configure_logging(config.log_level, config.log_format, config.log_file or None,
                      config.log_max_bytes, config.log_backups, name=config.name)
    PeerServer(config, spec.socket, spec.secret, spec.changes).run()
    return 0
