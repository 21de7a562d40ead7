"""The front's server: the peer's listening socket, TLS, the app as a child, start and stop.

``pocketgrid serve`` runs :func:`run`: it binds the peer's ``host:port``,
starts the app (peer/front/app_process.py) on a Unix socket in
``<state>/run`` (0700; the socket 0600) and serves until told to stop.

* **Accepting**: each accepted socket takes a place in the connection limits
  (peer/front/limits.py) or is closed at once; then its TLS handshake runs on
  the event loop, bounded by ``front_handshake_timeout``.
* **TLS**: the peer's own context (peer/tls_context.py: the site certificate,
  client certificates optional and verified against the site CA, the web
  chain by SNI).  **SIGHUP** loads the certificate, key, CA and web chain
  again into a new context for new connections; open connections (a
  download) go on with the one they started with.  A context that fails to
  load is logged and the old one kept.
* **SIGTERM / SIGINT**: stop accepting, let requests in flight finish for up to
  ``front_shutdown_seconds``, close idle connections, then stop the app
  (SIGTERM: its services stop and evict their local procs) and exit.
* **The app exits by itself** (it failed to start, or died): the front stops too
  and exits with the app's status, so a service manager restarts the whole peer.
* **kill -9 of the front**: the kernel kills the app with it (``PR_SET_PDEATHSIG``).
"""
from __future__ import annotations

import asyncio
import logging
import os
import resource
import secrets
import signal
import socket
import ssl
import tempfile
from pathlib import Path
from typing import Any

from aiohttp import web

from pocketgrid.config import PeerConfig

from ..tls_context import server_context
from .app_process import AppProcess
from .connection import ClientConnection
from .limits import ConnectionLimits, EventLog, Lease, Refusal
from .changes import bind_receiver
from .proxy import Proxy
from .waits import Waits
from .asyncio_tls import install as adjust_asyncio_tls

log = logging.getLogger("pocketgrid.front")

#: Longest path of a Unix socket (sun_path holds 108 bytes, with the final NUL).
_SUN_PATH_MAX = 107
#: File descriptors kept for the front's own use (the app's sockets, log files, the spool).
_FD_RESERVE = 64


def run_directory(config: PeerConfig) -> Path:
    """``<state>/run`` (0700): the app's socket and the front's body spool files."""
    path = config.state_path / "run"
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def socket_path(run_dir: Path) -> tuple[str, str | None]:
    """The app's socket path (the change feed's, ``changes.sock``, is beside it); a private temporary directory when the state directory's path is too long."""
    path = run_dir / "app.sock"
    if len(os.fsencode(run_dir / "changes.sock")) <= _SUN_PATH_MAX:  # the front's change feed lives beside it
        return str(path), None
    own = tempfile.mkdtemp(prefix="pocketgrid-")  # 0700
    log.info("the state directory's path is too long for a Unix socket: the app's socket is in %s", own)
    return os.path.join(own, "app.sock"), own


def listening_sockets(host: str, port: int, backlog: int) -> list[socket.socket]:
    """Bound, listening, non-blocking sockets for every address ``host`` names (as asyncio's create_server)."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    out: list[socket.socket] = []
    try:
        for family, kind, proto, _name, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            out.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(backlog)
            sock.setblocking(False)
    except OSError:
        for sock in out:
            sock.close()
        raise
    return out


def raise_file_limit(wanted: int) -> int:
    """Raise the soft file-descriptor limit towards ``wanted`` (up to the hard limit); return what it is now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


class TlsContexts:
    """The context for new connections, replaced on SIGHUP."""

    def __init__(self, config: PeerConfig) -> None:
        self.config = config
        self.current = server_context(config)

    def reload(self) -> bool:
        try:
            fresh = server_context(self.config)
        except (OSError, ssl.SSLError, ValueError) as exc:
            log.error("SIGHUP: could not load the TLS files again (%s); new connections keep the old certificate", exc)
            return False
        self.current = fresh
        log.info("SIGHUP: TLS reloaded (%s%s); new connections get it, open ones go on with the old one",
                 _describe(self.config.tls_cert), f", web chain {self.config.web_tls_cert}" if self.config.web_tls_cert else "")
        return True


def _describe(cert_path: str) -> str:
    from pocketgrid.pki import load_certificate

    try:
        cert = load_certificate(Path(cert_path))
    except (OSError, ValueError) as exc:
        return f"{cert_path}: {exc}"
    return f"{cert_path}: serial {cert.serial_number:x}, valid until {cert.not_valid_after_utc:%Y-%m-%d}"


