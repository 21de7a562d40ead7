"""CondorExecutor: run each piece of a job on the site's HTCondor schedd.

One piece = one cluster, one proc per input (``Schedd.submit`` with
``itemdata``: ``input``, ``input_index`` (its index in the job),
``proc_dir`` per row), built by
:func:`peer.submit_description.condor_submit_dict` from the user's checked
submit file with the keys pocketgrid owns forced (executable, initialdir,
log = the job's ``job.log``, file transfer, streamed stdout/stderr).  Status
is NOT asked of the schedd: the schedd and shadow write every event to the
job's ``job.log`` and ``peer.event_log`` reads only what is new there, the
same reader as for the LocalExecutor.

Order of submission and commit (the cluster ID comes from the schedd)
-------------------------------------------------------------------------
``JobService.accept`` calls :meth:`CondorExecutor.prepare` inside the
database transaction, then commits, then calls :meth:`committed`.

1. ``prepare`` submits the cluster **on hold** (``hold = true``: the schedd
   stores it with HoldReasonCode 15, "submitted on hold at user's request",
   and never matches it), writes the Proc rows (cluster.proc -> input), and
   hooks the session: if the transaction rolls back instead of committing,
   the cluster is removed at once.
2. ``committed`` releases it (``Schedd.act(JobAction.Release, ...)``, limited
   to procs still held with code 15).  Nothing runs before the job row is
   durable, and the client gets the job ID only after that.
3. A crash between the steps leaves a cluster held with code 15.  At start
   and every ``reconcile_interval`` seconds the executor asks the schedd for
   such clusters of this peer (``PocketgridPeer``) and releases those whose
   rows exist (``PocketgridJob`` + cluster) or removes those whose do not
   (rolled back, or a submission whose answer was lost), with whatever was
   staged for them.  Clusters still in flight in this process are skipped.

Each proc carries ``PocketgridJob``, ``PocketgridPeer`` and
``PocketgridIndex`` in its job ad (the user's own ``+Pocketgrid*`` and
``hold`` are dropped); kill and reconciliation match on them as well as on
the cluster ID, so a reused cluster number can never hit another job.

The schedd's health, this site's procs, why idle procs wait
-------------------------------------------------------------
A loop probes the schedd every ``probe_interval`` through a helper of its
own (:meth:`CondorExecutor.probe_once`: this peer's idle and held procs, one
projected query with a deadline): ``/healthz`` shows its verdict and never
waits for it.  After a good probe it carries out kills remembered during an
outage (:meth:`CondorExecutor.remove` answers at once with
:class:`RemovalPending` when the schedd does not answer; they are kept in
the settings table) and refreshes the match analysis of clusters with idle
procs (the helper's ``analyze``: the first proc's job ad against the
collector's slot ads, pocketgrid/matching.py), which the job's status shows
(``match``) and the load report counts (``site_counts``: held and
unmatchable procs are not load).  A new cluster is analysed at submit, while
still held, to warn or refuse (submit policy ``unmatchable``).

How the bindings are called
---------------------------
``htcondor2`` keeps the GIL while it waits for a daemon (measured: a schedd
address that accepts and never answers blocked every thread of the process for
20 s), so the calls run in one helper child process
(:mod:`peer.executors.condor_helper`) with a deadline per call; a call past its
deadline kills the helper (a new one starts on the next call) and fails the
request with 503, which sends a new job to another site.  When the bindings
fail to reach the schedd and ``condor_submit``/``condor_rm`` are on PATH, the
command line is used instead (:mod:`peer.executors.condor_cli`).

Running it (see compose/README.md)
----------------------------------
* Run the peer as the account that should own the jobs, never root: the
  schedd refuses to let root own jobs, so ``serve --executor condor`` refuses
  to start as root.
* Jobs run as that account and read/write their ``initialdir`` (the input's
  staging directory) through the shadow: the state directory must belong to
  (or be writable by) it, or the jobs go on hold with "Permission denied".
* Keep the state directory out of ``/tmp`` and ``/var/tmp``: HTCondor gives
  every job a private, empty ``/tmp`` and ``/var/tmp`` (``MOUNT_UNDER_SCRATCH``),
  even on this host, so a job that names its input directory by absolute path
  (``$(proc_dir)``) would find nothing there; the peer warns at start
  (:func:`scratch_mount_warning`).
* Which schedd: HTCondor's own configuration (``CONDOR_CONFIG``, or
  ``_CONDOR_SCHEDD_HOST``/``_CONDOR_SCHEDD_NAME`` in the environment), exactly
  as for ``condor_q``.
"""
from __future__ import annotations

import json
import logging
import os
import selectors
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from sqlalchemy import event, select
from sqlalchemy.orm import Session

from pocketgrid.errors import BadGateway, NotRunnableHere, Unavailable

from ..db import Database
from ..models import Job, Proc, Setting
from ..staging import StagedJob, remove_orphan
from ..proc_stderr import record_names
from ..submit_description import CondorSubmission, ParsedSubmit, condor_submission
from . import condor_cli
from .base import Executor, RemovalPending

log = logging.getLogger(__name__)

#: HoldReasonCode of a job submitted with ``hold = true`` (condor_holdcodes.h: SubmittedOnHold).
SUBMITTED_ON_HOLD = 15
#: JobStatus of an idle and of a held job.
IDLE = 1
HELD = 5

#: What a job's status and a kill's answer say while its removal waits for the schedd.
PENDING_REMOVAL = "pending: the schedd is not answering; it will be carried out when it answers"
#: The settings row that keeps pending removals across restarts.
PENDING_REMOVALS_KEY = "condor_pending_removals"


