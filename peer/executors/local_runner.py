"""Runs ONE proc for the LocalExecutor and records it in the HTCondor user log.

Started by the peer as ``python -m peer.executors.local_runner SPEC.json`` in
a session of its own, so it outlives a crashed peer: whatever happens to the
peer, the proc's end (exit code or signal) still lands in the job's event log,
which is where status comes from.  It plays the part of HTCondor's shadow and
starter for a single slot.

Signals from the peer:
  SIGTERM  the user removed the job   -> kill the proc, write "aborted", exit 0
  SIGUSR1  the peer is shutting down  -> kill the proc, write "evicted", exit 3
Exit status: 0 when a final event was written, 3 after an eviction (or when
the job's policy runs it again: at the proc's exit that is logged as the
shadow logs it, "Job terminated and was requeued", which readers count as a
retry, not an eviction), 4 when the proc is held (it runs again when
released).

The job policy of the submit file (periodic_hold, periodic_remove,
on_exit_hold, on_exit_remove, max_retries, ...) is evaluated here, with
classad2, by :mod:`peer.executors.local_policy`; and as HTCondor's file
transfer would, a missing ``transfer_input_files`` entry holds the proc
before it starts (code 13), a missing ``transfer_output_files`` entry holds
it at exit (code 12), and ``transfer_output_remaps`` renames outputs at exit.  How often this proc started and completed is
kept next to its spec (``<spec>.counts.json``) for NumJobStarts and
NumJobCompletions.

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
import time
from pathlib import Path
from typing import Any

from peer.event_log import EventLogWriter
from peer.executors import local_policy, sandbox

EXIT_DONE = 0
EXIT_EVICTED = 3
EXIT_HELD = 4
KILL_GRACE_SECONDS = 5.0
#: HoldReasonCodes of HTCondor's file transfer (condor_holdcodes.h).
TRANSFER_OUTPUT_ERROR, TRANSFER_INPUT_ERROR = 12, 13
ENOENT = 2


def _default_max_retries() -> int:
    try:
        import htcondor2

        return int(htcondor2.param.get("DEFAULT_JOB_MAX_RETRIES", 2))
    except Exception:  # noqa: BLE001 - HTCondor's documented default
        return 2


class Runner:
    def __init__(self, spec: dict[str, Any], isolation: sandbox.Isolation | None = None,
                 spec_path: str | None = None) -> None:
        self.spec_path = spec_path
        self.spec = spec
        self.isolation = isolation or sandbox.Isolation()
        self.cluster = int(spec["cluster"])
        self.proc = int(spec["proc"])
        self.log = EventLogWriter(spec["log"])
        self.host = f"<127.0.0.1:0?alias={spec.get('host', 'local')}>"
        self.child: subprocess.Popen[bytes] | None = None
        #: In bwrap: the host PID of the sandbox's first process; its group holds the job.
        self.sandbox_group: int | None = None
        self.reason: str | None = None  # "removed" | "evicted" | "policy"
        self.verdict: local_policy.Verdict | None = None  # the policy's, when reason == "policy"
        self.policy = (local_policy.JobPolicy(spec.get("job_ad"), spec.get("policy") or {}, cluster=self.cluster,
                                              proc=self.proc, qdate=self._queued_at(),
                                              default_max_retries=_default_max_retries())
                       if spec.get("policy") else None)

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

    # ---- the job's policy and its counters ------------------------------------
    def _queued_at(self) -> float:
        try:
            return os.stat(self.spec_path).st_mtime if self.spec_path else time.time()
        except OSError:
            return time.time()

    def _counts_path(self) -> Path | None:
        return Path(self.spec_path).with_suffix(".counts.json") if self.spec_path else None

    def _counts(self) -> dict[str, int]:
        path = self._counts_path()
        try:
            data = json.loads(path.read_text()) if path else {}
        except (OSError, ValueError):
            data = {}
        return {"starts": int(data.get("starts", 0)), "completions": int(data.get("completions", 0))}

    def _save_counts(self, counts: dict[str, int]) -> None:
        path = self._counts_path()
        if path is None:
            return
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(counts))
        os.replace(tmp, path)

    def _memory_kb(self) -> int | None:
        """The proc's resident memory (its whole process tree), as ResidentSetSize (KiB)."""
        child = self.child
        if child is None:
            return None
        try:
            import psutil

            top = psutil.Process(child.pid)
            return sum(p.memory_info().rss for p in [top, *top.children(recursive=True)]) // 1024
        except Exception:  # noqa: BLE001 - gone, or not ours to look at: unknown
            return None

    def _wait(self, started: float, counts: dict[str, int]) -> int:
        """Wait for the proc; while it runs, evaluate the periodic policy (if any)."""
        assert self.child is not None
        if self.policy is None or not self.policy.periodic:
            return self.child.wait()
        timeout = local_policy.FIRST_CHECK_SECONDS
        while True:
            try:
                return self.child.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
            timeout = local_policy.PERIODIC_SECONDS
            if self.reason:
                continue
            now = time.time()
            verdict = self.policy.check_periodic(status=local_policy.RUNNING, now=now, entered=started,
                                                 started=started, starts=counts["starts"],
                                                 completions=counts["completions"], memory_kb=self._memory_kb())
            if verdict is not None:
                self.reason, self.verdict = "policy", verdict
                self._kill_child()

    def _apply(self, verdict: local_policy.Verdict, *, exit_code: int | None = None,
               by_signal: int | None = None) -> int:
        """Write what the policy decided; the runner's exit status.  A requeue at the proc's exit
        (``exit_code`` or ``by_signal`` given) is logged as the shadow logs it: "Job terminated and was
        requeued", a re-run by the job's own policy, not an eviction."""
        if verdict.action == "hold":
            self.log.held(self.cluster, self.proc, verdict.reason, code=verdict.code, subcode=verdict.subcode)
            return EXIT_HELD
        if verdict.action == "remove":
            self.log.aborted(self.cluster, self.proc, verdict.reason)
            return EXIT_DONE
        if verdict.action == "requeue":
            if exit_code is not None or by_signal is not None:
                self.log.requeued(self.cluster, self.proc, return_value=exit_code, signal=by_signal,
                                  reason=verdict.reason)
            else:
                self.log.evicted(self.cluster, self.proc, verdict.reason)
            return EXIT_EVICTED
        raise ValueError(f"no such policy action {verdict.action!r}")

    def _remap(self, spec: dict[str, Any]) -> None:
        """``transfer_output_remaps``: give outputs the names the submit file asks for, as HTCondor does when
        it brings them back.  The runner is the peer's account and the directory the job's: every path
        component is opened with O_NOFOLLOW from the proc's directory, so a symbolic link the job made
        never leads the rename outside it."""
        iwd = os.path.realpath(spec["iwd"])
        for name, new in spec.get("transfer_remaps") or []:
            rel_new = os.path.relpath(new, spec["iwd"])  # checked at submit to stay inside it
            try:
                src_dir, src_name = _open_parent(iwd, name, create=False)
                try:
                    dst_dir, dst_name = _open_parent(iwd, rel_new, create=True)
                    try:
                        os.rename(src_name, dst_name, src_dir_fd=src_dir, dst_dir_fd=dst_dir)
                    finally:
                        os.close(dst_dir)
                finally:
                    os.close(src_dir)
            except OSError:
                continue  # no such output, or a path the job made into something else: left as it is

    def _missing(self, key: str, base: str, names: list[str]) -> str | None:
        for name in names:
            if not os.path.lexists(os.path.join(base, name)):
                return name
        return None

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGUSR1, self._on_signal)
        spec = self.spec
        counts = self._counts()
        if self.policy is not None and self.policy.periodic:  # judged when a slot frees for it (JobStatus idle)
            now = time.time()
            verdict = self.policy.check_periodic(status=local_policy.IDLE, now=now, entered=self._queued_at(),
                                                 started=None, starts=counts["starts"],
                                                 completions=counts["completions"])
            if verdict is not None:
                return self._apply(verdict)
        missing = self._missing("transfer_input_files", spec["iwd"], spec.get("transfer_input") or [])
        if missing is not None:
            self.log.held(self.cluster, self.proc, f"Transfer input files failure: reading {missing}: (errno {ENOENT}) "
                          "No such file or directory", code=TRANSFER_INPUT_ERROR, subcode=ENOENT)
            return EXIT_HELD
        self.log.execute(self.cluster, self.proc, self.host)
        counts["starts"] += 1
        self._save_counts(counts)
        started = time.time()
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
        returncode = self._wait(started, counts)
        if self.reason == "removed":
            self.log.aborted(self.cluster, self.proc, "removed by user")
            return EXIT_DONE
        if self.reason == "evicted":
            self.log.evicted(self.cluster, self.proc, "the peer shut down; the proc will run again")
            return EXIT_EVICTED
        if self.reason == "policy" and self.verdict is not None:
            return self._apply(self.verdict)
        counts["completions"] += 1
        self._save_counts(counts)
        by_signal = -returncode if returncode < 0 else None
        exit_code = None if returncode < 0 else returncode
        missing = self._missing("transfer_output_files", spec["iwd"], spec.get("transfer_output") or [])
        if missing is None:
            self._remap(spec)
        if missing is not None:  # HTCondor transfers the outputs back before it applies the exit policy
            self.log.held(self.cluster, self.proc, f"Transfer output files failure: reading {missing}: (errno "
                          f"{ENOENT}) No such file or directory", code=TRANSFER_OUTPUT_ERROR, subcode=ENOENT)
            return EXIT_HELD
        if self.policy is not None:
            verdict = self.policy.on_exit(exit_code=exit_code, signal=by_signal, now=time.time(), started=started,
                                          starts=counts["starts"], completions=counts["completions"])
            if verdict.action != "done":
                return self._apply(verdict, exit_code=exit_code, by_signal=by_signal)
        if by_signal is not None:
            self.log.terminated(self.cluster, self.proc, signal=by_signal)
        else:
            self.log.terminated(self.cluster, self.proc, return_value=exit_code)
        return EXIT_DONE


def _open_parent(root: str, relative: str, *, create: bool) -> tuple[int, str]:
    """(descriptor of the directory holding ``relative`` under ``root``, the last component), walking each
    component with O_NOFOLLOW (made when ``create``).  Raises OSError on a link, '..' or a missing part."""
    parts = [p for p in relative.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise OSError(f"unusable path {relative!r}")
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        for part in parts[:-1]:
            if create:
                try:
                    os.mkdir(part, dir_fd=fd)
                except FileExistsError:
                    pass
            nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd, parts[-1]


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
    return Runner(spec, isolation, spec_path=argv[0]).run()


if __name__ == "__main__":
    sys.exit(main())
