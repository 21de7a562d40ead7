"""A job's record at its home: the rules over its attempts (pure: no I/O, no clock of their own).

Words (docs/architecture.md, *Jobs across sites*): a **job** has inputs
``0..n-1``; each run of one input is an **attempt** (a ``JobAttempt`` row)
in a **piece** at a **site**.  An input has one *current* attempt (its
highest number) and at most one *result* (the attempt whose outputs the user
gets).  The rules here work on the ORM objects (``JobRecord``,
``JobAttempt``), attached to a session or not, so they are unit-tested as
plain functions; peer/job_manager.py applies them to what the sites report.

* **An input's view** (:func:`input_view`): the state the user sees, the
  site, the attempt number, the proc's fields, why (a note), and the history.
* **The one-result rule** (:func:`take_result`): an input's result is the
  first successful attempt the manager observes among attempts that are not
  lost (a retry's success replaces the earlier result).  An attempt declared
  lost stays lost whatever it does later; once an input has a result, every
  other attempt of it is removed at its site and its directory deleted.
* **Cleanup** (:func:`to_clean`): attempts whose site still has something to
  do (``remove``: stop it, the job was killed; ``delete``: stop it and
  delete its directory, lost or superseded), retried until the site answers.
* **Re-runs** (:func:`after_loss`): a lost current attempt is followed by a
  pending one that avoids the sites the input was lost on, after a backoff
  of ``retry_backoff * 2**(n-2)`` for the n-th attempt of the round, at most
  ``max_attempts`` per round (a round starts at submit and at each retry).
* **The document** (:func:`to_document`, :func:`from_document`): a record and
  its attempts as one JSON document (how a replica travels to a deputy).
* **Claims** (:func:`claim`, :func:`newer_claim`): which of two copies of a
  record wins: the higher manager epoch, then the higher version.
* **Takeover** (:func:`take_over`): a deputy becomes the job's manager; what
  ran at the silent manager counts as lost and runs again elsewhere.
"""
from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from sqlalchemy import inspect as sa_inspect

from .event_log import overall_state
from .holds import Verdict
from .models import JobAttempt, JobRecord

#: Attempts waiting to be sent to a site.
WAITING = frozenset({"pending"})
#: Attempts a site holds (or is being sent) and that may still change.
ACTIVE = frozenset({"dispatching", "idle", "running", "held"})
#: Attempts that are not finished.
LIVE = WAITING | ACTIVE
#: Every attempt state.
STATES = LIVE | frozenset({"completed", "failed", "removed", "lost", "superseded"})
#: The proc fields of a site's status shown per input (when known): its HTCondor cluster and proc at that
#: site, exit, hold, times, host, stderr, its past states (``history``, shown on request), why it waits.
PROC_FIELDS = ("cluster", "proc", "exit_code", "signal", "hold_reason", "hold_code", "hold_subcode", "note", "submitted_at",
               "started_at", "finished_at", "execute_host", "memory_mb", "image_size_kb", "evictions", "retries",
               "stderr_file", "stderr_tail", "history", "match")
#: Cleanup values still to carry out at a site -> what is recorded once done.
CLEANUP_DONE = {"remove": "removed", "delete": "deleted", "purge": "purged"}


@dataclass(frozen=True)
class Limits:
    """How hard the manager tries an input on other sites after site failures."""

    max_attempts: int = 4
    retry_backoff: float = 5.0
    max_evictions: int = 3

    def backoff(self, n: int) -> float:
        """Seconds the n-th attempt of a round waits before it is sent: ``retry_backoff * 2**(n-2)``."""
        return 0.0 if n < 2 else self.retry_backoff * 2 ** (n - 2)


# ---- grouping ----------------------------------------------------------------
def by_input(attempts: Iterable[JobAttempt]) -> dict[int, list[JobAttempt]]:
    """Attempts per input index, each list in attempt order."""
    out: dict[int, list[JobAttempt]] = defaultdict(list)
    for a in attempts:
        out[a.index].append(a)
    for atts in out.values():
        atts.sort(key=lambda a: a.number)
    return dict(out)


