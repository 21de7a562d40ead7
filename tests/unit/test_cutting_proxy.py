"""The cutting proxy in front of a real socket echo server."""
from __future__ import annotations

import socket
import threading

import pytest

from pocketgrid.loopback import wait_until
from tests.cutting_proxy import CuttingProxy


class EchoServer:
    """A TCP echo server on 127.0.0.1 (one thread per connection) that keeps what each connection sent.

    A connection whose first bytes are ``TALK`` is answered with 10000 bytes of ``t`` instead
    (to test the server-to-client direction)."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.received: list[bytearray] = []
        self.closed = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _serve(self, conn: socket.socket, got: bytearray) -> None:
        with conn:
            try:
                while data := conn.recv(65536):
                    got.extend(data)
                    if got.startswith(b"TALK"):
                        conn.sendall(b"t" * 10_000)
                    else:
                        conn.sendall(data)
            except OSError:
                pass
        with self._lock:
            self.closed += 1

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            got = bytearray()
            with self._lock:
                self.received.append(got)
            threading.Thread(target=self._serve, args=(conn, got), daemon=True).start()

    def close(self) -> None:
        self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self._thread.join(timeout=5)


@pytest.fixture()
def echo():
    server = EchoServer()
    yield server
    server.close()


def _recv_until_closed(sock: socket.socket) -> bytes:
    sock.settimeout(10)
    chunks = []
    try:
        while data := sock.recv(65536):
            chunks.append(data)
    except ConnectionResetError:
        pass
    return b"".join(chunks)


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    sock.settimeout(10)
    buf = b""
    while len(buf) < n:
        data = sock.recv(n - len(buf))
        assert data, f"connection closed after {len(buf)} of {n} bytes"
        buf += data
    return buf


def test_forwards_both_directions_without_a_limit(echo):
    payload = bytes(range(256)) * 4096  # 1 MiB
    with CuttingProxy("127.0.0.1", echo.port) as proxy:
        with socket.create_connection(("127.0.0.1", proxy.port)) as s:
            sender = threading.Thread(target=s.sendall, args=(payload,))
            sender.start()
            assert _recv_exactly(s, len(payload)) == payload
            sender.join()
        assert proxy.cuts == 0
        assert proxy.connections == 1
        assert proxy.bytes_to_target == len(payload)
        assert proxy.bytes_to_client == len(payload)
        assert proxy.url_for("https") == f"https://127.0.0.1:{proxy.port}"


def test_cuts_after_n_bytes_and_a_new_connection_counts_from_zero(echo):
    payload = b"x" * 10_000
    with CuttingProxy("127.0.0.1", echo.port, cut_every_bytes=1000) as proxy:
        with socket.create_connection(("127.0.0.1", proxy.port)) as s:
            try:
                s.sendall(payload)
            except OSError:
                pass  # the cut may come while we are still sending
            received = _recv_until_closed(s)
        # The link dropped: the client got at most what the server echoed before the cut...
        assert len(received) <= 1000
        # ... and the server got exactly the first 1000 bytes, then its connection closed.
        wait_until(lambda: echo.closed == 1, timeout=5, what="the server side to be closed")
        assert bytes(echo.received[0]) == payload[:1000]
        assert proxy.cuts == 1
        assert proxy.bytes_to_target == 1000

        # A second connection gets its own 1000 bytes.
        with socket.create_connection(("127.0.0.1", proxy.port)) as s:
            s.sendall(b"y" * 400)
            assert _recv_exactly(s, 400) == b"y" * 400
        assert proxy.cuts == 1
        assert proxy.connections == 2


def test_cuts_the_server_to_client_direction_too(echo):
    with CuttingProxy("127.0.0.1", echo.port, cut_every_bytes=3000) as proxy:
        with socket.create_connection(("127.0.0.1", proxy.port)) as s:
            s.sendall(b"TALK")
            received = _recv_until_closed(s)
        assert received == b"t" * 3000
        wait_until(lambda: proxy.cuts == 1, timeout=5, what="the cut to be counted")
        assert proxy.bytes_to_client == 3000


def test_set_cut_changes_the_limit_at_once(echo):
    with CuttingProxy("127.0.0.1", echo.port) as proxy:
        with socket.create_connection(("127.0.0.1", proxy.port)) as s:
            s.sendall(b"a" * 500)
            assert _recv_exactly(s, 500) == b"a" * 500
            proxy.set_cut(600)
            s.sendall(b"b" * 500)
            _recv_until_closed(s)
        wait_until(lambda: echo.closed == 1, timeout=5, what="the server side to be closed")
        assert bytes(echo.received[0]) == b"a" * 500 + b"b" * 100
        assert proxy.cuts == 1
        proxy.set_cut(None)
        with socket.create_connection(("127.0.0.1", proxy.port)) as s:
            s.sendall(b"c" * 5000)
            assert _recv_exactly(s, 5000) == b"c" * 5000
        assert proxy.cuts == 1


def test_stop_closes_open_connections(echo):
    proxy = CuttingProxy("127.0.0.1", echo.port).start()
    s = socket.create_connection(("127.0.0.1", proxy.port))
    s.sendall(b"hello")
    assert _recv_exactly(s, 5) == b"hello"
    proxy.stop()
    assert _recv_until_closed(s) == b""
    s.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", proxy.port), timeout=2).close()


def test_rejects_a_nonsense_limit():
    with pytest.raises(ValueError):
        CuttingProxy("127.0.0.1", 1, cut_every_bytes=0)