def _one_line(text: str | None, limit: int) -> str:
    """A message on one line, at most ``limit`` characters (condor_q's stderr can be a kilobyte)."""
    line = " ".join(str(text or "").split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _spent(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() >= deadline - 0.5


def _left(deadline: float | None, default: float) -> float:
    return default if deadline is None else max(0.5, deadline - time.monotonic())


@dataclass
class ScheddHealth:
    """What the periodic probe found: ``ok``, ``unreachable`` or ``unknown`` (no probe yet)."""

    state: str = "unknown"
    checked_at: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"state": self.state, "checked_at": self.checked_at, "last_error": self.last_error,
                "last_error_at": self.last_error_at}

ATTR_JOB = "PocketgridJob"
ATTR_PEER = "PocketgridPeer"
ATTR_INDEX = "PocketgridIndex"

_HELPER_FILE = Path(__file__).with_name("condor_helper.py")
_HELPER_BOOT = (
    "import runpy, sys\n"
    "sys.path[:] = [p for p in sys.path if p]\n"
    "runpy.run_path(sys.argv[1], run_name='_pocketgrid_condor_helper')\n"
)


class CondorUnreachable(RuntimeError):
    """The schedd did not answer (in time); the message says what was tried."""


class CondorRefused(RuntimeError):
    """The schedd answered and refused (e.g. a SUBMIT_REQUIREMENTS expression)."""


# ---------------------------------------------------------------------------
# The bindings, in a helper process
# ---------------------------------------------------------------------------


class BindingsClient:
    """Requests to :mod:`peer.executors.condor_helper`, one at a time, each with a deadline.

    Thread-safe.  The helper starts on the first request; a request past its
    deadline, or a helper that died, kills it, and the next request starts a
    fresh one.
    """

    def __init__(self, *, timeout: float = 30.0) -> None:
        self.timeout = timeout
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._buf = b""

    def _start(self) -> subprocess.Popen[bytes]:
        if self._proc is not None and self._proc.poll() is None:
            return self._proc
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _HELPER_BOOT, str(_HELPER_FILE)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None, close_fds=True,
            start_new_session=True,  # a ^C to the peer's terminal is the peer's business
        )
        self._buf = b""
        return self._proc

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            proc.kill()
        except ProcessLookupError:
            pass
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL is not ignorable
            pass
        for pipe in (proc.stdin, proc.stdout):
            try:
                pipe.close()  # type: ignore[union-attr]
            except OSError:
                pass

    def call(self, op: str, *, timeout: float | None = None, **args: Any) -> dict[str, Any]:
        """Send one request; return the helper's answer (``ok`` true or false).

        Raises CondorUnreachable when the helper does not answer within the
        deadline (it is then killed) or dies.
        """
        limit = self.timeout if timeout is None else timeout
        # Requests queue behind the one in flight; waiting for our turn is bounded by the same limit
        # (without killing the helper, which is busy, not stuck, as far as we know).
        if not self._lock.acquire(timeout=limit):
            raise CondorUnreachable(f"the htcondor2 helper stayed busy for {limit:g} s")
        try:
            deadline = time.monotonic() + limit
            proc = self._start()
            assert proc.stdin is not None and proc.stdout is not None
            try:
                proc.stdin.write(json.dumps({"op": op, **args}).encode() + b"\n")
                proc.stdin.flush()
            except (BrokenPipeError, OSError) as exc:
                self._kill()
                raise CondorUnreachable(f"the htcondor2 helper process died ({exc})") from None
            fd = proc.stdout.fileno()
            with selectors.DefaultSelector() as sel:
                sel.register(fd, selectors.EVENT_READ)
                while b"\n" not in self._buf:
                    left = deadline - time.monotonic()
                    if left <= 0 or not sel.select(left):
                        self._kill()
                        raise CondorUnreachable(f"the schedd did not answer {op!r} within {limit:g} s")
                    chunk = os.read(fd, 65536)
                    if not chunk:
                        code = proc.poll()
                        self._kill()
                        raise CondorUnreachable(f"the htcondor2 helper process exited (status {code})")
                    self._buf += chunk
            line, _, self._buf = self._buf.partition(b"\n")
        finally:
            self._lock.release()
        try:
            reply = json.loads(line)
        except ValueError:
            raise CondorUnreachable(f"the htcondor2 helper answered garbage: {line[:200]!r}") from None
        return reply

    def close(self) -> None:
        with self._lock:
            self._kill()


# ---------------------------------------------------------------------------
# Is there a schedd?
# ---------------------------------------------------------------------------


@dataclass
class ScheddProbe:
    """The answer to "does a schedd answer here?"."""

    ok: bool
    via: str | None = None  # "bindings" or "cli"
    name: str | None = None
    address: str | None = None
    version: str | None = None
    reason: str | None = None  # why not, when not ok
    seconds: float = 0.0
    client: BindingsClient | None = field(default=None, repr=False)

    def describe(self) -> str:
        if not self.ok:
            return f"no HTCondor schedd answered ({self.reason})"
        where = self.name or self.address or "the local schedd"
        return f"HTCondor schedd {where} answered through the {self.via} in {self.seconds * 1000:.0f} ms"


def probe_schedd(timeout: float = 5.0, *, address: str | None = None, keep_client: bool = False) -> ScheddProbe:
    """Ask the schedd for nothing (``query("false")``), with a deadline.

    The bindings first (in the helper process, so a hung schedd cannot stall
    the caller beyond ``timeout``); then ``condor_q`` if it is on PATH.  With
    ``keep_client`` the live helper is handed over in ``probe.client``.
    """
    started = time.monotonic()
    client = BindingsClient(timeout=timeout)
    reasons = []
    try:
        args = {"address": address} if address else {}
        reply = client.call("probe", timeout=timeout, **args)
        if reply.get("ok"):
            probe = ScheddProbe(True, "bindings", reply.get("name"), reply.get("address"), reply.get("version"),
                                seconds=time.monotonic() - started)
            if keep_client:
                probe.client = client
            else:
                client.close()
            return probe
        reasons.append(f"htcondor2: {reply.get('error')}")
    except CondorUnreachable as exc:
        reasons.append(f"htcondor2: {exc}")
    client.close()
    if address is None and condor_cli.tool("condor_q") is not None:
        left = max(1.0, timeout - (time.monotonic() - started))
        why = condor_cli.ping(timeout=left)
        if why is None:
            return ScheddProbe(True, "cli", seconds=time.monotonic() - started)
        reasons.append(f"condor_q: {why}")
    elif address is None:
        reasons.append("condor_q is not on PATH")
    return ScheddProbe(False, reason="; ".join(reasons), seconds=time.monotonic() - started)


