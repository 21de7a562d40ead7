"""PROTOTYPE (not product code): an asyncio (aiohttp) front that terminates TLS and proxies complete requests.

    python -m benchmarks.connection_model.proto_aio_front --fixture DIR --port P --backend /path/backend.sock
        [--loop-wait] [--uvloop] [--max-waiting-per-address N]

* TLS: the product's own context (``peer.tls_context.server_context``: site certificate, client certificates
  verified against the site CA with CERT_OPTIONAL, the web chain chosen by SNI).  Handshakes run on the event
  loop with ``ssl_handshake_timeout`` (a half-sent ClientHello costs a socket and a timer, no thread).
* The verified client certificate comes from the connection (``request.transport.get_extra_info("ssl_object")
  .getpeercert(binary_form=True)``) and goes to the backend as PEM in ``X-Pg-Client-Cert`` with
  ``X-Pg-Client-Verify: SUCCESS`` (any such header from the client is dropped first); the client address in
  ``X-Forwarded-For``.  The backend is the unchanged app under gunicorn on a 0600 Unix socket
  (proto_gunicorn.py ``--trusted-cert-header``).
* Bodies are read completely, with a deadline (``--body-timeout``), before the backend sees the request: a slow
  body costs a coroutine and a buffer, not a backend thread.  Idle keep-alive connections cost a protocol object.
* ``--loop-wait``: a status long-poll (``GET /api/v1/jobs/<own job>?wait=N`` with ``If-None-Match``) is asked of
  the backend with ``wait=0`` (authentication, ACL, ownership and the ETag are the app's); while the answer is
  304 the front waits ON THE EVENT LOOP for the job's event log to grow (one shared stat watcher per job, every
  0.1 s, as the app's own long-poll does), then asks again.  No backend thread is held while waiting.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import re
import ssl
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
from aiohttp import web

from pocketgrid.config import PeerConfig
from peer.tls_context import server_context

from .fixture import load

HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
       "transfer-encoding", "upgrade", "host", "content-length"}
STRIP = {"x-pg-client-cert", "x-pg-client-verify", "x-forwarded-for"}
JOB_PATH = re.compile(r"/api/v1/jobs/([A-Za-z0-9_-]{1,64}\.[0-9a-f]{1,64})")
POLL_SECONDS = 0.1


class JobWatch:
    """One stat loop per job with waiters: wakes them all when the job's event log changes size."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.waiters = 0
        self.changed = asyncio.Event()
        self.task: asyncio.Task | None = None

    def _size(self) -> int:
        try:
            return os.stat(self.path).st_size
        except FileNotFoundError:
            return 0

    async def _loop(self) -> None:
        size = self._size()
        while self.waiters > 0:
            await asyncio.sleep(POLL_SECONDS)
            now = self._size()
            if now != size:
                size = now
                self.changed.set()
                self.changed = asyncio.Event()

    async def wait(self, timeout: float) -> None:
        self.waiters += 1
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._loop())
        try:
            await asyncio.wait_for(self.changed.wait(), timeout)
        except asyncio.TimeoutError:
            pass
        finally:
            self.waiters -= 1


