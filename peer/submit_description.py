"""The user's HTCondor submit file -> what pocketgrid runs (design "Job life cycle" step 5).

The user hands over an executable, a submit file and input files; the peer
stages one directory per input and runs one proc per input.  This module reads
the submit file with HTCondor's own parser (``htcondor2.Submit``) and

* **refuses** what must not run here (:class:`SubmitDescriptionError`, a
  ``ValueError`` whose message names the offending key or line; the HTTP layer
  answers 400 with it);
* **forces** the keys pocketgrid owns (executable, initial directory, event
  log, stdin, file transfer), with a warning when the user's file said
  something else;
* expands ``$(input)`` (the input file's name inside its directory) and
  ``$(input_index)`` (its 0-based index) per proc, for the LocalExecutor
  (:func:`local_proc_specs`) and for the CondorExecutor
  (:func:`condor_submit_dict`).

``$(input)`` is also HTCondor's own ``input`` command (the job's stdin), so in
HTCondor every proc reads its input file on standard input.  The LocalExecutor
does the same, so a job behaves alike under both executors.

Policy (the site can change the sets through :class:`Policy`)
--------------------------------------------------------------
Refused (HTTP 400; the message names the key), with the aliases HTCondor
accepts for each command (``submit_param(SUBMIT_KEY_X, ATTR_X)`` in
submit_utils.cpp):

- ``universe`` other than vanilla, also as ``JobUniverse``, numbers, or
  implied by ``container_image``/``docker_image`` (a vanilla job with an image
  is a container job): local/scheduler run on the site's submit host itself,
  outside the pool; grid forwards the job elsewhere with the site's
  credentials; the rest are not offered (``Policy.forbidden_universes``; the
  LocalExecutor runs vanilla only whatever the policy).
- ``getenv``/``get_env`` unless false: copies the *peer's* environment (its
  secrets) into the job.  ``$ENV(...)`` likewise.
- ``shell``, ``tool_daemon_*``, ``parallel_script_*``: run a program other
  than the uploaded executable (or a script on the submit host).
- ``remote_initialdir`` (``RemoteIwd``) and every ``Remote_*`` key: the job
  outside its sandbox / HTCondor-C remote ads; ``FACTORY.*`` keys.
- ``output_destination``, ``output_directory``, ``checkpoint_destination``,
  ``manifest_dir``, ``dagman_log``, ``starter_log``, ``transfer_plugins``,
  ``rendezvousdir``: put files elsewhere than the input's directory (where
  pocketgrid serves outputs from) or name files of the site by path.
- ``x509userproxy``, ``use_x509userproxy``, ``scitokens_file``,
  ``use_scitokens``, ``use_oauth_services``, ``send_credential``, the
  ``*_access_key_id_file``/``*_secret_access_key_file`` keys and the grid
  credential files: would use credentials of the site's service account.
- ``accounting_group``, ``accounting_group_user``: whom the site charges
  (impersonation).  ``run_as_owner``, ``load_profile``,
  ``primary_unix_group``: the account the job runs as.
- ``notify_user``: the site would send e-mail to an address of your choice.
- ``+Attr`` / ``MY.Attr`` for identity, credential, executable, path and
  transfer attributes (``Owner``, ``User``, ``AcctGroup*``, ``x509*``,
  ``AuthToken*``, ``Cmd``, ``Iwd``, ``In``/``Out``/``Err``, ``UserLog``,
  ``JobUniverse``, ``Transfer*``, ``SUBMIT_*``, ...): they set the job ad
  directly, bypassing every check above.
- ``include`` statements: read a file of the site, or (``include command``)
  *run a command on the peer while parsing*.
- a queue statement other than ``queue``/``queue 1``, and anything after the
  queue statement: pocketgrid queues one proc per input itself (``queue ...
  from cmd |`` would also run a command).
- multi-line values (``name @=tag``): cannot be written back for HTCondor.
- output/error/``transfer_input_files``/``public_input_files``/
  ``transfer_output_remaps`` paths that leave the input's directory (``..``,
  absolute paths elsewhere, symbolic links pointing out, ``$$()`` that only
  the matched machine resolves); URLs in ``transfer_input_files`` other than
  ``Policy.allowed_url_schemes``; any URL as a remap target.
- ``transfer_output_files``/``transfer_checkpoint_files`` entries that are
  absolute or leave the job's directory through ``..`` (outputs belong in the
  proc's directory; ``out.txt, sub/dir/file`` is fine).
- URLs whose host is the site's own or private (:class:`_UrlHosts`): under
  HTCondor the site fetches them from inside its network, so ``localhost``,
  this host's names and addresses, ``Policy.site_host_names``, and names that
  ``socket.getaddrinfo`` resolves at submit time to loopback, link-local,
  private/ULA or other non-public addresses are refused unless
  ``Policy.allow_private_urls``.  A name that does not resolve is accepted
  with a warning.  DNS answers that change after the check are not caught.
- Site configuration macros: ``$(SPOOL)`` and whatever else HTCondor's submit
  language expands from the site's configuration (found by HTCondor itself in
  the checker child: every configuration name the file does not define is
  probed; any other way of reaching one, e.g. ``$($(n)OL)`` or ``$Fp(SPOOL)``,
  shows as a marker in the expansion).  Refused, naming the key and the macro,
  rather than blanked, so a job never silently gets different arguments; the
  platform names (``$(Arch)``, ``$(OpSys)``, ... :data:`SITE_MACROS_ALLOWED`)
  stay.  Configuration names HTCondor's submit language does not see
  (``$(LOCAL_DIR)``, ``$(RELEASE_DIR)``, ``$(LOG)``, ``$(EXECUTE)``,
  ``$(LIBEXEC)``, ``$(BIN)``, ``$(SBIN)``, ...) already expand to nothing, as
  any undefined macro, with a warning saying so.  A definition in the submit
  file itself (``SPOOL = ...``) is the user's own value and fine.
- ``$(executable)``, ``$(log)``, ``$(transfer_input_files)`` (and their
  aliases) in a value: pocketgrid sets these, and under HTCondor they expand
  to the site's own paths.
- macros HTCondor cannot finish expanding (loops, self-references with no
  earlier definition), HTCondor parse errors (its message and the line).

Forced (the user's value is overridden, with a warning naming the key):

- ``executable`` (``Cmd``): the uploaded executable; warns only when the
  user's value has a directory part (``executable = prog`` is the norm).
- ``initialdir`` (``Iwd``, ``initial_dir``, ``job_iwd``): the input's own
  directory.
- ``input`` (``stdin``): ``$(input)``, the input file; no warning when the
  file already says ``input = $(input)``.
- ``input_index``, ``proc_dir``: defined by pocketgrid per proc.
- ``log`` (``UserLog``): the job's event log; ``log_xml``: false.
- ``should_transfer_files = YES``, ``when_to_transfer_output =
  ON_EXIT_OR_EVICT``, ``transfer_executable = true``, ``stream_output`` and
  ``stream_error = true`` (outputs readable while the job runs),
  ``notification = never``; ``transfer_input``/``transfer_output``/
  ``transfer_error`` stay at HTCondor's default (true).  Warnings only when the
  user's value differs.

Defaults: with no ``output``/``error``, stdout and stderr go to
``_condor_stdout``/``_condor_stderr`` in the input's directory (the names
HTCondor's starter uses in a job sandbox), so the client always gets them
back; ``/dev/null`` (or an empty value) discards them as in HTCondor.

Safety of the parser itself
---------------------------
HTCondor's macro language is not safe to evaluate in the server process:
``a = $(b)`` / ``b = $(a)`` makes ``Submit.expand`` loop forever, ``$EVAL``
recursion crashes the process (SIGSEGV), self-doubling definitions exhaust
memory while parsing, and ``include command : ... |`` runs a command.  So
``include`` and ``$ENV`` are refused by a scan of the text first, and every
call into HTCondor's parser and expander on user text runs in a short-lived
child process (``sys.executable``, minimal environment, memory and CPU
limits, a wall-clock timeout).  The peer only ever builds ``htcondor2.Submit``
objects from the already-parsed key/value table, which does no expansion.
The CondorExecutor's ``Schedd.submit`` does expand in-process, but only a
table and itemdata that :func:`condor_submit_dict` has expanded successfully
in the child first.
"""
from __future__ import annotations

import concurrent.futures
import difflib
import functools
import ipaddress
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import htcondor2

__all__ = [
    "SubmitDescriptionError",
    "Policy",
    "ParsedSubmit",
    "ProcSpec",
    "parse",
    "local_proc_specs",
    "condor_submit_dict",
    "condor_submission",
    "CondorSubmission",
    "split_arguments",
    "parse_environment",
    "DEFAULT_FORBIDDEN_UNIVERSES",
    "DEFAULT_FORBIDDEN_KEYS",
    "DEFAULT_FORBIDDEN_ATTRIBUTES",
    "CONDOR_FORCED_KEYS",
    "DEFAULT_STDOUT",
    "DEFAULT_STDERR",
    "SITE_MACROS_ALLOWED",
    "LOCAL_POLICY_KEYS",
    "LOCAL_UNHONOURED",
    "NotHonouredHere",
    "local_refusal",
]


class SubmitDescriptionError(ValueError):
    """A submit file pocketgrid will not run; the message says what to change.

    ``key`` (the submit command concerned) and ``line`` (1-based line of the
    submit file) are set when known.
    """

    def __init__(self, message: str, *, key: str | None = None, line: int | None = None) -> None:
        super().__init__(message)
        self.key = key
        self.line = line


# ---------------------------------------------------------------------------
# Policy tables
# ---------------------------------------------------------------------------

#: HTCondor's universe numbers (condor_universe.h); "globus" is an alias of grid.
_UNIVERSE_NUMBERS = {
    1: "standard", 2: "pipe", 3: "linda", 4: "pvm", 5: "vanilla", 6: "pvmd", 7: "scheduler",
    8: "mpi", 9: "grid", 10: "java", 11: "parallel", 12: "local", 13: "vm",
}
_UNIVERSE_NAMES = set(_UNIVERSE_NUMBERS.values()) | {"globus", "docker", "container"}

#: Every universe but vanilla.  A site may allow e.g. "container" for its
#: CondorExecutor; the LocalExecutor runs vanilla jobs only, whatever the policy.
DEFAULT_FORBIDDEN_UNIVERSES = frozenset(_UNIVERSE_NAMES - {"vanilla"})

_UNIVERSE_REASONS = {
    "local": "it would run the job on the site's submit host itself, outside the pool's sandboxes",
    "scheduler": "it would run the job on the site's submit host itself, outside the pool's sandboxes",
    "grid": "it would forward the job to another system, with the site's credentials",
    "globus": "it would forward the job to another system, with the site's credentials",
}

_R_PROGRAM = "it runs a program other than the executable you uploaded"
_R_PLACE = (
    "it puts files somewhere other than the input's directory (where pocketgrid serves outputs from) "
    "or names files of the site by path"
)
_R_SANDBOX = "it runs the job in a directory outside its sandbox"
_R_CRED = "it would use credentials (or read credential files) of the site's service account, not yours"
_R_ACCOUNT = "it chooses whom the site charges for the job; the site decides that"
_R_IDENTITY = "it changes the account the job runs as"
_R_MAIL = "it makes the site send e-mail to an address of your choice"
_R_GRID = "grid jobs are forwarded to another system with the site's credentials"

