"""Where a request's wall time goes, from py-spy samples of a running peer.

``py-spy record --idle --format raw`` samples every thread of the peer's
gunicorn worker, including threads blocked in system calls or waiting on a
socket, so the samples of the one thread serving a request add up to that
request's wall time.  :func:`breakdown` keeps the stacks that pass through an
*anchor* frame (e.g. ``JobService.accept``) and labels each sample with the
deepest frame that is pocketgrid's own code, shown with its source line
("download: os.fsync(fh.fileno())"): that says which line of ours the time is
spent under, whatever library or system call is below it.

py-spy is optional (``.venv/bin/pip install py-spy``); it needs ptrace rights
over the peer (same user, and ``kernel.yama.ptrace_scope`` 0 or CAP_SYS_PTRACE).
"""
from __future__ import annotations

import linecache
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from .harness import ROOT

OWN_PACKAGES = ("peer/", "mobile_client/", "broker/", "pocketgrid/", "ema_agent/")
_FRAME = re.compile(r"^(?P<func>.+?) \((?P<file>.+?):(?P<line>\d+)\)$")


def py_spy_path() -> str | None:
    here = Path(sys.executable).parent / "py-spy"
    if here.exists():
        return str(here)
    return shutil.which("py-spy")


class Recorder:
    """A profiler process attached to a pid (py-spy, perf); :meth:`stop` ends it with SIGINT, which
    makes it write its output."""

    def __init__(self, cmd: list[str]) -> None:
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)

    def stop(self, timeout: float = 30.0) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            _, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate(timeout=10)
        return (err or b"").decode(errors="replace")


class PySpy(Recorder):
    """``py-spy record`` attached to one pid."""

    def __init__(self, pid: int, out: Path, *, rate: int = 250, max_seconds: int = 300) -> None:
        exe = py_spy_path()
        if exe is None:
            raise FileNotFoundError("py-spy is not installed (pip install py-spy)")
        self.out = out
        super().__init__([exe, "record", "-p", str(pid), "--idle", "--threads", "--nonblocking", "-r", str(rate),
                          "-f", "raw", "-o", str(out), "-d", str(max_seconds)])
        self.rate = rate


def _source(file: str, line: int) -> str:
    path = ROOT / file
    if not path.exists():
        return ""
    return linecache.getline(str(path), line).strip()


def breakdown(raw_file: Path, anchor: str, *, rate: int, requests_count: int, top: int = 15) -> dict[str, Any]:
    """Milliseconds per request under each of our own source lines, below ``anchor``.

    ``anchor`` is a substring of a frame, e.g. ``"JobService.accept (peer/jobs.py"``.
    """
    labels: Counter[str] = Counter()
    total = 0
    try:
        lines = raw_file.read_text().splitlines()
    except OSError:
        return {"error": f"no py-spy output in {raw_file}"}
    for line in lines:
        stack, _, n_text = line.rstrip().rpartition(" ")
        if not n_text.isdigit():
            continue
        frames = stack.split(";")
        idx = [i for i, f in enumerate(frames) if anchor in f]
        if not idx:
            continue
        n = int(n_text)
        total += n
        label = None
        for f in reversed(frames[idx[0]:]):
            m = _FRAME.match(f)
            if m and m.group("file").startswith(OWN_PACKAGES):
                func = m.group("func")
                src = _source(m.group("file"), int(m.group("line")))
                label = f"{m.group('file')}:{m.group('line')} {func}: {src}"[:140]
                break
        labels[label or "(outside our code)"] += n
    per = 1000.0 / rate / max(1, requests_count)
    return {
        "anchor": anchor,
        "samples": total,
        "ms_per_request": round(total * per, 1),
        "top": [{"ms_per_request": round(c * per, 1), "share": round(c / total, 3) if total else 0, "where": k}
                for k, c in labels.most_common(top)],
    }


def format_breakdown(b: dict[str, Any]) -> str:
    if "error" in b:
        return f"  ({b['error']})"
    out = [f"  under {b['anchor']!r}: {b['ms_per_request']} ms per request (sampled wall time)"]
    for item in b["top"]:
        out.append(f"    {item['ms_per_request']:8.1f} ms  {100 * item['share']:5.1f}%  {item['where']}")
    return "\n".join(out)


def remove_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def settle(seconds: float = 1.0) -> None:
    """Let py-spy attach and read the target's symbols before the measured work."""
    time.sleep(seconds)
