"""The front (peer/front/): slow and half-open clients, connection limits, the app's trust, SIGHUP, its lifetime.

Real peers on loopback.  The attacks of issue 10 §2 (slow bodies, half-sent ClientHellos) that took
the peer off the network with ~32 sockets are held by the front's event loop: the app never sees
them, and /healthz keeps answering.  Deadlines are short here (3 s) so the tests stay fast; the
assertions are about what a client notices (an answer, a close), never about how long it took.
"""
from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import signal
import socket
import ssl

import psutil
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from pocketgrid import pki
from tests.conftest import host_session, start_secure, user_session, wait_until

pytestmark = pytest.mark.integration

SHORT = {"POCKETGRID_FRONT_BODY_TIMEOUT": "3", "POCKETGRID_FRONT_HANDSHAKE_TIMEOUT": "3",
         "POCKETGRID_FRONT_HEADER_TIMEOUT": "3", "POCKETGRID_MAX_BODY_BYTES": "100000"}
#: The first 11 bytes of a TLS ClientHello: a record header and the start of the handshake message.
HALF_HELLO = bytes.fromhex("16030100f4010000f00303")


@pytest.fixture(scope="module")
def solo(tmp_path_factory, site_pki):
    p = start_secure(tmp_path_factory.mktemp("front"), site_pki, "front-solo", env=SHORT)
    yield p
    p.stop()


def tls_context(site_pki) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=site_pki.ca)


def healthz(peer, site_pki, source: str = "127.0.0.1") -> int:
    """A new connection (from ``source``) asks /healthz: the status."""
    conn = http.client.HTTPSConnection("127.0.0.1", peer.port, timeout=10, context=tls_context(site_pki),
                                       source_address=(source, 0))
    try:
        conn.request("GET", "/healthz")
        return conn.getresponse().status
    finally:
        conn.close()


def status_of(sock: socket.socket) -> int | None:
    """The status of the answer on ``sock``; None if the peer closed it without one."""
    data = b""
    try:
        while b"\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    except (ConnectionResetError, ssl.SSLError):
        pass
    return int(data.split()[1]) if data.startswith(b"HTTP/1.1 ") else None


def access_lines(peer, needle: str) -> list[str]:
    return [line for line in peer.log_tail(10_000_000).splitlines() if "pocketgrid.access" in line and needle in line]


def test_slow_bodies_get_408_never_reach_the_app_and_healthz_keeps_answering(solo, site_pki):
    ctx = tls_context(site_pki)
    slow = []
    try:
        for _ in range(100):  # the attack of issue 10: Content-Length 1000, 3 bytes, then silence
            s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", solo.port), timeout=30),
                                server_hostname="127.0.0.1")
            s.sendall(b"POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 1000\r\n\r\n{\"n")
            slow.append(s)
        # All 100 are open and stalled: a phone still gets through, on new connections.
        assert [healthz(solo, site_pki) for _ in range(5)] == [200] * 5
        assert [status_of(s) for s in slow] == [408] * 100
    finally:
        for s in slow:
            s.close()
    assert not access_lines(solo, "POST /api/v1/auth/login")  # not one of them reached the app
    assert "body stalled for front_body_timeout" in solo.log_tail(100_000)


def test_half_sent_client_hellos_do_not_stall_the_peer_and_are_closed(solo, site_pki):
    raw = []
    try:
        for _ in range(100):
            s = socket.create_connection(("127.0.0.1", solo.port), timeout=30)
            s.sendall(HALF_HELLO)
            raw.append(s)
        assert [healthz(solo, site_pki) for _ in range(5)] == [200] * 5
        assert [status_of(s) for s in raw] == [None] * 100  # closed by the handshake deadline, no answer
    finally:
        for s in raw:
            s.close()


def test_a_request_head_that_never_ends_is_closed_and_never_reaches_the_app(solo, site_pki):
    with tls_context(site_pki).wrap_socket(socket.create_connection(("127.0.0.1", solo.port), timeout=30),
                                           server_hostname="127.0.0.1") as s:
        s.sendall(b"GET /api/v1/jobs?half-a-head HTTP/1.1\r\nHost: x\r\n")
        assert status_of(s) is None
    assert not access_lines(solo, "half-a-head")


