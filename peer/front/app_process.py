"""The app (gunicorn master + one gthread worker, peer/server.py) as the front's child process.

* **Start**: ``peer.server.main`` in a new Python process, in a session of its own (a Ctrl-C or a
  hangup on the terminal reaches the front only, which then stops the app in order).
  Its configuration, socket path and the front's secret come through a pipe
  on its standard input, never its command line or environment (which other
  accounts, and the jobs the app starts, could read).
* **Never left behind**: the app's master asks the kernel for SIGKILL when the
  front dies (``PR_SET_PDEATHSIG``, :func:`die_with_parent`), and its worker
  for SIGKILL when the master dies, so a ``kill -9`` of the front takes the whole
  peer down at once -- as a ``kill -9`` of the peer always did: job runners live
  on in their own sessions and the next start adopts them.
* **Stop**: SIGTERM, which gunicorn turns into a graceful stop of its worker
  (the peer's services stop and evict their local procs, as before), then
  SIGKILL if it has not exited within ``stop_timeout``.
"""
from __future__ import annotations

import asyncio
import ctypes
import dataclasses
import json
import logging
import os
import signal
import sys
from typing import Any

from pocketgrid.config import PeerConfig

log = logging.getLogger("pocketgrid.front")

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """SIGKILL this process when its parent dies (Linux); exit now if the parent is already gone."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    except (OSError, AttributeError) as exc:  # not Linux: nothing stops the app outliving a killed front
        log.warning("cannot ask to die with the parent process (%s): if the front is killed, stop this "
                    "process (pid %d) by hand", exc, os.getpid())
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


@dataclasses.dataclass
class AppSpec:
    """What the app process needs from the front (sent as JSON on its standard input)."""

    config: dict[str, Any]
    socket: str
    secret: str
    parent: int
    changes: str = ""  # the front's change feed (peer/front/changes.py); empty: none

    @classmethod
    def read(cls, stream: Any) -> "AppSpec":
        return cls(**json.load(stream))

    def peer_config(self) -> PeerConfig:
        return PeerConfig(**self.config)


class AppProcess:
    def __init__(self, config: PeerConfig, socket_path: str, secret: str, stop_timeout: float = 60.0,
                 changes: str = "") -> None:
        self.config = config
        self.changes = changes
        self.socket_path = socket_path
        self.secret = secret
        self.stop_timeout = stop_timeout
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    async def start(self) -> None:
        spec = AppSpec(dataclasses.asdict(self.config), self.socket_path, self.secret, os.getpid(), self.changes)
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "import sys, peer.server; sys.exit(peer.server.main())",
            stdin=asyncio.subprocess.PIPE, start_new_session=True)
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(dataclasses.asdict(spec)).encode())
        await self.proc.stdin.drain()
        self.proc.stdin.close()
        log.info("app process started (pid %d): gunicorn, one worker, %d threads, on unix:%s",
                 self.proc.pid, self.config.threads, self.socket_path)

    async def wait(self) -> int:
        assert self.proc is not None
        return await self.proc.wait()

    async def stop(self) -> int | None:
        """SIGTERM (graceful: services stop, local procs are evicted), SIGKILL after ``stop_timeout``."""
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return None if proc is None else proc.returncode
        try:
            proc.send_signal(signal.SIGTERM)
            return await asyncio.wait_for(proc.wait(), self.stop_timeout)
        except ProcessLookupError:
            return await proc.wait()
        except TimeoutError:
            log.error("the app process did not stop within %.0f s: killing it", self.stop_timeout)
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            return await proc.wait()
