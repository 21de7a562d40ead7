"""``pocketgrid doctor``: check what breaks a site's deployment, and say what to fix.

Each check gives OK, WARN or FAIL with a one-line fix; the exit status is 0 (all OK),
1 (warnings) or 2 (failures).  Reads the same configuration as ``pocketgrid serve``.
Checks: host certificate (present, chain to the CA, expiry), key file mode and owner,
state directory (exists, owner, mode, free space), the port, clock skew against the broker and the
other members (tokens, login challenges and delegations live 60 s to hours, checked against each
peer's own clock), the HTCondor schedd and the account jobs would run as (Condor: the peer's own
account, never root; local: ``job_user`` in bubblewrap), and job isolation.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import pwd
import shutil
import socket
import stat
import time
from dataclasses import asdict, dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Callable

import requests

from . import pki
from .config import PeerConfig

OK, WARN, FAIL = "OK", "WARN", "FAIL"
EXPIRY_WARNING = dt.timedelta(days=30)
MIN_FREE_BYTES = 1024 ** 3
#: Clock skew against another peer: a warning beyond this many seconds, a failure beyond the next
#: (login challenges and delegations live 60 s: half of that is lost to a clock that far off).
SKEW_WARNING = 5.0
SKEW_FAILURE = 30.0
#: How long doctor waits for a peer's /healthz, and for the schedd.
HTTP_TIMEOUT = 5.0
SCHEDD_TIMEOUT = 5.0


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
                         f"issue a new one (pocketgrid pki issue-host {config.name}) and reload the peer "
                         "(SIGHUP: systemctl reload pocketgrid-peer)"))
    elif end - now < EXPIRY_WARNING:
        out.append(Check("certificate expiry", WARN, f"{cert_path} expires on {end:%Y-%m-%d}",
                         f"renew it soon (pocketgrid pki issue-host {config.name}) and reload the peer "
                         "(SIGHUP: systemctl reload pocketgrid-peer)"))
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


def _http(config: PeerConfig) -> requests.Session:
    from .http import Session

    if config.insecure_http:
        return Session()
    return Session(verify=config.tls_ca, cert=(config.tls_cert, config.tls_key))  # the peer's own mutual TLS


def _clock_targets(config: PeerConfig, http: requests.Session) -> tuple[list[dict[str, str]], str]:
    """The other members (the broker first) as this peer knows them, else the join URLs; and where from."""
    try:
        view = http.get(f"{config.url}/api/v1/broker", timeout=HTTP_TIMEOUT).json()
        broker = (view.get("broker") or {}).get("name")
        members = [m for m in view.get("members", []) if m.get("name") != config.name and m.get("url")]
        members.sort(key=lambda m: m["name"] != broker)
        if members or broker == config.name:
            return members, f"the members {config.name} knows"
    except (requests.RequestException, ValueError, AttributeError):
        pass  # the peer is not running (doctor before the first start): its configuration says whom it joins
    return [{"name": url, "url": url} for url in config.join], "join"


def measure_skew(http: requests.Session, url: str, clock: Callable[[], float] = time.time) -> tuple[float, float]:
    """(their clock - ours, uncertainty) in seconds, from one ``/healthz``: its ``time`` field, else its Date header."""
    before = clock()
    r = http.get(f"{url.rstrip('/')}/healthz", timeout=HTTP_TIMEOUT)
    after = clock()
    half_trip = (after - before) / 2
    theirs: Any = None
    try:
        theirs = r.json().get("time")
    except (ValueError, AttributeError):
        pass
    if isinstance(theirs, (int, float)):
        return theirs - (before + half_trip), half_trip
    date = r.headers.get("Date")
    if not date:
        raise ValueError("its answer has neither a time field nor a Date header")
    return parsedate_to_datetime(date).timestamp() + 0.5 - (before + half_trip), half_trip + 0.5  # Date: whole seconds


def check_clock(config: PeerConfig, clock: Callable[[], float] = time.time) -> list[Check]:
    """Clock skew against the broker and the other members (or the peers to join, before the first start)."""
    http = _http(config)
    targets, source = _clock_targets(config, http)
    if not targets:
        return [Check("clock", OK, f"not compared: {config.name} is the only peer it knows (no members, no join)")]
    out = []
    for target in targets:
        try:
            skew, error = measure_skew(http, target["url"], clock)
        except (requests.RequestException, ValueError, TypeError) as exc:
            out.append(Check("clock", WARN, f"could not ask {target['name']} for its time ({type(exc).__name__}: "
                             f"{str(exc)[:120]})", f"check that {target['url']} is up and reachable from here"))
            continue
        off = abs(skew) - error  # at least this far off
        way = "ahead of" if skew > 0 else "behind"
        detail = f"{target['name']}'s clock is {abs(skew):.1f} s {way} this host's (±{error:.2f} s; {source})"
        fix = ("synchronise both clocks (chrony or systemd-timesyncd: `timedatectl set-ntp true`): tokens, login "
               "challenges and 60-second delegations are checked against each peer's own clock")
        if off > SKEW_FAILURE:
            out.append(Check("clock", FAIL, detail, fix))
        elif off > SKEW_WARNING:
            out.append(Check("clock", WARN, detail, fix))
        else:
            out.append(Check("clock", OK, detail))
    return out


def check_jobs(config: PeerConfig) -> list[Check]:
    """The HTCondor schedd (condor/auto), the account jobs run as, and the local sandbox when jobs run here."""
    from peer.executors.condor import probe_schedd, running_as_root
    from peer.executors.sandbox import SandboxSettings, probe

    me = pwd.getpwuid(os.geteuid()).pw_name
    out: list[Check] = []
    local = config.executor == "local"
    if config.executor in ("condor", "auto"):
        if running_as_root():
            if config.executor == "condor":
                out.append(Check("job account", FAIL, "the peer would run as root, and the HTCondor schedd never "
                                 "lets root own jobs (executor = condor refuses to start)",
                                 "run the peer as its service account (systemd: User=pocketgrid; or "
                                 "sudo -u pocketgrid pocketgrid serve ...)"))
                return out
            out.append(Check("schedd", OK, "not tried: as root, executor auto uses the local executor"))
            local = True
        else:
            schedd = probe_schedd(SCHEDD_TIMEOUT)
            if schedd.ok:
                out.append(Check("schedd", OK, schedd.describe()))
                out.append(Check("job account", OK, f"jobs are submitted to HTCondor as {me}, who owns them (on the "
                                 "execute nodes they run as that owner or as slot users, as the pool says)"))
            elif config.executor == "condor":
                out.append(Check("schedd", FAIL, schedd.describe(),
                                 "start the schedd (systemctl start condor), or point CONDOR_CONFIG / "
                                 "_CONDOR_SCHEDD_HOST at it, and check that this account may submit; or executor = "
                                 "local"))
            else:
                out.append(Check("schedd", OK, f"{schedd.describe()}: executor auto uses the local executor"))
                local = True
    if local:
        iso, error = probe(SandboxSettings(job_user=config.job_user, network=config.job_network,
                                           allow_unisolated=config.allow_unisolated_jobs))
        if iso.refusal:
            fix = ("apt-get install bubblewrap" if shutil.which("bwrap") is None else
                   f"let bubblewrap create namespaces here ({error[:160] or 'it failed'}); "
                   "e.g. sysctl kernel.unprivileged_userns_clone=1, or run the peer where it can")
            if os.geteuid() == 0 and iso.uid is None and "job account" in iso.refusal:
                fix = (f"create the account: useradd --system --no-create-home --shell /usr/sbin/nologin "
                       f"{config.job_user}; or set job_user to an unprivileged account")
            out.append(Check("job isolation", FAIL, iso.refusal, fix))
        elif iso.isolated:
            who = f"as {iso.user}" if iso.user else f"as {me} (the peer's account)"
            out.append(Check("job isolation", OK, f"local jobs run {who}: {iso.describe()}"))
        else:
            out.append(Check("job isolation", WARN, iso.describe(),
                             "apt-get install bubblewrap, then drop allow_unisolated_jobs"))
    return out


def run_checks(config: PeerConfig, clock: Callable[[], float] = time.time) -> list[Check]:
    checks: list[Check] = []
    if not config.insecure_http:
        try:
            config.resolve_tls()
            checks += check_certificate(config)
        except ValueError as exc:
            checks.append(Check("certificate", FAIL, str(exc), "give --pki DIR or tls_cert/tls_key/tls_ca"))
    checks += check_state_dir(config)
    checks.append(check_port(config))
    if not any(c.name == "certificate" and c.status == FAIL for c in checks):  # no TLS: no peer can be asked
        checks += check_clock(config, clock)
    checks += check_jobs(config)
    return checks


def exit_status(checks: list[Check]) -> int:
    statuses = {c.status for c in checks}
    return 2 if FAIL in statuses else 1 if WARN in statuses else 0


def report(checks: list[Check], as_json: bool) -> str:
    if as_json:
        return json.dumps([asdict(c) for c in checks], indent=2)
    return "\n".join(f"{c.status:4} {c.name}: {c.detail}" + (f"\n     fix: {c.fix}" if c.fix else "") for c in checks)