#: Bare submit commands refused outright (lower case), with the reason given.
#: HTCondor also accepts the job-ad attribute name of many commands as an
#: alias (``submit_param(SUBMIT_KEY_X, ATTR_X)`` in submit_utils.cpp), so the
#: aliases are listed too.
_FORBIDDEN_KEY_REASONS: dict[str, str] = {
    "shell": _R_PROGRAM,
    "tool_daemon_cmd": _R_PROGRAM, "tooldaemoncmd": _R_PROGRAM,
    "tool_daemon_args": _R_PROGRAM, "tool_daemon_arguments": _R_PROGRAM,
    "tool_daemon_arguments2": _R_PROGRAM, "tooldaemonargs": _R_PROGRAM,
    "tool_daemon_input": _R_PROGRAM, "tooldaemoninput": _R_PROGRAM,
    "tool_daemon_output": _R_PROGRAM, "tooldaemonoutput": _R_PROGRAM,
    "tool_daemon_error": _R_PROGRAM, "tooldaemonerror": _R_PROGRAM,
    "suspend_job_at_exec": _R_PROGRAM,
    "parallel_script_shadow": "it runs a script on the site's submit host",
    "parallel_script_starter": _R_PROGRAM,
    "remote_initialdir": _R_SANDBOX, "remoteiwd": _R_SANDBOX,
    "output_destination": _R_PLACE, "outputdestination": _R_PLACE,
    "output_directory": _R_PLACE,
    "checkpoint_destination": _R_PLACE,
    "manifest_dir": _R_PLACE,
    "dagman_log": _R_PLACE,
    "starter_log": _R_PLACE,
    "transfer_plugins": _R_PLACE, "transferplugins": _R_PLACE,
    "rendezvousdir": _R_PLACE,
    "x509userproxy": _R_CRED, "use_x509userproxy": _R_CRED,
    "scitokens_file": _R_CRED, "use_scitokens": _R_CRED, "use_scitoken": _R_CRED,
    "use_oauth_services": _R_CRED, "useoauthservices": _R_CRED,
    "send_credential": _R_CRED, "docker_send_credentials": _R_CRED,
    "aws_access_key_id_file": _R_CRED, "aws_secret_access_key_file": _R_CRED,
    "s3_access_key_id_file": _R_CRED, "s3_secret_access_key_file": _R_CRED,
    "gs_access_key_id_file": _R_CRED, "gs_secret_access_key_file": _R_CRED,
    "ec2_access_key_id": _R_CRED, "ec2_secret_access_key": _R_CRED,
    "ec2_keypair_file": _R_CRED, "ec2_key_pair_file": _R_CRED, "ec2_user_data_file": _R_CRED,
    "gce_auth_file": _R_CRED, "gce_json_file": _R_CRED, "gce_metadata_file": _R_CRED,
    "azure_auth_file": _R_CRED, "azure_admin_key": _R_CRED,
    "boinc_authenticator_file": _R_CRED,
    "keystore_file": _R_CRED, "keystore_passphrase_file": _R_CRED,
    "myproxypassword": _R_CRED,
    "grid_resource": _R_GRID, "gridresource": _R_GRID,
    "accounting_group": _R_ACCOUNT, "acctgroup": _R_ACCOUNT,
    "accounting_group_user": _R_ACCOUNT, "acctgroupuser": _R_ACCOUNT,
    "run_as_owner": _R_IDENTITY, "load_profile": _R_IDENTITY, "primary_unix_group": _R_IDENTITY,
    "notify_user": _R_MAIL, "notifyuser": _R_MAIL,
}
DEFAULT_FORBIDDEN_KEYS = frozenset(_FORBIDDEN_KEY_REASONS)

#: Bare key prefixes refused: HTCondor-C remote attributes and late-materialization factory keys.
_FORBIDDEN_KEY_PREFIXES = {
    "remote_": "Remote_* commands set up a job on another schedd (HTCondor-C)",
    "factory.": "FACTORY.* keys belong to HTCondor's late materialization",
}

_A_IDENTITY = "it sets who owns or is charged for the job"
_A_CRED = "it sets credential attributes"
_A_RUN = "it sets what runs, where, or which files move, bypassing pocketgrid's checks"
_A_MAIL = _R_MAIL

#: Job-ad attributes (``+Attr`` / ``MY.Attr``, lower case) refused: they would
#: set the ad directly and bypass the command-level checks.
_FORBIDDEN_ATTRIBUTE_REASONS: dict[str, str] = {
    **dict.fromkeys(
        ["owner", "user", "osuser", "acctgroup", "acctgroupuser", "accountinggroup", "nt_domain",
         "globaljobid", "clusterid", "procid", "qdate", "runasowner", "loadprofile"],
        _A_IDENTITY,
    ),
    **dict.fromkeys(
        ["x509userproxy", "oauthservicesneeded", "sendcredential", "scitokensfile", "proxysubject"],
        _A_CRED,
    ),
    **dict.fromkeys(
        ["cmd", "origcmd", "jobuniverse", "args", "arguments", "env", "environment", "envdelim",
         "in", "out", "err", "iwd", "remoteiwd", "userlog", "userlogusexml", "dagmannodeslog",
         "jobstarterlog", "jobstarterdebug", "tooldaemoncmd", "tooldaemonargs", "tooldaemonarguments",
         "tooldaemoninput", "tooldaemonoutput", "tooldaemonerror", "parallelscriptshadow",
         "parallelscriptstarter", "wantdocker", "wantcontainer", "dockerimage", "containerimage",
         "gridresource", "transferin", "transferinput", "transferinputfiles", "transferout",
         "transferoutput", "transferoutputfiles", "transferoutputremaps", "transfererr",
         "transferexecutable", "shouldtransferfiles", "whentotransferoutput", "outputdestination",
         "checkpointdestination", "transferplugins", "manifestdir", "spooledoutputfiles",
         "streamin", "streamout", "streamerr", "jobshell", "interactivejob"],
        _A_RUN,
    ),
    **dict.fromkeys(["notifyuser", "jobnotification"], _A_MAIL),
}
DEFAULT_FORBIDDEN_ATTRIBUTES = frozenset(_FORBIDDEN_ATTRIBUTE_REASONS)
_FORBIDDEN_ATTRIBUTE_PREFIXES = ("x509", "authtoken", "submit_", "remote_")

#: Keys pocketgrid owns in every executor (lower-case key -> canonical name).
_OWNED_ALIASES: dict[str, str] = {
    "executable": "executable", "cmd": "executable",
    "initialdir": "initialdir", "iwd": "initialdir", "initial_dir": "initialdir", "job_iwd": "initialdir",
    "input": "input", "stdin": "input",
    "input_index": "input_index",
    "proc_dir": "proc_dir",
    "log": "log", "userlog": "log",
    "log_xml": "log_xml", "userlogusexml": "log_xml",
    "should_transfer_files": "should_transfer_files", "shouldtransferfiles": "should_transfer_files",
    "when_to_transfer_output": "when_to_transfer_output", "whentotransferoutput": "when_to_transfer_output",
    "transfer_executable": "transfer_executable", "transferexecutable": "transfer_executable",
    "stream_output": "stream_output", "streamout": "stream_output",
    "stream_error": "stream_error", "streamerr": "stream_error",
    "transfer_input": "transfer_input", "transferin": "transfer_input",
    "transfer_output": "transfer_output", "transferout": "transfer_output",
    "transfer_error": "transfer_error", "transfererr": "transfer_error",
    "notification": "notification", "jobnotification": "notification",
}

#: The values :func:`condor_submit_dict` forces (besides executable, initialdir,
#: log and transfer_input_files, which depend on the job).
CONDOR_FORCED_KEYS: dict[str, str] = {
    "should_transfer_files": "YES",
    "when_to_transfer_output": "ON_EXIT_OR_EVICT",
    "transfer_executable": "true",
    "stream_output": "true",
    "stream_error": "true",
    "notification": "never",
    "log_xml": "false",
}
#: Owned keys left at HTCondor's default (dropped from the user's file).
_CONDOR_DEFAULT_TRUE = ("transfer_input", "transfer_output", "transfer_error")

DEFAULT_STDOUT = "_condor_stdout"
DEFAULT_STDERR = "_condor_stderr"

#: Macros pocketgrid defines per proc (lower case).  ``proc_dir`` is the
#: input's directory (the itemdata variable the CondorExecutor sets initialdir from).
_PER_PROC_MACROS = frozenset(
    {"input", "input_index", "proc_dir", "process", "procid", "cluster", "clusterid", "step",
     "itemindex", "row"}
)

_PLACEHOLDER_ROOT = "/pocketgrid-placeholder-stage"


@dataclass(frozen=True)
class Policy:
    """A site's submit-file policy.  Names are case-insensitive (stored lower case).

    Extend a default rather than replacing it, e.g.
    ``Policy(forbidden_keys=DEFAULT_FORBIDDEN_KEYS | {"priority"})`` or
    ``Policy(forbidden_universes=DEFAULT_FORBIDDEN_UNIVERSES - {"container"})``.
    """

    #: Universes refused (names; numeric forms and ``container_image`` /
    #: ``docker_image`` are mapped to names first).
    forbidden_universes: frozenset[str] = DEFAULT_FORBIDDEN_UNIVERSES
    #: Bare submit commands refused.
    forbidden_keys: frozenset[str] = DEFAULT_FORBIDDEN_KEYS
    #: Job-ad attributes refused as ``+Attr`` / ``MY.Attr``.
    forbidden_attributes: frozenset[str] = DEFAULT_FORBIDDEN_ATTRIBUTES
    #: URL schemes allowed in ``transfer_input_files`` (fetched by the execute node).
    allowed_url_schemes: frozenset[str] = frozenset({"http", "https"})
    #: Whether URLs may point at the site's own or private addresses (loopback, link-local,
    #: RFC 1918/ULA and other non-global ranges, this host's names and addresses).  Off by
    #: default: under HTCondor the site itself fetches them, from inside its own network.
    allow_private_urls: bool = False
    #: Extra names of this site (e.g. the host of its public URL) treated like ``localhost``.
    site_host_names: frozenset[str] = frozenset()
    #: Wall-clock limit for resolving the host names of one submit file's URLs.
    url_resolve_timeout_seconds: float = 5.0
    #: Largest submit file accepted, in bytes (UTF-8).
    max_submit_bytes: int = 64 * 1024
    #: Wall-clock limit for one run of HTCondor's parser/expander in the child process.
    expand_timeout_seconds: float = 10.0
    #: Address-space limit of that child process.
    expand_memory_bytes: int = 1 << 30
    #: A job whose requirements no slot of this site matches (pocketgrid/matching.py): ``warn`` (accept it
    #: with a warning; it stays idle, and its status says why, as HTCondor would keep it) or ``refuse``
    #: (400, and the entry peer tries another site).
    unmatchable: str = "warn"

    def __post_init__(self) -> None:
        if self.unmatchable not in ("warn", "refuse"):
            raise ValueError(f"unmatchable must be 'warn' or 'refuse', not {self.unmatchable!r}")
        for name in ("forbidden_universes", "forbidden_keys", "forbidden_attributes", "allowed_url_schemes",
                     "site_host_names"):
            object.__setattr__(self, name, frozenset(str(v).lower() for v in getattr(self, name)))


@dataclass
class ParsedSubmit:
    """A submit file that passed :func:`parse`.

    ``submit`` is HTCondor's view of the user's commands (queue statement
    removed); treat it as read-only: :func:`local_proc_specs` and
    :func:`condor_submit_dict` never modify it, so one ParsedSubmit may be
    used from several threads.
    """

    submit: htcondor2.Submit
    warnings: list[str]
    policy: Policy
    #: The same commands as ordered (key, value) pairs, as HTCondor stored them.
    table: tuple[tuple[str, str], ...] = field(default=())