class Front:
    def __init__(self, args: argparse.Namespace, config: PeerConfig) -> None:
        self.args = args
        self.config = config
        self.session: aiohttp.ClientSession | None = None
        self.watches: dict[str, JobWatch] = {}
        self.waiting: Counter = Counter()
        self.stats: Counter = Counter()

    async def start(self) -> None:
        conn = aiohttp.UnixConnector(path=self.args.backend, limit=self.args.backend_connections)
        self.session = aiohttp.ClientSession(connector=conn, auto_decompress=False,
                                             timeout=aiohttp.ClientTimeout(total=None, sock_read=None))

    def _headers(self, request: web.Request) -> dict[str, str]:
        out = {k: v for k, v in request.headers.items() if k.lower() not in HOP and k.lower() not in STRIP}
        out["X-Forwarded-For"] = request.remote or ""
        out["Host"] = request.host
        sslobj = request.transport.get_extra_info("ssl_object") if request.transport else None
        der = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
        if der:  # only present when the handshake verified it against the site CA (CERT_OPTIONAL)
            out["X-Pg-Client-Cert"] = quote(ssl.DER_cert_to_PEM_cert(der), safe="")
            out["X-Pg-Client-Verify"] = "SUCCESS"
        return out

    async def _forward(self, request: web.Request, body: bytes, path_qs: str, headers: dict[str, str]):
        assert self.session is not None
        return await self.session.request(request.method, f"http://backend{path_qs}", headers=headers,
                                          data=body if body else None, allow_redirects=False)

    async def _respond(self, request: web.Request, upstream: aiohttp.ClientResponse) -> web.StreamResponse:
        headers = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP}
        ctype = upstream.headers.get("Content-Type", "")
        length = upstream.headers.get("Content-Length")
        if ctype.startswith("text/event-stream") or length is None or int(length) > 1 << 20:
            out = web.StreamResponse(status=upstream.status, headers=headers)
            await out.prepare(request)
            async for chunk in upstream.content.iter_any():
                await out.write(chunk)
            await out.write_eof()
            upstream.release()
            return out
        data = await upstream.read()
        upstream.release()
        return web.Response(status=upstream.status, headers=headers, body=data)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await asyncio.wait_for(request.read(), self.args.body_timeout)
        except asyncio.TimeoutError:
            self.stats["body_timeout"] += 1
            return web.json_response({"error": "request body too slow", "status": 408}, status=408,
                                     headers={"Connection": "close"})
        headers = self._headers(request)
        m = JOB_PATH.fullmatch(request.path)
        if (self.args.loop_wait and m and request.method == "GET" and "If-None-Match" in request.headers
                and m.group(1).partition(".")[0] == self.config.name):
            try:
                wait = min(float(request.query.get("wait", "0")), self.config.max_wait_seconds)
            except ValueError:
                wait = 0.0
            if wait > 0:
                return await self._long_poll(request, m.group(1), wait, headers)
        upstream = await self._forward(request, body, request.path_qs, headers)
        return await self._respond(request, upstream)

    async def _long_poll(self, request: web.Request, job_id: str, wait: float, headers: dict[str, str]):
        addr = request.remote or ""
        if self.waiting[addr] >= self.args.max_waiting_per_address:
            return web.json_response({"error": "too many waiting requests from your address", "status": 429},
                                     status=429, headers={"Retry-After": "5"})
        query = {k: v for k, v in request.query.items() if k != "wait"}
        path_qs = request.path + ("?" + "&".join(f"{quote(k)}={quote(v)}" for k, v in query.items()) if query else "")
        deadline = time.monotonic() + wait
        self.waiting[addr] += 1
        try:
            while True:
                upstream = await self._forward(request, b"", path_qs, headers)
                if upstream.status != 304 or time.monotonic() >= deadline:
                    return await self._respond(request, upstream)
                upstream.release()
                watch = self.watches.get(job_id)
                if watch is None:
                    watch = self.watches[job_id] = JobWatch(self.config.stage_path / job_id / "job.log")
                self.stats["loop_waits"] += 1
                await watch.wait(deadline - time.monotonic())
        finally:
            self.waiting[addr] -= 1
            if self.waiting[addr] <= 0:
                del self.waiting[addr]


async def serve(args: argparse.Namespace) -> None:
    fx = load(args.fixture)
    config = PeerConfig.load(overrides={"name": fx["name"], "port": args.port, "state_dir": fx["state"],
                                        "pki_dir": fx["pki"], "public_url": f"https://127.0.0.1:{args.port}"})
    config.resolve_tls()

    ctx = server_context(config)  # the product's context: SNI choice included
    front = Front(args, config)
    await front.start()
    app = web.Application(client_max_size=config.max_body_bytes)
    app.router.add_route("*", "/{tail:.*}", front.handle)
    runner = web.AppRunner(app, keepalive_timeout=args.keepalive, access_log=None, handle_signals=True)
    await runner.setup()
    server = await asyncio.get_running_loop().create_server(
        runner.server, "127.0.0.1", args.port, ssl=ctx, ssl_handshake_timeout=args.handshake_timeout,
        backlog=2048, reuse_address=True)
    print(f"front listening on https://127.0.0.1:{args.port} -> unix:{args.backend}", flush=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fixture", type=Path, required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--backend", required=True, help="the backend's Unix socket")
    p.add_argument("--backend-connections", type=int, default=64)
    p.add_argument("--loop-wait", action="store_true", help="status long-polls wait on the event loop")
    p.add_argument("--max-waiting-per-address", type=int, default=10_000)
    p.add_argument("--body-timeout", type=float, default=10.0)
    p.add_argument("--handshake-timeout", type=float, default=10.0)
    p.add_argument("--keepalive", type=float, default=75.0)
    p.add_argument("--uvloop", action="store_true")
    args = p.parse_args(argv)
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.uvloop:
        import uvloop

        uvloop.install()
    try:
        asyncio.run(serve(args))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
