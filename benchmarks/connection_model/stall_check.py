"""How long a server lets one slow request sit: time until it answers or closes (or our deadline).

    python -m benchmarks.connection_model.stall_check --fixture DIR --candidate NAME [--deadline 130]

Starts the candidate (servers.py), then on ONE connection each: a login POST announcing 1000 body bytes and
sending 3; a TLS handshake cut after 11 bytes of ClientHello; a TLS connection that sends no request.
Prints what came back and after how many seconds.  (Issue 10: the login POST got no answer after 120 s.)
"""
from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import sys
import time
from pathlib import Path

from . import servers
from .fixture import load
from .holders import PARTIAL_CLIENT_HELLO


async def one(kind: str, port: int, ca: str, deadline: float) -> dict[str, object]:
    ctx = ssl.create_default_context(cafile=ca)
    ctx.check_hostname = False
    t0 = time.monotonic()
    if kind == "slow_handshake":
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(PARTIAL_CLIENT_HELLO)
    else:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="")
        if kind == "slow_body":
            writer.write(b"POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 1000\r\n\r\n{\"n")
    try:
        data = await asyncio.wait_for(reader.read(200), deadline)
        what = "closed" if not data else data.split(b"\r\n", 1)[0].decode(errors="replace")
    except asyncio.TimeoutError:
        what = f"nothing within {deadline:.0f} s"
    except (OSError, ssl.SSLError) as exc:
        what = f"{type(exc).__name__}"
    writer.close()
    return {"kind": kind, "answer": what, "after_s": round(time.monotonic() - t0, 1)}


async def check(port: int, ca: str, deadline: float) -> list[dict[str, object]]:
    return list(await asyncio.gather(*(one(k, port, ca, deadline)
                                       for k in ("slow_body", "slow_handshake", "idle_handshake"))))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fixture", type=Path, required=True)
    p.add_argument("--candidate", default="gthread32")
    p.add_argument("--deadline", type=float, default=130.0)
    args = p.parse_args(argv)
    fx = load(args.fixture)
    run = servers.start(args.candidate, fx, Path(fx["state"]).parent / "stall-check")
    try:
        print(json.dumps({"candidate": args.candidate, "results": asyncio.run(check(fx["port"], fx["ca"],
                                                                                  args.deadline))}))
    finally:
        run.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