@dataclass
class ProcSpec:
    """One proc for the LocalExecutor; every path is absolute."""

    index: int
    input_name: str
    iwd: str
    executable: str
    arguments: list[str]
    environment: dict[str, str]
    stdin: str | None
    stdout: str | None
    stderr: str | None
    #: The job's ad for the LocalExecutor's policy (pocketgrid/matching.py ``job_ad_from_submit``), as
    #: ClassAd text: requests, the user's +Attr, Requirements.
    job_ad: str | None = None
    #: Job policy expressions the LocalExecutor honours (ad attribute -> expression text), e.g.
    #: ``{"PeriodicHold": "JobStatus == 2 && ..."}``; evaluated by the proc's runner (peer/executors/local_policy.py).
    policy: dict[str, str] = field(default_factory=dict)
    #: Does this host match the job (``{"slots", "of", "failing"?}``); None when not asked.
    match: dict[str, Any] | None = None
    #: ``transfer_input_files`` entries (files in ``iwd``) and ``transfer_output_files`` entries (relative to
    #: it): a missing one holds the proc, as HTCondor's file transfer would.
    transfer_input: list[str] = field(default_factory=list)
    transfer_output: list[str] = field(default_factory=list)
    #: ``transfer_output_remaps``: (output name, new path inside ``iwd``), applied when the proc exits.
    transfer_remaps: list[tuple[str, str]] = field(default_factory=list)


# ---------------------------------------------------------------------------
# What the LocalExecutor honours, and what it refuses (a submit file must mean the same everywhere)
# ---------------------------------------------------------------------------

#: Job policy commands the LocalExecutor honours (its proc runner evaluates them with classad2, as the
#: schedd and shadow would): submit command (and the ad attribute HTCondor also accepts as its name,
#: lower case) -> ad attribute.
LOCAL_POLICY_KEYS: dict[str, str] = {
    "periodic_hold": "PeriodicHold", "periodichold": "PeriodicHold",
    "periodic_hold_reason": "PeriodicHoldReason", "periodicholdreason": "PeriodicHoldReason",
    "periodic_hold_subcode": "PeriodicHoldSubCode", "periodicholdsubcode": "PeriodicHoldSubCode",
    "periodic_remove": "PeriodicRemove", "periodicremove": "PeriodicRemove",
    "on_exit_hold": "OnExitHold", "onexithold": "OnExitHold",
    "on_exit_hold_reason": "OnExitHoldReason", "onexitholdreason": "OnExitHoldReason",
    "on_exit_hold_subcode": "OnExitHoldSubCode", "onexitholdsubcode": "OnExitHoldSubCode",
    "on_exit_remove": "OnExitRemove", "onexitremove": "OnExitRemove",
    "max_retries": "JobMaxRetries", "jobmaxretries": "JobMaxRetries",
    "retry_until": "RetryUntil",
    "success_exit_code": "JobSuccessExitCode", "jobsuccessexitcode": "JobSuccessExitCode",
}

_L_RELEASE = "held procs stay held here: nothing releases them"
_L_KILL = "it stops a removed proc with SIGTERM, then SIGKILL 5 s later, whatever the submit file asks"
_L_ORDER = "it starts procs in the order they were submitted"
_L_LIMITS = "it has no concurrency limits"
_L_MATERIALIZE = "it queues every proc at once (no late materialization)"
_L_WHEN = "it starts a proc as soon as a slot is free"
_L_CHECKPOINT = "it does not checkpoint jobs"
_L_TRANSFER = "it moves no files, so it enforces no transfer limits"
_L_DURATION = "it puts no time limit on a proc (use periodic_hold or periodic_remove, which it honours)"

#: HTCondor submit commands the LocalExecutor does not honour (lower case, with their aliases) and why:
#: a file with one of them is refused at a local site, not run with a different meaning (any other
#: name is either honoured, means the same here, or is the user's own macro).
LOCAL_UNHONOURED: dict[str, str] = {
    "periodic_release": _L_RELEASE, "periodicrelease": _L_RELEASE,
    "kill_sig": _L_KILL, "killsig": _L_KILL, "remove_kill_sig": _L_KILL, "removekillsig": _L_KILL,
    "hold_kill_sig": _L_KILL, "holdkillsig": _L_KILL, "kill_sig_timeout": _L_KILL, "killsigtimeout": _L_KILL,
    "want_graceful_removal": _L_KILL, "job_max_vacate_time": _L_KILL, "jobmaxvacatetime": _L_KILL,
    "priority": _L_ORDER, "prio": _L_ORDER, "jobprio": _L_ORDER, "nice_user": _L_ORDER, "niceuser": _L_ORDER,
    "concurrency_limits": _L_LIMITS, "concurrencylimits": _L_LIMITS, "concurrency_limits_expr": _L_LIMITS,
    "max_idle": _L_MATERIALIZE, "max_materialize": _L_MATERIALIZE, "materialize_max_idle": _L_MATERIALIZE,
    "next_job_start_delay": _L_WHEN, "nextjobstartdelay": _L_WHEN,
    "deferral_time": _L_WHEN, "deferraltime": _L_WHEN, "deferral_window": _L_WHEN, "deferral_prep_time": _L_WHEN,
    "cron_minute": _L_WHEN, "cron_hour": _L_WHEN, "cron_day_of_month": _L_WHEN, "cron_month": _L_WHEN,
    "cron_day_of_week": _L_WHEN, "cron_window": _L_WHEN, "cron_prep_time": _L_WHEN,
    "checkpoint_exit_code": _L_CHECKPOINT, "checkpointexitcode": _L_CHECKPOINT,
    "transfer_checkpoint_files": _L_CHECKPOINT, "transfercheckpointfiles": _L_CHECKPOINT,
    "max_transfer_input_mb": _L_TRANSFER, "max_transfer_output_mb": _L_TRANSFER,
    "allowed_execute_duration": _L_DURATION, "allowed_job_duration": _L_DURATION,
}


class NotHonouredHere(SubmitDescriptionError):
    """A submit command (or value) the LocalExecutor does not honour: refused at a local site only."""


def local_refusal(parsed: "ParsedSubmit") -> None:
    """Raise NotHonouredHere when the file has a command the LocalExecutor does not honour, naming it,
    why, and which sites run it as written."""
    for key, value in parsed.table:
        reason = LOCAL_UNHONOURED.get(key.lower())
        if reason is not None and value.strip():
            raise NotHonouredHere(
                f"{key} is not honoured by this site, which runs jobs itself (local executor): {reason}; "
                "a site whose executor is condor runs this submit file as written",
                key=key,
            )


# ---------------------------------------------------------------------------
# HTCondor argument and environment syntax (condor_arglist.cpp, env.cpp)
# ---------------------------------------------------------------------------

_C_SPACE = " \t\n\v\f\r"  # isspace() in the C locale
_ARG_SPACE = " \t\n\r"  # what split_args() treats as separators


class _SyntaxProblem(Exception):
    pass


def _is_v2_quoted(value: str) -> bool:
    return value.lstrip(_C_SPACE).startswith('"')


def _v2_quoted_to_raw(value: str) -> str:
    """Strip the surrounding double quotes; ``""`` inside is a literal ``"``."""
    s = value.lstrip(_C_SPACE)
    out: list[str] = []
    i = 1
    while i < len(s):
        c = s[i]
        if c == '"':
            if i + 1 < len(s) and s[i + 1] == '"':
                out.append('"')
                i += 2
                continue
            if s[i + 1 :].strip(_C_SPACE):
                raise _SyntaxProblem(
                    "Unexpected characters following double-quote.  Did you forget to escape the "
                    f"double-quote by repeating it?  Here is the quote and trailing characters: {s[i:]}"
                )
            return "".join(out)
        out.append(c)
        i += 1
    raise _SyntaxProblem("Unterminated double-quote.")


def _split_v2_raw(raw: str) -> list[str]:
    """Whitespace separates; single quotes group; ``''`` inside them is a literal ``'``."""
    args: list[str] = []
    buf: list[str] = []
    token = False
    i = 0
    while i < len(raw):
        c = raw[i]
        if c == "'":
            start = i
            i += 1
            token = True
            while True:
                if i >= len(raw):
                    raise _SyntaxProblem(f"Unbalanced quote starting here: {raw[start:]}")
                if raw[i] == "'":
                    if i + 1 < len(raw) and raw[i + 1] == "'":
                        buf.append("'")
                        i += 2
                        continue
                    i += 1
                    break
                buf.append(raw[i])
                i += 1
        elif c in _ARG_SPACE:
            i += 1
            if token:
                args.append("".join(buf))
                buf = []
                token = False
        else:
            token = True
            buf.append(c)
            i += 1
    if token:
        args.append("".join(buf))
    return args


def _v1_wacked_to_raw(value: str) -> str:
    """Old argument syntax: ``\\"`` is a literal ``"``; a bare ``"`` is an error."""
    out: list[str] = []
    i = 0
    while i < len(value):
        if value[i] == '"':
            raise _SyntaxProblem(f"Found illegal unescaped double-quote: {value[i:]}")
        if value[i] == "\\" and i + 1 < len(value) and value[i + 1] == '"':
            out.append('"')
            i += 2
        else:
            out.append(value[i])
            i += 1
    return "".join(out)


def _split_v1_raw(raw: str) -> list[str]:
    args: list[str] = []
    buf: list[str] = []
    for c in raw:
        if c in _ARG_SPACE:
            if buf:
                args.append("".join(buf))
                buf = []
        else:
            buf.append(c)
    if buf:
        args.append("".join(buf))
    return args


def split_arguments(value: str, *, v2_only: bool = False, key: str = "arguments") -> list[str]:
    """Split an ``arguments`` value the way HTCondor does (condor_submit manual).

    New syntax: the whole value in double quotes; whitespace separates
    arguments; single quotes group (``''`` inside them is a literal ``'``);
    ``""`` is a literal ``"``.  Old syntax (no surrounding double quotes):
    split on whitespace; ``\\"`` is a literal ``"``.  ``v2_only`` (for
    ``arguments2``) refuses the old syntax.
    """
    try:
        if _is_v2_quoted(value):
            return _split_v2_raw(_v2_quoted_to_raw(value))
        if v2_only:
            raise _SyntaxProblem("Expecting double-quoted input string (V2 format).")
        return _split_v1_raw(_v1_wacked_to_raw(value))
    except _SyntaxProblem as exc:
        raise SubmitDescriptionError(f"{key} = {value}: {exc}", key=key) from None


_ENV_V1_DELIMS = "!#$%&*+,-/:;<>?@^`|~\x1f"


def _set_env(env: dict[str, str], entry: str, match_time_ok: bool) -> None:
    if not entry:
        raise _SyntaxProblem("empty environment entry")
    name, eq, val = entry.partition("=")
    if not eq:
        if "$$" in entry:
            if match_time_ok:
                return  # HTCondor keeps it verbatim for the execute machine
            raise _SyntaxProblem(
                f"environment entry '{entry}' has no '=': HTCondor passes such $$() entries on to the "
                "execute machine, which pocketgrid's local executor cannot resolve"
            )
        raise _SyntaxProblem(f"Missing '=' after environment variable '{entry}'.")
    if not name:
        raise _SyntaxProblem(f"missing variable in '{entry}'.")
    env[name] = val


def parse_environment(
    value: str, *, v2_only: bool = False, key: str = "environment", match_time_ok: bool = False
) -> dict[str, str]:
    """Parse an ``environment`` value the way HTCondor does (condor_submit manual).

    New syntax: the whole value in double quotes; whitespace-separated
    ``NAME=VALUE`` entries; single quotes group (``''`` is a literal ``'``);
    ``""`` is a literal ``"``.  Old syntax: ``NAME=VALUE`` entries separated by
    ``;`` (or by the value's first character when it is one of HTCondor's
    permitted delimiters, e.g. ``|``); quotes have no special meaning.  Later
    entries win.  ``v2_only`` (for ``environment2``) refuses the old syntax.
    An entry without ``=`` is an error, except a ``$$()`` entry (HTCondor
    resolves it on the execute machine) when ``match_time_ok``; it is then
    left out of the result.
    """
    env: dict[str, str] = {}
    try:
        if _is_v2_quoted(value):
            for entry in _split_v2_raw(_v2_quoted_to_raw(value)):
                _set_env(env, entry, match_time_ok)
            return env
        if v2_only:
            raise _SyntaxProblem("Expecting a double-quoted environment string (V2 format).")
        delim = ";"
        rest = value
        if rest[:1] == delim:
            rest = rest[1:]
        elif rest[:1] and rest[0] in _ENV_V1_DELIMS:
            delim, rest = rest[0], rest[1:]
        i = 0
        while i < len(rest):
            while i < len(rest) and rest[i] in _ARG_SPACE:
                i += 1
            j = i
            while j < len(rest) and rest[j] not in ("\n", delim):
                j += 1
            entry = rest[i:j]
            i = j + 1
            if entry:
                _set_env(env, entry, match_time_ok)
        return env
    except _SyntaxProblem as exc:
        raise SubmitDescriptionError(f"{key} = {value}: {exc}", key=key) from None


