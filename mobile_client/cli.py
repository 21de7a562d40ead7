"""Client commands of the ``pocketgrid`` CLI: login, pair, files, submit, status, kill, release, retry, pin,
unpin, purge, outputs, fetch, acl, audit, gc, placements.

Peers, CA bundle and token come from ``--peer``/``--ca`` or the environment
(``POCKETGRID_PEERS``, ``POCKETGRID_CA``, ``POCKETGRID_TOKEN``), else from
the credentials file ``pocketgrid login`` or ``pocketgrid pair`` wrote.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

from tqdm import tqdm

import requests

from . import pending_submits
from .client import FINAL_STATES, ApiError, Client, OutputExists, PeerUnreachable
from .credentials import Credentials
from pocketgrid.transfer import DownloadFailed, IntegrityError

ENV_PEERS = "POCKETGRID_PEERS"
ENV_CA = "POCKETGRID_CA"
ENV_TOKEN = "POCKETGRID_TOKEN"
DEFAULT_PEER = "https://127.0.0.1:8650"


def add_peer_option(p: argparse.ArgumentParser, *, repeated: bool = False) -> None:
    """``--peer``, ``--ca``, ``--json``.  ``repeated``: on a sub-command of a command that has
    them already (``acl list --json``), so they work in both places; not given here, they
    leave the command's value alone (argparse.SUPPRESS)."""
    default: dict[str, Any] = {"default": argparse.SUPPRESS} if repeated else {}
    p.add_argument("--peer", help=f"peer URL(s), comma separated; tried in order (env {ENV_PEERS}; "
                                  f"default: the peers you logged in to, else {DEFAULT_PEER})", **default)
    p.add_argument("--ca", help=f"site CA bundle to check the peers against (env {ENV_CA}; default: saved at login)",
                   **default)
    p.add_argument("--json", action="store_true", help="print raw JSON", **default)


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("login", help="log in with your certificate; the token is saved (0600) for later commands")
    add_peer_option(p)
    p.add_argument("url", nargs="?", help="peer URL(s) to log in to (same as --peer)")
    p.add_argument("--cert", required=True, type=Path, help="your user certificate (PEM)")
    p.add_argument("--key", required=True, type=Path, help="its private key (PEM); it never leaves this machine")
    p.set_defaults(func=cmd_login)

    p = sub.add_parser("pair", help="pair a phone: with no --code, print a code; on the phone, redeem it with --code")
    add_peer_option(p)
    p.add_argument("url", nargs="?", help="peer URL(s) (same as --peer)")
    p.add_argument("--code", help="the code shown on your logged-in device (on the phone)")
    p.add_argument("--device", default="phone", help="a name for this device, to recognise and revoke it later")
    p.set_defaults(func=cmd_pair)

    p = sub.add_parser("logout", help="revoke your token on every peer and forget it here")
    add_peer_option(p)
    p.set_defaults(func=cmd_logout)

    p = sub.add_parser("whoami", help="your DN, VO and rights as the peer sees them")
    add_peer_option(p)
    p.set_defaults(func=cmd_whoami)

    p = sub.add_parser("tokens", help="list your tokens (devices included) or revoke one")
    add_peer_option(p)
    p.add_argument("--revoke", metavar="TOKEN_ID", help="revoke this token (e.g. a lost phone)")
    p.add_argument("--all", action="store_true", help="administrators: everyone's tokens")
    p.set_defaults(func=cmd_tokens)

    p = sub.add_parser("acl", help="administrators: list or change the ACL rules")
    add_peer_option(p)
    acl_sub = p.add_subparsers(dest="acl_command", required=True, metavar="ACTION")
    add_peer_option(acl_sub.add_parser("list", help="the rules in evaluation order"), repeated=True)
    for effect, verb in (("allow", "allows"), ("deny", "denies")):
        q = acl_sub.add_parser(effect, help=f"add a rule that {verb} a group of operations")
        add_peer_option(q, repeated=True)
        q.add_argument("group", help="files-read | jobs-submit | jobs-manage | admin | *")
        q.add_argument("match", help="dn | dn-substring | vo | any")
        q.add_argument("value", nargs="?", default="", help="the DN, DN part or VO (none for 'any')")
        q.add_argument("--position", type=int, help="where in the order (default: last)")
    q = acl_sub.add_parser("remove", help="remove a rule by its id")
    add_peer_option(q, repeated=True)
    q.add_argument("rule_id", type=int)
    p.set_defaults(func=cmd_acl)

    p = sub.add_parser("audit", help="administrators: the audit log, newest first")
    add_peer_option(p)
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--action", help="only this action (login, submit, kill, acl-deny, ...)")
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser("files", help="browse, wildcard-search or search inside the publishing area")
    add_peer_option(p)
    p.add_argument("path", nargs="?", default="", help="directory to list")
    p.add_argument("--glob", help="wildcard, e.g. '*.txt' or 'runs/**/*.dat'")
    p.add_argument("--grep", help="text to search inside files")
    p.add_argument("--regex", action="store_true", help="--grep is a regular expression")
    p.add_argument("-i", "--ignore-case", action="store_true")
    p.set_defaults(func=cmd_files)

    p = sub.add_parser("submit", help="submit a job: one proc per input file")
    add_peer_option(p)
    p.add_argument("--name", required=True, help="job name")
    p.add_argument("--executable", required=True, type=Path)
    p.add_argument("--submit-file", required=True, type=Path, help="HTCondor submit file; use $(input) and $(input_index)")
    p.add_argument("--idempotency-key", help="reuse to retry a submit safely (default: a new UUID)")
    p.add_argument("--upload", action="append", type=Path, default=[], metavar="LOCAL_FILE",
                   help="a local input file: uploaded first (resumable, verified), then used as an input; repeatable")
    p.add_argument("inputs", nargs="*", help="input files (paths in the publishing area)")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("upload", help="upload local files to use as job inputs (resumable: run again after an interruption)",
                       description="Upload local files into your private upload area of the peer (tus, resumable, "
                                   "verified by SHA-256) and print the path to use as a job input.  After Ctrl-C or "
                                   "a dropped link, run the same command again: it continues where the peer stopped.")
    add_peer_option(p)
    p.add_argument("files", nargs="+", type=Path, metavar="FILE")
    p.add_argument("--name", help="name on the peer (one FILE only; default: the file's name)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_upload)

    p = sub.add_parser("status", help="status of a job (or of all your jobs)",
                       description="Status of a job, of all your jobs, or of the system (--system).  Exit status: "
                                   "0; 1 for a job that did not complete (--wait) or an error; 3 when some peers "
                                   "did not answer, so the list (or the system view) is partial: they are named "
                                   "on stderr.")
    add_peer_option(p)
    p.add_argument("job", nargs="?")
    p.add_argument("--wait", action="store_true", help="follow the job until it finishes (long-polls): the whole status first and last, in between the inputs that changed")
    p.add_argument("--system", action="store_true",
                   help="show the broker, epoch and members instead: alive or dead, last heartbeat, load, executor")
    p.add_argument("-v", "--placement", action="store_true",
                   help="the whole placement ranking: each peer's estimate and where its figures came from")
    p.add_argument("--history", action="store_true", help="each input's past states with their reasons")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("kill", help="remove a job's procs")
    add_peer_option(p)
    p.add_argument("job")
    p.set_defaults(func=cmd_kill)

    p = sub.add_parser("retry", help="run a job's failed inputs (or the ones you name) again",
                       description="Run finished inputs of a job again, each as a new attempt (on whichever site "
                                   "the broker picks): every input that failed (--failed), or the inputs you name "
                                   "(--input N, repeatable; e.g. ones whose outputs were on a site that is gone).  "
                                   "An input's earlier result stays its result until the new attempt succeeds.")
    add_peer_option(p)
    p.add_argument("job")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--failed", action="store_true", help="every input that failed")
    which.add_argument("--input", type=int, action="append", dest="inputs", metavar="N",
                       help="this input (its index, as `status` shows it); repeatable")
    p.set_defaults(func=cmd_retry)

    p = sub.add_parser("pin", help="keep a job and its outputs until you unpin it (finished jobs are otherwise "
                                   "removed after the site's retention time)")
    add_peer_option(p)
    p.add_argument("jobs", nargs="+", metavar="JOB")
    p.set_defaults(func=cmd_pin)

    p = sub.add_parser("unpin", help="let a pinned job expire again (the site's retention time after it finished)")
    add_peer_option(p)
    p.add_argument("jobs", nargs="+", metavar="JOB")
    p.set_defaults(func=cmd_unpin)

    p = sub.add_parser("purge", help="remove finished jobs (files and record) or uploads now, e.g. to free your quota",
                       description="Remove finished jobs, with their outputs, or your uploads, now.  A job that "
                                   "still runs is refused (kill it first); pinned jobs are removed too (you asked).")
    add_peer_option(p)
    p.add_argument("jobs", nargs="*", metavar="JOB")
    p.add_argument("--upload", action="append", default=[], metavar="PATH",
                   help="one of your uploads: uploads/u-.../NAME as `upload` printed it, or NAME; repeatable")
    p.set_defaults(func=cmd_purge)

    p = sub.add_parser("gc", help="administrators: run the retention sweep on every peer now, or (--dry-run) "
                                  "show what it would remove and what it keeps past its time, and why")
    add_peer_option(p)
    p.add_argument("--dry-run", action="store_true", help="remove nothing; show what would go")
    p.add_argument("--in-days", type=float, metavar="N",
                   help="with --dry-run: what would go N days from now (default: now)")
    p.add_argument("--local", action="store_true", help="the entry peer only")
    p.set_defaults(func=cmd_gc)

    p = sub.add_parser("release", help="release a job's held inputs (all, or --input N ...): they run again")
    add_peer_option(p)
    p.add_argument("job")
    p.add_argument("--input", type=int, action="append", metavar="N", dest="inputs",
                   help="release this input only (repeatable); default: every held input")
    p.set_defaults(func=cmd_release)

    p = sub.add_parser("placements", help="administrators: the broker's recent placement decisions and why")
    add_peer_option(p)
    p.add_argument("--limit", type=int, default=10, help="how many, newest first (default 10)")
    p.set_defaults(func=cmd_placements)

    p = sub.add_parser("outputs", help="list a job's output files with size and SHA-256")
    add_peer_option(p)
    p.add_argument("job")
    p.set_defaults(func=cmd_outputs)

    p = sub.add_parser("fetch", help="download outputs (resumable: run again after an interruption)",
                       description="Download a job's outputs into DEST/<job-id>/<index>/<name> (DEST: -o, default "
                                   "the current folder), so jobs fetched into one folder never mix.  Each file is "
                                   "verified by SHA-256.  A file already there with the same SHA-256 is kept "
                                   "(\"already here, verified\"); a different one is never overwritten without "
                                   "--force (nothing is fetched then).  An interrupted fetch (Ctrl-C, a dropped "
                                   "link) leaves NAME.part: run the same command again and it resumes.")
    add_peer_option(p)
    p.add_argument("job")
    p.add_argument("file", nargs="?", help="INDEX/NAME of one output; default: all")
    p.add_argument("-o", "--dest", type=Path, default=Path("."),
                   help="folder for the job's folder: outputs go to DEST/<job-id>/<index>/<name> (default: .)")
    p.add_argument("--force", action="store_true", help="replace local files that differ from the outputs")
    p.add_argument("--chunk", type=int, default=1024 * 1024, help="checkpoint every N bytes (default 1 MiB)")
    p.add_argument("--limit-rate", type=_rate, help="cap the speed, e.g. 500K or 2M (bytes/s)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_fetch)


def _rate(text: str) -> int:
    units = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}
    number, unit = text.rstrip("KMGkmg"), text[len(text.rstrip("KMGkmg")):].upper()
    try:
        value = int(float(number) * units[unit])
    except (ValueError, KeyError):
        raise argparse.ArgumentTypeError(f"not a rate: {text!r} (examples: 500K, 2M)") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("the rate must be positive")
    return value


class UsageError(Exception):
    """The command line cannot work as given (exit status 2)."""


def make_client(args: argparse.Namespace) -> tuple[Client, Credentials]:
    saved = Credentials.load()
    peers = (getattr(args, "url", None) or getattr(args, "peer", None) or os.environ.get(ENV_PEERS)
             or ",".join(saved.peers) or DEFAULT_PEER)
    ca = getattr(args, "ca", None) or os.environ.get(ENV_CA) or saved.ca
    token = os.environ.get(ENV_TOKEN) or saved.token
    if ca:
        ca = str(Path(ca).resolve())
        if not os.path.isfile(ca):
            raise UsageError(f"the CA file {ca} does not exist: pass the site CA (ca.pem) with --ca")
    return Client(peers, ca=ca, token=token), saved


#: What a Ctrl-C leaves behind, and what to do next, per command.
_INTERRUPTED = {
    "fetch": "fetch interrupted: the partial download is kept (NAME.part); run the same command again to resume",
    "upload": "upload interrupted: run the same command again to continue where it stopped",
    "submit": "submit interrupted: run the same command again: it re-sends the same Idempotency-Key, so it "
              "cannot create a second job",
}


def _interrupted(args: argparse.Namespace) -> str:
    if args.command == "status" and getattr(args, "wait", False):
        return (f"stopped following {args.job}; the job goes on on the grid: run the same command again "
                "to continue following it")
    if args.command == "submit" and getattr(args, "upload", None):
        return "interrupted: run the same command again to continue the uploads and submit"
    return _INTERRUPTED.get(args.command, f"{args.command} interrupted")


def _not_logged_in(exc: ApiError, c: Client, args: argparse.Namespace) -> str:
    peer = exc.peer or c.base_url
    ca = f" --ca {c.session.verify}" if isinstance(c.session.verify, str) else " --ca ca.pem"
    why = f" ({exc.message})" if c.token else ""  # a token was refused: say why (expired, revoked...)
    return (f"not logged in to {peer}{why}: run `pocketgrid login {peer}{ca} --cert YOUR.pem "
            f"--key YOUR.key`, or on a phone `pocketgrid pair {peer} --code CODE{ca}`")


def _broken(exc: requests.RequestException, c: Client) -> str:
    """A request that may have reached the peer but got no (whole) answer."""
    url = getattr(exc.request, "url", None) or c.base_url
    peer = next((p for p in c.peers if url.startswith(p)), url)
    if isinstance(exc, requests.Timeout):
        return f"{peer} did not answer within {c.timeout:.0f} s: run the same command again"
    reason = exc.args[0] if exc.args and isinstance(exc.args[0], BaseException) else exc
    reason = getattr(reason, "reason", None) or reason  # urllib3's MaxRetryError: what happened
    if isinstance(exc, requests.exceptions.SSLError):
        return f"the TLS handshake with {peer} failed ({reason})"
    if peer.startswith("http://"):
        return f"{peer} closed the connection without an answer ({type(reason).__name__}): if it serves TLS, use https://"
    return (f"the connection to {peer} broke before its answer ({type(reason).__name__}); the request "
            "may have been carried out: run the same command again")


def run(args: argparse.Namespace) -> int:
    # urllib3 logs each retry as a WARNING; the CLI says what went wrong itself, once.
    logging.getLogger("urllib3").setLevel(logging.ERROR)
    try:
        client, saved = make_client(args)
    except (UsageError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args.saved_credentials = saved
    try:
        return args.func(client, args)
    except KeyboardInterrupt:
        print(("\n" if sys.stderr.isatty() else "") + _interrupted(args), file=sys.stderr)
        return 130
    except ApiError as exc:
        logging_in = args.command == "login" or (args.command == "pair" and getattr(args, "code", None))
        if exc.status == 401 and not logging_in:  # a refused login says why itself
            print(f"error: {_not_logged_in(exc, client, args)}", file=sys.stderr)
        else:
            print(f"error: {exc.message} (HTTP {exc.status})", file=sys.stderr)
        return 1
    except OutputExists as exc:
        print(f"error: {exc}: nothing was fetched or overwritten; pass --force to replace them, "
              "or -o another folder", file=sys.stderr)
        return 1
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except PeerUnreachable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except requests.RequestException as exc:
        print(f"error: {_broken(exc, client)}", file=sys.stderr)
        return 1
    except (DownloadFailed, IntegrityError, ConnectionError, TimeoutError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        _remember_peer_order(client, saved, args)


def _remember_peer_order(c: Client, saved: Credentials, args: argparse.Namespace) -> None:
    """Save the saved peers in the order that worked (the one that answered first), so a dead
    first peer does not cost a connection attempt (up to CONNECT_TIMEOUT) on every later command."""
    if args.command in {"login", "pair", "logout"} or not saved.token or not saved.peers:
        return
    if c.peers != saved.peers and sorted(c.peers) == sorted(saved.peers):
        saved.peers = list(c.peers)
        try:
            saved.save()
        except OSError:
            pass  # a read-only home: the order is an optimisation


def _print(args: argparse.Namespace, data: Any, text: Callable[[Any], str]) -> None:
    print(json.dumps(data, indent=2) if args.json else text(data))


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _save_login(c: Client, args: argparse.Namespace, answer: dict[str, Any]) -> None:
    creds: Credentials = args.saved_credentials
    creds.peers = list(c.peers)
    creds.ca = c.session.verify if isinstance(c.session.verify, str) else None
    creds.token, creds.token_id = answer["token"], answer["token_id"]
    creds.dn, creds.kind, creds.expires_at = answer["dn"], answer["kind"], answer["expires_at"]
    path = creds.save()
    print(f"logged in as {answer['dn']} ({answer['kind']} token {answer['token_id']}, "
          f"valid until {_when(answer['expires_at'])}); saved to {path}")


def _when(epoch: float) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(epoch).strftime("%Y-%m-%d %H:%M")


def cmd_login(c: Client, args: argparse.Namespace) -> int:
    _save_login(c, args, c.login(args.cert, args.key))
    return 0


def cmd_pair(c: Client, args: argparse.Namespace) -> int:
    if args.code:
        _save_login(c, args, c.pair(args.code, args.device))
        return 0
    res = c.pairing_code()

    def text(r: dict[str, Any]) -> str:
        url = r.get("url") or c.base_url
        ca = c.session.verify if isinstance(c.session.verify, str) else None
        lines = [f"pairing code: {r['code']}  (single use, valid until {_when(r['expires_at'])})",
                 f"on the phone:  pocketgrid pair {url} --code {r['code']}" + (f" --ca {ca}" if ca else ""),
                 f"in a browser:  open {url}/ and type the code"]
        if ca:
            lines.append(f"(copy {ca} to the phone first, and install it there for the browser)")
        return "\n".join(lines)

    _print(args, res, text)
    return 0


def cmd_logout(c: Client, args: argparse.Namespace) -> int:
    res = c.logout()
    creds: Credentials = args.saved_credentials
    creds.forget_token()
    creds.save()
    print(f"logged out: token {res['revoked']} revoked")
    return 0


def cmd_whoami(c: Client, args: argparse.Namespace) -> int:
    res = c.whoami()
    _print(args, res, lambda r: f"{r['dn']}" + (f" (VO {r['vo']})" if r.get("vo") else "")
           + ("  [admin]" if r["admin"] else "") + "\n  may: " + ", ".join(g for g, ok in r["groups"].items() if ok))
    return 0


def cmd_tokens(c: Client, args: argparse.Namespace) -> int:
    if args.revoke:
        res = c.revoke_token(args.revoke)
        print(f"revoked {res['revoked']}")
        return 0
    res = c.tokens(everyone=args.all)
    _print(args, res, lambda ts: "\n".join(
        f"{t['id']}  {t['kind']:<6} {t['device'] or '':<12} until {_when(t['expires_at'])}"
        + ("  REVOKED" if t["revoked"] else "") + (f"  {t['dn']}" if args.all else "") for t in ts) or "no tokens")
    return 0


def cmd_acl(c: Client, args: argparse.Namespace) -> int:
    if args.acl_command in ("allow", "deny"):
        rule = c.acl_add(args.acl_command, args.group, args.match, args.value, position=args.position)
        _print(args, rule, lambda r: f"added rule {r['id']}: {r['effect']} {r['group']} {r['match']} {r['value']!r}")
        return 0
    if args.acl_command == "remove":
        rule = c.acl_remove(args.rule_id)
        _print(args, rule, lambda r: f"removed rule {r['id']}")
        return 0
    res = c.acl()
    _print(args, res, lambda r: f"ACL version {r['version']} (deny wins; no match: default)\n" + "\n".join(
        f"{x['id']:>4} pos {x['position']:>3}  {x['effect']:<5} {x['group']:<12} {x['match']:<12} {x['value']!r}"
        for x in r["rules"]))
    return 0


def cmd_audit(c: Client, args: argparse.Namespace) -> int:
    events = c.audit(limit=args.limit, action=args.action)
    _print(args, events, lambda es: "\n".join(
        f"{_when(e['at'])}  {e['action']:<14} {e['outcome']:<7} {e['source']:<16} {e['dn']}  {e['detail']}"
        for e in es) or "no events")
    return 0


def _answering_peer(c: Client) -> str:
    """``name (url)`` of the peer that answered the last request (publishing areas are per peer)."""
    try:
        name = c.health().get("peer")
    except (ApiError, OSError):
        name = None
    return f"{name} ({c.base_url})" if name else c.base_url


def cmd_files(c: Client, args: argparse.Namespace) -> int:
    if args.grep:
        res = c.grep(args.grep, glob=args.glob or "*", regex=args.regex, ignore_case=args.ignore_case)
        if args.json:
            _print(args, res, str)
            return 0
        where = _answering_peer(c)
        if not res["matches"]:
            print(f"no file matching {args.glob or '*'!r} in the publishing area of {where} contains {args.grep!r} "
                  "(publishing areas are per peer)")
            return 0
        print(f"in the publishing area of {where}:")
        print("\n".join(f"{m['path']}:{m['line']}: {m['text']}" for m in res["matches"])
              + ("\n(more matches not shown)" if res["truncated"] else ""))
        return 0
    files = c.glob(args.glob) if args.glob else c.files(args.path)
    if args.json:
        _print(args, files, str)
        return 0
    where = _answering_peer(c)
    if not files:
        if args.glob:
            print(f"nothing matches {args.glob!r} in the publishing area of {where}; publishing areas are per peer")
        elif args.path:
            print(f"{args.path} in the publishing area of {where} is empty; publishing areas are per peer")
        else:
            print(f"the publishing area of {where} is empty; publishing areas are per peer")
        return 0
    print(f"publishing area of {where}" + (f", {args.path}" if args.path else "") + ":")
    print("\n".join(f"{'d' if f['type'] == 'dir' else '-'} {_size(f['size']):>10}  {f['path']}" for f in files))
    return 0


def _upload_all(c: Client, files: list[Path], *, name: str | None, show: bool) -> list[dict[str, Any]]:
    """Upload each file (a tqdm bar each) and return what the peer reports: path, size, sha256."""
    results = []
    for local in files:
        if not local.is_file():
            raise FileNotFoundError(f"{local}: no such file here (or not a regular file)")
        results.append(c.upload(local, name=name, progress=_bar_factory(show)(local.name, local.stat().st_size)))
    return results


def _upload_line(local: Path, r: dict[str, Any]) -> str:
    resumed = f" (resumed at byte {r['resumed_from']})" if r.get("resumed_from") else ""
    return f"{r['path']}  {r['size']} bytes  sha256 {r['sha256']}  verified{resumed}  <- {local}"


def cmd_upload(c: Client, args: argparse.Namespace) -> int:
    if args.name and len(args.files) > 1:
        print("error: --name renames one file: give a single FILE with it", file=sys.stderr)
        return 2
    show = not args.no_progress and sys.stderr.isatty()
    results = _upload_all(c, args.files, name=args.name, show=show)
    _print(args, results, lambda rs: "\n".join(_upload_line(f, r) for f, r in zip(args.files, rs))
           + "\nuse the path(s) above as job inputs")
    return 0


def cmd_submit(c: Client, args: argparse.Namespace) -> int:
    if not args.inputs and not args.upload:
        print("error: give at least one input: a path in the publishing area, or --upload LOCAL_FILE", file=sys.stderr)
        return 2
    uploaded = _upload_all(c, args.upload, name=None, show=sys.stderr.isatty())
    for local, r in zip(args.upload, uploaded):
        print(f"uploaded {_upload_line(local, r)}", file=sys.stderr)
    inputs = [*args.inputs, *(r["path"] for r in uploaded)]
    executable, submit_text = Path(args.executable).read_bytes(), Path(args.submit_file).read_text()
    key, retried = args.idempotency_key, False
    if key is None:  # the same submission run again re-sends its key: never a second job
        fp = pending_submits.fingerprint(args.name, executable, submit_text, inputs)
        key, retried = pending_submits.key_for(fp)
        if retried:
            print("re-sending an earlier submit of the same job that got no answer (same Idempotency-Key)",
                  file=sys.stderr)
    try:
        job = c.submit(args.name, executable, args.submit_file, inputs, executable_name=Path(args.executable).name,
                       submit_text=submit_text, idempotency_key=key)
    except ApiError as exc:
        if args.idempotency_key is None and exc.status < 500:
            pending_submits.answered(fp)  # refused: a corrected command is a new submission
        raise  # 5xx: the peer asks for a retry with the same key, which a rerun sends
    if args.idempotency_key is None:
        pending_submits.answered(fp)
    _print(args, job, lambda j: f"{j['id']}  home {j['peer']}, {j.get('inputs', '?')} inputs"
           + "".join(f"\nwarning: {w}" for w in j.get("warnings", [])))
    return 0


def _reason(i: dict[str, Any]) -> str | None:
    """Why the input is in its current state, if the status says so.

    The peer keeps only the current state's reason (``hold_reason`` while
    held, else ``note``; the past is in ``history``).  A peer of an older
    version may still send a stale note, so the kinds a state never has are
    left out: none for a completed input, only connection trouble for a
    running one.
    """
    if i["state"] == "held":
        return i.get("hold_reason")
    note = i.get("note")
    if i["state"] == "completed" or (i["state"] == "running" and note
                                     and not note.startswith(("disconnected", "reconnected"))):
        return None
    return note


def _short_reason(r: dict[str, Any]) -> str:
    """A candidate's estimate in a few words: the reason's first clause (with the score where it has no estimate)."""
    head = (r.get("reason") or "").split(";")[0].strip()
    if not head.startswith("est") and r.get("score") is not None:
        head = f"score {r['score']:g}" + (f" ({head})" if head else "")
    return head or "no score"


def _chosen(p: dict[str, Any]) -> list[str]:
    return [n for n in str(p.get("chosen") or "").split(",") if n]


def placement_line(p: dict[str, Any], *, others: int = 3) -> str:
    """One line: where the job's inputs went (the latest dispatch round) and why, then the next candidates'
    estimates."""
    ranking = p.get("ranking") or []
    chosen = _chosen(p)
    shares = {s.get("site"): s for s in p.get("shares") or []}
    picked = [r for r in ranking if r.get("name") in chosen]
    if len(chosen) == 1:
        line = f"placed on {chosen[0]}" + (f": {_short_reason(picked[0])}" if picked else "")
    else:
        line = "placed on " + ", ".join(
            f"{n} ({shares[n]['count']} inputs)" if n in shares and "count" in shares[n] else n for n in chosen)
    if (p.get("rounds") or 1) > 1:
        line += f" (round {p['rounds']}: inputs {_ranges(p.get('inputs') or [])})"
    failed = [f["name"] for f in p.get("failed") or []]
    if failed:
        line += f" (after {', '.join(failed)} failed)"
    rest = [r for r in ranking if r.get("name") not in chosen]
    parts = [line] + [f"{r['name']} {_short_reason(r)}" for r in rest[:others]]
    if len(rest) > others:
        parts.append(f"{len(rest) - others} more (pocketgrid status --placement)")
    return "; ".join(parts)


def _ranges(indexes: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2, 5'."""
    out: list[list[int]] = []
    for i in sorted(indexes):
        if out and out[-1][1] == i - 1:
            out[-1][1] = i
        else:
            out.append([i, i])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in out)


def placement_text(p: dict[str, Any]) -> str:
    """The whole ranking: each candidate's score, reason and, with detail, where its figures came from; the
    shares each site was given; earlier dispatch rounds (with detail) after it."""
    decided = f", decided {_when(p['decided_at'])}" if p.get("decided_at") else ""
    chosen = _chosen(p)
    head = f"placement: {p.get('policy') or 'policy unknown'}{decided}; chosen {p.get('chosen')}"
    if p.get("inputs") and (p.get("rounds") or 1) > 1:
        head += f" (round {p.get('round')} of {p['rounds']}: inputs {_ranges(p['inputs'])})"
    lines = [head]
    for n, r in enumerate(p.get("ranking") or [], 1):
        mark = "*" if r.get("name") in chosen else " "
        score = "-" if r.get("score") is None else f"{r['score']:.1f}"
        lines.append(f" {mark}{n:>2}. {r['name']:<16} {score:>9}  {r.get('reason') or ''}")
        d = r.get("detail") or {}
        for key in ("run_source", "wait_source"):
            if d.get(key):
                lines.append(f"        {key.split('_')[0]}: {d[key]}")
    if len(p.get("shares") or []) > 1:
        lines += [f"  share {s['site']}: {s.get('reason') or ''}" for s in p["shares"]]
    for f in p.get("failed") or []:
        lines.append(f"  failed first: {f['name']}: {f.get('error', '')}")
    for earlier in p.get("earlier") or []:
        lines.append(f"  earlier round {earlier.get('round')} (inputs {_ranges(earlier.get('inputs') or [])}): "
                     f"{placement_line(earlier)}")
    return "\n".join(lines)


def _history_lines(i: dict[str, Any]) -> list[str]:
    """``--history``: the input's attempts (where each ran, how it ended), then its current proc's past states."""
    out = []
    for a in i.get("attempts") or []:
        why = f": {a['reason']}" if a.get("reason") else ""
        mark = " (result)" if a.get("result") else ""
        out.append(f"      attempt {a.get('attempt')} on {a.get('site') or '-'}: {a.get('state')}{mark}{why}")
    for h in i.get("history") or []:
        when = _when_seconds(h.get("at")) if h.get("at") else "?"
        reason = f" ({h['reason']})" if h.get("reason") else ""
        out.append(f"      {when}  {h.get('event', '?'):<22} -> {h.get('state', '?')}{reason}")
    return out


def _when_seconds(epoch: float) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(epoch).strftime("%Y-%m-%d %H:%M:%S")


def _match_text(m: dict[str, Any]) -> str:
    """Why an idle input waits (the status's ``match``): how many slots match, or which requirement fails."""
    if m.get("slots"):
        return f"{m['slots']} of {m.get('of', '?')} slots match: waiting for one to be free"
    return f"no slot matches (of {m.get('of', '?')}): {m.get('failing') or 'no reason given'}"


def _status_head(s: dict[str, Any]) -> list[str]:
    lines = [f"{s['id']} ({s['name']}) home {s['peer']}: {s['state']}  "
             + ", ".join(f"{k} {v}" for k, v in s["counts"].items())]
    if s.get("placement"):
        lines.append(f"  {placement_line(s['placement'])}")
    if "pinned" in s:
        lines.append(f"  {_expiry(s)}")
    if s.get("removal"):
        lines.append(f"  removal {s['removal']}")
    return lines


def _input_lines(i: dict[str, Any]) -> list[str]:
    extra = ""
    if i.get("exit_code") is not None:
        extra += f" exit {i['exit_code']}"
    if i.get("signal") is not None:
        extra += f" signal {i['signal']}"
    reason = _reason(i)
    if reason:
        extra += f" ({reason})"
    if i.get("site"):  # where it runs (or ran): the job's inputs may be on several sites
        extra += f", on {i['site']}" + (f" (attempt {i['attempt']})" if (i.get("attempt") or 1) > 1 else "")
    lines = [f"  [{i['index']}] {i['input']}: {i['state']}{extra}"]
    if i["state"] == "idle" and isinstance(i.get("match"), dict):
        lines.append(f"      {_match_text(i['match'])}")
    lines += _history_lines(i)
    tail = i.get("stderr_tail")
    if tail:
        tail_lines = tail.splitlines() if isinstance(tail, str) else [str(t) for t in tail]
        lines.append(f"      last lines of {i.get('stderr_file') or 'its stderr'}:")
        lines += [f"        {t}" for t in tail_lines]
    return lines


def _status_text(s: dict[str, Any]) -> str:
    return "\n".join(_status_head(s) + [line for i in s["inputs"] for line in _input_lines(i)])


def follow_printer(out: Callable[[str], None] = lambda text: print(text, flush=True)) -> Callable[[dict[str, Any]], None]:
    """``status --wait``: the whole status first and last; in between, on each change, its head and only
    the inputs that changed (a 1,000-input job does not print 1,000 lines per finished input)."""
    seen: dict[int, list[str]] = {}

    def show(s: dict[str, Any]) -> None:
        blocks = {i["index"]: _input_lines(i) for i in s["inputs"]}
        if not seen or s["state"] in FINAL_STATES:
            out(_status_text(s))
        else:
            out("\n".join(_status_head(s) + [line for index, block in blocks.items()
                                             if seen.get(index) != block for line in block]))
        seen.clear()
        seen.update(blocks)

    return show


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.0f} s ago" if seconds < 120 else f"{seconds / 60:.0f} min ago"


def _system_text(s: dict[str, Any]) -> str:
    broker = s.get("broker") or {}
    lines = [f"broker: {broker.get('name', '?')} (epoch {s.get('epoch')})"]  # no URL: scripts count members' URLs
    members = s.get("members", [])
    detailed = any("alive" in m for m in members)
    if detailed:
        lines.append(f"  {'seq':>3} {'name':<16} {'state':<6} {'heard':<12} {'load':>6} {'report':<12} "
                     f"{'executor':<9} url")
    for m in members:
        if not detailed:
            lines.append(f"  {m['seq']:>3} {m['name']}  {m['url']}")
            continue
        state = {True: "alive", False: "DEAD", None: "?"}[m.get("alive")]
        load = "-" if m.get("coefficient") is None else f"{m['coefficient']:.2f}"
        lines.append(f"  {m['seq']:>3} {m['name']:<16} {state:<6} {_age(m.get('last_seen_age')):<12} {load:>6} "
                     f"{_age(m.get('report_age')):<12} {m.get('executor') or '?':<9} {m['url']}")
    return "\n".join(lines)


def cmd_status(c: Client, args: argparse.Namespace) -> int:
    if args.system:
        view = c.system(detail=True)
        _print(args, view, _system_text)
        if view.get("detail_error"):
            print(f"warning: {view['detail_error']}: liveness and load unknown (the members as "
                  f"{(view.get('self') or {}).get('name', c.base_url)} knows them)", file=sys.stderr)
            return 3
        return 0
    if not args.job:
        listing = c.job_list()
        _print(args, listing["jobs"], lambda js: "\n".join(
            f"{j['id']:<40} {j['state']:<10} {j['name']}" for j in js) or "no jobs")
        missing = listing.get("unreachable_peers") or []
        if missing:
            print(f"warning: {', '.join(missing)} did not answer: {'its' if len(missing) == 1 else 'their'} jobs are "
                  "not listed; run it again later (exit status 3: the list is partial)", file=sys.stderr)
            return 3
        return 0
    if args.wait:
        final = c.wait(args.job, on_change=None if args.json else follow_printer())
        if args.json:
            print(json.dumps(final, indent=2))
        return 0 if final["state"] == "completed" else 1
    status, _ = c.status(args.job, history=args.history, placement=args.placement)
    _print(args, status, lambda s: _status_text(s) + (
        "\n" + placement_text(s["placement"]) if args.placement and s.get("placement") else ""))
    if args.placement and not status.get("placement") and not args.json:
        print(f"(no placement record: {args.job} was placed by a peer of an earlier version)", file=sys.stderr)
    return 0


def cmd_kill(c: Client, args: argparse.Namespace) -> int:
    res = c.kill(args.job)
    _print(args, res, lambda r: f"{r['id']}: removal {r['removal']}" if r.get("removal")
           else f"{r['id']}: removed {r['removed_procs']} procs")
    return 0


def _expiry(r: dict[str, Any]) -> str:
    if r.get("pinned"):
        return "pinned: kept until you unpin it"
    if r.get("expires_at"):
        return f"removed after {_when(r['expires_at'])} unless pinned"
    return "not finished: kept while it runs" if not r.get("finished_at") \
        else "kept for ever (this site keeps finished jobs)"


def cmd_pin(c: Client, args: argparse.Namespace) -> int:
    results = [c.pin(j) for j in args.jobs]
    _print(args, results, lambda rs: "\n".join(f"{r['id']}: {_expiry(r)}" for r in rs))
    return 0


def cmd_unpin(c: Client, args: argparse.Namespace) -> int:
    results = [c.unpin(j) for j in args.jobs]
    _print(args, results, lambda rs: "\n".join(f"{r['id']}: {_expiry(r)}" for r in rs))
    return 0


def cmd_purge(c: Client, args: argparse.Namespace) -> int:
    if not args.jobs and not args.upload:
        print("error: name the finished jobs to remove, or --upload PATH", file=sys.stderr)
        return 2
    results = [c.purge(j) for j in args.jobs] + [c.delete_upload(u) for u in args.upload]
    _print(args, results, lambda rs: "\n".join(f"removed {r.get('id') or r.get('path')} ({_size(r['bytes'])})"
                                              for r in rs))
    return 0


def _gc_text(r: dict[str, Any], dry_run: bool) -> str:
    lines = []
    for p in r["peers"]:
        verb = "would remove" if dry_run else "removed"
        lines.append(f"{p['peer']}: {verb} {len(p['remove'])} ({_size(p['bytes'])}), "
                     f"kept {len(p['keep'])} past their time")
        lines += [f"  - {i['kind']:<16} {i['name']}  {_size(i['bytes'])}" for i in p["remove"]]
        lines += [f"  = {i['kind']:<16} {i['name']}  {_size(i['bytes'])}  kept: {i['reason']}" for i in p["keep"]]
    return "\n".join(lines)


def cmd_gc(c: Client, args: argparse.Namespace) -> int:
    if args.in_days is not None and not args.dry_run:
        print("error: --in-days looks ahead, and only a dry run can: add --dry-run", file=sys.stderr)
        return 2
    at = time.time() + args.in_days * 86400 if args.in_days is not None else None
    res = c.gc(dry_run=args.dry_run, at=at, local=args.local)
    _print(args, res, lambda r: _gc_text(r, args.dry_run))
    missing = res.get("unreachable_peers") or []
    if missing:
        print(f"warning: {', '.join(missing)} did not answer (exit status 3)", file=sys.stderr)
        return 3
    return 0


def cmd_retry(c: Client, args: argparse.Namespace) -> int:
    res = c.retry(args.job, inputs=args.inputs, failed=args.failed)
    _print(args, res, lambda r: f"{r['id']}: running again: " + ", ".join(
        f"input {i} (attempt {r['attempts'].get(str(i), r['attempts'].get(i, '?'))})" for i in r["inputs"]))
    return 0


def cmd_release(c: Client, args: argparse.Namespace) -> int:
    res = c.release(args.job, args.inputs)
    _print(args, res, lambda r: f"{r['id']}: released {r['released_procs']} of inputs "
           f"{', '.join(map(str, r['inputs']))}; they run again (`pocketgrid status {r['id']}` to follow)")
    return 0


def cmd_placements(c: Client, args: argparse.Namespace) -> int:
    res = c.placements(limit=args.limit)

    def text(r: dict[str, Any]) -> str:
        blocks = [f"broker {r['broker']['name']} (epoch {r.get('epoch')}), policy {r.get('policy')}; "
                  f"{len(r['placements'])} most recent decisions, newest first"]
        for p in r["placements"]:
            outcome = p.get("outcome") or {}
            took = outcome.get("accepted_by")
            head = f"#{p['id']} {_when_seconds(p['decided_at'])}"
            if outcome.get("job_id"):
                head += f"  job {outcome['job_id']}"
            record = {**p, "chosen": took or p["chosen"], "failed": outcome.get("failed") or []}
            blocks.append(head + ("" if took else "  (outcome not reported)") + "\n" + placement_text(record))
        return "\n\n".join(blocks)

    _print(args, res, text)
    return 0


def cmd_outputs(c: Client, args: argparse.Namespace) -> int:
    res = c.outputs(args.job)

    def text(r: dict[str, Any]) -> str:
        lines = []
        for o in r["outputs"]:
            where = f", on {o['site']}" if o.get("site") else ""
            gone = " — its site does not answer now" if o.get("unreachable") else ""
            lines.append(f"[{o['index']}] {o['input']} ({o['state']}{where}){gone}")
            lines += [f"    {_size(f['size']):>10}  {f['sha256'][:16]}…  {o['index']}/{f['name']}" for f in o["files"]]
        return "\n".join(lines)

    _print(args, res, text)
    return 0


def _bar_factory(enabled: bool):
    def factory(label: str, total: int):
        bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=label, leave=False, disable=not enabled)
        state = {"last": 0}

        def progress(done: int, _total: int | None) -> None:
            bar.update(done - state["last"])
            state["last"] = done
            if _total is not None and done >= _total:
                bar.close()

        return progress

    return factory


def job_folder(dest: Path, job_id: str) -> Path:
    """``DEST/<job-id>``: where ``fetch`` puts a job's outputs."""
    if not job_id or "/" in job_id or "\\" in job_id or job_id.startswith("."):
        raise UsageError(f"not a job ID: {job_id!r} (job IDs look like site-a.6740f1a2b3c4d5)")
    return dest / job_id


def cmd_fetch(c: Client, args: argparse.Namespace) -> int:
    show = not args.no_progress and sys.stderr.isatty()
    folder = job_folder(args.dest, args.job)
    if args.file:
        index, _, name = args.file.partition("/")
        if not index.isdigit() or not name:
            print("error: give the output as INDEX/NAME, e.g. 0/histogram.json", file=sys.stderr)
            return 2
        res = c.fetch(args.job, int(index), name, folder / index / name, chunk_bytes=args.chunk,
                      rate_limit=args.limit_rate, progress=_bar_factory(show)(args.file, 0), overwrite=args.force)
        results = [res]
    else:
        results = c.fetch_all(args.job, folder, chunk_bytes=args.chunk, rate_limit=args.limit_rate,
                              progress_factory=_bar_factory(show), overwrite=args.force)
    for r in results:
        if r.already_here:
            print(f"{r.path}  {r.size} bytes  sha256 {r.sha256}  already here, verified")
            continue
        resumed = f" (resumed at byte {r.resumed_from})" if r.resumed_from else ""
        print(f"{r.path}  {r.size} bytes  sha256 {r.sha256}  verified{resumed}")
    if not results:
        print(f"{args.job} has no outputs yet")
    return 0
