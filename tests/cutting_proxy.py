"""A TCP proxy on loopback that cuts connections after N bytes: a flaky link for tests.

``CuttingProxy(host, port, cut_every_bytes=N)`` listens on 127.0.0.1 (a free
port), forwards every accepted connection to ``host:port`` in both directions
and, once a connection has forwarded ``N`` bytes in either direction (each
direction counted on its own, per connection), forwards exactly up to the
N-th byte and then closes both sockets of that connection: the client sees
the link drop mid-transfer, as on a phone that loses its signal. New
connections start counting from zero, so a client that reconnects makes
progress again. ``cut_every_bytes=None`` never cuts.

It is plain TCP (stdlib sockets, one thread per direction), so TLS passes
through untouched and certificate checks still see the peer behind it.

Counters for assertions: ``cuts`` (connections cut so far), ``connections``
(accepted so far), ``bytes_to_target`` / ``bytes_to_client`` (bytes forwarded
in each direction over all connections).
"""
from __future__ import annotations

import socket
import threading
from types import TracebackType

_CHUNK = 64 * 1024


class CuttingProxy:
    """See the module docstring. Use as a context manager or ``start()`` / ``stop()``."""

    def __init__(self, target_host: str, target_port: int, cut_every_bytes: int | None = None) -> None:
        if cut_every_bytes is not None and cut_every_bytes < 1:
            raise ValueError("cut_every_bytes must be a positive number of bytes or None")
        self.target_host = target_host
        self.target_port = target_port
        self._cut = cut_every_bytes
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._open: set[socket.socket] = set()
        self.port: int = 0
        self.cuts = 0
        self.connections = 0
        self.bytes_to_target = 0
        self.bytes_to_client = 0

    # -- public API -------------------------------------------------------

    def url_for(self, scheme: str = "https") -> str:
        """The base URL a client uses to reach the target through the proxy."""
        if not self.port:
            raise RuntimeError("the proxy is not started")
        return f"{scheme}://127.0.0.1:{self.port}"

    def set_cut(self, cut_every_bytes: int | None) -> None:
        """Change the limit (``None``: never cut). It applies at once, also to open connections."""
        if cut_every_bytes is not None and cut_every_bytes < 1:
            raise ValueError("cut_every_bytes must be a positive number of bytes or None")
        with self._lock:
            self._cut = cut_every_bytes

    def start(self) -> "CuttingProxy":
        if self._listener is not None:
            raise RuntimeError("the proxy is already started")
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        listener.settimeout(0.2)  # lets the accept loop notice stop()
        self._listener = listener
        self.port = listener.getsockname()[1]
        self._stopping.clear()
        self._accept_thread = threading.Thread(target=self._accept_loop, name=f"cutting-proxy-{self.port}",
                                               daemon=True)
        self._accept_thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting and close every open connection."""
        self._stopping.set()
        if self._accept_thread is not None:
            self._accept_thread.join(timeout=5)
            self._accept_thread = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with self._lock:
            open_sockets = list(self._open)
            self._open.clear()
        for s in open_sockets:
            _close(s)

    def __enter__(self) -> "CuttingProxy":
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- internals --------------------------------------------------------

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            client.settimeout(None)
            try:
                upstream = socket.create_connection((self.target_host, self.target_port), timeout=10)
                upstream.settimeout(None)
            except OSError:
                _close(client)
                continue
            _Connection(self, client, upstream).start()

    def _register(self, *socks: socket.socket) -> None:
        with self._lock:
            self.connections += 1
            self._open.update(socks)

    def _unregister(self, *socks: socket.socket) -> None:
        with self._lock:
            self._open.difference_update(socks)

    def _allowance(self, already: int) -> int | None:
        """How many more bytes a direction that forwarded ``already`` may send (None: no limit)."""
        with self._lock:
            cut = self._cut
        if cut is None:
            return None
        return max(cut - already, 0)

    def _count(self, to_target: bool, n: int) -> None:
        with self._lock:
            if to_target:
                self.bytes_to_target += n
            else:
                self.bytes_to_client += n

    def _count_cut(self) -> None:
        with self._lock:
            self.cuts += 1


class _Connection:
    """One proxied connection: two pumps sharing a close-once."""

    def __init__(self, proxy: CuttingProxy, client: socket.socket, upstream: socket.socket) -> None:
        self.proxy = proxy
        self.client = client
        self.upstream = upstream
        self._closed = False
        self._pumps_done = 0
        self._lock = threading.Lock()

    def start(self) -> None:
        self.proxy._register(self.client, self.upstream)
        for src, dst, to_target in ((self.client, self.upstream, True), (self.upstream, self.client, False)):
            threading.Thread(target=self._pump, args=(src, dst, to_target), daemon=True,
                             name=f"cutting-proxy-pump-{'up' if to_target else 'down'}").start()

    def _close(self, cut: bool) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if cut:
            self.proxy._count_cut()
        _close(self.client)
        _close(self.upstream)
        self.proxy._unregister(self.client, self.upstream)

    def _pump_done(self) -> None:
        with self._lock:
            self._pumps_done += 1
            both = self._pumps_done == 2
        if both:
            self._close(cut=False)

    def _pump(self, src: socket.socket, dst: socket.socket, to_target: bool) -> None:
        forwarded = 0
        try:
            while True:
                allowance = self.proxy._allowance(forwarded)
                if allowance == 0:
                    self._close(cut=True)
                    return
                data = src.recv(_CHUNK if allowance is None else min(_CHUNK, allowance))
                if not data:
                    # An orderly end from one side: pass the half-close on, keep the other direction.
                    try:
                        dst.shutdown(socket.SHUT_WR)
                    except OSError:
                        self._close(cut=False)
                    self._pump_done()
                    return
                allowance = self.proxy._allowance(forwarded)  # set_cut() may have run during recv
                if allowance is not None and len(data) > allowance:
                    data = data[:allowance]
                if data:
                    dst.sendall(data)
                    forwarded += len(data)
                    self.proxy._count(to_target, len(data))
        except OSError:
            self._close(cut=False)


def _close(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    s.close()
