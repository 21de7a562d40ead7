"""The job policy a LocalExecutor proc's runner honours, as HTCondor's schedd and shadow would.

A submit file means the same at every site, or is refused where it cannot
(peer/submit_description.py ``LOCAL_UNHONOURED``).  These commands are
honoured here, evaluated with HTCondor's ClassAd library against the proc's
job ad (its requests, the user's ``+Attr``, and what the runner knows of
the proc: ``JobStatus``, ``EnteredCurrentStatus``, ``JobCurrentStartDate``,
``NumJobStarts``, ``NumJobCompletions``, ``RemoteWallClockTime``,
``MemoryUsage``/``ResidentSetSize``, and at exit ``ExitCode``,
``ExitBySignal``, ``ExitSignal``):

* ``periodic_hold`` (+ ``_reason``, ``_subcode``) and ``periodic_remove``:
  when the runner starts the proc (``JobStatus`` 1, idle) and then every
  :data:`PERIODIC_SECONDS` while it runs (``JobStatus`` 2).  True: the proc is
  stopped and held (HoldReasonCode 3, *JobPolicy*) or removed, with
  HTCondor's reason text ("The job attribute PeriodicHold expression '...'
  evaluated to TRUE") unless the submit file gives one.
* ``on_exit_hold`` (+ ``_reason``, ``_subcode``): at exit; true: held.
* ``on_exit_remove``: at exit; false: the proc runs again (HTCondor requeues it).
* ``max_retries``, ``retry_until``, ``success_exit_code``: at exit, a proc
  that did not succeed (exit code other than ``success_exit_code``, default
  0, or killed by a signal) runs again until it has run ``max_retries`` + 1
  times (``DEFAULT_JOB_MAX_RETRIES``, 2, when only the other two are given)
  or ``retry_until`` is true (an integer: that exit code); with
  ``on_exit_remove`` too, either lets it leave the queue (condor_submit ORs
  them).

``periodic_*`` take precedence over ``on_exit_*``, and ``*_hold`` over
``*_remove``, as the condor_submit manual says.

An expression that does not evaluate to true (false, undefined, an error)
does nothing, as in HTCondor.  The schedd evaluates periodic expressions
every ``PERIODIC_EXPR_INTERVAL`` (60 s by default); here it is every
:data:`PERIODIC_SECONDS`, and a proc that waits in the queue is judged when
a slot frees for it rather than while it waits.

This module runs in the runner process (a child of the peer, never the peer
itself): evaluating a user's expression is evaluating user text.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Mapping

#: Seconds between two evaluations of the periodic expressions while a proc runs (the first one
#: after :data:`FIRST_CHECK_SECONDS`).
PERIODIC_SECONDS = 5.0
FIRST_CHECK_SECONDS = 1.0
#: HoldReasonCode of a hold by the job's own policy (condor_holdcodes.h: JobPolicy).
JOB_POLICY = 3
IDLE, RUNNING = 1, 2


@dataclass(frozen=True)
class Verdict:
    """What the policy decided: ``hold``, ``remove``, ``requeue`` or ``done`` (leave the queue)."""

    action: str
    reason: str = ""
    code: int = 0
    subcode: int = 0


DONE = Verdict("done")


class JobPolicy:
    """The proc's job ad and the policy expressions of its submit file (``spec["policy"]``)."""

    def __init__(self, job_ad: str | None, policy: Mapping[str, str], *, cluster: int, proc: int,
                 qdate: float | None = None, default_max_retries: int = 2) -> None:
        import classad2

        self.classad2 = classad2
        #: HTCondor's DEFAULT_JOB_MAX_RETRIES: max_retries when only retry_until or success_exit_code is given.
        self.default_max_retries = default_max_retries
        self.policy = dict(policy)
        self.ad = classad2.ClassAd(job_ad) if job_ad else classad2.ClassAd()
        self.ad["ClusterId"] = int(cluster)
        self.ad["ProcId"] = int(proc)
        self.ad["QDate"] = int(qdate if qdate is not None else time.time())
        for attr, text in self.policy.items():
            self.ad[attr] = classad2.ExprTree(text)

    @property
    def active(self) -> bool:
        return bool(self.policy)

    @property
    def periodic(self) -> bool:
        return "PeriodicHold" in self.policy or "PeriodicRemove" in self.policy

    def _set(self, values: Mapping[str, Any]) -> None:
        for key, value in values.items():
            if value is not None:
                self.ad[key] = value

    def _true(self, attr: str) -> bool:
        if attr not in self.policy:
            return False
        try:
            return self.ad.eval(attr) is True
        except Exception:  # noqa: BLE001 - an expression that cannot be evaluated is not true
            return False

    def _value(self, attr: str) -> Any:
        if attr not in self.policy:
            return None
        try:
            value = self.ad.eval(attr)
        except Exception:  # noqa: BLE001
            return None
        return None if isinstance(value, self.classad2.Value) else value

    def _int(self, attr: str, default: int = 0) -> int:
        value = self._value(attr)
        return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else default

    def _hold(self, attr: str, reason_attr: str, subcode_attr: str) -> Verdict:
        reason = self._value(reason_attr)
        text = reason if isinstance(reason, str) and reason else (
            f"The job attribute {attr} expression '{self.policy[attr]}' evaluated to TRUE")
        return Verdict("hold", text, JOB_POLICY, self._int(subcode_attr))

    def check_periodic(self, *, status: int, now: float, entered: float, started: float | None,
                       starts: int, completions: int, memory_kb: int | None = None) -> Verdict | None:
        """Periodic hold/remove for a proc in ``status`` (1 idle, 2 running); None: carry on."""
        self._set({"JobStatus": status, "EnteredCurrentStatus": int(entered), "NumJobStarts": starts,
                   "NumJobCompletions": completions, "JobCurrentStartDate": int(started) if started else None,
                   "RemoteWallClockTime": float(now - started) if started else 0.0,
                   "ResidentSetSize": memory_kb, "MemoryUsage": None if memory_kb is None else -(-memory_kb // 1024)})
        if self._true("PeriodicHold"):
            return self._hold("PeriodicHold", "PeriodicHoldReason", "PeriodicHoldSubCode")
        if self._true("PeriodicRemove"):
            return Verdict("remove", f"The job attribute PeriodicRemove expression '{self.policy['PeriodicRemove']}' "
                                     "evaluated to TRUE")
        return None

    def on_exit(self, *, exit_code: int | None, signal: int | None, now: float, started: float,
                starts: int, completions: int) -> Verdict:
        """What happens when the proc ended (``completions`` counts this exit)."""
        self._set({"JobStatus": RUNNING, "ExitBySignal": signal is not None, "ExitCode": exit_code,
                   "ExitSignal": signal, "ExitStatus": exit_code if exit_code is not None else 0,
                   "NumJobStarts": starts, "NumJobCompletions": completions,
                   "JobCurrentStartDate": int(started), "RemoteWallClockTime": float(now - started),
                   "CompletionDate": int(now)})
        if self._true("OnExitHold"):
            return self._hold("OnExitHold", "OnExitHoldReason", "OnExitHoldSubCode")
        retry = [k for k in ("JobMaxRetries", "RetryUntil", "JobSuccessExitCode") if k in self.policy]
        if "OnExitRemove" not in self.policy and not retry:
            return DONE
        leave = False
        if "OnExitRemove" in self.policy:  # true (or undefined) lets it leave the queue, as in HTCondor
            leave = self._value("OnExitRemove") is not False
        if retry and not leave:  # condor_submit ORs the retry commands' expression with on_exit_remove
            success = signal is None and exit_code == self._int("JobSuccessExitCode", 0)
            limit = self._int("JobMaxRetries", self.default_max_retries) if "JobMaxRetries" in self.policy \
                else self.default_max_retries
            until = self._value("RetryUntil")
            stop = until is True or (isinstance(until, int) and not isinstance(until, bool) and until == exit_code)
            leave = success or completions > limit or stop
            if not leave:
                how = f"signal {signal}" if signal is not None else f"exit code {exit_code}"
                return Verdict("requeue", f"it ended with {how}; run {completions} of at most {limit + 1} "
                                          "(max_retries): it runs again")
        if leave:
            return DONE
        return Verdict("requeue", f"The job attribute OnExitRemove expression '{self.policy['OnExitRemove']}' "
                                  "evaluated to FALSE: it runs again")
