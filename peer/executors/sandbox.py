"""How the LocalExecutor isolates a job from the peer (and from other users' jobs).

Two layers, each used when this host allows it (probed once at start):

* a **namespace sandbox** with bubblewrap (``bwrap``, Debian package
  ``bubblewrap``): a new root with the system read-only (``/usr``, the
  ``/lib*`` and ``/bin`` links, a few files of ``/etc`` a program needs and
  nothing else of it), a fresh ``/tmp``, ``/proc`` and ``/dev``, and ONLY the
  proc's own directory, writable, at its own path (so ``initialdir``-relative
  paths work).  The peer's state directory, PKI, database, publishing area
  and every other job are simply not there.  All namespaces are new
  (``--unshare-all``: no network, no other processes), except the network when
  the site allows it (``job_network``);
* a **separate account** when the peer runs as root (``job_user``, default
  ``nobody``): the runner chowns the proc directory to it and the job runs as
  that account with no capabilities (inside bwrap, ``setpriv`` drops to it
  after the sandbox is built: bwrap then runs privileged and can bind the
  proc directory even though the peer's state directory is 0700); the runner
  and the user log stay the peer's.

Resource limits (:class:`Limits`) are set in the job's process before it
starts.  With neither layer (no working bwrap and not root) the job would run
as the peer, able to read its host key: :func:`decide` then refuses jobs unless
the operator accepted that (``allow_unisolated_jobs``), see docs/security.md.

The decided :class:`Isolation` is plain JSON, handed to each runner
(:mod:`peer.executors.local_runner`), which builds the command line with
:func:`command`.
"""
from __future__ import annotations

import json
import logging
import os
import pwd
import resource
import shutil
import stat
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

log = logging.getLogger(__name__)

#: System directories a job may read (those that exist; symbolic links such as
#: Debian's merged-/usr ``/bin -> usr/bin`` are recreated as links).
SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
#: The few files of /etc a program needs (user names, the dynamic loader, the
#: time zone, Debian's alternatives links); nothing else of /etc is mounted.
ETC_PATHS = ("/etc/passwd", "/etc/group", "/etc/nsswitch.conf", "/etc/ld.so.cache", "/etc/ld.so.conf",
             "/etc/ld.so.conf.d", "/etc/localtime", "/etc/alternatives", "/etc/mime.types")
#: Added when jobs may use the network: name resolution and the CA bundle.
NETWORK_ETC_PATHS = ("/etc/hosts", "/etc/host.conf", "/etc/resolv.conf", "/etc/gai.conf", "/etc/ssl",
                     "/etc/ca-certificates")

HOW_TO_ISOLATE = (
    "install bubblewrap (`apt-get install bubblewrap`) on a kernel that allows unprivileged user namespaces, "
    "or run the peer as root with a job account (job_user); or accept the risk on a single-user machine "
    "with allow_unisolated_jobs = true (--allow-unisolated-jobs)"
)


@dataclass(frozen=True)
class Limits:
    """Resource limits of a job's processes (``setrlimit`` before it starts)."""

    core_bytes: int = 0  #: no core dumps (they would hold the job's memory in its outputs)
    max_file_bytes: int = 64 * 1024 ** 3  #: largest file a job may write (RLIMIT_FSIZE)
    max_open_files: int = 4096  #: RLIMIT_NOFILE
    #: RLIMIT_NPROC: counted per account, so only set when jobs run as an
    #: account of their own (with the peer's account it would count the peer too).
    max_processes: int = 1024


@dataclass(frozen=True)
class Isolation:
    """What jobs get on this peer, as decided at start; JSON for the runners."""

    bwrap: str | None = None  #: path of a bwrap that works here, or None
    #: path of util-linux ``setpriv`` (drops to the job account inside bwrap, as root)
    setpriv: str | None = None
    user: str | None = None  #: the job account when the peer is root
    uid: int | None = None
    gid: int | None = None
    network: bool = False
    limits: Limits = field(default_factory=Limits)
    #: Set when jobs must not run here: says why and what to do.
    refusal: str | None = None

    @property
    def isolated(self) -> bool:
        return self.bwrap is not None or self.uid is not None

    def describe(self) -> str:
        if self.refusal:
            return f"jobs refused: {self.refusal}"
        parts = []
        if self.bwrap:
            parts.append("namespace sandbox (bubblewrap): only the proc directory writable, the peer's files "
                         f"not mounted, network {'allowed' if self.network else 'off'}")
        if self.uid is not None:
            parts.append(f"as account {self.user} (uid {self.uid})")
        if not parts:
            return "NONE: jobs run as the peer's own account and can read its host key and every user's files " \
                   "(allow_unisolated_jobs = true)"
        return "; ".join(parts)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "Isolation":
        data = json.loads(text)
        data["limits"] = Limits(**data.get("limits", {}))
        return cls(**data)


