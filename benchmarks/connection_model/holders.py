"""Hold many idle, slow or waiting connections open against one server (a load that does nothing, slowly).

    python -m benchmarks.connection_model.holders --fixture DIR --url https://127.0.0.1:P --kind KIND --n N
        --seconds S [--status-file F]

Kinds (each connection is one asyncio task; at most 50 connect at once):

* ``idle``            TLS handshake, one ``GET /healthz`` answered, then the keep-alive connection stays silent
                      (a phone between two polls).  Re-opened when the server closes it.
* ``idle_handshake``  TLS handshake completed, then no request at all (a browser's pre-connect).
* ``slow_handshake``  TCP connect, then the first 11 bytes of a TLS ClientHello and silence.
* ``slow_body``       TLS, ``POST /api/v1/auth/login`` with ``Content-Length: 1000`` and a 3-byte body, then silence
                      (the attack of issue 10).
* ``longpoll``        the fixture user's ``GET /api/v1/jobs/<id>?wait=60`` with ``If-None-Match`` of the
                      completed job (nothing changes: it waits the whole minute), re-issued on the same
                      connection when answered; a 429 is counted and retried after its Retry-After.

While running it rewrites ``--status-file`` with counts (connections up, answers by status, errors) once
a second, so a driver can wait until the load is in place; it prints the final counts as JSON.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .fixture import load

#: A TLS record header + the start of a ClientHello: enough for a server to start the handshake and wait.
PARTIAL_CLIENT_HELLO = bytes.fromhex("16030100c4010000c00303")


class Holder:
    def __init__(self, args: argparse.Namespace, fx: dict[str, Any]) -> None:
        self.args = args
        self.fx = fx
        u = urlsplit(args.url)
        self.host, self.port = u.hostname, u.port
        self.ctx = ssl.create_default_context(cafile=fx["ca"])
        self.ctx.check_hostname = False
        self.up = 0  # connections currently in the intended state
        self.counts: Counter = Counter()
        self.sem = asyncio.Semaphore(50)
        self.deadline = time.monotonic() + args.seconds

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    async def _open(self, tls: bool = True):
        async with self.sem:
            return await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port, ssl=self.ctx if tls else None,
                                        server_hostname=None if not tls else ""), timeout=30)

    @staticmethod
    async def _response(reader: asyncio.StreamReader, timeout: float) -> tuple[int, dict[str, str], bytes]:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for ln in lines[1:]:
            if ":" in ln:
                k, v = ln.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        n = int(headers.get("content-length", "0"))
        body = await asyncio.wait_for(reader.readexactly(n), timeout) if n else b""
        return status, headers, body

    async def one(self, i: int) -> None:
        kind = self.args.kind
        while self.remaining() > 0:
            writer = None
            counted = False
            try:
                if kind == "slow_handshake":
                    reader, writer = await self._open(tls=False)
                    writer.write(PARTIAL_CLIENT_HELLO)
                    await writer.drain()
                    self.up += 1
                    counted = True
                    data = await asyncio.wait_for(reader.read(1), max(0.1, self.remaining()))
                    self.counts["closed_by_server" if not data else "server_spoke"] += 1
                    if not data:
                        await asyncio.sleep(0.5)
                    continue
                reader, writer = await self._open()
                if kind == "idle_handshake":
                    self.up += 1
                    counted = True
                    data = await asyncio.wait_for(reader.read(1), max(0.1, self.remaining()))
                    self.counts["closed_by_server" if not data else "server_spoke"] += 1
                    continue
                if kind == "idle":
                    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                    status, _, _ = await self._response(reader, 60)
                    self.counts[f"status_{status}"] += 1
                    self.up += 1
                    counted = True
                    data = await asyncio.wait_for(reader.read(1), max(0.1, self.remaining()))
                    self.counts["closed_by_server" if not data else "server_spoke"] += 1
                    continue
                if kind == "slow_body":
                    writer.write(b"POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                 b"Content-Length: 1000\r\n\r\n{\"n")
                    await writer.drain()
                    self.up += 1
                    counted = True
                    data = await asyncio.wait_for(reader.read(200), max(0.1, self.remaining()))
                    self.counts["server_answered" if data else "closed_by_server"] += 1
                    if data:
                        self.counts["answer_" + data.split(b" ", 2)[1].decode(errors="replace")] += 1
                    continue
                if kind == "longpoll":
                    req = (f"GET /api/v1/jobs/{self.fx['job']}?wait=60 HTTP/1.1\r\nHost: x\r\n"
                           f"Authorization: Bearer {self.fx['token']}\r\nIf-None-Match: {self.fx['etag']}\r\n\r\n").encode()
                    while self.remaining() > 0:
                        writer.write(req)
                        await writer.drain()
                        self.up += 1
                        counted = True
                        try:
                            status, headers, _ = await self._response(reader, max(0.1, self.remaining()) + 70)
                        finally:
                            self.up -= 1
                            counted = False
                        self.counts[f"status_{status}"] += 1
                        if status == 429:
                            await asyncio.sleep(min(float(headers.get("retry-after", "5")), max(0.0, self.remaining())))
                        elif status != 304:
                            await asyncio.sleep(1)
                        if headers.get("connection", "").lower() == "close":
                            break
                    continue
                raise ValueError(kind)
            except asyncio.TimeoutError:
                if self.remaining() > 0:
                    self.counts["timeout"] += 1
            except (OSError, ssl.SSLError, asyncio.IncompleteReadError, ValueError) as exc:
                self.counts["error_" + type(exc).__name__] += 1
                await asyncio.sleep(0.5)
            finally:
                if counted:
                    self.up -= 1
                if writer is not None:
                    writer.close()

    async def report(self) -> None:
        path = self.args.status_file
        while self.remaining() > 0:
            if path:
                Path(path).write_text(json.dumps({"up": self.up, "counts": dict(self.counts), "t": time.time()}))
            await asyncio.sleep(1)

    async def run(self) -> dict[str, Any]:
        tasks = [asyncio.create_task(self.one(i)) for i in range(self.args.n)]
        rep = asyncio.create_task(self.report())
        peak = 0
        while self.remaining() > 0:
            peak = max(peak, self.up)
            await asyncio.sleep(0.2)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        rep.cancel()
        return {"kind": self.args.kind, "n": self.args.n, "peak_up": peak, "counts": dict(self.counts)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fixture", type=Path, required=True)
    p.add_argument("--url", required=True)
    p.add_argument("--kind", required=True, choices=["idle", "idle_handshake", "slow_handshake", "slow_body", "longpoll"])
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--status-file")
    args = p.parse_args(argv)
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    result = asyncio.run(Holder(args, load(args.fixture)).run())
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
