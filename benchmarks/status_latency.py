"""Status poll latency and the bytes on the wire of an unchanged poll.

One real peer on loopback runs a job of 10 inputs to completion (executable
``#!/bin/sh\\nexit 0``).  Then, on ONE keep-alive ``requests.Session`` (the
client library's own session, with its retry adapter):

* ``full``: N sequential ``GET /api/v1/jobs/<id>`` answered 200 with the JSON status;
* ``not_modified``: N sequential requests with ``If-None-Match: <ETag>``, answered 304.

Each request is timed from the call to the parsed response (``perf_counter``).

Then the size on the wire of an unchanged poll: the exact request the client
library sends for ``Client.status(job_id, etag=...)`` is captured by a local
socket standing in for the peer, replayed byte for byte (Host rewritten to
the real peer) over a raw socket to the peer, and the HTTP bytes sent and
received for the 304 are counted (first request on a new connection, and a
second one on the same connection).  TCP/IP headers are not included.

Targets: p50 under 5 ms; unchanged poll (request + response) under 300 bytes.

``--tls``: the peer serves TLS (a fresh site PKI), the client logs in by
challenge-response and every poll carries its bearer token, as in
production.  The wire count then also gives the TLS bytes (records, and the
handshake for the first request), counted through a ``MemoryBIO``.

    python -m benchmarks.status_latency [--requests 500] [--tls]
"""
from __future__ import annotations

import argparse
import socket
import ssl
import threading
import time
from typing import Any

import requests

from mobile_client import Client
from pocketgrid import pki

from .harness import (NOOP_SH, NOOP_SUB, Cluster, TlsPeer, common_arguments, emit, summarize_ms, wait_job,
                      write_random_file)

TARGET_P50_MS = 5.0
TARGET_WIRE_BYTES = 300
#: Requests slower than this are counted separately: see "stalls" in benchmarks/README.md.
STALL_MS = 500.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.status_latency", description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=500, help="timed requests per variant (default 500)")
    p.add_argument("--warmup", type=int, default=20, help="untimed requests first (default 20)")
    p.add_argument("--inputs", type=int, default=10, help="inputs of the job (default 10)")
    p.add_argument("--job-timeout", type=float, default=120.0)
    p.add_argument("--tls", action="store_true", help="TLS peer and a logged-in client (production setup)")
    common_arguments(p)
    return p.parse_args(argv)


# ---- what the client sends ----------------------------------------------------
def capture_client_request(job_id: str, etag: str, timeout: float = 10.0, token: str | None = None) -> bytes:
    """The exact bytes ``Client.status(job_id, etag=etag)`` sends, caught by a local listener."""
    captured: dict[str, bytes] = {}
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    srv.settimeout(timeout)
    port = srv.getsockname()[1]

    def serve() -> None:
        try:
            conn, _ = srv.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(timeout)
            data = b""
            deadline = time.monotonic() + timeout
            while b"\r\n\r\n" not in data and time.monotonic() < deadline:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
            captured["request"] = data
            conn.sendall(b"HTTP/1.1 304 Not Modified\r\nETag: " + etag.encode() + b"\r\nContent-Length: 0\r\n\r\n")

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        Client(f"http://127.0.0.1:{port}", retries=0, timeout=timeout, token=token).status(job_id, etag=etag)
    finally:
        t.join(timeout)
        srv.close()
    if "request" not in captured:
        raise RuntimeError("could not capture the client's request")
    return captured["request"]


def rewrite_host(raw: bytes, host: str) -> bytes:
    head, sep, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    out = [(b"Host: " + host.encode()) if ln.lower().startswith(b"host:") else ln for ln in lines]
    return b"\r\n".join(out) + sep + body


def read_response(sock: socket.socket, deadline: float) -> bytes:
    """One HTTP response with no body or a Content-Length body."""
    data = b""
    while b"\r\n\r\n" not in data:
        if time.monotonic() > deadline:
            raise TimeoutError("no complete response header")
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            length = int(v.strip())
    while len(rest) < length and time.monotonic() < deadline:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return head + b"\r\n\r\n" + rest


def wire_size(port: int, request_bytes: bytes, timeout: float = 10.0) -> dict[str, Any]:
    """Send the request twice on one connection; count bytes each way."""
    deadline = time.monotonic() + timeout
    out: dict[str, Any] = {}
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        for label in ("first_on_new_connection", "second_on_same_connection"):
            s.sendall(request_bytes)
            resp = read_response(s, deadline)
            status_line = resp.split(b"\r\n", 1)[0].decode(errors="replace")
            out[label] = {"request_bytes": len(request_bytes), "response_bytes": len(resp),
                          "total_bytes": len(request_bytes) + len(resp), "status": status_line}
            out.setdefault("response_text", resp.decode(errors="replace"))
    out["request_text"] = request_bytes.decode(errors="replace")
    return out


def tls_wire_size(port: int, request_bytes: bytes, ca: str, timeout: float = 10.0) -> dict[str, Any]:
    """:func:`wire_size` over TLS: HTTP bytes, and the TLS bytes really sent and received."""
    context = ssl.create_default_context(cafile=ca)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    sent = received = 0
    deadline = time.monotonic() + timeout

    def flush(sock: socket.socket) -> None:
        nonlocal sent
        data = outgoing.read()
        if data:
            sock.sendall(data)
            sent += len(data)

    def pump(sock: socket.socket) -> None:
        nonlocal received
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("the peer closed the connection")
        incoming.write(data)
        received += len(data)

    out: dict[str, Any] = {}
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                flush(sock)
                pump(sock)
        flush(sock)
        out["handshake_tls_bytes"] = {"sent": sent, "received": received}
        for label in ("first_on_new_connection", "second_on_same_connection"):
            sent = received = 0
            tls.write(request_bytes)
            flush(sock)
            resp = b""
            while b"\r\n\r\n" not in resp and time.monotonic() < deadline:
                try:
                    resp += tls.read(65536)
                except ssl.SSLWantReadError:
                    pump(sock)
            status_line = resp.split(b"\r\n", 1)[0].decode(errors="replace")
            out[label] = {"request_bytes": len(request_bytes), "response_bytes": len(resp),
                          "total_bytes": len(request_bytes) + len(resp), "status": status_line,
                          "tls_bytes_sent": sent, "tls_bytes_received": received,
                          "tls_total_bytes": sent + received}
            out.setdefault("response_text", resp.decode(errors="replace"))
    out["request_text"] = request_bytes.decode(errors="replace")
    return out