def current(atts: Sequence[JobAttempt]) -> JobAttempt:
    """The input's current attempt: its latest."""
    return max(atts, key=lambda a: a.number)


def result_of(atts: Sequence[JobAttempt]) -> JobAttempt | None:
    return next((a for a in atts if a.result), None)


def round_start(atts: Sequence[JobAttempt], number: int) -> int:
    """The number of the attempt that began the round ``number`` belongs to (the submit, or a retry)."""
    starts = [a.number for a in atts if a.retry and a.number <= number]
    return max(starts, default=1)


def round_of(atts: Sequence[JobAttempt]) -> list[JobAttempt]:
    """The attempts of the input's latest round."""
    start = round_start(atts, current(atts).number)
    return [a for a in atts if a.number >= start]


def input_finished(atts: Sequence[JobAttempt]) -> bool:
    """True when the input has a result or a final verdict (nothing waits or runs)."""
    return current(atts).state not in LIVE


def record_finished(record: JobRecord) -> bool:
    groups = by_input(record.attempts)
    return len(groups) == len(record.inputs) and all(input_finished(atts) for atts in groups.values())


# ---- creating attempts ---------------------------------------------------------
def first_attempts(record: JobRecord, now: float) -> list[JobAttempt]:
    """Attempt 1 of every input, pending (a new record)."""
    return [JobAttempt(job_id=record.id, index=i, number=1, state="pending", created_at=now, avoid=[], status={},
                       retry=False, result=False) for i in range(len(record.inputs))]


def lost_sites(atts: Sequence[JobAttempt]) -> list[str]:
    return sorted({a.site for a in atts if a.state == "lost" and a.site})


def after_loss(record: JobRecord, atts: Sequence[JobAttempt], lost: JobAttempt, now: float,
               limits: Limits) -> JobAttempt | None:
    """The attempt that runs an input again after ``lost`` — None when there is none to start:
    the job was killed, ``lost`` is not the input's current attempt, or its round has had
    ``max_attempts`` attempts (the input has failed, for ``lost``'s reason)."""
    if record.removed_at is not None or lost is not current(atts):
        return None
    n = len(round_of(atts)) + 1
    if n > limits.max_attempts:
        return None
    return JobAttempt(job_id=record.id, index=lost.index, number=lost.number + 1, state="pending",
                      created_at=now, not_before=now + limits.backoff(n), avoid=lost_sites(atts), status={},
                      retry=False, result=False)


def retry_attempt(record: JobRecord, atts: Sequence[JobAttempt], now: float) -> JobAttempt:
    """A new round for a finished input, started by its owner (not counted against the earlier rounds)."""
    return JobAttempt(job_id=record.id, index=atts[0].index, number=current(atts).number + 1, state="pending",
                      created_at=now, avoid=[], status={}, retry=True, result=False)


# ---- verdicts and the one-result rule ------------------------------------------
def _end(a: JobAttempt, state: str, reason: str | None, now: float) -> None:
    a.state = state
    a.reason = reason
    a.finished_at = a.finished_at or now


def _schedule(a: JobAttempt, what: str) -> None:
    """Ask ``a``'s site to ``remove`` or ``delete`` it (nothing for an attempt no site holds)."""
    if a.site is None:
        return
    if what == "delete" and a.cleanup not in ("delete", "deleted"):
        a.cleanup = "delete"
    elif what == "remove" and a.cleanup is None:
        a.cleanup = "remove"


def supersede(a: JobAttempt, reason: str, now: float) -> None:
    """``a`` will never be the input's result: stop it and delete its directory at its site."""
    if a.state in LIVE:
        _end(a, "superseded", reason, now)
    else:
        a.reason = f"{a.reason}; {reason}" if a.reason else reason
    a.result = False
    _schedule(a, "delete")


def take_result(atts: Sequence[JobAttempt], a: JobAttempt, now: float) -> bool:
    """The one-result rule for a successful, not lost, attempt ``a``: returns True if it is the result.

    It is, when the input has none yet, or when ``a`` belongs to a later
    round (a retry) than the result it has; then every other attempt of the
    input is superseded.  Otherwise ``a`` itself is (a late duplicate).
    """
    res = result_of(atts)
    if res is not None and res is not a and round_start(atts, a.number) <= res.number:
        supersede(a, f"attempt {res.number} had already given the result", now)
        return False
    a.result = True
    for other in atts:
        if other is a or other.state in ("lost", "superseded"):
            continue
        supersede(other, f"attempt {a.number} gave the result", now)
    return True


