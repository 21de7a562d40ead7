"""Runs ONE proc for the LocalExecutor and records it in the HTCondor user log.

Started by the peer as ``python -m peer.executors.local_runner SPEC.json`` in
a session of its own, so it outlives a crashed peer: whatever happens to the
peer, the proc's end (exit code or signal) still lands in the job's event log,
which is where status comes from.  It plays the part of HTCondor's shadow and
starter for a single slot.

Signals from the peer:
  SIGTERM  the user removed the job   -> kill the proc, write "aborted", exit 0
  SIGUSR1  the peer is shutting down  -> kill the proc, write "evicted", exit 3
Exit status: 0 when a final event was written, 3 after an eviction, 4 after
putting the proc on hold (it could not start; it runs again when released).

``--sandbox JSON`` (a :class:`peer.executors.sandbox.Isolation`, given by the
peer at each start): the job runs in that sandbox and, when the peer is root,
as the job account (the proc directory is handed to it first); the runner
itself and the user log stay the peer's.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from peer.event_log import EventLogWriter
from peer.executors import sandbox

EXIT_DONE = 0
EXIT_EVICTED = 3
EXIT_HELD = 4
KILL_GRACE_SECONDS = 5.0


class Runner:
    def __init__(self, spec: dict[str, Any], isolation: sandbox.Isolation | None = None) -> None:
        self.spec = spec
        self.isolation = isolation or sandbox.Isolation()
        self.cluster = int(spec["cluster"])
        self.proc = int(spec["proc"])
        self.log = EventLogWriter(spec["log"])
        self.host = f"<127.0.0.1:0?alias={spec.get('host', 'local')}>"
        self.child: subprocess.Popen[bytes] | None = None
        #: In bwrap: the host PID of the sandbox's first process; its group holds the job.
        self.sandbox_group: int | None = None
        self.reason: str | None = None  # "removed" | "evicted"

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.reason = "removed" if signum == signal.SIGTERM else "evicted"
        self._kill_child()

    def _kill_child(self) -> None:
        child = self.child
        if child is None or child.poll() is not None:
            return
        try:
            # In bwrap the job is in the sandbox's own group (bwrap itself would just die, taking the
            # job with it at once): the job gets SIGTERM and the grace period, then everything SIGKILL.
            os.killpg(self.sandbox_group or child.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        timer = threading.Timer(KILL_GRACE_SECONDS, self._force_kill)
        timer.daemon = True
        timer.start()

    def _force_kill(self) -> None:
        child = self.child
        if child is not None and child.poll() is None:
            for group in (self.sandbox_group, child.pid):
                if group is None:
                    continue
                try:
                    os.killpg(group, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def _open(self, key: str, mode: str):
        path = self.spec.get(key)
        if not path:
            return subprocess.DEVNULL
        fh = open(path, mode)
        if "a" in mode and self.isolation.uid is not None:  # the job's own file: it may reopen it by name
            os.fchown(fh.fileno(), self.isolation.uid, self.isolation.gid)
        return fh

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGUSR1, self._on_signal)
        spec = self.spec
        self.log.execute(self.cluster, self.proc, self.host)
        iso = self.isolation
        problem = sandbox.exec_problem(iso, spec["executable"])
        if problem:
            self.log.held(self.cluster, self.proc, f"Failed to execute '{spec['executable']}': {problem}", code=6)
            return EXIT_HELD
        info_r = info_w = None
        try:
            sandbox.hand_over(Path(spec["iwd"]), iso, spec.get("staged_files"))
            if iso.bwrap:
                info_r, info_w = os.pipe()
            stdin = self._open("stdin", "rb")
            stdout = self._open("stdout", "ab")
            stderr = self._open("stderr", "ab")
            self.child = subprocess.Popen(
                sandbox.command(iso, [spec["executable"], *spec.get("arguments", [])], spec["iwd"], info_fd=info_w),
                cwd=spec["iwd"],
                env=spec.get("environment", {}),
                stdin=stdin,
                stdout=stdout,
                stderr=stderr,
                start_new_session=True,
                close_fds=True,
                pass_fds=() if info_w is None else (info_w,),
                preexec_fn=sandbox.set_limits(iso),
                **sandbox.account_kwargs(iso),
            )
        except OSError as exc:
            # HTCondor puts a job it cannot start on hold (code 6, exec failure).
            self.log.held(
                self.cluster,
                self.proc,
                f"Failed to execute '{spec['executable']}': {exc.strerror or exc}",
                code=6,
                subcode=exc.errno or 0,
            )
            return EXIT_HELD
        finally:
            if info_w is not None:
                os.close(info_w)
        if info_r is not None:
            self.sandbox_group = _read_child_pid(info_r)
        if self.reason:  # a signal arrived before the child existed
            self._kill_child()
        returncode = self.child.wait()
        if self.reason == "removed":
            self.log.aborted(self.cluster, self.proc, "removed by user")
            return EXIT_DONE
        if self.reason == "evicted":
            self.log.evicted(self.cluster, self.proc, "the peer shut down; the proc will run again")
            return EXIT_EVICTED
        if returncode < 0:
            self.log.terminated(self.cluster, self.proc, signal=-returncode)
        else:
            self.log.terminated(self.cluster, self.proc, return_value=returncode)
        return EXIT_DONE


def _read_child_pid(fd: int) -> int | None:
    """bwrap's --info-fd JSON (written once the sandbox exists; EOF if it failed first)."""
    data = b""
    with os.fdopen(fd, "rb") as fh:
        data = fh.read()
    try:
        pid = json.loads(data)["child-pid"] if data else None
    except (ValueError, KeyError):
        return None
    return int(pid) if isinstance(pid, int) and pid > 1 else None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    isolation = None
    if len(argv) == 3 and argv[1] == "--sandbox":
        isolation = sandbox.Isolation.from_json(argv[2])
    elif len(argv) != 1:
        print("usage: python -m peer.executors.local_runner SPEC.json [--sandbox ISOLATION_JSON]", file=sys.stderr)
        return 2
    with open(argv[0]) as fh:
        spec = json.load(fh)
    return Runner(spec, isolation).run()


if __name__ == "__main__":
    sys.exit(main())
