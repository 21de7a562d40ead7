"""``pocketgrid pki``: make a site CA, host and user certificates, and show them.

``pocketgrid.pki`` (and so ``cryptography.x509``) is imported only when a pki command
runs, to keep the other commands quick to start on a phone.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from .pki import Issued

DIR_HELP = "PKI directory (default: $POCKETGRID_PKI or ./pocketgrid-pki)"


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pki", help="site PKI: a CA, host certificates (TLS) and user certificates (login)")
    pki_sub = p.add_subparsers(dest="pki_command", required=True, metavar="PKI_COMMAND")

    c = pki_sub.add_parser("init-ca", help="create the site CA (ca.pem, ca.key)")
    c.add_argument("--cn", default="pocketgrid site CA", help="CA common name")
    c.add_argument("--org", default="pocketgrid", help="organization; every issued subject ends with it")
    c.add_argument("--force", action="store_true", help="replace an existing CA (what it issued stops verifying)")
    _common(c, days=3650)
    c.set_defaults(func=_guarded(_init_ca))

    h = pki_sub.add_parser("issue-host", help="issue hosts/NAME.pem: TLS server and peer client certificate")
    h.add_argument("name", metavar="NAME", help="peer name (also the certificate CN)")
    h.add_argument("--san", action="append", metavar="HOST_OR_IP",
                   help="DNS name or IP address, repeatable (default: NAME, localhost, 127.0.0.1)")
    _common(h, days=397)
    h.set_defaults(func=_guarded(_issue_host))

    u = pki_sub.add_parser("issue-user", help="issue users/<name>.pem: a login certificate for a person")
    u.add_argument("cn", metavar="CN", help="the person's name (certificate CN)")
    u.add_argument("--vo", help="virtual organization (certificate OU)")
    u.add_argument("--email")
    u.add_argument("--name", dest="file_name", help="file name without extension (default: from CN)")
    _common(u, days=365)
    u.set_defaults(func=_guarded(_issue_user))

    s = pki_sub.add_parser("show", help="describe certificate or key files")
    s.add_argument("files", nargs="+", metavar="FILE")
    s.set_defaults(func=_guarded(_show))


def _common(p: argparse.ArgumentParser, *, days: int) -> None:
    p.add_argument("--dir", help=DIR_HELP)
    p.add_argument("--days", type=int, default=days, help=f"validity in days (default {days})")
    p.add_argument("--key-type", choices=["ec", "rsa"], default="ec", help="ec = P-256 (default), rsa = 3072 bits")


def _guarded(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def wrapper(args: argparse.Namespace) -> int:
        from .pki import PkiError

        try:
            return run(args)
        except (PkiError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2

    return wrapper


def _directory(args: argparse.Namespace) -> Path:
    """Resolved when the command runs, so a changed $POCKETGRID_PKI counts."""
    from .pki import default_dir

    return Path(args.dir) if args.dir else default_dir()


def _report(issued: Issued) -> int:
    print(f"certificate: {issued.cert_path}\nprivate key: {issued.key_path}\nsubject:     {issued.subject}")
    return 0


def _init_ca(args: argparse.Namespace) -> int:
    from .pki import init_ca

    return _report(init_ca(_directory(args), common_name=args.cn, organization=args.org, days=args.days,
                           key_type=args.key_type, force=args.force))


def _issue_host(args: argparse.Namespace) -> int:
    from .pki import issue_host

    return _report(issue_host(_directory(args), args.name, sans=args.san, days=args.days, key_type=args.key_type))


def _issue_user(args: argparse.Namespace) -> int:
    from .pki import issue_user

    return _report(issue_user(_directory(args), args.cn, vo=args.vo, email=args.email, days=args.days,
                              key_type=args.key_type, file_name=args.file_name))


def _show(args: argparse.Namespace) -> int:
    from .pki import describe

    print("\n\n".join(describe(f) for f in args.files))
    return 0