def timed(session: requests.Session, url: str, n: int, headers: dict[str, str], expect: int) -> list[float]:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        r = session.get(url, headers=headers, timeout=30)
        if r.status_code == 200:
            r.json()
        times.append(time.perf_counter() - t0)
        if r.status_code != expect:
            raise RuntimeError(f"expected {expect}, got {r.status_code}: {r.text[:200]}")
    return times


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t_start = time.monotonic()
    results: dict[str, Any] = {
        "params": {"requests": args.requests, "warmup": args.warmup, "inputs": args.inputs, "threads": 8,
                   "tls": args.tls},
        "target": {"p50_ms": TARGET_P50_MS, "unchanged_poll_wire_bytes": TARGET_WIRE_BYTES},
    }
    with Cluster(workdir=args.workdir, keep=args.keep, log_level=args.log_level) as cluster:
        if args.tls:
            pki_dir = cluster.root / "pki"
            pki.init_ca(pki_dir)
            pki.issue_host(pki_dir, "site-a")
            user = pki.issue_user(pki_dir, "Alice Bench", vo="bench")
            a = TlsPeer("site-a", cluster.root / "site-a", pki_dir=pki_dir, admin="CN=nobody", threads=8,
                        log_level=args.log_level)
            cluster.peers.append(a)
            a.start()
            client = Client(a.url, ca=a.ca)
            client.login(user.cert_path, user.key_path)
        else:
            a = cluster.start("site-a")
            client = Client(a.url)
        names = []
        for i in range(args.inputs):
            write_random_file(a.publish / f"in{i:02d}.bin", 1024)
            names.append(f"in{i:02d}.bin")
        job = client.submit("bench-status", NOOP_SH, "x.sub", names, executable_name="x.sh", submit_text=NOOP_SUB)
        final = client.wait(job["id"], timeout=args.job_timeout) if args.tls else wait_job(
            a.url, job["id"], timeout=args.job_timeout)
        if final["state"] != "completed":
            raise RuntimeError(f"job ended {final['state']}")
        a.wait_idle()
        url = f"{a.url}/api/v1/jobs/{job['id']}"
        session = client.session  # the client's own keep-alive session
        r = session.get(url, timeout=10)
        r.raise_for_status()
        etag = r.headers["ETag"]
        results["job"] = {"id": job["id"], "state": final["state"], "status_body_bytes": len(r.content),
                          "etag": etag}
        timed(session, url, args.warmup, {}, 200)
        full = timed(session, url, args.requests, {}, 200)
        timed(session, url, args.warmup, {"If-None-Match": etag}, 304)
        cond = timed(session, url, args.requests, {"If-None-Match": etag}, 304)
        results["full_200"] = summarize_ms(full, 3)
        results["not_modified_304"] = summarize_ms(cond, 3)
        for key, times in (("full_200", full), ("not_modified_304", cond)):
            results[key][f"over_{STALL_MS:.0f}_ms"] = sum(1 for t in times if t * 1000 > STALL_MS)
        raw = rewrite_host(capture_client_request(job["id"], etag, token=client.token), f"127.0.0.1:{a.port}")
        wire = tls_wire_size(a.port, raw, a.ca) if args.tls else wire_size(a.port, raw)
        results["unchanged_poll_on_the_wire"] = wire
    results["wall_seconds"] = round(time.monotonic() - t_start, 1)

    f, c = results["full_200"], results["not_modified_304"]
    w = results["unchanged_poll_on_the_wire"]["second_on_same_connection"]
    results["meets_target"] = {
        "p50_200": f["p50_ms"] < TARGET_P50_MS,
        "p50_304": c["p50_ms"] < TARGET_P50_MS,
        "wire_bytes": w["total_bytes"] < TARGET_WIRE_BYTES,
    }
    human = (f"status latency ({args.inputs}-input completed job, {args.requests} requests, keep-alive): "
             f"200 p50 {f['p50_ms']:.2f} ms p90 {f['p90_ms']:.2f} p99 {f['p99_ms']:.2f}; "
             f"304 p50 {c['p50_ms']:.2f} ms p90 {c['p90_ms']:.2f} p99 {c['p99_ms']:.2f} "
             f"max {max(f['max_ms'], c['max_ms']):.0f} ms, "
             f"{f[f'over_{STALL_MS:.0f}_ms'] + c[f'over_{STALL_MS:.0f}_ms']} requests over {STALL_MS:.0f} ms "
             f"(target p50 < {TARGET_P50_MS:.0f} ms: "
             f"{'MEETS' if results['meets_target']['p50_200'] and results['meets_target']['p50_304'] else 'MISSES'}); "
             f"unchanged poll on the wire {w['request_bytes']} + {w['response_bytes']} = {w['total_bytes']} bytes "
             f"(target < {TARGET_WIRE_BYTES}: {'MEETS' if results['meets_target']['wire_bytes'] else 'MISSES'})"
             + (f"; with TLS records {w['tls_total_bytes']} bytes, TLS, logged in" if args.tls else ""))
    emit("status_latency", results, human)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