def lose(record: JobRecord, atts: Sequence[JobAttempt], a: JobAttempt, reason: str, now: float,
         limits: Limits) -> JobAttempt | None:
    """Declare ``a`` lost (for good: whatever it does later), schedule its cleanup, and return the
    attempt that runs the input again, if any (see :func:`after_loss`)."""
    _end(a, "lost", reason, now)
    a.result = False
    _schedule(a, "delete")
    return after_loss(record, atts, a, now, limits)


def apply_verdict(record: JobRecord, atts: Sequence[JobAttempt], a: JobAttempt, verdict: Verdict,
                  proc: Mapping[str, Any], now: float, limits: Limits) -> JobAttempt | None:
    """Fold a site's proc status into attempt ``a``; returns a new attempt when the input must run again.

    An attempt already lost, superseded or removed by its owner keeps that
    state: a site that comes back late can give a job no second result.
    """
    if a.state in ("lost", "superseded", "removed"):
        return None
    a.status = {k: v for k, v in proc.items() if k in PROC_FIELDS and v is not None}
    if proc.get("started_at") and not a.started_at:
        a.started_at = proc["started_at"]
    kind = verdict.kind
    if kind == "active":
        a.state = proc.get("state") if proc.get("state") in ("idle", "running") else "idle"
        return None
    if kind == "held":
        a.state = "held"
        a.reason = verdict.reason
        return None
    if kind == "completed":
        if a.state != "completed":
            _end(a, "completed", verdict.reason, proc.get("finished_at") or now)
            take_result(atts, a, now)
        return None
    if kind == "failed":
        _end(a, "failed", verdict.reason, proc.get("finished_at") or now)
        return None
    if kind == "removed":
        _end(a, "removed", verdict.reason, now)
        return None
    return lose(record, atts, a, verdict.reason or "lost", now, limits)


# ---- kill and retry ----------------------------------------------------------------
def kill(record: JobRecord, now: float) -> int:
    """Mark the job removed: every unfinished attempt ends ``removed`` and, where a site holds it, is
    to be removed there (now, or when the site answers).  Returns how many inputs this stopped."""
    record.removed_at = record.removed_at or now
    stopped = 0
    for atts in by_input(record.attempts).values():
        hit = False
        for a in atts:
            if a.state in LIVE:
                _end(a, "removed", "removed by its owner", now)
                _schedule(a, "remove")
                hit = True
        stopped += hit
    return stopped


def retryable(record: JobRecord, *, indexes: Sequence[int] | None = None, failed: bool = False) -> list[int]:
    """The inputs a retry would start again: finished ones among ``indexes``, or (``failed``) those
    whose view is failed.  Raises ValueError naming an index that cannot be retried."""
    groups = by_input(record.attempts)
    chosen: list[int] = []
    if indexes is not None:
        for i in indexes:
            if i not in groups:
                raise ValueError(f"the job has no input {i} (it has {len(record.inputs)}: 0 to {len(record.inputs) - 1})")
            if not input_finished(groups[i]):
                raise ValueError(f"input {i} is still {view_state(groups[i])}: only a finished input runs again")
            chosen.append(i)
    if failed:
        chosen += [i for i, atts in sorted(groups.items()) if view_state(atts) == "failed" and i not in chosen]
    return sorted(set(chosen))


def retry(record: JobRecord, indexes: Sequence[int], now: float) -> list[JobAttempt]:
    """Start a new round for each of ``indexes`` (finished inputs); the job is no longer finished or removed."""
    groups = by_input(record.attempts)
    new = [retry_attempt(record, groups[i], now) for i in indexes]
    record.removed_at = None
    record.finished_at = None
    return new


