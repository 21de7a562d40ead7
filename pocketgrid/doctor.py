"""``pocketgrid doctor``: check what breaks a site's deployment, and say what to fix.

Each check gives OK, WARN or FAIL with a one-line fix; the exit status is 0 (all OK),
1 (warnings) or 2 (failures).  Reads the same configuration as ``pocketgrid serve``.
Checks so far: host certificate (present, chain to the CA, expiry), key file mode and owner,
state directory (exists, owner, mode, free space), the port, and job isolation (bubblewrap).
"""
from __future__ import annotations

import datetime as dt
import json
import os
import pwd
import shutil
import socket
import stat
from dataclasses import asdict, dataclass
from pathlib import Path

from . import pki
from .config import PeerConfig

OK, WARN, FAIL = "OK", "WARN", "FAIL"
EXPIRY_WARNING = dt.timedelta(days=30)
MIN_FREE_BYTES = 1024 ** 3


@dataclass
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""


def _owner(path: Path) -> str:
    uid = path.stat().st_uid
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def check_certificate(config: PeerConfig, now: dt.datetime | None = None) -> list[Check]:
    now = now or dt.datetime.now(dt.timezone.utc)
    out: list[Check] = []
    cert_path, ca_path = Path(config.tls_cert), Path(config.tls_ca)
    if not cert_path.is_file():
        return [Check("certificate", FAIL, f"no host certificate {cert_path}",
                      f"issue one: pocketgrid pki issue-host {config.name}")]
    cert = pki.load_certificate(cert_path)
    try:
        ca = pki.load_certificate(ca_path)
        cert.verify_directly_issued_by(ca)
        out.append(Check("certificate chain", OK, f"{cert_path} is signed by {ca_path}"))
    except (OSError, ValueError, TypeError) as exc:
        out.append(Check("certificate chain", FAIL, f"{cert_path} does not verify against {ca_path}: {exc}",
                         "issue the host certificate with this site's CA (pocketgrid pki issue-host NAME)"))
    end = cert.not_valid_after_utc
    if end <= now:
        out.append(Check("certificate expiry", FAIL, f"{cert_path} expired on {end:%Y-%m-%d %H:%M} UTC",
                         f"issue a new one (pocketgrid pki issue-host {config.name}) and restart the peer"))
    elif end - now < EXPIRY_WARNING:
        out.append(Check("certificate expiry", WARN, f"{cert_path} expires on {end:%Y-%m-%d}",
                         f"renew it soon (pocketgrid pki issue-host {config.name}) and restart the peer"))
    else:
        out.append(Check("certificate expiry", OK, f"{cert_path} valid until {end:%Y-%m-%d}"))
    key_path = Path(config.tls_key)
    if not key_path.is_file():
        out.append(Check("host key", FAIL, f"no key file {key_path}", "give tls_key or --pki"))
    else:
        mode = stat.S_IMODE(key_path.stat().st_mode)
        me = pwd.getpwuid(os.geteuid()).pw_name
        if mode & 0o077:
            out.append(Check("host key", FAIL, f"{key_path} has mode {mode:04o}", f"chmod 0600 {key_path}"))
        elif _owner(key_path) != me:
            out.append(Check("host key", FAIL, f"{key_path} is owned by {_owner(key_path)}, the peer runs as {me}",
                             f"chown {me} {key_path}"))
        else:
            out.append(Check("host key", OK, f"{key_path}: 0600, owned by {me}"))
    return out


def check_state_dir(config: PeerConfig) -> list[Check]:
    path = config.state_path
    me = pwd.getpwuid(os.geteuid()).pw_name
    if not path.exists():
        return [Check("state directory", WARN, f"{path} does not exist yet",
                      f"the peer creates it; or: install -d -m 0700 -o {me} {path}")]
    out: list[Check] = []
    if _owner(path) != me:
        out.append(Check("state directory", FAIL, f"{path} is owned by {_owner(path)}, the peer runs as {me}",
                         f"chown -R {me}: {path}"))
    else:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode != 0o700:
            out.append(Check("state directory", WARN, f"{path} has mode {mode:04o}", f"chmod 0700 {path}"))
        else:
            out.append(Check("state directory", OK, f"{path}: 0700, owned by {me}"))
    usage = shutil.disk_usage(path)
    if usage.free < MIN_FREE_BYTES or usage.free < usage.total * 0.05:
        out.append(Check("free space", WARN, f"{usage.free // 2**20} MiB free under {path}",
                         "free space or move state_dir to a larger file system"))
    else:
        out.append(Check("free space", OK, f"{usage.free // 2**30} GiB free under {path}"))
    return out


def check_port(config: PeerConfig) -> Check:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((config.host, config.port))
        except OSError as exc:
            return Check("port", WARN, f"{config.host}:{config.port} cannot be bound ({exc.strerror})",
                         "if the peer is not already running there, stop what holds the port or change port")
    return Check("port", OK, f"{config.host}:{config.port} is free")


def check_isolation(config: PeerConfig) -> Check:
    if config.executor != "local" and shutil.which("condor_q"):
        return Check("jobs", OK, "HTCondor tools found: under Condor, jobs run as its owner or slot users")
    if shutil.which("bwrap"):
        return Check("jobs", OK, "bubblewrap found: local jobs run sandboxed")
    if os.geteuid() == 0:
        return Check("jobs", WARN, f"no bubblewrap: local jobs run as {config.job_user} without a sandbox",
                     "apt-get install bubblewrap")
    return Check("jobs", WARN if config.allow_unisolated_jobs else FAIL, "no bubblewrap and not root: "
                 "local jobs cannot be isolated", "apt-get install bubblewrap")


def run_checks(config: PeerConfig) -> list[Check]:
    checks: list[Check] = []
    if not config.insecure_http:
        try:
            config.resolve_tls()
            checks += check_certificate(config)
        except ValueError as exc:
            checks.append(Check("certificate", FAIL, str(exc), "give --pki DIR or tls_cert/tls_key/tls_ca"))
    checks += check_state_dir(config)
    checks.append(check_port(config))
    checks.append(check_isolation(config))
    return checks


def exit_status(checks: list[Check]) -> int:
    statuses = {c.status for c in checks}
    return 2 if FAIL in statuses else 1 if WARN in statuses else 0


def report(checks: list[Check], as_json: bool) -> str:
    if as_json:
        return json.dumps([asdict(c) for c in checks], indent=2)
    return "\n".join(f"{c.status:4} {c.name}: {c.detail}" + (f"\n     fix: {c.fix}" if c.fix else "") for c in checks)
