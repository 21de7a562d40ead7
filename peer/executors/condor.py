"""CondorExecutor: run each job on the site's HTCondor schedd.

One job = one cluster, one proc per input (``Schedd.submit`` with
``itemdata``: ``input``, ``input_index``, ``proc_dir`` per row), built by
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
   (rolled back, or a submission whose answer was lost).  Clusters still in
   flight in this process are skipped.

Each proc carries ``PocketgridJob``, ``PocketgridPeer`` and
``PocketgridIndex`` in its job ad (the user's own ``+Pocketgrid*`` and
``hold`` are dropped); kill and reconciliation match on them as well as on
the cluster ID, so a reused cluster number can never hit another job.

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
* Keep the state directory off ``/tmp``: HTCondor services often run with a
  private ``/tmp``.
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

from pocketgrid.errors import BadGateway, Unavailable

from ..db import Database
from ..models import Job, Proc
from ..staging import StagedJob
from ..proc_stderr import record_names
from ..submit_description import CondorSubmission, ParsedSubmit, condor_submission
from . import condor_cli
from .base import Executor

log = logging.getLogger(__name__)

#: HoldReasonCode of a job submitted with ``hold = true`` (condor_holdcodes.h: SubmittedOnHold).
SUBMITTED_ON_HOLD = 15
#: JobStatus of a held job.
HELD = 5

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
    )
    return condor_table(list(built.submit.items()), job_id=job_id, peer_name=peer_name), built


def proc_rows(job_id: str, input_names: Sequence[str], *, cluster: int, first_proc: int, num_procs: int,
              executor: str = "condor") -> list[Proc]:
    """One Proc row per input: input ``i`` is proc ``first_proc + i`` (itemdata order).

    Refuses a submission whose proc count differs from the number of inputs.
    """
    if num_procs != len(input_names):
        raise ValueError(f"the schedd created {num_procs} procs for {len(input_names)} inputs")
    if cluster <= 0 or first_proc < 0:
        raise ValueError(f"impossible job id {cluster}.{first_proc}")
    return [
        Proc(job_id=job_id, index=i, input_name=name, executor=executor, cluster=cluster, proc=first_proc + i,
             local_state="submitted")
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
    ) -> None:
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

    def _act(self, action: str, constraint: str, reason: str) -> int | None:
        """Remove/Release/Hold the matching procs; returns how many changed (None = unknown)."""
        errors = []
        if self.via == "bindings":
            try:
                r = self._bindings("act", self.call_timeout, action=action.capitalize(), constraint=constraint,
                                   reason=reason)
                return int(r.get("TotalSuccess", 0))
            except (CondorUnreachable, CondorRefused) as exc:
                errors.append(f"htcondor2: {exc}")
                tool = condor_cli._ACT_TOOLS[action]
                if not self._cli_usable(tool):
                    raise CondorUnreachable("; ".join(errors)) from None
                self.stats["cli_fallbacks"] += 1
        try:
            totals = condor_cli.act(action, constraint, reason=reason, timeout=self.call_timeout)
        except condor_cli.CondorCliError as exc:
            errors.append(f"{condor_cli._ACT_TOOLS[action]}: {exc}")
            raise CondorUnreachable("; ".join(errors)) from None
        return totals.succeeded if totals.known else None

    def _query(self, constraint: str, projection: list[str]) -> list[dict[str, Any]]:
        if self.via == "bindings":
            try:
                return self._bindings("query", self.call_timeout, constraint=constraint, projection=projection)["ads"]
            except (CondorUnreachable, CondorRefused) as exc:
                if not self._cli_usable("condor_q"):
                    raise CondorUnreachable(f"htcondor2: {exc}") from None
        try:
            return condor_cli.query(constraint, projection, timeout=self.call_timeout)
        except condor_cli.CondorCliError as exc:
            raise CondorUnreachable(f"condor_q: {exc}") from None

    # ---- submission --------------------------------------------------------
    def prepare(self, session: Session, job: Job, staged: StagedJob, parsed: ParsedSubmit) -> list[Proc]:
        table, built = _submission(parsed, staged, job_id=job.id, peer_name=self.peer_name)
        try:
            cluster, first, n = self._submit(table, built.itemdata, staged.meta_dir)
        except CondorUnreachable as exc:
            self.last_error = str(exc)
            raise Unavailable(f"{self.peer_name}: the HTCondor schedd did not take the job: {exc}",
                              retry_after=10) from None
        self.stats["submitted"] += 1
        try:
            rows = proc_rows(job.id, staged.input_names, cluster=cluster, first_proc=first, num_procs=n)
        except ValueError as exc:
            self._remove_cluster(job.id, cluster, "pocketgrid: unexpected submission result")
            raise BadGateway(f"{self.peer_name}: {exc}") from None
        self.pending.track(session, job.id, cluster, self._rolled_back)
        record_names(staged.meta_dir, staged.proc_dirs, built.stderr_paths_for(cluster))  # for a failed input's status
        for row in rows:
            session.add(row)
        log.info("job %s: cluster %d (%d procs) submitted on hold to the schedd", job.id, cluster, n)
        return rows

    def committed(self, job_id: str) -> None:
        cluster = self.pending.pop(job_id)
        if cluster is None:
            return
        self._release(job_id, cluster)

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
        with self.db.sessions() as s:
            clusters = sorted(set(s.scalars(
                select(Proc.cluster).where(Proc.job_id == job_id, Proc.executor == self.name))))
        if not clusters:
            return 0
        constraint = job_constraint(job_id, clusters)
        try:
            # Ask first: a finished job has left the queue, and acting on nothing is an error for some
            # HTCondor versions of condor_rm (and perhaps of Schedd.act); "nothing left" is 0, not a failure.
            if not self._query(constraint, ["ProcId"]):
                return 0
            n = self._act("remove", constraint, "via pocketgrid (removed by its owner)")
        except CondorUnreachable as exc:
            self.last_error = str(exc)
            raise Unavailable(f"{self.peer_name}: the HTCondor schedd did not answer the removal: {exc}",
                              retry_after=10) from None
        if n is None:  # an old condor_rm without -totals: it said it worked, not how many
            with self.db.sessions() as s:
                n = len(s.scalars(select(Proc.id).where(Proc.job_id == job_id, Proc.executor == self.name)).all())
        return n

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
            self.last_error = str(exc)
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
                done["removed"] += 1
        return done

    # ---- life cycle ----------------------------------------------------------
    def start(self) -> None:
        self._check_stage_root()
        try:
            self.reconcile(grace=0)  # nothing of ours is in flight yet: settle what a crash left
        except CondorUnreachable as exc:
            self.last_error = str(exc)
            log.warning("could not reconcile with the schedd at start: %s", exc)
        self._thread = threading.Thread(target=self._loop, name="condor-executor", daemon=True)
        self._thread.start()

    def _check_stage_root(self) -> None:
        root = str(self.stage_root.resolve())
        if root == "/tmp" or root.startswith("/tmp/") or root.startswith("/var/tmp/"):
            log.warning("the staging directory %s is under /tmp: HTCondor daemons often run with a private /tmp "
                        "and would not see it; use a state directory elsewhere in production", root)
        try:
            st = self.stage_root.stat()
            if hasattr(os, "geteuid") and st.st_uid != os.geteuid():
                log.warning("the staging directory %s belongs to uid %d, not to this peer's uid %d (the job "
                            "owner): jobs may go on hold with 'Permission denied'", root, st.st_uid, os.geteuid())
        except OSError:
            pass

    def _loop(self) -> None:
        while not self._stop.wait(self.reconcile_interval):
            try:
                self.reconcile()
            except CondorUnreachable as exc:
                self.last_error = str(exc)
                log.warning("reconciliation with the schedd failed: %s", exc)
            except Exception:  # keep the loop alive whatever one round hit
                log.exception("reconciliation round failed")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self.client.close()

    def describe(self) -> dict[str, object]:
        with self._retry_lock:
            retries = len(self._retry)
        return {
            "name": self.name,
            "chosen_by": self.chosen_by,
            "via": self.via,
            "schedd": self.probe.name or self.probe.address or "local",
            "schedd_address": self.probe.address,
            "pending_commits": len(self.pending),
            "pending_retries": retries,
            **self.stats,
            "last_error": self.last_error,
        }
