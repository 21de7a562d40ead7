"""Verdicts on one attempt: whose fault is a hold, a removal, an eviction?  (In the manner of htmap's holds.py.)

A proc's status, as its site reports it (peer/event_log.py ``ProcStatus``
as a dict), becomes one :class:`Verdict` for the job's manager
(peer/job_manager.py, docs/architecture.md *Jobs across sites*):

* ``completed``: exit 0, or the submit file's ``success_exit_code``;
* ``failed``: a **user** failure (another exit code, a signal, an
  executable error): final; the site already carried out the submit file's
  own ``max_retries``/``retry_until``;
* ``held``: held for a **user** reason (the submit file's ``periodic_hold``,
  memory or time limits it asked for, ``hold = true``...): it stays held;
* ``lost``: a **site** reason: held for file transfer, permissions, a missing
  executable or initial directory, the site's own policy...; evicted
  ``max_evictions`` times; removed at the site although the user did not
  kill it.  The input runs again elsewhere;
* ``removed``: the user killed the job, or its submit file's own ``periodic_remove`` removed it;
* ``active``: idle or running.

Hold reason codes are HTCondor's (the manual's *Hold Reason Codes* table,
``HoldReasonCode`` in the job ClassAd; condor_holdcodes.h).  A code not
listed counts as a user reason: a hold nobody here understands is left to
the person who can read it, rather than re-run on every site.
"""
from __future__ import annotations

import re

from dataclasses import dataclass
from typing import Any, Mapping

#: HoldReasonCode -> HTCondor's label (NumHoldsByReason).
HOLD_LABELS: dict[int, str] = {
    1: "UserRequest",
    3: "JobPolicy",
    4: "CorruptedCredential",
    5: "JobPolicyUndefined",
    6: "FailedToCreateProcess",
    7: "UnableToOpenOutput",
    8: "UnableToOpenInput",
    9: "UnableToOpenOutputStream",
    10: "UnableToOpenInputStream",
    11: "InvalidTransferAck",
    12: "TransferOutputError",
    13: "TransferInputError",
    14: "IwdError",
    15: "SubmittedOnHold",
    16: "SpoolingInput",
    17: "JobShadowMismatch",
    18: "InvalidTransferGoAhead",
    19: "HookPrepareJobFailure",
    20: "MissedDeferredExecutionTime",
    21: "StartdHeldJob",
    22: "UnableToInitUserLog",
    23: "FailedToAccessUserAccount",
    24: "NoCompatibleShadow",
    25: "InvalidCronSettings",
    26: "SystemPolicy",
    27: "SystemPolicyUndefined",
    32: "MaxTransferInputSizeExceeded",
    33: "MaxTransferOutputSizeExceeded",
    34: "JobOutOfResources",
    35: "InvalidDockerImage",
    36: "FailedToCheckpoint",
    37: "EC2UserError",
    38: "EC2InternalError",
    39: "EC2AdminError",
    40: "EC2ConnectionProblem",
    41: "EC2ServerError",
    42: "EC2InstancePotentiallyLost",
    43: "PreScriptFailed",
    44: "PostScriptFailed",
    45: "SingularityTestFailed",
    46: "JobDurationExceeded",
    47: "JobExecuteExceeded",
    48: "HookShadowPrepareJobFailure",
}

#: Holds that say something about the site, not the job: another site may well run it.
SITE_HOLD_CODES: frozenset[int] = frozenset({
    4,  # the site's credentials for the job
    6,  # the starter could not start the executable (missing, not executable there)
    7, 8, 9, 10,  # stdin/stdout files or streams could not be opened (permissions, disk)
    11, 12, 13, 18,  # file transfer failed or broke its protocol
    14,  # the initial directory cannot be reached
    17, 24,  # no compatible shadow
    19, 48,  # the site's job hooks failed
    21,  # the execute machine's policy (WANT_HOLD)
    22,  # the event log cannot be written
    23,  # the job's account cannot be used
    26, 27,  # the site's SYSTEM_PERIODIC_HOLD
    32, 33,  # the site's file transfer size limits
    38, 39, 40, 41, 42,  # EC2 internal, admin, connection, server trouble
    45,  # the site's Singularity/Apptainer runtime failed its test
})