def _mount_under_scratch() -> str | None:
    """HTCondor's ``MOUNT_UNDER_SCRATCH`` as this host's configuration sets it (a local read, no daemon)."""
    try:
        import htcondor2

        return htcondor2.param.get("MOUNT_UNDER_SCRATCH")
    except Exception:  # noqa: BLE001 - no bindings or no configuration: assume HTCondor's default
        return None


#: HTCondor's default ``MOUNT_UNDER_SCRATCH``.
DEFAULT_MOUNT_UNDER_SCRATCH = "/tmp,/var/tmp"


def scratch_mount_warning(stage_root: str, mount_under_scratch: str | None) -> str | None:
    """What is wrong with staging under a directory HTCondor mounts privately for every job, or None.

    The execute side gives each job its own, empty ``/tmp`` and ``/var/tmp``
    (``MOUNT_UNDER_SCRATCH``, default ``/tmp,/var/tmp``), even on the submit
    host itself.  With file transfer (pocketgrid forces it) the job's input
    and executable still reach it, but a job that names its input directory
    by absolute path (``$(proc_dir)``, or a path it was told) finds an empty
    private directory there instead of its files.
    """
    value = (mount_under_scratch if mount_under_scratch is not None else DEFAULT_MOUNT_UNDER_SCRATCH).strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':  # the configuration gives it as a ClassAd string
        value = value[1:-1]
    root = os.path.normpath(stage_root)
    for mount in (m.strip() for m in value.split(",")):
        mount = os.path.normpath(mount) if mount else ""
        if mount and (root == mount or root.startswith(mount.rstrip("/") + "/")):
            return (
                f"the staging directory {root} is under {mount}, which HTCondor mounts privately for every job "
                f"(MOUNT_UNDER_SCRATCH = {value}): a job that refers to its input directory by absolute path "
                "(e.g. $(proc_dir)) sees an empty private directory there, even on this host, instead of its "
                "files (file transfer still brings it the input and the executable); put the state directory "
                "elsewhere, e.g. /var/lib/pocketgrid"
            )
    return None


ROOT_REFUSAL = (
    "refusing to run the HTCondor executor as root: the HTCondor schedd never lets root own jobs "
    "(the submission would be refused). Run the peer as the ordinary service account that should own the "
    "jobs (e.g. 'sudo -u condoruser pocketgrid serve ...'), with its --state directory owned by that account"
)


def running_as_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


# ---------------------------------------------------------------------------
# Pure helpers: the submission and the Proc rows
# ---------------------------------------------------------------------------


def quote_classad_string(value: str) -> str:
    """A ClassAd string literal (job IDs and peer names have no quotes or backslashes)."""
    if any(c in value for c in '"\\\n\r'):
        raise ValueError(f"cannot embed {value!r} in a ClassAd string")
    return f'"{value}"'


def condor_table(submit_items: Mapping[str, str] | Sequence[tuple[str, str]], *, job_id: str, peer_name: str,
                 batch_name: str | None = None) -> dict[str, str]:
    """The final submit table: ``condor_submit_dict``'s plus pocketgrid's own keys.

    Forced: ``hold = true`` (released after the commit, see the module
    docstring), ``MY.PocketgridJob``, ``MY.PocketgridPeer``,
    ``MY.PocketgridIndex = $(input_index)``.  Dropped from the user's keys:
    any ``hold`` and any ``MY.Pocketgrid*`` (they would fake the identity
    reconciliation relies on).  ``batch_name`` defaults to the job ID, so
    ``condor_q`` shows which pocketgrid job a cluster is.
    """
    items = submit_items.items() if isinstance(submit_items, Mapping) else submit_items
    table: dict[str, str] = {}
    for key, value in items:
        low = key.lower()
        if low == "hold":
            continue
        attr = low[3:] if low.startswith("my.") else low[1:] if low.startswith("+") else None
        if attr is not None and attr.startswith("pocketgrid"):
            continue
        table[key] = value
    if not any(k.lower() == "batch_name" for k in table):
        table["batch_name"] = batch_name or job_id
    table.update(
        {
            "hold": "true",
            f"MY.{ATTR_JOB}": quote_classad_string(job_id),
            f"MY.{ATTR_PEER}": quote_classad_string(peer_name),
            f"MY.{ATTR_INDEX}": "$(input_index)",
        }
    )
    return table


def submission_for(parsed: ParsedSubmit, staged: StagedJob, *, job_id: str,
                   peer_name: str) -> tuple[dict[str, str], list[dict[str, str]]]:
    """(table, itemdata) for ``Schedd.submit``: the staged job's executable (in
    ``.pocketgrid/``), one row per input directory, ``job.log`` as the log."""
    table, built = _submission(parsed, staged, job_id=job_id, peer_name=peer_name)
    return table, built.itemdata


def _submission(parsed: ParsedSubmit, staged: StagedJob, *, job_id: str,
                peer_name: str) -> tuple[dict[str, str], CondorSubmission]:
    built = condor_submission(
        parsed,
        executable_path=str(staged.executable_path),
        proc_dirs=[str(d) for d in staged.proc_dirs],
        input_names=list(staged.input_names),
        log_path=str(staged.log_path),
        indexes=staged.job_indexes(),
    )
    return condor_table(list(built.submit.items()), job_id=job_id, peer_name=peer_name), built


def proc_rows(job_id: str, input_names: Sequence[str], *, cluster: int, first_proc: int, num_procs: int,
              executor: str = "condor", indexes: Sequence[int] | None = None) -> list[Proc]:
    """One Proc row per input: the ``i``-th input (itemdata order) is proc ``first_proc + i``, and its
    row's ``index`` is its index in the job (``indexes[i]``; default ``i``).

    Refuses a submission whose proc count differs from the number of inputs.
    """
    if num_procs != len(input_names):
        raise ValueError(f"the schedd created {num_procs} procs for {len(input_names)} inputs")
    if cluster <= 0 or first_proc < 0:
        raise ValueError(f"impossible job id {cluster}.{first_proc}")
    job_indexes = list(indexes) if indexes is not None else list(range(len(input_names)))
    return [
        Proc(job_id=job_id, index=job_indexes[i], input_name=name, executor=executor, cluster=cluster,
             proc=first_proc + i, local_state="submitted")
        for i, name in enumerate(input_names)
    ]