# ---------------------------------------------------------------------------
# Static scan of the text (before anything parses it)
# ---------------------------------------------------------------------------

_INCLUDE_RE = re.compile(r"^\s*include(\s|:|$)", re.IGNORECASE)
_QUEUE_RE = re.compile(r"^\s*queue(\s|$)", re.IGNORECASE)
_MULTILINE_RE = re.compile(r"^\s*[^\s#=]+\s*@=")
_ENV_RE = re.compile(r"\$ENV\s*\(", re.IGNORECASE)
_COMMENT_RE = re.compile(r"^\s*#")
_BAD_CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]|\r(?!\n)")


def _raw_lines(text: str) -> list[str]:
    return [ln[:-1] if ln.endswith("\r") else ln for ln in text.split("\n")]


def _logical_lines(lines: list[str]) -> list[tuple[int, str]]:
    """Join backslash continuations; returns (first line number, joined text)."""
    out: list[tuple[int, str]] = []
    i = 0
    while i < len(lines):
        start = i
        cur = lines[i]
        while cur.rstrip().endswith("\\") and i + 1 < len(lines):
            i += 1
            cur = cur.rstrip()[:-1] + lines[i].lstrip()
        out.append((start + 1, cur))
        i += 1
    return out


def _scan_text(text: str, policy: Policy) -> None:
    if not isinstance(text, str):
        raise SubmitDescriptionError("the submit file must be text")
    if not text.strip():
        raise SubmitDescriptionError("the submit file is empty")
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > policy.max_submit_bytes:
        raise SubmitDescriptionError(
            f"the submit file is {size} bytes; this site accepts at most {policy.max_submit_bytes}"
        )
    bad = _BAD_CONTROL_RE.search(text)
    if bad:
        line = text.count("\n", 0, bad.start()) + 1
        raise SubmitDescriptionError(
            f"line {line}: control character U+{ord(bad.group()[0]):04X} is not allowed in a submit file",
            line=line,
        )
    lines = _raw_lines(text)
    candidates = [(n + 1, ln) for n, ln in enumerate(lines)] + _logical_lines(lines)
    for n, ln in candidates:
        if _INCLUDE_RE.match(ln):
            raise SubmitDescriptionError(
                f"line {n}: include statements are not allowed (they read files of the site, and "
                f"'include command' runs a command on it): {ln.strip()!r}",
                key="include",
                line=n,
            )
    for n, ln in _logical_lines(lines):
        if _COMMENT_RE.match(ln):
            continue
        if _MULTILINE_RE.match(ln):
            raise SubmitDescriptionError(
                f"line {n}: multi-line values (name @=tag ... @tag) are not supported; put the value on "
                "one line (a trailing backslash continues a line)",
                line=n,
            )
        if _ENV_RE.search(ln):
            raise SubmitDescriptionError(
                f"line {n}: $ENV(...) is not allowed: it would copy the site's environment into your job; "
                "set what the job needs with environment = ...",
                key="$ENV",
                line=n,
            )
    queue_line = next((n for n, ln in enumerate(lines, 1) if _QUEUE_RE.match(ln) and not _COMMENT_RE.match(ln)), None)
    if queue_line is not None:
        for n, ln in enumerate(lines[queue_line:], queue_line + 1):
            if ln.strip() and not _COMMENT_RE.match(ln):
                raise SubmitDescriptionError(
                    f"line {n}: {ln.strip()!r} comes after the queue statement on line {queue_line}; HTCondor "
                    "ignores everything after the first queue statement, and pocketgrid queues one proc per "
                    "input itself: put every command before a single 'queue' at the end",
                    key="queue",
                    line=n,
                )


# ---------------------------------------------------------------------------
# Macro reference graph (a precise message for the common loops)
# ---------------------------------------------------------------------------

