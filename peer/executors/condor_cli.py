"""The HTCondor command line as the CondorExecutor's fallback, and parsers of its output.

The CondorExecutor talks to the schedd through the ``htcondor2`` bindings.
When the bindings cannot reach it (a wire-protocol or security mismatch
between the wheel and the site's daemons, typically) and the site's own tools
are on ``PATH``, it uses them instead: ``condor_submit -terse``,
``condor_rm``/``condor_release`` with ``-totals``, ``condor_q -af``.

Every parser here reads a format taken from the HTCondor sources, not guessed:

* ``condor_submit -terse`` prints one line per cluster, ``"%d.%d - %d.%d\\n"``
  (first cluster.proc - last cluster.proc), and nothing else on stdout;
  warnings and errors go to stderr (src/condor_submit.V6/submit.cpp,
  ``main()``, the ``if (terse)`` block after ``ErrContext.phase =
  PHASE_COMMIT``).  Without ``-terse`` it prints ``"%d job(s) submitted to
  cluster %d.\\n"``, which we also accept.
* ``condor_rm``/``condor_release``/``condor_hold`` with ``-totals`` print
  ``"%d Succeeded, %d Failed, %d Not Found, %d Bad Status, %d Already Done,
  %d Permission Denied\\n"`` for each constraint they act on, then ``"All jobs
  matching constraint (%s) have been %s\\n"`` (``%s`` = ``marked for
  removal`` / ``released`` / ``held``) on success; when nothing matched they
  print the totals line, ``"Couldn't find/%s all jobs matching constraint
  (%s)"`` on stderr and exit 1 (src/condor_rm.V6/rm.cpp: ``actionWord()``,
  ``doWorkByConstraint()``, ``handleConstraints()``).  Tools too old for
  ``-totals`` answer ``"Unrecognized option: -totals"`` and the usage; we then
  run them again without it and read only the success sentence.
* ``condor_q -af A B C`` prints one line per job, the attribute values
  separated by single spaces, ``undefined`` for a missing attribute.

Nothing here runs a command through a shell: arguments are passed as a list,
and the submit description goes into a file.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

__all__ = [
    "CondorCliError",
    "ActTotals",
    "ClusterRange",
    "tool",
    "render_submit_file",
    "parse_terse",
    "parse_act_output",
    "parse_af_output",
    "submit",
    "act",
    "query",
    "ping",
]

#: Seconds a tool may take before we give up on it (a dead schedd makes the
#: tools wait for their own ~20 s connect timeout).
DEFAULT_TIMEOUT = 60.0


class CondorCliError(RuntimeError):
    """A Condor command failed or printed something we cannot read."""


@dataclass(frozen=True)
class ClusterRange:
    """One line of ``condor_submit -terse``: procs ``first..last`` of one cluster."""

    cluster: int
    first_proc: int
    last_proc: int

    @property
    def num_procs(self) -> int:
        return self.last_proc - self.first_proc + 1


@dataclass
class ActTotals:
    """What ``condor_rm``/``condor_release`` ``-totals`` reported (the schedd's JobActionResults)."""

    succeeded: int = 0
    failed: int = 0
    not_found: int = 0
    bad_status: int = 0
    already_done: int = 0
    permission_denied: int = 0
    #: False when the tool could not print totals (too old); counts are then unknown.
    known: bool = True
    messages: list[str] = field(default_factory=list)

    def add(self, other: "ActTotals") -> None:
        for name in ("succeeded", "failed", "not_found", "bad_status", "already_done", "permission_denied"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.known = self.known and other.known
        self.messages.extend(other.messages)


def tool(name: str) -> str | None:
    """Absolute path of an HTCondor tool on ``PATH``, or None."""
    return shutil.which(name)


# ---------------------------------------------------------------------------
# Submit description as a file
# ---------------------------------------------------------------------------

_KEY_RE = re.compile(r"^[A-Za-z_+][A-Za-z0-9_.+]*$")


def _check_value(key: str, value: str) -> str:
    value = str(value)
    if "\n" in value or "\r" in value or "\x00" in value:
        raise ValueError(f"{key}: a value for condor_submit must be one line")
    return value


def render_submit_file(table: Mapping[str, str], itemdata: Sequence[Mapping[str, str]]) -> str:
    """A submit file with ``table``'s commands and one ``queue`` per itemdata row.

    The rows are written as plain assignments followed by ``queue`` (one
    cluster: condor_submit starts a new cluster only when ``executable``
    changes between queue statements, ``CheckForNewExecutable()`` in
    submit.cpp), not as ``queue a,b from (...)``: item lists split on commas
    *and spaces*, and input names or directories may contain spaces.  The
    procs are numbered in row order, exactly like ``Schedd.submit(itemdata=)``.
    """
    if not itemdata:
        raise ValueError("no itemdata rows: nothing to queue")
    lines = ["# written by pocketgrid's CondorExecutor (condor_submit fallback)"]
    for key, value in table.items():
        if not _KEY_RE.match(key):
            raise ValueError(f"unusable submit key {key!r}")
        lines.append(f"{key} = {_check_value(key, value)}")
    names = list(itemdata[0])
    for row in itemdata:
        if list(row) != names:
            raise ValueError("every itemdata row must set the same variables")
        for key, value in row.items():
            if not _KEY_RE.match(key):
                raise ValueError(f"unusable itemdata variable {key!r}")
            lines.append(f"{key} = {_check_value(key, value)}")
        lines.append("queue")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------
# Parsers (formats cited in the module docstring)
# ---------------------------------------------------------------------------

_TERSE_RE = re.compile(r"^\s*(\d+)\.(\d+)\s+-\s+(\d+)\.(\d+)\s*$")
_VERBOSE_RE = re.compile(r"^\s*(\d+) job\(s\) submitted to cluster (\d+)\.\s*$")


def parse_terse(stdout: str) -> list[ClusterRange]:
    """Clusters created by ``condor_submit -terse`` (``"%d.%d - %d.%d"`` per cluster).

    Also accepts the default ``"N job(s) submitted to cluster C."`` form
    (procs are then assumed to start at 0, as they do for a new cluster).
    Raises CondorCliError when no line has either form.
    """
    ranges: list[ClusterRange] = []
    for line in stdout.splitlines():
        m = _TERSE_RE.match(line)
        if m:
            c1, p1, c2, p2 = (int(g) for g in m.groups())
            if c1 != c2 or p2 < p1:
                raise CondorCliError(f"condor_submit printed an impossible range: {line.strip()!r}")
            ranges.append(ClusterRange(c1, p1, p2))
            continue
        m = _VERBOSE_RE.match(line)
        if m:
            n, c = int(m.group(1)), int(m.group(2))
            ranges.append(ClusterRange(c, 0, n - 1))
    if not ranges:
        raise CondorCliError(f"condor_submit printed no cluster: {stdout.strip()[:300]!r}")
    return ranges


_TOTALS_RE = re.compile(
    r"^\s*(\d+) Succeeded, (\d+) Failed, (\d+) Not Found, (\d+) Bad Status, (\d+) Already Done, "
    r"(\d+) Permission Denied\s*$"
)
_DONE_RE = re.compile(
    r"^All jobs(?: matching constraint \(.*\)| in cluster \d+| of user \S+)? have been "
    r"(marked for removal|released|held|removed locally \(remote state unknown\))\s*$"
)


def parse_act_output(stdout: str, stderr: str, returncode: int) -> ActTotals:
    """Read what ``condor_rm``/``condor_release``/``condor_hold`` printed.

    With ``-totals`` the counts are exact, whatever the exit status (exit 1
    with "0 Succeeded ... N Not Found" just means nothing matched).  Without
    totals (old tools), a success sentence gives ``known=False`` counts; a
    failure with neither raises CondorCliError with the tool's own message.
    """
    totals: ActTotals | None = None
    done = False
    for line in stdout.splitlines():
        m = _TOTALS_RE.match(line)
        if m:
            one = ActTotals(*(int(g) for g in m.groups()))
            if totals is None:
                totals = one
            else:
                totals.add(one)
        elif _DONE_RE.match(line):
            done = True
    messages = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    if totals is not None:
        totals.messages = messages
        return totals
    if done and returncode == 0:
        return ActTotals(known=False, messages=messages)
    detail = "; ".join(messages) or stdout.strip() or f"exit status {returncode}"
    raise CondorCliError(detail[:500])


def parse_af_output(stdout: str, attributes: Sequence[str]) -> list[dict[str, str | int | None]]:
    """Rows of ``condor_q -af A B ...``: values split on spaces, ``undefined`` -> None.

    Only the last attribute may contain spaces (it gets the rest of the
    line); integers are converted; string values come without quotes, as
    ``-af`` prints them.
    """
    rows = []
    n = len(attributes)
    for line in stdout.splitlines():
        if not line.strip():
            continue
        parts = line.strip().split(" ", n - 1) if n > 1 else [line.strip()]
        if len(parts) != n:
            raise CondorCliError(f"condor_q -af printed {len(parts)} values, expected {n}: {line!r}")
        row: dict[str, str | int | None] = {}
        for name, value in zip(attributes, parts):
            if value == "undefined":
                row[name] = None
            elif re.fullmatch(r"-?\d+", value):
                row[name] = int(value)
            else:
                row[name] = value
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------
# Running the tools
# ---------------------------------------------------------------------------


def _run(args: list[str], *, timeout: float, cwd: str | None = None) -> subprocess.CompletedProcess[str]:
    exe = tool(args[0])
    if exe is None:
        raise CondorCliError(f"{args[0]} is not on PATH")
    try:
        return subprocess.run(
            [exe, *args[1:]], capture_output=True, text=True, timeout=timeout, cwd=cwd,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        raise CondorCliError(f"{args[0]} did not finish within {timeout:g} s") from None
    except OSError as exc:
        raise CondorCliError(f"cannot run {args[0]}: {exc}") from None


def submit(table: Mapping[str, str], itemdata: Sequence[Mapping[str, str]], submit_file: str | os.PathLike[str],
           *, timeout: float = DEFAULT_TIMEOUT) -> ClusterRange:
    """Write the description to ``submit_file`` and run ``condor_submit -terse`` on it.

    Returns the one cluster created; raises CondorCliError (with
    condor_submit's own stderr) otherwise.
    """
    path = os.fspath(submit_file)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(render_submit_file(table, itemdata))
    done = _run(["condor_submit", "-terse", path], timeout=timeout, cwd=os.path.dirname(path) or None)
    if done.returncode != 0:
        detail = " ".join(ln.strip() for ln in done.stderr.splitlines() if ln.strip())
        raise CondorCliError(f"condor_submit failed (exit {done.returncode}): {detail[:500]}")
    ranges = parse_terse(done.stdout)
    if len(ranges) != 1:
        raise CondorCliError(f"condor_submit created {len(ranges)} clusters, expected 1: {done.stdout.strip()!r}")
    return ranges[0]


_ACT_TOOLS = {"remove": "condor_rm", "release": "condor_release", "hold": "condor_hold"}


def act(action: str, constraint: str, *, reason: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> ActTotals:
    """``condor_rm``/``condor_release``/``condor_hold -totals -constraint EXPR``."""
    name = _ACT_TOOLS[action]
    extra = ["-reason", reason] if reason else []
    done = _run([name, "-totals", *extra, "-constraint", constraint], timeout=timeout)
    if done.returncode != 0 and "Unrecognized option" in done.stderr:
        done = _run([name, *extra, "-constraint", constraint], timeout=timeout)
    return parse_act_output(done.stdout, done.stderr, done.returncode)


def query(constraint: str, attributes: Sequence[str], *, timeout: float = DEFAULT_TIMEOUT) -> list[dict]:
    """``condor_q -constraint EXPR -af A B ...`` -> rows (see :func:`parse_af_output`)."""
    done = _run(["condor_q", "-constraint", constraint, "-af", *attributes], timeout=timeout)
    if done.returncode != 0:
        detail = " ".join(ln.strip() for ln in done.stderr.splitlines() if ln.strip())
        raise CondorCliError(f"condor_q failed (exit {done.returncode}): {detail[:500]}")
    return parse_af_output(done.stdout, attributes)


def ping(*, timeout: float = 10.0) -> str | None:
    """None when ``condor_q`` reaches the schedd (a query that matches nothing), else why not."""
    if tool("condor_q") is None:
        return "condor_q is not on PATH"
    try:
        query("false", ["ClusterId"], timeout=timeout)
    except CondorCliError as exc:
        return str(exc)
    return None


def join_constraints(parts: Iterable[str]) -> str:
    return " && ".join(f"({p})" for p in parts)