@dataclass(frozen=True)
class SandboxSettings:
    """The site's choices (config keys ``job_user``, ``job_network``, ``allow_unisolated_jobs``)."""

    job_user: str = "nobody"
    network: bool = False
    allow_unisolated: bool = False
    limits: Limits = field(default_factory=Limits)


def decide(
    settings: SandboxSettings,
    *,
    is_root: bool,
    bwrap: str | None,
    bwrap_works: bool,
    account: tuple[str, int, int] | None,
    setpriv: str | None = None,
) -> Isolation:
    """The isolation jobs get, from what the probe found; ``refusal`` set when they must not run."""
    if is_root and account is None:
        # As root, without an account to switch to, a job (even in bwrap) would run as root.
        return Isolation(refusal=f"the peer runs as root and the job account {settings.job_user!r} does not "
                                 "exist or is root: create it or set job_user to an unprivileged account "
                                 "(jobs never run as root)")
    user, uid, gid = account if is_root and account is not None else (None, None, None)
    iso = Isolation(bwrap=bwrap if bwrap_works else None, setpriv=setpriv if bwrap_works else None,
                    user=user, uid=uid, gid=gid, network=settings.network, limits=settings.limits)
    if iso.isolated or settings.allow_unisolated:
        return iso
    reason = "bubblewrap (bwrap) is not installed" if bwrap is None else "bubblewrap cannot create its sandbox here"
    return Isolation(refusal=f"jobs cannot be isolated from the peer ({reason}, and the peer is not root, so "
                             f"jobs would run as its own account and could read its host key): {HOW_TO_ISOLATE}",
                     network=settings.network, limits=settings.limits)


def probe(settings: SandboxSettings) -> tuple[Isolation, str]:
    """Find out what works on this host (runs ``bwrap ... true`` once); returns the decision and bwrap's error."""
    is_root = os.geteuid() == 0
    account = None
    if is_root:
        try:
            entry = pwd.getpwnam(settings.job_user)
            account = (entry.pw_name, entry.pw_uid, entry.pw_gid)
        except KeyError:
            account = None
        if account is not None and account[1] == 0:
            account = None  # "root" is no job account
    bwrap = shutil.which("bwrap")
    setpriv = shutil.which("setpriv", path="/usr/bin:/bin")  # run inside the sandbox: a system path
    works, error = False, ""
    if bwrap is not None and is_root and setpriv is None:
        error = "setpriv (util-linux) is missing: it drops root to the job account inside the sandbox"
    elif bwrap is not None:
        trial = Isolation(bwrap=bwrap, setpriv=setpriv, user=account[0] if account else None,
                          uid=account[1] if account else None, gid=account[2] if account else None,
                          network=settings.network)
        try:
            out = subprocess.run(command(trial, ["/bin/sh", "-c", "test $(id -u) != 0"], "/"), capture_output=True,
                                 text=True, timeout=20, stdin=subprocess.DEVNULL, cwd="/", **account_kwargs(trial))
            works, error = out.returncode == 0, out.stderr.strip()
        except (OSError, subprocess.TimeoutExpired) as exc:
            error = str(exc)
    return decide(settings, is_root=is_root, bwrap=bwrap, bwrap_works=works, account=account,
                  setpriv=setpriv), error


def command(iso: Isolation, argv: list[str], proc_dir: str, *, info_fd: int | None = None) -> list[str]:
    """The command line that starts ``argv`` in ``proc_dir`` under ``iso`` (run it with :func:`account_kwargs`).

    ``info_fd``: bwrap writes there, as JSON, the host PID of the sandbox's
    first process (``child-pid``), whose process group holds the job: the
    runner sends it SIGTERM first, as HTCondor does, before killing bwrap.
    """
    if not iso.bwrap:
        exe = argv[0]
        if os.path.dirname(exe) == proc_dir.rstrip("/"):
            exe = "./" + os.path.basename(exe)  # the job account may not traverse the peer's 0700 state dir
        return [exe, *argv[1:]]
    if iso.uid is not None:
        # The peer is root: bwrap runs privileged (no user namespace; it can bind the proc dir under the
        # 0700 state dir), keeps only the two capabilities setpriv needs to become the job account, and
        # setpriv drops them all (bounding set too) with no_new_privs before the job starts.
        cmd = [iso.bwrap, "--unshare-ipc", "--unshare-pid", "--unshare-uts", "--unshare-cgroup-try"]
        if not iso.network:
            cmd.append("--unshare-net")
        cmd += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
        argv = [iso.setpriv or "/usr/bin/setpriv", "--reuid", str(iso.uid), "--regid", str(iso.gid),
                "--clear-groups", "--inh-caps", "-all", "--bounding-set", "-all", "--no-new-privs", "--", *argv]
    else:
        cmd = [iso.bwrap, "--unshare-all"]
        if iso.network:
            cmd.append("--share-net")
    # Directories bwrap makes get the peer's umask (077): /etc must be readable for the job account.
    if info_fd is not None:
        cmd += ["--info-fd", str(info_fd)]
    cmd += ["--die-with-parent", "--new-session", "--perms", "0755", "--dir", "/etc"]
    for path in SYSTEM_PATHS:
        if os.path.islink(path):
            cmd += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            cmd += ["--ro-bind", path, path]
    for path in ETC_PATHS + (NETWORK_ETC_PATHS if iso.network else ()):
        cmd += ["--ro-bind-try", path, path]
    cmd += ["--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--tmpfs", "/tmp"]
    if proc_dir != "/":
        parents = [str(p) for p in reversed(Path(proc_dir).parents) if str(p) not in ("/", "/tmp")]
        for parent in parents:  # made in the sandbox's own root: traversable, not listable, nothing else in them
            cmd += ["--perms", "0711", "--dir", parent]
        cmd += ["--bind", proc_dir, proc_dir]
    cmd += ["--chdir", proc_dir, "--", *argv]
    return cmd