_REF_RE = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)?\(\s*([A-Za-z_][A-Za-z0-9_.]*)")
_NON_NAME_FUNCS = {"RANDOM_CHOICE", "RANDOM_INTEGER", "ENV"}


def _macro_refs(value: str) -> set[str]:
    refs = set()
    for m in _REF_RE.finditer(value):
        if m.start() > 0 and value[m.start() - 1] == "$":
            continue  # $$(attr): resolved by HTCondor at match time, not a submit macro
        func = m.group(1)
        if func and func.upper() in _NON_NAME_FUNCS:
            continue
        refs.add(m.group(2).lower())
    return refs


#: ``$(name)`` without a default (``$(name:default)`` never expands to nothing); ``$$(...)`` and
#: function forms (``$Fn(x)``, ``$ENV(x)``, ``$EVAL(...)``) are not plain references.
_PLAIN_REF_RE = re.compile(r"(?<!\$)\$\(\s*([A-Za-z_][A-Za-z0-9_.]*)\s*\)")
_PROBE_KEY = "_pocketgrid_probe"


def _undefined_refs(sub: Any, table: Sequence[Sequence[str]]) -> list[str]:
    """Names referenced as ``$(name)`` in the table's values that HTCondor expands to nothing
    (undefined: neither in the file, nor set per proc, nor from HTCondor's configuration)."""
    defined = {k.lower() for k, _ in table}
    names: dict[str, str] = {}
    for _, value in table:
        for m in _PLAIN_REF_RE.finditer(value):
            names.setdefault(m.group(1).lower(), m.group(1))
    undefined = []
    for low, name in names.items():
        if low in defined:
            continue
        sub[_PROBE_KEY] = f"$({name})"
        try:
            value = sub.expand(_PROBE_KEY)
        except KeyError:  # HTCondor reports an empty expansion this way
            value = ""
        if value == "":
            undefined.append(name)
    return undefined


#: Macros HTCondor's submit language takes from the site's configuration that say nothing about the
#: site's layout (the platform, as in ``requirements``), upper case; every other one is refused.
SITE_MACROS_ALLOWED = frozenset(
    {"ARCH", "OPSYS", "OPSYSVER", "OPSYSANDVER", "OPSYSMAJORVER", "OPSYSNAME", "OPSYSLONGNAME",
     "OPSYSSHORTNAME", "OPSYSLEGACY", "ISLINUX", "ISWINDOWS", "DOLLAR"}
)
#: Control characters never pass :func:`_scan_text`, so this one in an expansion comes from a marker.
_SITE_MARK = "\x01"


def _site_marker(index: int) -> str:
    """What a site macro expands to in the checker: made of '/' and the mark only, so that any
    part of it a function macro ($Fp, $Fn, $SUBSTR, ...) cuts out still shows the mark."""
    tag = f"{_SITE_MARK}{index}{_SITE_MARK}"
    return f"/{tag}/{tag}"


def _site_config_macros(sub: Any, defined: set[str]) -> list[str]:
    """Names HTCondor's submit language expands from the site's configuration (e.g. ``SPOOL``), as
    HTCondor itself answers: every configuration name the file does not define, probed with the
    parser's own expansion.  The platform names in :data:`SITE_MACROS_ALLOWED` are left out."""
    found = []
    for name in htcondor2.param.keys():
        if name.lower() in defined or name.upper() in SITE_MACROS_ALLOWED:
            continue
        sub[_PROBE_KEY] = f"$({name})"
        try:
            value = sub.expand(_PROBE_KEY)
        except KeyError:  # expands to nothing: the job never sees it
            continue
        if value:
            found.append(name)
    return found


def _find_macro_cycle(table: Sequence[Sequence[str]], exclude: Iterable[str]) -> list[str] | None:
    skip = {e.lower() for e in exclude}
    graph: dict[str, set[str]] = {}
    names: dict[str, str] = {}
    for k, v in table:
        lk = k.lower()
        if lk in skip:
            continue
        names[lk] = k
        graph[lk] = _macro_refs(v)
    for lk in graph:
        graph[lk] = {r for r in graph[lk] if r in graph}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [names[n] for n in stack[stack.index(nxt):]] + [names[nxt]]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in graph:
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


# ---------------------------------------------------------------------------
# The child process that runs HTCondor's parser and expander on user text
# ---------------------------------------------------------------------------

_CHILD_BOOT = """\
import json, resource, sys
req = json.loads(sys.stdin.buffer.read().decode('utf-8'))
for lim, val in ((resource.RLIMIT_AS, req['mem']), (resource.RLIMIT_CPU, req['cpu'])):
    try:
        resource.setrlimit(lim, (val, val))
    except (ValueError, OSError):
        pass
sys.path[:] = req['sys_path']
import runpy
ns = runpy.run_path(req['module_file'], run_name='_pocketgrid_submit_child')
sys.exit(ns['_child_main'](req))
"""

_CHILD_ENV_KEYS = ("PATH", "PYTHONHOME", "CONDOR_CONFIG", "LD_LIBRARY_PATH", "LANG", "LC_ALL", "TZ")


def _child_env() -> dict[str, str]:
    env = {k: os.environ[k] for k in _CHILD_ENV_KEYS if k in os.environ}
    env.update({k: v for k, v in os.environ.items() if k.upper().startswith("_CONDOR_")})
    return env


_LOCATE_MARKER = "\n--pocketgrid: locating the parse error--\n"
#: Longest value (as written or expanded) accepted, in characters.
_MAX_VALUE_CHARS = 1 << 20


def _locate_parse_error(lines: list[str]) -> int | None:
    """Smallest k such that the first k lines no longer parse (binary search)."""

    def ok(k: int) -> bool:
        try:
            htcondor2.Submit("\n".join(lines[:k]) + "\n")
            return True
        except Exception:  # noqa: BLE001
            return False

    lo, hi = 0, len(lines)  # invariant: ok(lo), not ok(hi)
    if not ok(0) or ok(hi):
        return None
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ok(mid):
            lo = mid
        else:
            hi = mid
    return hi


def _child_main(req: dict[str, Any]) -> int:
    """Entry point of the child process (see :func:`_run_child`)."""

    def reply(obj: dict[str, Any]) -> int:
        sys.stdout.write(json.dumps(obj))
        sys.stdout.flush()
        return 0

    try:
        table = req.get("table")
        qargs = None
        if req.get("text") is not None:
            text = req["text"]
            try:
                result = htcondor2.Submit(text)
            except Exception as exc:  # noqa: BLE001 - HTCondor raises several types
                # HTCondor wrote its diagnostics to fd 2 (the parent reads them up to the marker).
                sys.stderr.flush()
                os.write(2, _LOCATE_MARKER.encode())
                lines = _raw_lines(text)
                where = _locate_parse_error(lines)
                return reply(
                    {
                        "ok": False,
                        "kind": "parse",
                        "message": str(exc) or type(exc).__name__,
                        "line": where,
                        "line_text": lines[where - 1] if where and 0 < where <= len(lines) else None,
                    }
                )
            table = [[k, v] for k, v in result.items()]
            qargs = result.getQArgs()
        assert table is not None
        for k, v in table:
            if len(v) > _MAX_VALUE_CHARS:
                return reply({"ok": False, "kind": "too_big", "key": k})
        cycle = _find_macro_cycle(table, _PER_PROC_MACROS)
        if cycle:
            return reply({"ok": False, "kind": "cycle", "cycle": cycle})
        sub = htcondor2.Submit({k: v for k, v in table})
        procs = req.get("procs", [])
        site = _site_config_macros(sub, {k.lower() for k, _ in table} | {k.lower() for p in procs for k in p})
        for k, v in table:
            named = sorted(n for n in site if n.lower() in _macro_refs(v))
            if named:
                return reply({"ok": False, "kind": "site_macro", "key": k, "macro": named[0]})
        for i, name in enumerate(site):  # any other way of reaching them shows as the marker
            sub[name] = _site_marker(i)
        rows = []
        for macros in procs:
            for k, v in macros.items():
                sub[k] = v
            row = {}
            for k, _ in table:
                try:
                    row[k] = sub.expand(k)
                except KeyError:  # HTCondor reports an empty expansion this way
                    row[k] = ""
                if len(row[k]) > _MAX_VALUE_CHARS:
                    return reply({"ok": False, "kind": "too_big", "key": k})
                if _SITE_MARK in row[k]:
                    hit = re.search(_SITE_MARK + r"(\d+)" + _SITE_MARK, row[k])
                    name = site[int(hit.group(1))] if hit and int(hit.group(1)) < len(site) else None
                    return reply({"ok": False, "kind": "site_macro", "key": k, "macro": name})
            rows.append(row)
        undefined = _undefined_refs(sub, table) if req.get("find_undefined") else []
        ads = []
        if req.get("local"):  # the LocalExecutor's job ads, policy expressions and match (user text: here)
            import classad2

            from pocketgrid.matching import analyze, job_ad_from_submit

            for row in rows:
                try:
                    ad = job_ad_from_submit(row)
                except ValueError as exc:
                    return reply({"ok": False, "kind": "bad_expr", "message": str(exc)})
                policy = {}
                for k, v in row.items():
                    attr = LOCAL_POLICY_KEYS.get(k.lower())
                    if attr is None or not v.strip():
                        continue
                    try:
                        classad2.ExprTree(v)
                    except Exception as exc:  # noqa: BLE001 - classad2 raises its own types
                        return reply({"ok": False, "kind": "bad_expr", "key": k,
                                      "message": f"{k} = {v}: not a ClassAd expression ({exc})"})
                    policy[attr] = v
                machine = req.get("machine")
                match = analyze(ad, [machine]).to_dict() if machine else None
                ads.append({"job_ad": str(ad), "policy": policy, "match": match})
        return reply({"ok": True, "table": table, "qargs": qargs, "rows": rows, "undefined": undefined, "ads": ads})
    except MemoryError:
        return reply({"ok": False, "kind": "memory"})
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        return reply({"ok": False, "kind": "internal", "message": f"{type(exc).__name__}: {exc}"})


def _run_child(policy: Policy, *, text: str | None = None, table: Sequence[Sequence[str]] | None = None,
               procs: Sequence[Mapping[str, str]] = (), find_undefined: bool = False, local: bool = False,
               machine: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Parse (``text``) and/or expand every key of the table once per proc, in a child process
    (``find_undefined``: also list the ``$(name)`` references HTCondor expands to nothing)."""
    if not sys.executable:
        raise RuntimeError("cannot start the submit-file checker: sys.executable is unknown")
    here = os.path.dirname(os.path.abspath(__file__))
    sys_path = [p for p in sys.path if p and os.path.abspath(p) != here]
    request = {
        "sys_path": sys_path,
        "module_file": os.path.abspath(__file__),
        "mem": int(policy.expand_memory_bytes),
        "cpu": max(1, int(policy.expand_timeout_seconds) + 1),
        "text": text,
        "table": [list(kv) for kv in table] if table is not None else None,
        "procs": [dict(p) for p in procs],
        "find_undefined": find_undefined,
        "local": local,
        "machine": dict(machine) if machine is not None else None,
    }
    try:
        done = subprocess.run(
            [sys.executable, "-I", "-c", _CHILD_BOOT],
            input=json.dumps(request).encode("utf-8"),
            capture_output=True,
            timeout=policy.expand_timeout_seconds,
            env=_child_env(),
            cwd="/",
        )
    except subprocess.TimeoutExpired:
        raise SubmitDescriptionError(
            f"HTCondor's macro expansion of this submit file did not finish within "
            f"{policy.expand_timeout_seconds:g} s: macros probably refer to each other in a loop (possibly "
            "built indirectly, e.g. through $(DOLLAR) or a function macro such as $Fn() or $EVAL())"
        ) from None
    if done.returncode < 0:
        try:
            sig = signal.Signals(-done.returncode).name
        except ValueError:
            sig = str(-done.returncode)
        raise SubmitDescriptionError(
            f"HTCondor's submit parser crashed ({sig}) on this submit file; this happens with macros that "
            "refer to themselves (e.g. through $EVAL()) or that grow without bound"
        )
    stderr = done.stderr.decode("utf-8", "replace")
    try:
        reply = json.loads(done.stdout.decode("utf-8"))
    except ValueError:
        tail = [ln.strip() for ln in stderr.strip().splitlines()[-3:]]
        if "Traceback" in stderr:  # our side failed (e.g. htcondor2 not importable): a server error
            raise RuntimeError(f"submit-file checker failed (exit {done.returncode}): {' | '.join(tail)}") from None
        # HTCondor itself gave up (EXCEPT exits with status 4), e.g. out of memory.
        said = "; ".join(_DPRINTF_STAMP_RE.sub("", ln) for ln in tail if ln)
        raise SubmitDescriptionError(
            f"HTCondor's submit parser gave up on this submit file (exit {done.returncode}"
            + (f": {said}" if said else "")
            + f"), within a {policy.expand_memory_bytes >> 20} MiB memory limit; this happens with definitions "
            "that grow without bound, such as a = $(a)$(a) repeated"
        ) from None
    if reply.get("kind") == "internal":
        raise RuntimeError(f"submit-file checker failed: {reply.get('message')}")
    if reply.get("kind") == "parse":
        reply["details"] = stderr.split(_LOCATE_MARKER, 1)[0]
    return reply


_DPRINTF_STAMP_RE = re.compile(r"^\d\d/\d\d/\d\d \d\d:\d\d:\d\d\s+")


def _raise_child_failure(reply: dict[str, Any]) -> None:
    if reply.get("kind") == "parse":
        details = [
            _DPRINTF_STAMP_RE.sub("", d).strip()
            for d in (reply.get("details") or "").splitlines()
            if d.strip()
        ]
        msg = f"HTCondor's submit parser rejected the file ({reply.get('message')})"
        line = reply.get("line")
        if line:
            msg += f" at line {line}: {str(reply.get('line_text') or '').strip()!r}"
        if details:
            msg += "; " + "; ".join(dict.fromkeys(details))
        raise SubmitDescriptionError(msg, line=line)
    if reply.get("kind") == "cycle":
        cycle = reply["cycle"]
        if len(cycle) == 2:
            msg = (
                f"macro {cycle[0]} refers to itself with no earlier definition to build on; "
                "HTCondor would never finish expanding it"
            )
        else:
            msg = (
                "macros refer to each other in a loop (" + " -> ".join(cycle) + "); "
                "HTCondor would never finish expanding them"
            )
        raise SubmitDescriptionError(msg, key=cycle[0])
    if reply.get("kind") == "too_big":
        key = reply.get("key")
        raise SubmitDescriptionError(
            f"{key} is (or expands to) more than {_MAX_VALUE_CHARS >> 20} MiB; this site refuses values that large",
            key=key,
        )
    if reply.get("kind") == "site_macro":
        key, macro = reply.get("key"), reply.get("macro")
        what = f"$({macro})" if macro else "a macro of the site's HTCondor configuration"
        raise SubmitDescriptionError(
            f"{key}: {what} comes from this site's HTCondor configuration (a path or name of the site); jobs "
            "are not told the site's layout: leave it out, or define the value yourself in the submit file"
            + (f" ({macro} = ...)" if macro else ""),
            key=key,
        )
    if reply.get("kind") == "bad_expr":
        raise SubmitDescriptionError(str(reply.get("message")), key=reply.get("key"))
    if reply.get("kind") == "memory":
        raise SubmitDescriptionError(
            "expanding this submit file's macros ran out of memory; this happens with definitions that grow "
            "without bound, such as a = $(a)$(a) repeated"
        )
    raise SubmitDescriptionError(str(reply.get("message") or "the submit file could not be read"))


# ---------------------------------------------------------------------------
# Interpreting expanded values
# ---------------------------------------------------------------------------

_FALSE_WORDS = {"false", "f", "no", "n", "0", "off", ""}
_TRUE_WORDS = {"true", "t", "yes", "y", "1", "on"}
_URL_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


class _Row:
    """A proc's expanded commands, looked up case-insensitively, first alias wins."""

    def __init__(self, values: Mapping[str, str]) -> None:
        self._v = {k.lower(): (k, v) for k, v in values.items()}

    def get(self, *names: str) -> tuple[str, str] | None:
        for n in names:
            hit = self._v.get(n.lower())
            if hit is not None:
                return hit
        return None


def _truthy(value: str) -> bool:
    return value.strip().lower() in _TRUE_WORDS


def _universe_name(value: str) -> str | None:
    v = value.strip()
    m = re.match(r"[+-]?\d+", v)
    if m and int(m.group()) != 0:  # HTCondor: atoi(value) != 0 means a universe number
        return _UNIVERSE_NUMBERS.get(int(m.group()))
    v = v.lower()
    if v == "globus":
        return "grid"
    return v if v in _UNIVERSE_NAMES else None


def _effective_universe(row: _Row) -> tuple[str, str | None]:
    """(universe name, key that set it)."""
    hit = row.get("universe", "jobuniverse")
    key = hit[0] if hit else None
    if hit is None or not hit[1].strip():
        name = "vanilla"
    else:
        name = _universe_name(hit[1])
        if name is None:
            raise SubmitDescriptionError(f"{key} = {hit[1]}: HTCondor knows no such universe", key=key)
    if name == "vanilla":
        image = row.get("container_image", "containerimage", "docker_image", "dockerimage")
        if image is not None:
            return "container", image[0]
    if name == "docker" and row.get("container_image", "containerimage") is not None:
        raise SubmitDescriptionError("docker universe does not allow use of container_image", key="container_image")
    return name, key


def _check_universe(row: _Row, policy: Policy, *, local: bool) -> str:
    name, key = _effective_universe(row)
    shown = f"{key} = {row.get(key)[1]}" if key and row.get(key) else f"universe {name}"
    if name in policy.forbidden_universes:
        reason = _UNIVERSE_REASONS.get(name, "this site runs vanilla-universe jobs only")
        raise SubmitDescriptionError(f"{shown}: the {name} universe is not allowed here: {reason}", key=key or "universe")
    if local and name != "vanilla":
        raise SubmitDescriptionError(
            f"{shown}: pocketgrid's local executor runs vanilla-universe jobs only", key=key or "universe"
        )
    return name


def _check_getenv(row: _Row) -> None:
    hit = row.get("getenv", "get_env")
    if hit is not None and hit[1].strip().lower() not in _FALSE_WORDS:
        raise SubmitDescriptionError(
            f"{hit[0]} = {hit[1]}: copying the submitter's environment would give your job the site's "
            "environment (its secrets); set what the job needs with environment = ...",
            key=hit[0],
        )


def _inside(proc_dir: str, path: str, key: str, shown: str) -> str:
    """Resolve ``path`` against ``proc_dir``; refuse anything that ends up outside it."""
    if "\x00" in path:
        raise SubmitDescriptionError(f"{shown}: NUL bytes are not allowed in paths", key=key)
    if "$$(" in path:
        raise SubmitDescriptionError(
            f"{shown}: $$() is resolved only when the job is matched, so pocketgrid cannot check that the "
            "path stays in the input's directory",
            key=key,
        )
    candidate = path if os.path.isabs(path) else os.path.join(proc_dir, path)
    real_dir = os.path.realpath(proc_dir)
    real = os.path.realpath(candidate)
    if real == real_dir or not real.startswith(real_dir.rstrip(os.sep) + os.sep):
        raise SubmitDescriptionError(
            f"{shown}: the path leaves the input's directory (after following '..' and symbolic links); "
            "name a file inside it, e.g. a plain file name",
            key=key,
        )
    return os.path.join(proc_dir, os.path.relpath(real, real_dir))


def _std_path(row: _Row, names: tuple[str, ...], default: str, proc_dir: str) -> str | None:
    hit = row.get(*names)
    if hit is None:
        return os.path.join(proc_dir, default)
    key, value = hit
    if value == "" or value == "/dev/null":
        return None
    return _inside(proc_dir, value, key, f"{key} = {value}")


def _split_file_list(value: str) -> list[str]:
    """transfer_input_files is "a comma-delimited list" (condor_submit manual); blanks around items go."""
    return [t.strip() for t in value.split(",") if t.strip()]


def _split_remaps(value: str) -> list[tuple[str, str]]:
    v = value.strip()
    if len(v) >= 2 and v[0] == v[-1] == '"':
        v = v[1:-1]
    pairs: list[tuple[str, str]] = []
    parts: list[str] = []
    buf: list[str] = []
    i = 0
    while i < len(v):
        if v[i] == "\\" and i + 1 < len(v):
            buf.append(v[i : i + 2])
            i += 2
            continue
        if v[i] == ";":
            parts.append("".join(buf))
            buf = []
        else:
            buf.append(v[i])
        i += 1
    parts.append("".join(buf))
    for part in parts:
        if not part.strip():
            continue
        m = re.match(r"((?:\\.|[^=\\])*)=(.*)", part, re.DOTALL)
        name, new = (m.group(1), m.group(2)) if m else (part, "")
        unescape = lambda s: re.sub(r"\\(.)", r"\1", s).strip()  # noqa: E731
        pairs.append((unescape(name), unescape(new)))
    return pairs


# ---------------------------------------------------------------------------
# URL hosts: the site fetches transfer_input_files URLs from inside its own network
# ---------------------------------------------------------------------------

#: Schemes whose authority is the network host the plugin connects to (``cred+https`` is https).
_HOST_SCHEMES = frozenset({"http", "https", "ftp", "ftps", "dav", "davs", "webdav", "webdavs"})
#: Most distinct URL hosts resolved for one submit file.
_MAX_URL_HOSTS = 16
#: NAT64 (RFC 6052): the IPv4 address is in the last 32 bits.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_LOCAL_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback")


def _why_private(address: str) -> str | None:
    """Why an address is the site's own or private (None when it is a public unicast address)."""
    try:
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return "an unreadable"
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour or (
            ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF) if ip in _NAT64 else None)
        if embedded is not None:
            ip = embedded
    for attr, why in (("is_loopback", "a loopback"), ("is_link_local", "a link-local"),
                      ("is_unspecified", "an unspecified"), ("is_multicast", "a multicast"),
                      ("is_private", "a private"), ("is_reserved", "a reserved")):
        if getattr(ip, attr):
            return why
    if not ip.is_global:
        return "a special-purpose (not public)"
    return None


@functools.lru_cache(maxsize=1)
def _own_host_names() -> frozenset[str]:
    names = {socket.gethostname()}
    try:
        names.add(socket.getfqdn())
    except OSError:
        pass
    return frozenset(n.lower().rstrip(".") for n in names if n)


def _own_addresses() -> frozenset[str]:
    """This host's interface addresses (public ones too: a URL to them reaches the site itself)."""
    import psutil  # a server dependency; only the peer checks submit files

    out = set()
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family in (socket.AF_INET, socket.AF_INET6):
                out.add(a.address.split("%", 1)[0].lower())
    return frozenset(out)


class _UrlHosts:
    """Checks the hosts of a submit file's URLs (see :attr:`Policy.allow_private_urls`): names of
    this site, and every address ``socket.getaddrinfo`` gives for the name at submit time, must be
    public.  One instance per check, so each host is resolved once; a name that does not resolve
    (within the policy's time limit) is accepted with a warning, since there is nothing to check."""

    def __init__(self, policy: Policy, *, resolve: bool = True) -> None:
        self.policy = policy
        self.resolve = resolve
        self.warnings: list[str] = []
        self._seen: dict[str, str | None] = {}
        self._deadline = time.monotonic() + policy.url_resolve_timeout_seconds
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._own: frozenset[str] | None = None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def check(self, key: str, url: str) -> None:
        if self.policy.allow_private_urls:
            return
        scheme = url.split("://", 1)[0].lower().rsplit("+", 1)[-1]
        try:
            parts = urllib.parse.urlsplit(url)
            host = parts.hostname
            parts.port  # noqa: B018 - raises ValueError for a port that is not a number
        except ValueError as exc:
            raise SubmitDescriptionError(f"{key}: {url}: not a valid URL ({exc})", key=key) from None
        netloc = parts.netloc
        if any(c in netloc for c in "\\%") or any(c.isspace() for c in netloc):
            raise SubmitDescriptionError(
                f"{key}: {url}: the host part has characters ('\\', '%', spaces) that URL parsers read "
                "differently; write the host plainly",
                key=key,
            )
        if not host:
            if scheme in _HOST_SCHEMES:
                raise SubmitDescriptionError(f"{key}: {url}: the URL names no host", key=key)
            return
        host = host.lower().rstrip(".")
        if host not in self._seen:
            if len(self._seen) >= _MAX_URL_HOSTS:
                raise SubmitDescriptionError(
                    f"{key}: {url}: this site checks at most {_MAX_URL_HOSTS} different URL hosts per submit file",
                    key=key,
                )
            self._seen[host] = self._refusal(host, scheme)
        why = self._seen[host]
        if why:
            raise SubmitDescriptionError(
                f"{key}: {url}: {why}; this site fetches URLs from inside its own network, so it does not fetch "
                "from its own or private addresses: use a public URL, or upload the file and name it as an input",
                key=key,
            )

    def _refusal(self, host: str, scheme: str) -> str | None:
        if host in _LOCAL_NAMES or host.endswith(".localhost") or host in _own_host_names() \
                or host in self.policy.site_host_names:
            return f"{host} is this site's own host name"
        literal = _literal_address(host)
        if literal is not None:
            why = _why_private(literal)
            return f"{host} is {why} address" if why else self._own_address(host, literal)
        if not self.resolve or scheme not in _HOST_SCHEMES:
            return None
        addresses = self._addresses(host)
        if addresses is None:
            self.warnings.append(
                f"the host {host} of a URL could not be resolved here, so pocketgrid could not check that it is "
                "a public address; the job fails if the site cannot fetch it"
            )
            return None
        for address in addresses:
            why = _why_private(address)
            if why:
                return f"{host} resolves to {address}, {why} address"
            own = self._own_address(host, address)
            if own:
                return own
        return None

    def _own_address(self, host: str, address: str) -> str | None:
        if self._own is None:
            self._own = _own_addresses()
        if address.split("%", 1)[0].lower() in self._own:
            return f"{host} is this site's own address ({address})" if host != address else \
                f"{host} is this site's own address"
        return None

    def _addresses(self, host: str) -> list[str] | None:
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="url-resolve")
        future = self._pool.submit(socket.getaddrinfo, host, None, type=socket.SOCK_STREAM)
        try:
            infos = future.result(timeout=max(0.0, self._deadline - time.monotonic()))
        except (concurrent.futures.TimeoutError, OSError, UnicodeError):
            return None
        return [info[4][0] for info in infos]