# ---- sites ----------------------------------------------------------------------------
def lose_site(record: JobRecord, site: str, reason: str, now: float, limits: Limits,
              pieces: set[str] | None = None) -> list[JobAttempt]:
    """``site`` is gone (or no longer knows ``pieces``): every attempt there that may still change,
    and, while the job is unfinished, the results there (their outputs are out of reach), are lost.
    Returns the attempts that run those inputs again."""
    new = []
    groups = by_input(record.attempts)
    unfinished = record.finished_at is None
    for atts in groups.values():
        for a in list(atts):
            if a.site != site or (pieces is not None and a.piece not in pieces):
                continue
            if a.state in ACTIVE or (unfinished and a.state == "completed" and a.result):
                successor = lose(record, atts, a, reason, now, limits)
                if successor is not None:
                    new.append(successor)
                    atts.append(successor)
    return new


def to_clean(attempts: Iterable[JobAttempt]) -> list[JobAttempt]:
    """Attempts with something still to do at their site, whose piece is known (one being sent waits)."""
    return [a for a in attempts if a.cleanup in CLEANUP_DONE and a.piece is not None]


# ---- what the user sees ------------------------------------------------------------
def view_state(atts: Sequence[JobAttempt]) -> str:
    """The input's state for the user: idle, running, held, completed, failed or removed."""
    cur = current(atts)
    has_result = result_of(atts) is not None
    if cur.state in ("pending", "dispatching", "idle"):
        return "idle"
    if cur.state in ("running", "held", "completed"):
        return cur.state
    if has_result:  # a retry that did not succeed keeps the earlier result
        return "completed"
    if cur.state == "lost":
        return "failed"  # lost on max_attempts sites: given up
    if cur.state == "superseded":
        return "removed"
    return cur.state  # failed, removed


def _history(atts: Sequence[JobAttempt]) -> list[dict[str, Any]]:
    return [
        {"attempt": a.number, "site": a.site, "piece": a.piece, "state": a.state,
         "created_at": a.created_at, "dispatched_at": a.dispatched_at, "started_at": a.started_at,
         "finished_at": a.finished_at, "reason": a.reason, "result": bool(a.result), "retry": bool(a.retry),
         **({"cleanup": a.cleanup} if a.cleanup else {})}
        for a in atts
    ]


def _note(record: JobRecord, atts: Sequence[JobAttempt], state: str, now: float,
          unreachable: frozenset[str]) -> str | None:
    cur = current(atts)
    previous = [a for a in atts if a.number < cur.number]
    if cur.state == "pending" and previous and previous[-1].state == "lost":
        lost = previous[-1]
        note = f"lost on {lost.site}: {lost.reason}; runs again elsewhere (attempt {cur.number})"
        if cur.not_before and cur.not_before > now:
            note += f" in {cur.not_before - now:.0f} s"
        return note
    if cur.state == "lost" and state == "failed":
        sites = ", ".join(lost_sites(atts))
        return f"gave up after {len(round_of(atts))} attempts (lost on {sites}); last: {cur.reason}"
    if cur.state == "pending" and cur.refused:
        return "; ".join(f"refused by {site}: {r.get('message')}" for site, r in sorted(cur.refused.items())) \
            + f"; placed again without {'it' if len(cur.refused) == 1 else 'them'}"
    if cur.state == "failed" and cur.site is None and cur.reason:  # failed before any site ran it
        return cur.reason
    if state == "removed" and cur.state == "removed" and cur.reason:  # killed, or its own periodic_remove
        return cur.reason
    if cur.state in ("failed", "removed", "lost") and state == "completed" and cur.retry:
        res = result_of(atts)
        return f"the retry (attempt {cur.number}) ended {cur.state}: {cur.reason}; the result of attempt " \
               f"{res.number if res else '?'} is kept"
    if state == "completed":
        res = result_of(atts)
        if res is not None and res.site in unreachable:
            return f"its outputs are on {res.site}, which does not answer now"
    return None