def test_bodies_over_the_limit_are_413_also_when_chunked_and_small_chunked_bodies_arrive_whole(solo, site_pki):
    with tls_context(site_pki).wrap_socket(socket.create_connection(("127.0.0.1", solo.port), timeout=30),
                                           server_hostname="127.0.0.1") as s:
        s.sendall(b"POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n")
        chunk = b"x" * 50_000
        try:
            for _ in range(3):  # 150000 bytes: over max_body_bytes (100000) in the third chunk
                s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            pass
        assert status_of(s) == 413
    # A small chunked body reaches the app whole (with a Content-Length): it reads and judges the JSON.
    body = json.dumps({"nonce": "no-such-nonce", "certificate": "x", "signature": "y"}).encode()
    r = requests.post(f"{solo.url}/api/v1/auth/login", data=iter([body[:10], body[10:]]), verify=site_pki.ca,
                      headers={"Content-Type": "application/json"}, timeout=10)
    assert r.status_code == 401 and "challenge" in r.json()["error"], r.text


def test_a_forged_front_header_from_outside_is_ignored(solo, site_pki):
    der = pki.load_certificate(site_pki.host("front-solo").cert_path).public_bytes(Encoding.DER)
    forged = {"X-Pocketgrid-Front": "a-guess", "X-Pocketgrid-Front-Certificate": base64.b64encode(der).decode(),
              "X-Pocketgrid-Front-Address": "10.9.8.7"}
    # Through the front: the client's copies are dropped; no certificate, no host powers.
    for headers in (forged, {k.replace("Front-", "Front_"): v for k, v in forged.items()}):
        r = requests.get(f"{solo.url}/api/v1/peer/security", headers=headers, verify=site_pki.ca, timeout=10)
        assert r.status_code == 401, r.text
    # Straight to the app's socket (someone on the machine): without the front's secret, ignored too.
    sock_path = solo.state / "run" / "app.sock"
    assert oct(sock_path.stat().st_mode & 0o777) == "0o600"
    assert oct((solo.state / "run").stat().st_mode & 0o777) == "0o700"
    for secret in ("a-guess", ""):
        conn = http.client.HTTPConnection("localhost", timeout=10)
        conn.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.sock.connect(str(sock_path))
        conn.request("GET", "/api/v1/peer/security", headers={**forged, "X-Pocketgrid-Front": secret})
        response = conn.getresponse()
        assert response.status == 401, response.read()
        conn.close()
    # The real thing still works: a host certificate presented in the TLS handshake.
    assert host_session(site_pki, "front-solo").get(f"{solo.url}/api/v1/peer/security", timeout=10).status_code == 200
    # And the app saw the client's real address, never the forged one.
    assert not access_lines(solo, "10.9.8.7") and access_lines(solo, "127.0.0.1 ")


def test_connections_beyond_the_per_address_limit_are_closed_and_another_address_gets_in(tmp_path, site_pki):
    p = start_secure(tmp_path, site_pki, "front-limited", env={
        "POCKETGRID_FRONT_MAX_CONNECTIONS_PER_ADDRESS": "20", "POCKETGRID_FRONT_HANDSHAKE_TIMEOUT": "120",
        "POCKETGRID_FRONT_HEADER_TIMEOUT": "120"})
    held = []
    try:
        def twenty_held_and_the_next_closed() -> bool:
            """20 connections from 127.0.0.1 held open, handshakes not even started, and the 21st closed before
            any TLS.  The start-up checks' connections may still be counted for a moment (the front releases a
            connection when it sees it closed): a held one refused then is replaced."""
            held[:] = [c for c in held if _still_open(c) or c.close()]
            while len(held) < 20:
                held.append(socket.create_connection(("127.0.0.1", p.port), timeout=30))
            return not _ok(lambda: healthz(p, site_pki) == 200) and all(_still_open(c) for c in held)

        wait_until(twenty_held_and_the_next_closed, 30, 0.2, what="a 21st connection from 127.0.0.1 to be closed")
        # ... while another address gets in.
        assert healthz(p, site_pki, source="127.0.0.2") == 200
    finally:
        for s in held:
            s.close()
    wait_until(lambda: _ok(lambda: healthz(p, site_pki) == 200), what="127.0.0.1 to be let in again")
    assert "front_max_connections_per_address reached (from 127.0.0.1)" in p.log_tail(100_000)
    p.stop()