def _literal_address(host: str) -> str | None:
    """The address a host written as a number stands for (also the short and hexadecimal IPv4
    forms that resolvers accept, such as 127.1 or 0x7f000001); None for a name."""
    try:
        return str(ipaddress.ip_address(host.split("%", 1)[0]))
    except ValueError:
        pass
    try:
        return socket.inet_ntoa(socket.inet_aton(host))
    except OSError:
        return None


def _sandbox_relative(path: str, key: str, shown: str) -> None:
    """A path in the job's sandbox on the execute side (``transfer_output_files``): relative, and
    not leaving the sandbox through '..'."""
    if "\x00" in path or "$$(" in path:
        raise SubmitDescriptionError(f"{shown}: NUL bytes and $$() are not allowed in output paths", key=key)
    if os.path.isabs(path):
        raise SubmitDescriptionError(
            f"{shown}: outputs belong in the proc's directory; name them relative to it (e.g. out.txt or "
            "sub/dir/file), not by an absolute path",
            key=key,
        )
    norm = os.path.normpath(path)
    if norm == ".." or norm.startswith(".." + os.sep):
        raise SubmitDescriptionError(
            f"{shown}: outputs belong in the proc's directory; this path leaves it through '..'", key=key
        )


def _check_transfer_paths(row: _Row, proc_dir: str, policy: Policy, exempt: frozenset[str],
                          urls: _UrlHosts | None = None, *, local: bool = False) -> None:
    for names in (("transfer_input_files", "transferinputfiles"), ("common_input_files",),
                  ("public_input_files", "publicinputfiles")):
        hit = row.get(*names)
        if hit is None:
            continue
        key, value = hit
        for item in _split_file_list(value):
            if item in exempt:
                continue
            m = _URL_RE.match(item)
            if m:
                if local:
                    raise NotHonouredHere(
                        f"{key}: {item}: this site runs jobs itself (local executor) and fetches no URLs, so "
                        "the job would run without that file; a site whose executor is condor fetches it",
                        key=key,
                    )
                if m.group(1).lower() not in policy.allowed_url_schemes:
                    allowed = ", ".join(sorted(policy.allowed_url_schemes)) or "none"
                    raise SubmitDescriptionError(
                        f"{key}: {item}: {m.group(1)}:// URLs are not allowed here (allowed: {allowed})", key=key
                    )
                if urls is not None:
                    urls.check(key, item)
                continue
            _inside(proc_dir, item, key, f"{key}: {item}")
    for names in (("transfer_output_files", "transferoutputfiles"),
                  ("transfer_checkpoint_files", "transfercheckpointfiles")):
        hit = row.get(*names)
        if hit is None:
            continue
        key, value = hit
        if value.strip() in ('""', "''"):  # HTCondor: the empty string, no outputs
            continue
        for item in _split_file_list(value):
            _sandbox_relative(item, key, f"{key}: {item}")
    hit = row.get("transfer_output_remaps", "transferoutputremaps")
    if hit is not None:
        key, value = hit
        for name, new in _split_remaps(value):
            if not new:
                raise SubmitDescriptionError(f"{key}: '{name}' has no new name", key=key)
            if _URL_RE.match(new):
                raise SubmitDescriptionError(
                    f"{key}: {name} = {new}: outputs must come back to the input's directory, where pocketgrid "
                    "serves them from; URLs are not allowed as remap targets",
                    key=key,
                )
            _inside(proc_dir, new, key, f"{key}: {name} = {new}")


def _arguments(row: _Row) -> list[str]:
    a1 = row.get("arguments", "args")
    a2 = row.get("arguments2")
    allow = row.get("allow_arguments_v1")
    if a1 and a2 and not (allow and _truthy(allow[1])):
        raise SubmitDescriptionError(
            "If you wish to specify both 'arguments' and 'arguments2' for maximal compatibility with "
            "different versions of Condor, then you must also specify allow_arguments_v1=true.",
            key="arguments2",
        )
    if a2:
        return split_arguments(a2[1], v2_only=True, key=a2[0])
    if a1:
        return split_arguments(a1[1], key=a1[0])
    return []