def job_constraint(job_id: str, clusters: Sequence[int] | None = None, *, peer_name: str | None = None,
                   submitted_on_hold: bool = False) -> str:
    """A job-ad constraint for the procs of one pocketgrid job (optionally still held since submit)."""
    parts = [f"{ATTR_JOB} =?= {quote_classad_string(job_id)}"]
    if peer_name is not None:
        parts.append(f"{ATTR_PEER} =?= {quote_classad_string(peer_name)}")
    if clusters:
        parts.append(" || ".join(f"ClusterId == {int(c)}" for c in sorted(set(clusters))))
    if submitted_on_hold:
        parts.append(f"JobStatus == {HELD} && HoldReasonCode == {SUBMITTED_ON_HOLD}")
    return condor_cli.join_constraints(parts)


def proc_constraint(job_id: str, cluster: int, proc: int) -> str:
    """A job-ad constraint for one proc of one pocketgrid piece."""
    return condor_cli.join_constraints([job_constraint(job_id, [cluster]), f"ProcId == {int(proc)}"])


def release_constraint(job_id: str, clusters: Sequence[int], indexes: Sequence[int]) -> str:
    """The procs of one pocketgrid job that are held, among the inputs ``indexes`` (``PocketgridIndex``)."""
    wanted = " || ".join(f"{ATTR_INDEX} == {int(i)}" for i in sorted(set(indexes)))
    return condor_cli.join_constraints([job_constraint(job_id, clusters), f"JobStatus == {HELD}", wanted or "false"])