#: Holds the job asked for or caused: re-running it elsewhere would end the same way.
USER_HOLD_CODES: frozenset[int] = frozenset({
    1,  # condor_hold by a person
    3, 5,  # the submit file's periodic_hold / on_exit_hold (or its undefined expression)
    15,  # submitted on hold (pocketgrid releases its own; the user's "hold = true" is dropped)
    16,  # input still spooling: it will go on by itself
    20,  # missed its deferral time (the submit file's deferral_time)
    25,  # the submit file's cron settings
    34,  # memory/disk beyond its request_memory/request_disk
    35,  # its docker_image
    36,  # it failed its own checkpoint
    37,  # EC2 user error
    43, 44,  # its pre/post script failed
    46, 47,  # its allowed_job_duration / allowed_execute_duration
})


@dataclass(frozen=True)
class Verdict:
    """What one attempt's proc status means to the manager."""

    kind: str  #: active | held | completed | failed | lost | removed
    reason: str | None = None


def hold_label(code: int | None) -> str:
    if code is None:
        return "no code"
    return f"code {code} {HOLD_LABELS.get(code, 'unknown')}"


#: errno ENOENT: a transfer hold with this subcode says a file the job names does not exist.
ENOENT = 2


def is_site_hold(code: int | None, subcode: int | None = None) -> bool:
    """True when a hold with this HoldReasonCode is the site's problem (see :data:`SITE_HOLD_CODES`).

    A file transfer hold (12, 13) whose subcode is ENOENT is the job's own: a ``transfer_output_files``
    entry it did not make, a ``transfer_input_files`` entry that is not there: it would be the same on
    every site, so it stays held for its owner (as the LocalExecutor and HTCondor hold it).
    """
    if code in (12, 13) and subcode == ENOENT:
        return False
    return code is not None and code in SITE_HOLD_CODES


#: How HTCondor (and the LocalExecutor, as HTCondor) words a removal by the job's own policy expressions.
_OWN_POLICY_REMOVAL = re.compile(r"The job attribute (PeriodicRemove|OnExitRemove) expression .* evaluated to TRUE")


def classify(proc: Mapping[str, Any], *, removed_by_user: bool, max_evictions: int,
             success_exit_code: int | None = None) -> Verdict:
    """The verdict on one proc status (a ``ProcStatus`` dict: state, exit_code, hold_code, evictions...)."""
    state = proc.get("state") or "idle"
    if state == "completed":
        return Verdict("completed")
    if state == "failed":
        code = proc.get("exit_code")
        if code is not None and success_exit_code is not None and code == success_exit_code:
            return Verdict("completed", f"exit code {code} is the submit file's success_exit_code")
        if code is not None:
            return Verdict("failed", f"exit code {code}")
        if proc.get("signal") is not None:
            return Verdict("failed", f"killed by signal {proc['signal']}")
        return Verdict("failed", proc.get("note") or "failed")
    if state == "removed":
        if removed_by_user:
            return Verdict("removed", "removed by its owner")
        note = proc.get("note") or ""
        if _OWN_POLICY_REMOVAL.match(note):  # the submit file's periodic_remove: its own verdict, final
            return Verdict("removed", note)
        return Verdict("lost", f"removed at the site: {note or 'no reason given'}")
    if state == "held":
        code = proc.get("hold_code")
        reason = proc.get("hold_reason") or "no reason given"
        if is_site_hold(code, proc.get("hold_subcode")):
            return Verdict("lost", f"held at the site ({hold_label(code)}): {reason}")
        return Verdict("held", f"held ({hold_label(code)}): {reason}")
    evictions = int(proc.get("evictions") or 0)
    if max_evictions > 0 and evictions >= max_evictions:
        return Verdict("lost", f"evicted {evictions} times at the site (last: {proc.get('note') or 'no reason'})")
    return Verdict("active")