def _environment(row: _Row, match_time_ok: bool) -> dict[str, str]:
    e1 = row.get("environment", "env")
    e2 = row.get("environment2")
    allow = row.get("allow_environment_v1")
    if e1 and e2 and not (allow and _truthy(allow[1])):
        raise SubmitDescriptionError(
            "If you wish to specify both 'environment' and 'environment2' for maximal compatibility with "
            "different versions of Condor, then you must also specify allow_environment_v1=true.",
            key="environment2",
        )
    if e2:
        return parse_environment(e2[1], v2_only=True, key=e2[0], match_time_ok=match_time_ok)
    if e1:
        return parse_environment(e1[1], key=e1[0], match_time_ok=match_time_ok)
    return {}


@dataclass
class _Interpreted:
    universe: str
    arguments: list[str]
    environment: dict[str, str]
    stdin: str
    stdout: str | None
    stderr: str | None


def _interpret(values: Mapping[str, str], *, proc_dir: str, input_name: str, policy: Policy,
               local: bool, exempt: frozenset[str] = frozenset(), urls: _UrlHosts | None = None) -> _Interpreted:
    row = _Row(values)
    universe = _check_universe(row, policy, local=local)
    _check_getenv(row)
    args = _arguments(row)
    env = _environment(row, match_time_ok=not local)
    stdin = _inside(proc_dir, input_name, "input", f"input = {input_name}")
    stdout = _std_path(row, ("output", "stdout"), DEFAULT_STDOUT, proc_dir)
    stderr = _std_path(row, ("error", "stderr"), DEFAULT_STDERR, proc_dir)
    _check_transfer_paths(row, proc_dir, policy, exempt, urls, local=local)
    return _Interpreted(universe, args, env, stdin, stdout, stderr)


# ---------------------------------------------------------------------------
# Key policy
# ---------------------------------------------------------------------------


def _attribute_name(key: str) -> str | None:
    if key.startswith("+"):
        return key[1:]
    if key[:3].lower() == "my.":
        return key[3:]
    return None


_ASSIGN_RE = re.compile(r"^\s*([A-Za-z_+][A-Za-z0-9_.+]*)\s*=(.*)$")


def _raw_assignments(text: str) -> dict[str, str]:
    """Last written value of each key, as in the text (before HTCondor's parse-time
    self-reference substitution, which turns ``input = $(input)`` into an empty value)."""
    out: dict[str, str] = {}
    for _, ln in _logical_lines(_raw_lines(text)):
        m = _ASSIGN_RE.match(ln)
        if m and not _COMMENT_RE.match(ln):
            key = m.group(1)
            key = "my." + key[1:] if key.startswith("+") else key
            out[key.lower()] = m.group(2).strip()
    return out


#: Owned keys whose forced value under HTCondor is a path of the site (the staged executable, the
#: job's event log, the transfer list naming it): a value referring to them would expand to it.
_FORCED_PATH_KEYS = frozenset(
    {"executable", "cmd", "log", "userlog", "transfer_input_files", "transferinputfiles"}
)


def _check_forced_path_refs(table: Sequence[tuple[str, str]]) -> None:
    for key, value in table:
        refs = sorted(_macro_refs(value) & _FORCED_PATH_KEYS)
        if refs:
            raise SubmitDescriptionError(
                f"{key} = {value}: $({refs[0]}) is set by pocketgrid, and under HTCondor it names a file of the "
                f"site; write the value you mean instead (for the executable: its plain name)",
                key=key,
            )


def _check_keys(table: Sequence[tuple[str, str]], policy: Policy, raw: Mapping[str, str]) -> list[str]:
    """Refuse forbidden keys; return warnings for the owned ones."""
    warnings: list[str] = []
    for key, value in table:
        low = key.lower()
        attr = _attribute_name(key)
        if attr is not None:
            la = attr.lower()
            if la in policy.forbidden_attributes or la.startswith(_FORBIDDEN_ATTRIBUTE_PREFIXES):
                reason = _FORBIDDEN_ATTRIBUTE_REASONS.get(la, "this site does not allow setting it")
                raise SubmitDescriptionError(f"+{attr} (MY.{attr}) is not allowed: {reason}", key=key)
            continue
        if low in policy.forbidden_keys:
            reason = _FORBIDDEN_KEY_REASONS.get(low, "this site does not allow it")
            raise SubmitDescriptionError(f"{key} is not allowed: {reason}", key=key)
        for prefix, reason in _FORBIDDEN_KEY_PREFIXES.items():
            if low.startswith(prefix):
                raise SubmitDescriptionError(f"{key} is not allowed: {reason}", key=key)
        owned = _OWNED_ALIASES.get(low)
        if owned is not None:
            w = _owned_warning(key, owned, raw.get(low, value))
            if w:
                warnings.append(w)
    return warnings


def _owned_warning(key: str, owned: str, value: str) -> str | None:
    shown = f"{key} = {value}"
    v = value.strip()
    if owned == "executable":
        if "/" in v or "\\" in v:
            return f"{shown} is overridden: pocketgrid runs the executable you uploaded"
        return None
    if owned == "initialdir":
        return f"{shown} is overridden: each proc runs in its own input's directory"
    if owned == "input":
        if re.fullmatch(r"\$\(\s*input\s*\)", v, re.IGNORECASE):
            return None
        return (
            f"{shown} is overridden: pocketgrid sets {key} (the proc's standard input) to the input file, "
            "$(input)"
        )
    if owned in ("input_index", "proc_dir"):
        return f"{shown} is ignored: pocketgrid defines $({owned}) for each proc"
    if owned == "log":
        return f"{shown} is overridden: pocketgrid keeps the job's event log itself"
    if owned in _CONDOR_DEFAULT_TRUE:
        return None if _truthy(v) else f"{shown} is overridden: pocketgrid always transfers it back"
    forced = CONDOR_FORCED_KEYS[owned]
    if forced in ("true", "false"):
        same = _truthy(v) == (forced == "true") and v.lower() in (_TRUE_WORDS | _FALSE_WORDS)
    else:
        same = v.lower() == forced.lower()
    return None if same else f"{shown} is overridden with {forced}"


# ---------------------------------------------------------------------------
# Undefined macros: accepted (HTCondor expands them to nothing), with a warning
# ---------------------------------------------------------------------------

#: Macros condor_submit itself defines when it queues (not known to the bare parser), lower case.
_SUBMIT_TIME_MACROS = frozenset({"item", "node", "submit_file", "submit_time", "year", "month", "day", "iwd"})


def _shorten(line: str, limit: int = 80) -> str:
    return line if len(line) <= limit else line[: limit - 3] + "..."


#: Configuration names of HTCondor that hold the site's paths and names (upper case), recognised in
#: warnings even when this host's configuration does not set them.
_SITE_CONFIG_NAMES = frozenset(
    {"SPOOL", "LOCAL_DIR", "RELEASE_DIR", "LOG", "EXECUTE", "LIBEXEC", "BIN", "SBIN", "LIB", "ETC", "LOCK",
     "RUN", "TILDE", "CONDOR_HOST", "COLLECTOR_HOST", "FULL_HOSTNAME", "HOSTNAME", "IP_ADDRESS", "UID_DOMAIN",
     "FILESYSTEM_DOMAIN", "LOCAL_CONFIG_FILE", "LOCAL_CONFIG_DIR", "SEC_PASSWORD_DIRECTORY",
     "SEC_TOKEN_SYSTEM_DIRECTORY", "CRED_STORE_DIR"}
)


def _is_config_name(name: str) -> bool:
    if name.upper() in _SITE_CONFIG_NAMES:
        return True
    try:
        return name in htcondor2.param
    except Exception:  # noqa: BLE001 - the bindings raise for names they cannot look up
        return False


def _undefined_macro_warnings(undefined: Sequence[str], text: str, table: Sequence[tuple[str, str]]) -> list[str]:
    """One warning per ``$(name)`` that nothing defines, naming its first line and a likely intended name."""
    known = sorted({k.lower() for k, _ in table} | _PER_PROC_MACROS | set(_OWNED_ALIASES))
    lines = _logical_lines(_raw_lines(text))
    warnings = []
    for name in undefined:
        low = name.lower()
        if low in _SUBMIT_TIME_MACROS or low in _OWNED_ALIASES:  # defined when the job is queued
            continue
        pattern = re.compile(r"(?<!\$)\$\(\s*" + re.escape(name) + r"\s*\)", re.IGNORECASE)
        where = next(((n, ln.strip()) for n, ln in lines if not _COMMENT_RE.match(ln) and pattern.search(ln)), None)
        if _is_config_name(name):  # e.g. $(LOCAL_DIR): HTCondor's submit language does not see it
            warnings.append(
                f"$({name}) is a setting of the site's HTCondor configuration, which a submit file does not "
                "see, so HTCondor replaces it with nothing"
                + (f" (line {where[0]}: {_shorten(where[1])!r})" if where else "")
            )
            continue
        guess = difflib.get_close_matches(low, [k for k in known if k != low], n=1, cutoff=0.6)
        warnings.append(
            f"$({name}) is not defined, so HTCondor replaces it with nothing"
            + (f" (line {where[0]}: {_shorten(where[1])!r})" if where else "")
            + (f"; did you mean $({guess[0]})?" if guess else "")
        )
    return warnings


# ---------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------


def _check_names(input_names: Sequence[str], proc_dirs: Sequence[str], *, condor: bool) -> list[str]:
    if len(input_names) != len(proc_dirs):
        raise ValueError(f"{len(input_names)} input names but {len(proc_dirs)} proc directories")
    if not input_names:
        raise SubmitDescriptionError("a job needs at least one input")
    dirs = []
    for name in input_names:
        bad = (
            not name or name in (".", "..") or "/" in name or "\x00" in name or "\n" in name
            or "\r" in name or "$" in name or (condor and "," in name)
        )
        if bad:
            raise SubmitDescriptionError(
                f"input file name {name!r} cannot be used in a submit file: use a plain file name without "
                "'/', '$'" + (", ','" if condor else "") + " or line breaks",
                key="input",
            )
    for d in proc_dirs:
        d = str(d)
        if not d or "$" in d or "\n" in d or "\x00" in d or (condor and "," in d):
            raise ValueError(f"unusable proc directory {d!r}")
        dirs.append(os.path.abspath(d))
    return dirs


def _per_proc_macros(index: int, input_name: str, proc_dir: str, cluster_id: int,
                     process: int | None = None) -> dict[str, str]:
    """``index``: the input's index in the job (``$(input_index)``); ``process``: its proc number in the
    cluster (``$(Process)``; default: the same)."""
    i = str(index)
    p = i if process is None else str(process)
    return {
        "input": input_name, "input_index": i, "proc_dir": proc_dir,
        "Process": p, "ProcId": p, "Step": "0", "ItemIndex": p, "Row": p,
        "Cluster": str(cluster_id), "ClusterId": str(cluster_id),
    }


def _job_indexes(indexes: Sequence[int] | None, n: int) -> list[int]:
    """The inputs' indexes in the job (a piece of a job holds some of them); default ``0..n-1``."""
    if indexes is None:
        return list(range(n))
    out = [int(i) for i in indexes]
    if len(out) != n or len(set(out)) != n or any(i < 0 for i in out):
        raise ValueError(f"input indexes {out!r}: need {n} distinct indexes >= 0")
    return out