def removal(atts: Sequence[JobAttempt], unreachable: frozenset[str] = frozenset()) -> str | None:
    """A kill of this input that a site has not carried out yet, in words (None when there is none):
    the site does not answer, or it answered that its schedd does not (it remembers the removal)."""
    parts = []
    for a in atts:
        if a.cleanup != "remove" or not a.site:
            continue
        if a.site in unreachable:
            parts.append(f"pending at {a.site}: it does not answer; it will be carried out when it does")
        elif (a.status or {}).get("removal"):
            said = str(a.status["removal"])
            parts.append(f"pending at {a.site}: {said.removeprefix('pending: ')}")
        else:
            parts.append(f"under way at {a.site}")
    return "; ".join(dict.fromkeys(parts)) or None


def shown_attempt(atts: Sequence[JobAttempt]) -> JobAttempt:
    """The attempt whose fields (and outputs) the user sees: the result once nothing newer runs."""
    cur = current(atts)
    res = result_of(atts)
    return res if res is not None and cur.state not in LIVE else cur


def input_view(record: JobRecord, index: int, atts: Sequence[JobAttempt], *, history: bool = False,
               now: float | None = None, unreachable: frozenset[str] = frozenset()) -> dict[str, Any]:
    """One input as the user sees it (the job status's ``inputs[i]``)."""
    now = time.time() if now is None else now
    state = view_state(atts)
    shown = shown_attempt(atts)
    meta = record.inputs[index] if index < len(record.inputs) else {}
    d: dict[str, Any] = {"index": index, "input": meta.get("name"), "state": state, "site": shown.site,
                         "attempt": current(atts).number}
    if shown.state not in ("lost", "superseded") or state == "completed":
        for k, v in (shown.status or {}).items():
            if v is None or (k in ("evictions", "retries") and not v) or (k.startswith("hold_") and state != "held"):
                continue
            d[k] = v
    if d.get("match") is not None and state != "idle":
        del d["match"]  # why it waited: only while it does
    d.pop("removal", None)
    note = _note(record, atts, state, now, unreachable)
    if note:
        d["note"] = note
    pending = removal(atts, unreachable)
    if pending:
        d["removal"] = pending
    if history:
        d["attempts"] = _history(atts)
    return d


def expires_at(record: JobRecord, retention_seconds: float) -> float | None:
    """When the retention sweeper removes the job (None: while it runs, when pinned, or kept for ever)."""
    if record.finished_at is None or record.pinned or retention_seconds <= 0:
        return None
    return record.finished_at + retention_seconds


def render(record: JobRecord, *, history: bool = False, now: float | None = None,
           unreachable: frozenset[str] = frozenset(), retention_seconds: float = 0.0) -> dict[str, Any]:
    """The job's status: the same top-level shape as a job had before pieces existed."""
    groups = by_input(record.attempts)
    inputs = [input_view(record, i, groups[i], history=history, now=now, unreachable=unreachable)
              for i in sorted(groups)]
    counts: dict[str, int] = {}
    for i in inputs:
        counts[i["state"]] = counts.get(i["state"], 0) + 1
    removals = list(dict.fromkeys(i["removal"] for i in inputs if i.get("removal")))
    extra: dict[str, Any] = {"removal": "; ".join(removals)} if removals else {}
    return {
        "id": record.id,
        "name": record.name,
        "peer": record.home,
        #: The peer driving the job now: its home, or the deputy that took it over (peer/replicas.py).
        "manager": record.manager,
        #: Bumped whenever what this status says changed: the ETag.
        "version": record.version,
        "owner": record.owner,
        "created_at": record.created_at,
        "state": overall_state(i["state"] for i in inputs),
        "counts": counts,
        "sites": sorted({i["site"] for i in inputs if i.get("site")}),
        "inputs": inputs,
        "warnings": list(record.warnings or []),
        #: Retention (peer/retention.py): a pinned job is kept; else it goes at expires_at.
        "pinned": bool(record.pinned),
        "finished_at": record.finished_at,
        "expires_at": expires_at(record, retention_seconds),
        **extra,
    }


def summary(record: JobRecord) -> dict[str, Any]:
    """``state`` and ``counts`` (what the job list shows), from the attempts."""
    groups = by_input(record.attempts)
    states = [view_state(atts) for _, atts in sorted(groups.items())]
    counts: dict[str, int] = {}
    for s in states:
        counts[s] = counts.get(s, 0) + 1
    return {"state": overall_state(states), "counts": counts}