def _still_open(sock: socket.socket) -> bool:
    """Not closed by the other side (a connection the front refused reads as closed at once)."""
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        sock.settimeout(30)


def _ok(check) -> bool:
    try:
        return check()
    except OSError:
        return False


def _served_serial(port: int, ca: str) -> int:
    ctx = ssl.create_default_context(cafile=ca)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)).serial_number


def test_sighup_serves_a_renewed_certificate_to_new_connections_while_a_download_goes_on(tmp_path, site_pki):
    p = start_secure(tmp_path, site_pki, "front-renewed")
    data = os.urandom(24 * 1024 * 1024)
    p.publish.mkdir(parents=True, exist_ok=True)
    (p.publish / "big.bin").write_bytes(data)
    before = _served_serial(p.port, site_pki.ca)
    alice = user_session(p, site_pki, "alice")
    download = alice.get(f"{p.url}/api/v1/files/big.bin", stream=True, timeout=30)
    assert download.status_code == 200
    digest = hashlib.sha256()
    stream = download.iter_content(256 * 1024)
    for _ in range(4):  # the first MiB, then the certificate is renewed under it
        digest.update(next(stream))
    renewed = pki.issue_host(site_pki.root, "front-renewed")
    assert pki.load_certificate(renewed.cert_path).serial_number != before
    os.kill(p.proc.pid, signal.SIGHUP)
    wait_until(lambda: _served_serial(p.port, site_pki.ca) == pki.load_certificate(renewed.cert_path).serial_number,
               what="a new connection to get the renewed certificate")
    for chunk in stream:  # the download started before goes on, to the last byte
        digest.update(chunk)
    assert digest.hexdigest() == hashlib.sha256(data).hexdigest()
    # Mutual TLS with the renewed host certificate works on new connections.
    assert host_session(site_pki, "front-renewed").get(f"{p.url}/api/v1/peer/security", timeout=10).status_code == 200
    assert p.proc.poll() is None and "SIGHUP: TLS reloaded" in p.log_tail(100_000)
    p.stop()


def _alive(pids: list[int]) -> list[int]:
    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.NoSuchProcess:
            pass
    return out


def test_kill_9_of_the_front_takes_the_app_down(tmp_path, site_pki):
    p = start_secure(tmp_path, site_pki, "front-killed")
    app = [c.pid for c in psutil.Process(p.proc.pid).children(recursive=True)]
    assert len(app) >= 2  # gunicorn's master and its worker
    os.kill(p.proc.pid, signal.SIGKILL)  # the front alone, not its process group
    p.proc.wait(10)
    wait_until(lambda: not _alive(app), what="the app's processes to die with the front")
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"{p.url}/healthz", verify=site_pki.ca, timeout=5)


def test_sigterm_lets_a_download_in_flight_finish_and_takes_no_new_connection(tmp_path, site_pki):
    p = start_secure(tmp_path, site_pki, "front-stopped")
    data = os.urandom(16 * 1024 * 1024)
    p.publish.mkdir(parents=True, exist_ok=True)
    (p.publish / "big.bin").write_bytes(data)
    alice = user_session(p, site_pki, "alice")
    download = alice.get(f"{p.url}/api/v1/files/big.bin", stream=True, timeout=30)
    stream = download.iter_content(256 * 1024)
    digest = hashlib.sha256(next(stream))
    p.proc.send_signal(signal.SIGTERM)
    wait_until(lambda: not _ok(lambda: healthz(p, site_pki) == 200), what="the front to stop accepting")
    for chunk in stream:
        digest.update(chunk)
    assert digest.hexdigest() == hashlib.sha256(data).hexdigest()
    assert p.proc.wait(60) == 0
    assert "the app process stopped (status 0)" in p.log_tail(100_000)