def parse(text: str, policy: Policy | None = None, *, input_names: Sequence[str] | None = None) -> ParsedSubmit:
    """Read a user's submit file with HTCondor's parser and apply the site policy.

    Refuses (SubmitDescriptionError) empty text, include/$ENV/multi-line
    values, parse errors (with HTCondor's message and the offending line),
    forbidden keys and universes, a queue statement other than ``queue`` /
    ``queue 1`` (pocketgrid queues one proc per input itself) and anything
    after it, macro loops, getenv, and paths that leave the input's directory.
    Values are checked by expanding every command once per input with
    ``$(input)``/``$(input_index)`` set; pass ``input_names`` to check with the
    real names (a placeholder name is used otherwise), the directories are
    placeholders: :func:`local_proc_specs` / :func:`condor_submit_dict` check
    again with the real ones.
    """
    policy = policy or Policy()
    _scan_text(text, policy)
    names = list(input_names) if input_names else ["input"]
    dirs = [os.path.join(_PLACEHOLDER_ROOT, str(i)) for i in range(len(names))]
    _check_names(names, dirs, condor=False)
    procs = [_per_proc_macros(i, n, d, 1) for i, (n, d) in enumerate(zip(names, dirs))]
    reply = _run_child(policy, text=text, procs=procs, find_undefined=True)
    if not reply.get("ok"):
        _raise_child_failure(reply)
    qargs = (reply.get("qargs") or "").strip()
    if qargs not in ("", "1"):
        raise SubmitDescriptionError(
            f"queue {qargs}: pocketgrid queues one proc per input file itself, setting $(input) and "
            "$(input_index); end the submit file with a plain 'queue' (or leave the queue statement out)",
            key="queue",
        )
    table = tuple((k, v) for k, v in reply["table"])
    _check_forced_path_refs(table)
    warnings = _check_keys(table, policy, _raw_assignments(text))
    warnings += _undefined_macro_warnings(reply.get("undefined") or [], text, table)
    urls = _UrlHosts(policy)
    try:
        for i, values in enumerate(reply["rows"]):
            _interpret(values, proc_dir=dirs[i], input_name=names[i], policy=policy, local=False, urls=urls)
    finally:
        urls.close()
    warnings += list(dict.fromkeys(urls.warnings))
    submit = htcondor2.Submit({k: v for k, v in table})
    return ParsedSubmit(submit=submit, warnings=warnings, policy=policy, table=table)


def local_proc_specs(
    parsed: ParsedSubmit,
    *,
    executable_name: str,
    input_names: list[str],
    proc_dirs: list[str],
    cluster_id: int = 1,
    machine: Mapping[str, Any] | None = None,
    indexes: Sequence[int] | None = None,
) -> list[ProcSpec]:
    """One :class:`ProcSpec` per input for the LocalExecutor.

    Input ``i`` runs ``<proc_dirs[i]>/<executable_name>`` in ``proc_dirs[i]``
    with ``$(input)`` = ``input_names[i]`` and ``$(input_index)`` =
    ``indexes[i]``, its index in the job (default ``i``; a piece of a job
    holds some of its inputs), also ``$(proc_dir)``, ``$(Process)`` = the
    same index (the proc's number in the local log) and ``$(Cluster)`` =
    ``cluster_id``.  stdin is the input file; relative output/error paths
    resolve against the proc directory and must stay inside it (symbolic links
    followed); with no output/error the defaults are ``_condor_stdout`` /
    ``_condor_stderr`` there; ``/dev/null`` or an empty value gives ``None``
    (discard).  Only the vanilla universe runs locally, whatever the policy.
    ``$$()`` match-time macros in arguments/environment are passed literally.
    When output and error name the same file both go to it (append mode), as
    HTCondor merges them.

    Refused here (:class:`NotHonouredHere`, a SubmitDescriptionError naming
    the key): commands the LocalExecutor does not honour
    (:data:`LOCAL_UNHONOURED`) and URLs in ``transfer_input_files`` (nothing
    fetches them here).  Each spec carries the job's ad and the policy
    expressions the runner honours (:data:`LOCAL_POLICY_KEYS`, checked to be
    ClassAd expressions), and with ``machine`` (this host's machine ad,
    pocketgrid/matching.py) whether the host matches the job.
    """
    local_refusal(parsed)
    if not executable_name or "/" in executable_name or executable_name in (".", ".."):
        raise ValueError(f"unusable executable name {executable_name!r}")
    dirs = _check_names(input_names, proc_dirs, condor=False)
    job_indexes = _job_indexes(indexes, len(input_names))
    procs = [_per_proc_macros(job_indexes[i], n, d, cluster_id) for i, (n, d) in enumerate(zip(input_names, dirs))]
    reply = _run_child(parsed.policy, table=parsed.table, procs=procs, local=True, machine=machine)
    if not reply.get("ok"):
        _raise_child_failure(reply)
    specs = []
    urls = _UrlHosts(parsed.policy, resolve=False)  # nothing fetches URLs here: names and numbers only
    for i, values in enumerate(reply["rows"]):
        it = _interpret(values, proc_dir=dirs[i], input_name=input_names[i], policy=parsed.policy, local=True,
                        urls=urls)
        ad = (reply.get("ads") or [{}] * len(reply["rows"]))[i]
        specs.append(
            ProcSpec(
                index=job_indexes[i],
                input_name=input_names[i],
                iwd=dirs[i],
                executable=os.path.join(dirs[i], executable_name),
                arguments=it.arguments,
                environment=it.environment,
                stdin=it.stdin,
                stdout=it.stdout,
                stderr=it.stderr,
                job_ad=ad.get("job_ad"),
                policy=dict(ad.get("policy") or {}),
                match=ad.get("match"),
                **_transfer_lists(_Row(values), dirs[i], input_names[i]),
            )
        )
    return specs


def _transfer_lists(row: _Row, proc_dir: str, input_name: str) -> dict[str, list[str]]:
    """The files HTCondor's file transfer would need (inputs, besides the input file itself) and bring
    back (outputs) for one proc; the entries were checked to stay in the proc's directory."""
    inputs = []
    for names in (("transfer_input_files", "transferinputfiles"), ("public_input_files", "publicinputfiles")):
        hit = row.get(*names)
        for item in _split_file_list(hit[1]) if hit else []:
            if not _URL_RE.match(item) and item != input_name:
                inputs.append(os.path.relpath(_inside(proc_dir, item, hit[0], f"{hit[0]}: {item}"), proc_dir))
    outputs = []
    hit = row.get("transfer_output_files", "transferoutputfiles")
    if hit is not None and hit[1].strip() not in ('""', "''"):
        outputs = _split_file_list(hit[1])
    remaps = []
    hit = row.get("transfer_output_remaps", "transferoutputremaps")
    for name, new in _split_remaps(hit[1]) if hit else []:
        remaps.append((name, _inside(proc_dir, new, hit[0], f"{hit[0]}: {name} = {new}")))
    return {"transfer_input": inputs, "transfer_output": outputs, "transfer_remaps": remaps}


@dataclass
class CondorSubmission:
    """What :func:`condor_submission` builds: HTCondor's submit object, the itemdata rows, and where
    each proc's stderr goes (:meth:`stderr_paths_for`)."""

    submit: htcondor2.Submit
    itemdata: list[dict[str, str]]
    #: As expanded by the check, with ``$(Cluster)`` = :data:`_CHECK_CLUSTER`.
    stderr_paths: list[str | None]

    def stderr_paths_for(self, cluster: int) -> list[str | None]:
        """Each proc's stderr file (absolute, in its directory; None when discarded) once the
        schedd named the cluster (a submit file may say ``error = err.$(Cluster).$(Process)``)."""
        mark = str(_CHECK_CLUSTER)
        return [None if p is None else p.replace(mark, str(cluster)) for p in self.stderr_paths]


#: The keys :func:`condor_submission` itself sets to the site's paths.
_SITE_PATH_VALUE_KEYS = frozenset({"executable", "log", "transfer_input_files"})

#: The cluster number :func:`condor_submission` checks with (the schedd's comes later): distinctive,
#: so the stderr names can be given the real one.
_CHECK_CLUSTER = 987654321


def condor_submit_dict(
    parsed: ParsedSubmit,
    *,
    executable_path: str,
    proc_dirs: list[str],
    input_names: list[str],
    log_path: str,
) -> tuple[htcondor2.Submit, list[dict[str, str]]]:
    """``(submit, itemdata)`` of :func:`condor_submission`."""
    built = condor_submission(parsed, executable_path=executable_path, proc_dirs=proc_dirs,
                              input_names=input_names, log_path=log_path)
    return built.submit, built.itemdata


def condor_submission(
    parsed: ParsedSubmit,
    *,
    executable_path: str,
    proc_dirs: list[str],
    input_names: list[str],
    log_path: str,
    indexes: Sequence[int] | None = None,
) -> CondorSubmission:
    """The CondorExecutor's submission: one cluster, one proc per itemdata row.

    Returns ``(submit, itemdata)`` for ``Schedd.submit(submit, itemdata=iter(itemdata))``;
    each itemdata row is ``{"input", "input_index", "proc_dir"}``, ``input_index``
    being the input's index in the job (``indexes``, default ``0..n-1``: a
    piece of a job holds some of its inputs).  The user's
    commands are kept except the owned ones, which are forced:
    ``executable`` = ``executable_path``, ``initialdir`` = ``$(proc_dir)``,
    ``log`` = ``log_path``, ``transfer_input_files`` = ``$(input)``, the
    executable and the user's own (checked) entries, plus
    :data:`CONDOR_FORCED_KEYS`; ``output``/``error`` default to
    ``_condor_stdout``/``_condor_stderr``.  Every command is expanded once per
    row in the checker process first, so the schedd never sees a file whose
    expansion loops or whose paths leave the input's directory.
    """
    for what, p in (("executable path", executable_path), ("log path", log_path)):
        if not p or not os.path.isabs(p) or "$" in p or "," in p or "\n" in p:
            raise ValueError(f"unusable {what} {p!r}: it must be absolute, without '$', ',' or line breaks")
    dirs = _check_names(input_names, proc_dirs, condor=True)
    row0 = _Row(dict(parsed.table))
    table: dict[str, str] = {}
    normalized = {"output", "stdout", "error", "stderr", "transfer_input_files", "transferinputfiles"}
    for k, v in parsed.table:
        low = k.lower()
        if low in _OWNED_ALIASES or low in normalized:
            continue
        table[k] = v
    out = row0.get("output", "stdout")
    err = row0.get("error", "stderr")
    user_tif = row0.get("transfer_input_files", "transferinputfiles")
    transfer = ["$(input)", executable_path] + ([user_tif[1]] if user_tif and user_tif[1].strip() else [])
    table.update(
        {
            "executable": executable_path,
            "initialdir": "$(proc_dir)",
            "log": log_path,
            "output": out[1] if out else DEFAULT_STDOUT,
            "error": err[1] if err else DEFAULT_STDERR,
            "transfer_input_files": ", ".join(transfer),
            **CONDOR_FORCED_KEYS,
        }
    )
    job_indexes = _job_indexes(indexes, len(input_names))
    itemdata = [
        {"input": n, "input_index": str(job_indexes[i]), "proc_dir": d}
        for i, (n, d) in enumerate(zip(input_names, dirs))
    ]
    procs = [_per_proc_macros(job_indexes[i], n, d, _CHECK_CLUSTER, process=i)
             for i, (n, d) in enumerate(zip(input_names, dirs))]
    reply = _run_child(parsed.policy, table=list(table.items()), procs=procs)
    if not reply.get("ok"):
        _raise_child_failure(reply)
    stderr_paths = []
    urls = _UrlHosts(parsed.policy)  # again here, right before the site fetches them
    try:
        rows = [
            _interpret(values, proc_dir=dirs[i], input_name=input_names[i], policy=parsed.policy, local=False,
                       exempt=frozenset({executable_path}), urls=urls)
            for i, values in enumerate(reply["rows"])
        ]
    finally:
        urls.close()
    for i, values in enumerate(reply["rows"]):
        it = rows[i]
        stderr_paths.append(it.stderr)
        for k, v in values.items():
            if k.lower() not in _SITE_PATH_VALUE_KEYS and (executable_path in v or log_path in v):
                raise SubmitDescriptionError(
                    f"{k}: its value refers to the executable's or the event log's path on this site (through "
                    "a macro); write the value you mean instead",
                    key=k,
                )
        got = _Row(values)
        if got.get("initialdir")[1] != dirs[i] or got.get("executable")[1] != executable_path:
            raise RuntimeError(f"proc {i}: forced keys did not expand as expected")  # pragma: no cover
    return CondorSubmission(htcondor2.Submit(table), itemdata, stderr_paths)