def exec_problem(iso: Isolation, executable: str) -> str | None:
    """Why the sandbox cannot start ``executable``, checked before it starts (None: no problem seen).

    Inside bwrap a failed exec is bwrap's own exit status 1, not an exec
    error the runner can see, so the usual causes are checked here and the
    proc is held (code 6) as HTCondor does: a missing or non-executable file,
    or a ``#!`` interpreter the sandbox does not contain.
    """
    if not iso.bwrap:
        return None  # Popen reports the exec error itself
    try:
        st = os.stat(executable)
        with open(executable, "rb") as fh:
            head = fh.readline(256)
    except OSError as exc:
        return exc.strerror or str(exc)
    if not stat.S_ISREG(st.st_mode) or not st.st_mode & 0o111:
        return "Permission denied"
    if head.startswith(b"#!"):
        words = head[2:].split()
        interpreter = words[0].decode(errors="replace") if words else ""
        visible = any(interpreter == p or interpreter.startswith(p + "/") for p in SYSTEM_PATHS)
        if not visible or not os.path.exists(interpreter):
            return (f"interpreter {interpreter!r} is not available to jobs (they see only the system's "
                    f"{', '.join(p for p in SYSTEM_PATHS if os.path.exists(p))})")
    return None


def account_kwargs(iso: Isolation) -> dict[str, object]:
    """``subprocess.Popen`` arguments that start the process as the job account.

    None when the peer is not root, nor with bwrap (setpriv switches inside the sandbox).
    """
    if iso.uid is None or iso.bwrap:
        return {}
    return {"user": iso.uid, "group": iso.gid, "extra_groups": []}


def set_limits(iso: Isolation) -> Callable[[], None]:
    """A ``preexec_fn`` that applies the job's resource limits (never raises them above the hard limit)."""
    limits = iso.limits
    wanted = [(resource.RLIMIT_CORE, limits.core_bytes), (resource.RLIMIT_FSIZE, limits.max_file_bytes),
              (resource.RLIMIT_NOFILE, limits.max_open_files)]
    if iso.uid is not None:
        wanted.append((resource.RLIMIT_NPROC, limits.max_processes))

    def apply() -> None:
        for which, value in wanted:
            _soft, hard = resource.getrlimit(which)
            value = value if hard == resource.RLIM_INFINITY else min(value, hard)
            resource.setrlimit(which, (value, value))

    return apply


def hand_over(proc_dir: Path, iso: Isolation, staged: list[str] | None = None) -> None:
    """Give the proc directory (and what was staged in it) to the job account, so it can write its outputs.

    Safe against what an earlier run of the job (as that account) left there:
    the walk goes by directory descriptors and never follows a symbolic link
    (``os.fwalk``), and a file with several hard links is only handed over
    when it is one of the ``staged`` files (the executable and submit file
    every proc dir links to), never a link the job made to a file of the peer.
    """
    if iso.uid is None:
        return
    allowed = set()
    for path in staged or []:
        try:
            st = os.stat(path, follow_symlinks=False)
            allowed.add((st.st_dev, st.st_ino))
        except OSError:
            continue
    os.chown(proc_dir, iso.uid, iso.gid, follow_symlinks=False)
    for _root, dirs, files, dir_fd in os.fwalk(proc_dir, follow_symlinks=False):
        for name in dirs + files:
            try:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode) and st.st_nlink > 1 and (st.st_dev, st.st_ino) not in allowed:
                log.warning("not handing %s/%s to %s: it has %d hard links", _root, name, iso.user, st.st_nlink)
                continue
            os.chown(name, iso.uid, iso.gid, dir_fd=dir_fd, follow_symlinks=False)


def exposed_files(paths: list[Path]) -> list[str]:
    """Warnings for peer secrets (state directory, host key) that other accounts may read."""
    warnings = []
    for path in paths:
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
        except OSError:
            continue
        if mode & 0o077:
            warnings.append(f"{path} is mode {mode:04o}: other accounts (and jobs run as them) may read it; "
                            f"run `chmod {'700' if path.is_dir() else '600'} {path}`")
    return warnings