class PendingSubmissions:
    """Clusters submitted on hold whose transaction has not ended yet.

    :meth:`track` hooks the SQLAlchemy session: a rollback calls
    ``on_rollback(job_id, cluster)`` (unless the transaction committed
    first); :meth:`pop` is called by ``committed()``.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[str, int] = {}
        self._committed: set[str] = set()

    def track(self, session: Session, job_id: str, cluster: int, on_rollback) -> None:
        with self._lock:
            self._pending[job_id] = cluster
        ended = threading.Event()  # the listeners act once: on the transaction that held the job

        def after_commit(_session: Session) -> None:
            if ended.is_set():
                return
            ended.set()
            with self._lock:
                if job_id in self._pending:
                    self._committed.add(job_id)

        def after_rollback(_session: Session) -> None:
            if ended.is_set():
                return
            ended.set()
            with self._lock:
                if job_id in self._committed or job_id not in self._pending:
                    return
                cluster_ = self._pending.pop(job_id)
            on_rollback(job_id, cluster_)

        # (Listeners cannot be removed while SQLAlchemy dispatches them; they
        # stay on this Session object, inert, until it is discarded.)
        event.listen(session, "after_commit", after_commit)
        event.listen(session, "after_rollback", after_rollback)

    def pop(self, job_id: str) -> int | None:
        with self._lock:
            self._committed.discard(job_id)
            return self._pending.pop(job_id, None)

    def clusters(self) -> set[int]:
        with self._lock:
            return set(self._pending.values())

    def __len__(self) -> int:
        with self._lock:
            return len(self._pending)


# ---------------------------------------------------------------------------
# The executor
# ---------------------------------------------------------------------------


class CondorExecutor(Executor):
    name = "condor"

    def __init__(
        self,
        db: Database,
        stage_root: Path,
        *,
        peer_name: str,
        probe: ScheddProbe | None = None,
        chosen_by: str = "condor",
        call_timeout: float = 30.0,
        submit_timeout: float = 60.0,
        reconcile_interval: float = 60.0,
        probe_interval: float = 15.0,
        probe_timeout: float = 5.0,
        removal_timeout: float = 5.0,
        match_max_age: float = 60.0,
    ) -> None:
        self.probe_interval = probe_interval
        self.probe_timeout = probe_timeout
        self.removal_timeout = removal_timeout
        self.match_max_age = match_max_age
        self.db = db
        self.stage_root = Path(stage_root)
        self.peer_name = peer_name
        self.chosen_by = chosen_by
        self.call_timeout = call_timeout
        self.submit_timeout = submit_timeout
        self.reconcile_interval = reconcile_interval
        self.probe = probe or ScheddProbe(False, reason="not probed")
        self.via = self.probe.via or "bindings"
        self.client = self.probe.client or BindingsClient(timeout=call_timeout)
        self.client.timeout = call_timeout
        self.pending = PendingSubmissions()
        self._retry: dict[tuple[str, int], str] = {}  # (job_id, cluster) -> "release" | "remove"
        self._retry_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None
        self.stats = {"submitted": 0, "released": 0, "removed_on_rollback": 0, "cli_fallbacks": 0}
        #: The periodic probe's own helper: a slow submit never delays it, and it never delays a submit.
        self.watch_client = BindingsClient(timeout=probe_timeout)
        self.health = ScheddHealth()
        self._state_lock = threading.Lock()
        #: Kills the schedd did not take yet (job ID -> when asked), also in the settings table.
        self._pending_removals: dict[str, float] = {}
        #: Match analysis per cluster with idle procs: {"slots", "of", "failing"?}, and when it was made.
        self._matches: dict[int, tuple[float, dict[str, Any]]] = {}
        self._site: dict[str, int] | None = None
        self._idle: dict[int, int] = {}  # cluster -> idle procs, from the last census
        self._held = 0  # held procs (not those held since submission), from the last census
        self._new_unmatchable: dict[str, tuple[int, int]] = {}  # job -> (cluster, procs), until committed
        self._stamp = 0  # bumped whenever annotate() may answer differently
        self._last_reconcile = 0.0

    # ---- schedd operations: bindings first, CLI as fallback ---------------
    def _bindings(self, op: str, timeout: float, **args: Any) -> dict[str, Any]:
        reply = self.client.call(op, timeout=timeout, **args)
        if not reply.get("ok"):
            raise CondorRefused(str(reply.get("error")))
        return reply

    def _cli_usable(self, name: str) -> bool:
        return condor_cli.tool(name) is not None

    def _submit(self, table: dict[str, str], itemdata: list[dict[str, str]], meta_dir: Path) -> tuple[int, int, int]:
        errors = []
        if self.via == "bindings":
            try:
                r = self._bindings("submit", self.submit_timeout, table=table, itemdata=itemdata)
                return int(r["cluster"]), int(r["first_proc"]), int(r["num_procs"])
            except (CondorUnreachable, CondorRefused) as exc:
                errors.append(f"htcondor2: {exc}")
                if not self._cli_usable("condor_submit"):
                    raise CondorUnreachable("; ".join(errors)) from None
                self.stats["cli_fallbacks"] += 1
                log.warning("submitting through htcondor2 failed (%s); trying condor_submit", exc)
        try:
            rng = condor_cli.submit(table, itemdata, meta_dir / "condor.sub", timeout=self.submit_timeout)
        except condor_cli.CondorCliError as exc:
            errors.append(f"condor_submit: {exc}")
            raise CondorUnreachable("; ".join(errors)) from None
        return rng.cluster, rng.first_proc, rng.num_procs

    def _act(self, action: str, constraint: str, reason: str, *, timeout: float | None = None) -> int | None:
        """Remove/Release/Hold the matching procs; returns how many changed (None = unknown).

        ``timeout`` bounds the whole call, the CLI fallback included (default: ``call_timeout`` each).
        """
        errors = []
        deadline = None if timeout is None else time.monotonic() + timeout
        if self.via == "bindings":
            try:
                r = self._bindings("act", timeout or self.call_timeout, action=action.capitalize(),
                                   constraint=constraint, reason=reason)
                return int(r.get("TotalSuccess", 0))
            except (CondorUnreachable, CondorRefused) as exc:
                errors.append(f"htcondor2: {exc}")
                tool = condor_cli._ACT_TOOLS[action]
                if not self._cli_usable(tool) or _spent(deadline):
                    raise CondorUnreachable("; ".join(errors)) from None
                self.stats["cli_fallbacks"] += 1
        try:
            totals = condor_cli.act(action, constraint, reason=reason, timeout=_left(deadline, self.call_timeout))
        except condor_cli.CondorCliError as exc:
            errors.append(f"{condor_cli._ACT_TOOLS[action]}: {exc}")
            raise CondorUnreachable("; ".join(errors)) from None
        return totals.succeeded if totals.known else None

    def _query(self, constraint: str, projection: list[str], *, timeout: float | None = None) -> list[dict[str, Any]]:
        deadline = None if timeout is None else time.monotonic() + timeout
        if self.via == "bindings":
            try:
                return self._bindings("query", timeout or self.call_timeout, constraint=constraint,
                                      projection=projection)["ads"]
            except (CondorUnreachable, CondorRefused) as exc:
                if not self._cli_usable("condor_q") or _spent(deadline):
                    raise CondorUnreachable(f"htcondor2: {exc}") from None
        try:
            return condor_cli.query(constraint, projection, timeout=_left(deadline, self.call_timeout))
        except condor_cli.CondorCliError as exc:
            raise CondorUnreachable(f"condor_q: {exc}") from None

    # ---- submission --------------------------------------------------------
    def prepare(self, session: Session, job: Job, staged: StagedJob, parsed: ParsedSubmit) -> list[Proc]:
        table, built = _submission(parsed, staged, job_id=job.id, peer_name=self.peer_name)
        try:
            cluster, first, n = self._submit(table, built.itemdata, staged.meta_dir)
        except CondorUnreachable as exc:
            self.last_error = str(exc)
            raise Unavailable(f"{self.peer_name}: the HTCondor schedd did not take the job: {_one_line(str(exc), 300)}",
                              retry_after=10) from None
        self.stats["submitted"] += 1
        try:
            rows = proc_rows(job.id, staged.input_names, cluster=cluster, first_proc=first, num_procs=n,
                             indexes=staged.job_indexes())
        except ValueError as exc:
            self._remove_cluster(job.id, cluster, "pocketgrid: unexpected submission result")
            raise BadGateway(f"{self.peer_name}: {exc}") from None
        match = self._match_at_submit(job.id, cluster)
        if match is not None and match.get("slots") == 0:
            why = match.get("failing") or "no slot matches"
            if parsed.policy.unmatchable == "refuse":
                self._remove_cluster(job.id, cluster, "pocketgrid: no slot of this pool matches the job")
                raise NotRunnableHere(
                    f"{self.peer_name}: no slot of this site's pool matches the job ({match.get('of', 0)} slots "
                    f"looked at): {why}; this site refuses such jobs (submit policy unmatchable = refuse)")
            job.warnings = [*(job.warnings or []), (
                f"no slot of {self.peer_name}'s pool matches this job ({match.get('of', 0)} slots looked at): {why}; "
                "it stays idle until one does (its status says why)")]
            with self._state_lock:
                self._new_unmatchable[job.id] = (cluster, n)
        self.pending.track(session, job.id, cluster, self._rolled_back)
        record_names(staged.meta_dir, staged.proc_dirs, built.stderr_paths_for(cluster))  # for a failed input's status
        for row in rows:
            session.add(row)
        log.info("job %s: cluster %d (%d procs) submitted on hold to the schedd", job.id, cluster, n)
        return rows

    def _match_at_submit(self, job_id: str, cluster: int) -> dict[str, Any] | None:
        """Does any slot match the new cluster's job ad (as the schedd stored it)?  None when unknown
        (no collector, the CLI fallback, a slow helper): the job is then accepted as before."""
        if self.via != "bindings":
            return None
        result = self._analyze([cluster], client=self.client, timeout=min(self.call_timeout, 10.0))
        return result.get(cluster)

    def committed(self, job_id: str) -> None:
        cluster = self.pending.pop(job_id)
        with self._state_lock:
            unmatchable = self._new_unmatchable.pop(job_id, None)
        if cluster is None:
            return
        self._release(job_id, cluster)
        if unmatchable is not None:  # counted now, not at the next probe: the agent reports it at once
            with self._state_lock:
                self._idle[unmatchable[0]] = unmatchable[1]
            self._update_site()

    def _release(self, job_id: str, cluster: int) -> None:
        constraint = job_constraint(job_id, [cluster], submitted_on_hold=True)
        try:
            n = self._act("release", constraint, "pocketgrid: job accepted")
            self.stats["released"] += 1
            log.info("job %s: cluster %d released (%s procs)", job_id, cluster, "?" if n is None else n)
        except CondorUnreachable as exc:
            self.last_error = str(exc)
            log.warning("job %s: releasing cluster %d failed (%s); will retry", job_id, cluster, exc)
            with self._retry_lock:
                self._retry[(job_id, cluster)] = "release"

    def _rolled_back(self, job_id: str, cluster: int) -> None:
        with self._state_lock:
            self._new_unmatchable.pop(job_id, None)
        self.stats["removed_on_rollback"] += 1
        log.info("job %s: transaction rolled back; removing its held cluster %d", job_id, cluster)
        self._remove_cluster(job_id, cluster, "pocketgrid: submission rolled back")

    def _remove_cluster(self, job_id: str, cluster: int, reason: str) -> None:
        try:
            self._act("remove", job_constraint(job_id, [cluster]), reason)
        except CondorUnreachable as exc:
            self.last_error = str(exc)
            log.warning("job %s: removing cluster %d failed (%s); will retry", job_id, cluster, exc)
            with self._retry_lock:
                self._retry[(job_id, cluster)] = "remove"

    # ---- removal -----------------------------------------------------------
    def remove(self, job_id: str) -> int:
        """Remove the job's procs still in the queue; how many.

        Quick whatever the schedd does: when the last probe found it not
        answering, or it does not answer within ``removal_timeout``, the
        removal is remembered (in the settings table too, so it survives a
        restart) and :class:`RemovalPending` says so in a short sentence; the
        probe loop carries it out as soon as the schedd answers again.
        """
        if self.health.state == "unreachable":
            self._remember_removal(job_id, self.health.last_error or "the schedd is not answering")
            raise RemovalPending(PENDING_REMOVAL)
        try:
            return self._remove_now(job_id, timeout=self.removal_timeout)
        except CondorUnreachable as exc:
            self._unreachable(str(exc))
            self._remember_removal(job_id, str(exc))
            raise RemovalPending(PENDING_REMOVAL) from None

    def _remove_now(self, job_id: str, *, timeout: float | None = None) -> int:
        with self.db.sessions() as s:
            clusters = sorted(set(s.scalars(
                select(Proc.cluster).where(Proc.job_id == job_id, Proc.executor == self.name))))
        if not clusters:
            return 0
        constraint = job_constraint(job_id, clusters)
        deadline = None if timeout is None else time.monotonic() + timeout
        # Ask first: a finished job has left the queue, and acting on nothing is an error for some
        # HTCondor versions of condor_rm (and perhaps of Schedd.act); "nothing left" is 0, not a failure.
        if not self._query(constraint, ["ProcId"], timeout=timeout):
            return 0
        n = self._act("remove", constraint, "via pocketgrid (removed by its owner)",
                      timeout=None if deadline is None else max(1.0, deadline - time.monotonic()))
        if n is None:  # an old condor_rm without -totals: it said it worked, not how many
            with self.db.sessions() as s:
                n = len(s.scalars(select(Proc.id).where(Proc.job_id == job_id, Proc.executor == self.name)).all())
        return n

    def _remember_removal(self, job_id: str, why: str) -> None:
        log.warning("job %s: the schedd is not answering (%s); the removal will be carried out when it answers",
                    job_id, _one_line(why, 300))
        with self._state_lock:
            if job_id in self._pending_removals:
                return
            self._pending_removals[job_id] = time.time()
            self._save_pending_removals()
            self._stamp += 1

    def _save_pending_removals(self) -> None:
        """Persist the pending removals (called with ``_state_lock`` held)."""
        with self.db.session() as s:
            row = s.get(Setting, PENDING_REMOVALS_KEY)
            if row is None:
                s.add(Setting(key=PENDING_REMOVALS_KEY, value=dict(self._pending_removals)))
            else:
                row.value = dict(self._pending_removals)

    def _load_pending_removals(self) -> None:
        with self.db.sessions() as s:
            row = s.get(Setting, PENDING_REMOVALS_KEY)
            value = row.value if row is not None and isinstance(row.value, dict) else {}
        with self._state_lock:
            self._pending_removals = {str(k): float(v) for k, v in value.items()}
            self._stamp += 1
        if self._pending_removals:
            log.info("%d removal(s) asked for while the schedd was not answering: carried out when it answers",
                     len(self._pending_removals))

    def _carry_out_removals(self) -> None:
        with self._state_lock:
            pending = dict(self._pending_removals)
        for job_id, since in pending.items():
            try:
                n = self._remove_now(job_id)
            except CondorUnreachable as exc:
                self._unreachable(str(exc))
                return
            log.info("job %s: the removal asked for %.0f s ago was carried out (%d procs)", job_id,
                     time.time() - since, n)
            with self._state_lock:
                self._pending_removals.pop(job_id, None)
                self._save_pending_removals()
                self._stamp += 1

    def remove_proc(self, job_id: str, index: int, reason: str) -> str:
        """Remove one input's proc (``condor_rm`` of ``cluster.proc``, matched on the piece too)."""
        with self.db.sessions() as s:
            row = s.scalars(select(Proc).where(Proc.job_id == job_id, Proc.index == index,
                                               Proc.executor == self.name)).first()
            if row is None:
                return "gone"
            cluster, proc = row.cluster, row.proc
        constraint = proc_constraint(job_id, cluster, proc)
        if self.health.state == "unreachable":  # quick: the home asks again next round
            raise Unavailable(f"{self.peer_name}: the HTCondor schedd did not answer the removal: it is not "
                              "answering; asked again later", retry_after=10)
        try:
            if not self._query(constraint, ["ProcId"], timeout=self.removal_timeout):
                return "stopped"  # it left the queue (finished, or removed before)
            self._act("remove", constraint, f"via pocketgrid ({reason})", timeout=self.removal_timeout)
        except CondorUnreachable as exc:
            self._unreachable(str(exc))
            raise Unavailable(f"{self.peer_name}: the HTCondor schedd did not answer the removal: {exc}",
                              retry_after=10) from None
        return "stopping"  # removed from the queue; the schedd writes "aborted" to the log once it is gone

    def release(self, job_id: str, indexes: Sequence[int]) -> int:
        """``Schedd.act(JobAction.Release)`` (or ``condor_release``) on the job's held procs among ``indexes``."""
        with self.db.sessions() as s:
            clusters = sorted(set(s.scalars(
                select(Proc.cluster).where(Proc.job_id == job_id, Proc.executor == self.name))))
        if not clusters or not indexes:
            return 0
        constraint = release_constraint(job_id, clusters, indexes)
        try:
            held = self._query(constraint, ["ProcId"])  # as for removal: acting on nothing is an error for some tools
            if not held:
                return 0
            n = self._act("release", constraint, "via pocketgrid (released by its owner)")
        except CondorUnreachable as exc:
            self._unreachable(str(exc))
            raise Unavailable(f"{self.peer_name}: the HTCondor schedd did not answer the release: {exc}",
                              retry_after=10) from None
        return len(held) if n is None else n

    # ---- reconciliation ----------------------------------------------------
    def reconcile(self, *, grace: float | None = None) -> dict[str, int]:
        """Release or remove this peer's clusters still held since submission (see module docstring).

        Only clusters queued more than ``grace`` seconds ago (by the schedd's
        clock; default: the submit timeout plus a minute) are touched, so a
        submission another thread is still committing is never removed.
        """
        if grace is None:
            grace = self.submit_timeout + 60.0
        done = {"released": 0, "removed": 0}
        with self._retry_lock:
            retry, self._retry = dict(self._retry), {}
        for (job_id, cluster), what in retry.items():
            if what == "release":
                self._release(job_id, cluster)
            else:
                self._remove_cluster(job_id, cluster, "pocketgrid: submission rolled back")
        in_flight = self.pending.clusters()
        constraint = condor_cli.join_constraints([
            f"{ATTR_PEER} =?= {quote_classad_string(self.peer_name)}",
            f"JobStatus == {HELD} && HoldReasonCode == {SUBMITTED_ON_HOLD}",
            f"QDate < time() - {int(grace)}",
        ])
        ads = self._query(constraint, ["ClusterId", "ProcId", ATTR_JOB])
        found: dict[tuple[str, int], int] = {}
        for ad in ads:
            job_id, cluster = ad.get(ATTR_JOB), ad.get("ClusterId")
            if not isinstance(job_id, str) or not isinstance(cluster, int) or cluster in in_flight:
                continue
            found[(job_id, cluster)] = found.get((job_id, cluster), 0) + 1
        if not found:
            return done
        with self.db.sessions() as s:
            known = set(s.execute(
                select(Proc.job_id, Proc.cluster).where(
                    Proc.executor == self.name, Proc.cluster.in_({c for _, c in found}))
            ).all())
        for (job_id, cluster) in found:
            if (job_id, cluster) in known:
                log.info("reconcile: job %s cluster %d was never released; releasing it", job_id, cluster)
                self._release(job_id, cluster)
                done["released"] += 1
            else:
                log.info("reconcile: cluster %d (job %s) has no job row here; removing it", cluster, job_id)
                self._remove_cluster(job_id, cluster, "pocketgrid: submission was not recorded")
                remove_orphan(self.stage_root, job_id, self._has_row)  # and what was staged for it
                done["removed"] += 1
        return done

    def _has_row(self, job_id: str) -> bool:
        with self.db.sessions() as s:
            return s.get(Job, job_id) is not None

    # ---- life cycle ----------------------------------------------------------
    def start(self) -> None:
        self._check_stage_root()
        self._load_pending_removals()
        try:
            self.reconcile(grace=0)  # nothing of ours is in flight yet: settle what a crash left
        except CondorUnreachable as exc:
            self.last_error = str(exc)
            log.warning("could not reconcile with the schedd at start: %s", exc)
        self._last_reconcile = time.monotonic()
        self._thread = threading.Thread(target=self._loop, name="condor-executor", daemon=True)
        self._thread.start()

    def _check_stage_root(self) -> None:
        root = str(self.stage_root.resolve())
        warning = scratch_mount_warning(root, _mount_under_scratch())
        if warning:
            log.warning("%s", warning)
        try:
            st = self.stage_root.stat()
            if hasattr(os, "geteuid") and st.st_uid != os.geteuid():
                log.warning("the staging directory %s belongs to uid %d, not to this peer's uid %d (the job "
                            "owner): jobs may go on hold with 'Permission denied'", root, st.st_uid, os.geteuid())
        except OSError:
            pass

    def _loop(self) -> None:
        """Every ``probe_interval``: probe the schedd (and count this peer's idle and held procs), carry
        out pending removals, refresh the match analysis of idle clusters; every ``reconcile_interval``:
        reconcile.  The first round runs at once."""
        while not self._stop.is_set():
            try:
                if self.probe_once():
                    self._carry_out_removals()
                    self._refresh_matches()
            except Exception:  # keep the loop alive whatever one round hit
                log.exception("schedd probe round failed")
            if time.monotonic() - self._last_reconcile >= self.reconcile_interval and self.health.state != "unreachable":
                self._last_reconcile = time.monotonic()
                try:
                    self.reconcile()
                except CondorUnreachable as exc:
                    self.last_error = str(exc)
                    log.warning("reconciliation with the schedd failed: %s", _one_line(str(exc), 300))
                except Exception:  # keep the loop alive whatever one round hit
                    log.exception("reconciliation round failed")
            self._stop.wait(self.probe_interval)

    # ---- the schedd's health, this site's procs, why idle procs wait ---------
    def probe_once(self) -> bool:
        """One cheap query for this peer's idle and held procs, with a deadline: the schedd's health and
        the site's counts.  Never called on a request's path: /healthz shows what the last one found."""
        try:
            rows = self._census()
        except CondorUnreachable as exc:
            self._unreachable(str(exc))
            return False
        idle: dict[int, int] = {}
        held = 0
        for cluster, _proc, status, code in rows:
            if status == HELD and code != SUBMITTED_ON_HOLD:
                held += 1
            elif status == IDLE and isinstance(cluster, int):
                idle[cluster] = idle.get(cluster, 0) + 1
        with self._state_lock:
            was = self.health.state
            self.health = ScheddHealth("ok", time.time(), self.health.last_error, self.health.last_error_at)
            self._idle, self._held = idle, held
            now = time.time()
            for cluster in [c for c, (at, _) in self._matches.items()
                            if c not in idle and now - at >= self.match_max_age]:
                del self._matches[cluster]  # no idle proc left there (a new one, still held, is kept a while)
        if was == "unreachable":
            log.info("the schedd answers again")
        self._update_site()
        return True

    def _census(self) -> list[tuple[Any, Any, Any, Any]]:
        if self.via == "bindings":
            try:
                reply = self.watch_client.call("census", timeout=self.probe_timeout, peer=self.peer_name)
            except CondorUnreachable as exc:
                raise CondorUnreachable(f"htcondor2: {exc}") from None
            if reply.get("ok"):
                return [tuple(r) for r in reply["procs"]]
            if not self._cli_usable("condor_q"):
                raise CondorUnreachable(f"htcondor2: {reply.get('error')}")
        constraint = f"{ATTR_PEER} =?= {quote_classad_string(self.peer_name)} && (JobStatus == {IDLE} || " \
                     f"JobStatus == {HELD})"
        try:
            ads = condor_cli.query(constraint, ["ClusterId", "ProcId", "JobStatus", "HoldReasonCode"],
                                   timeout=self.probe_timeout)
        except condor_cli.CondorCliError as exc:
            raise CondorUnreachable(f"condor_q: {exc}") from None
        return [(a.get("ClusterId"), a.get("ProcId"), a.get("JobStatus"), a.get("HoldReasonCode")) for a in ads]

    def _unreachable(self, error: str) -> None:
        short = _one_line(error, 300)
        with self._state_lock:
            was = self.health.state
            self.health = ScheddHealth("unreachable", time.time(), short, time.time())
        self.last_error = error
        if was != "unreachable":
            log.warning("the schedd is not answering: %s", short)

    def _refresh_matches(self) -> None:
        """Analyse the clusters with idle procs whose analysis is missing or older than the slot ads may be."""
        if self.via != "bindings":
            return  # the analysis needs the bindings (full ads, classad2); condor_q alone does not give them
        now = time.time()
        with self._state_lock:
            due = sorted(c for c in self._idle if c not in self._matches
                         or now - self._matches[c][0] >= self.match_max_age)
        if due:
            self._analyze(due, client=self.watch_client, timeout=2 * self.probe_timeout)
        self._update_site()

    def _analyze(self, clusters: Sequence[int], *, client: BindingsClient, timeout: float) -> dict[int, dict]:
        """Match analysis of these clusters (in the helper process); cached; {} when it cannot be made."""
        try:
            reply = client.call("analyze", timeout=timeout, peer=self.peer_name, clusters=list(clusters),
                                max_age=self.match_max_age)
        except CondorUnreachable as exc:
            log.info("no match analysis for clusters %s: %s", list(clusters), exc)
            return {}
        if not reply.get("ok"):
            log.info("no match analysis for clusters %s: %s", list(clusters), reply.get("error"))
            return {}
        if reply.get("slots_error"):
            log.info("match analysis: %s", reply["slots_error"])
        results = {int(c): r for c, r in (reply.get("results") or {}).items()}
        now = time.time()
        with self._state_lock:
            for cluster, result in results.items():
                old = self._matches.get(cluster)
                self._matches[cluster] = (now, result)
                if old is None or old[1] != result:
                    self._stamp += 1
        return results

    def _update_site(self) -> None:
        with self._state_lock:
            unmatchable = sum(n for c, n in self._idle.items()
                              if c in self._matches and self._matches[c][1].get("slots") == 0)
            site = {"held": self._held, "unmatchable": unmatchable, "idle": sum(self._idle.values())}
            changed = site != self._site
            self._site = site
        if changed:
            self._site_changed()

    def site_counts(self) -> dict[str, int] | None:
        with self._state_lock:
            return dict(self._site) if self._site is not None else None

    def annotation_stamp(self) -> int:
        return self._stamp

    def annotate(self, job: Job, states: Mapping[int, str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        with self._state_lock:
            if job.id in self._pending_removals:
                out["removal"] = PENDING_REMOVAL
            matches = {c: r for c, (_, r) in self._matches.items()}
        procs = {}
        for p in job.procs:
            if states.get(p.index) == "idle" and p.cluster in matches:
                procs[p.index] = {"match": dict(matches[p.cluster])}
        if procs:
            out["procs"] = procs
        return out

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self.client.close()
        self.watch_client.close()

    def describe(self) -> dict[str, object]:
        with self._retry_lock:
            retries = len(self._retry)
        with self._state_lock:
            health = self.health.to_dict()
            pending_removals = len(self._pending_removals)
            site = dict(self._site) if self._site is not None else None
        return {
            "name": self.name,
            "chosen_by": self.chosen_by,
            "via": self.via,
            "schedd": {"name": self.probe.name or self.probe.address or "local", **health},
            "schedd_address": self.probe.address,
            "pending_commits": len(self.pending),
            "pending_retries": retries,
            "pending_removals": pending_removals,
            "procs": site,
            **self.stats,
            "last_error": _one_line(self.last_error, 300) if self.last_error else None,
        }