class Front:
    def __init__(self, config: PeerConfig) -> None:
        self.config = config
        self.events = EventLog()
        self.tls = None if config.insecure_http else TlsContexts(config)
        self.limits = ConnectionLimits(config.front_max_connections, config.front_max_connections_per_address)
        self.run_dir = run_directory(config)
        self.socket, self._own_socket_dir = socket_path(self.run_dir)
        self.secret = secrets.token_urlsafe(32)
        self.changes = os.path.join(os.path.dirname(self.socket), "changes.sock")
        self.waits = Waits(config.front_max_waits, config.front_max_waits_per_user, config.front_max_waits_per_address,
                           streams_per_user=config.sse_max_streams_per_user)
        self.app = AppProcess(config, self.socket, self.secret, changes=self.changes)
        self.proxy = Proxy(app_socket=self.socket, secret=self.secret, app_connections=config.threads,
                           max_body_bytes=config.max_body_bytes, body_timeout=config.front_body_timeout,
                           spool_dir=self.run_dir, events=self.events, waits=self.waits,
                           keepalive_seconds=config.sse_keepalive_seconds)
        self.listeners: list[socket.socket] = []
        self._handshakes: set[asyncio.Task[Any]] = set()
        self._stopping = asyncio.Event()
        self.web_server: web.Server | None = None

    # ---- accepting ------------------------------------------------------------------------------
    def _protocol(self, lease: Lease) -> ClientConnection:
        assert self.web_server is not None
        return ClientConnection(self.web_server, loop=asyncio.get_running_loop(), lease=lease,
                                header_timeout=self.config.front_header_timeout, events=self.events,
                                keepalive_timeout=self.config.front_keepalive_seconds, access_log=None,
                                max_field_size=16384, lingering_time=2.0)

    async def _accept(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, address = await loop.sock_accept(listener)
            except OSError as exc:  # EMFILE and friends: the limits should have prevented it; wait a little
                log.error("front: accept failed (%s)", exc)
                await asyncio.sleep(0.1)
                continue
            host = address[0] if isinstance(address, tuple) else ""
            lease = self.limits.admit(host)
            if isinstance(lease, Refusal):
                self.events.note(lease.kind, host, lease.why)
                sock.close()
                continue
            task = loop.create_task(self._open(sock, lease))
            self._handshakes.add(task)
            task.add_done_callback(self._handshakes.discard)

    async def _open(self, sock: socket.socket, lease: Lease) -> None:
        loop = asyncio.get_running_loop()
        context = self.tls.current if self.tls is not None else None
        try:
            if context is None:
                await loop.connect_accepted_socket(lambda: self._protocol(lease), sock)
            else:
                await loop.connect_accepted_socket(lambda: self._protocol(lease), sock, ssl=context,
                                                   ssl_handshake_timeout=self.config.front_handshake_timeout)
        except (ConnectionAbortedError, TimeoutError) as exc:
            lease.release()
            sock.close()
            kind = "handshake-timeout" if "taking longer" in str(exc) or isinstance(exc, TimeoutError) else "handshake-failed"
            self.events.note(kind, lease.address)
        except (OSError, ssl.SSLError) as exc:
            lease.release()
            sock.close()
            self.events.note("handshake-failed", lease.address, str(exc)[:200])
        except asyncio.CancelledError:
            lease.release()
            sock.close()
            raise

    # ---- life ---------------------------------------------------------------------------------
    async def serve(self) -> int:
        loop = asyncio.get_running_loop()
        wanted = self.config.front_max_connections + self.config.threads + _FD_RESERVE
        have = raise_file_limit(wanted)
        if have < wanted:
            self.limits.total_limit = max(1, have - self.config.threads - _FD_RESERVE)
            log.warning("front: only %d file descriptors may be open (ulimit -n): front_max_connections lowered "
                        "from %d to %d", have, self.config.front_max_connections, self.limits.total_limit)
        try:
            self.listeners = listening_sockets(self.config.host, self.config.port, backlog=2048)
        except OSError as exc:
            log.error("cannot listen on %s:%d: %s", self.config.host, self.config.port, exc)
            return 1
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload)
        self.web_server = web.Server(self.proxy.handle, loop=loop)
        await self.proxy.start()
        stop_changes = bind_receiver(self.changes, self.waits.heard)
        try:
            await self.app.start()
        except BaseException:
            stop_changes()
            await self.proxy.close()
            raise
        accepting = [loop.create_task(self._accept(s)) for s in self.listeners]
        flushing = loop.create_task(self._flush_events())
        log.info("front listening on %s (%s); max %d connections, %s per address; the app on unix:%s",
                 self.config.url, "plain HTTP" if self.tls is None else "TLS, client certificates optional",
                 self.limits.total_limit, self.limits.per_address_limit or "no limit", self.socket)
        app_exit = loop.create_task(self.app.wait())
        stop = loop.create_task(self._stopping.wait())
        await asyncio.wait({app_exit, stop}, return_when=asyncio.FIRST_COMPLETED)
        status = 0
        if app_exit.done():
            status = app_exit.result() or 0
            log.error("the app process exited (status %s): the peer stops", status)
            status = status if status > 0 else 1
        else:
            log.info("stopping: no new connections; requests in flight get %.0f s", self.config.front_shutdown_seconds)
        for task in accepting:
            task.cancel()
        for sock in self.listeners:
            sock.close()
        for task in list(self._handshakes):
            task.cancel()
        self.web_server.pre_shutdown()  # idle keep-alive connections close now, busy ones after their request
        await self.web_server.shutdown(self.config.front_shutdown_seconds)
        stop.cancel()
        await self.proxy.close()  # its idle connections would keep the app's worker waiting for them
        if not app_exit.done():
            app_exit.cancel()
            code = await self.app.stop()
            log.info("the app process stopped (status %s)", code)
        stop_changes()
        flushing.cancel()
        self.events.flush(force=True)
        self._cleanup()
        return status

    def _reload(self) -> None:
        if self.tls is None:
            log.info("SIGHUP: nothing to reload (plain HTTP, no certificates)")
        else:
            self.tls.reload()

    async def _flush_events(self) -> None:
        while True:
            await asyncio.sleep(self.events.interval)
            self.events.flush()

    def _cleanup(self) -> None:
        if self._own_socket_dir is not None:
            for name in os.listdir(self._own_socket_dir):
                os.unlink(os.path.join(self._own_socket_dir, name))
            os.rmdir(self._own_socket_dir)


def run(config: PeerConfig) -> int:
    """Serve until SIGTERM/SIGINT (0), or until the app exits by itself (its status)."""

    async def main() -> int:
        front = Front(config)
        try:
            return await front.serve()
        finally:
            await front.app.stop()  # whatever happened, never leave the app behind

    adjust_asyncio_tls()
    if config.front_uvloop:
        import uvloop  # optional (pip install uvloop); the front runs on asyncio's own loop without it

        return uvloop.run(main())
    return asyncio.run(main())