# ---- one JSON document ------------------------------------------------------------
def _columns(obj: Any) -> dict[str, Any]:
    return {c.key: getattr(obj, c.key) for c in sa_inspect(type(obj)).column_attrs}


def to_document(record: JobRecord) -> dict[str, Any]:
    """The record and its attempts as one JSON-serialisable document."""
    return {"record": _columns(record), "attempts": [_columns(a) for a in record.attempts]}


def from_document(doc: Mapping[str, Any]) -> JobRecord:
    """A new (transient) record with its attempts from :func:`to_document`'s output."""
    record_keys = {c.key for c in sa_inspect(JobRecord).column_attrs}
    attempt_keys = {c.key for c in sa_inspect(JobAttempt).column_attrs}
    unknown = set(doc.get("record", {})) - record_keys
    if unknown:
        raise ValueError(f"unknown record fields: {', '.join(sorted(unknown))}")
    record = JobRecord(**dict(doc["record"]))
    for item in doc.get("attempts", []):
        extra = set(item) - attempt_keys
        if extra:
            raise ValueError(f"unknown attempt fields: {', '.join(sorted(extra))}")
        if item.get("state") not in STATES:
            raise ValueError(f"unknown attempt state {item.get('state')!r}")
        record.attempts.append(JobAttempt(**dict(item)))
    return record


# ---- replicas: claims and takeover (peer/replicas.py applies them) --------------------------
def claim(record: JobRecord | Mapping[str, Any]) -> tuple[int, int]:
    """A copy's claim: (manager epoch, version).  Of two copies of a record the higher claim is the
    newer; a takeover raises the epoch, so a new manager's copy beats anything its predecessor wrote."""
    if isinstance(record, Mapping):
        return int(record.get("manager_epoch") or 1), int(record.get("version") or 0)
    return int(record.manager_epoch or 1), int(record.version or 0)


def newer_claim(local: tuple[int, int] | None, incoming: tuple[int, int]) -> str:
    """``"newer"`` (apply the incoming copy), ``"same"`` (nothing to do) or ``"older"`` (refuse it: the
    sender is out of date and must yield to the local copy)."""
    if local is None or incoming > local:
        return "newer"
    return "same" if incoming == local else "older"


def being_sent(record: JobRecord) -> list[JobAttempt]:
    """The attempts whose piece was being sent when the record was last written: no piece ID yet."""
    return [a for a in record.attempts if a.state == "dispatching" and a.piece is None and a.piece_key]


def take_over(record: JobRecord, me: str, reason: str, now: float, limits: Limits,
              found: Mapping[str, str] | None = None) -> list[JobAttempt]:
    """``me`` (the deputy) becomes the job's manager, one epoch up, because its manager is silent.

    The silent manager counts as a lost site: what may still change there, and its results while the
    job is unfinished, are lost and run again elsewhere (:func:`lose_site`).  A piece that was being
    sent when the manager died is adopted when its site says it made it (``found``: origin key ->
    piece ID, asked by the new manager: the send succeeded, only its answer was lost); the other
    sends are lost and run again elsewhere.  Returns the new attempts (already in ``record.attempts``).
    """
    old = record.manager
    record.manager = me
    record.manager_epoch = int(record.manager_epoch or 1) + 1
    record.deputy = None  # the new manager chooses its own deputy
    record.replica_version = None
    for a in being_sent(record):
        piece = (found or {}).get(a.piece_key)
        if piece is not None and a.site != old:
            a.piece, a.state = piece, "idle"  # as a send's answer would have made it
    new = lose_site(record, old, reason, now, limits)
    record.attempts.extend(new)
    for a in list(record.attempts):
        if a.state == "dispatching" and a.piece is None:
            atts = by_input(record.attempts)[a.index]
            successor = lose(record, atts, a, f"{reason} while its piece was being sent", now, limits)
            if successor is not None:
                record.attempts.append(successor)
                new.append(successor)
    for a in record.attempts:
        if a.piece is None and a.cleanup in ("remove", "delete"):
            a.cleanup = None  # a piece sent under the old manager's name: not ours to find by its key
    return new
