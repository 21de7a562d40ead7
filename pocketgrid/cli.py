"""pocketgrid: run HTCondor jobs from a phone or any weak device.

Server commands (serve, agent, demo, doctor, db, backup, restore) import server code lazily, so the client
commands work on a device that has only the base install.
"""
from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
from typing import Sequence

from mobile_client import cli as client_cli

from . import __version__, db_cli, pki_cli


def _serve_args(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run a peer (with no --join it starts as the broker)")
    p.add_argument("--config", help="TOML file (table [peer]); env POCKETGRID_<FIELD> and options override it")
    p.add_argument("--name", help="peer name: letters, digits, '-' and '_'")
    p.add_argument("--host", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int)
    p.add_argument("--public-url", help="URL others use to reach this peer (default https://HOST:PORT)")
    p.add_argument("--state", dest="state_dir", help="state directory (database, staging)")
    p.add_argument("--publish", dest="publish_dir", help="publishing area (default STATE/publish)")
    p.add_argument("--database-url", help="SQLAlchemy URL (default SQLite in STATE)")
    p.add_argument("--executor", choices=["auto", "local", "condor"])
    p.add_argument("--join", help="peer URL(s) to join, comma separated")
    p.add_argument("--slots", dest="local_slots", type=int, help="local executor: procs at once (default: CPUs)")
    p.add_argument("--no-agent", dest="agent", action="store_false", default=None, help="do not run the EMA agent thread")
    p.add_argument("--allow-unisolated-jobs", dest="allow_unisolated_jobs", action="store_true", default=None,
                   help="run local jobs even where they cannot be isolated from the peer (they could read its "
                        "host key): single-user machines only")
    p.add_argument("--agent-interval", type=float)
    p.add_argument("--threads", type=int)
    p.add_argument("--heartbeat-interval", type=float, help="seconds between heartbeats to the broker (default 5)")
    p.add_argument("--heartbeat-misses", type=int, help="missed heartbeats before an election (default 3)")
    p.add_argument("--pki", dest="pki_dir", help="a `pocketgrid pki` directory: ca.pem and hosts/NAME.pem|.key")
    p.add_argument("--tls-cert", help="host certificate (PEM); default from --pki")
    p.add_argument("--tls-key", help="its private key (PEM); default from --pki")
    p.add_argument("--tls-ca", help="site CA bundle (PEM); default from --pki")
    p.add_argument("--web-tls-cert", help="certificate chain (PEM) for the names phones and browsers use, "
                                          "e.g. from an ACME CA; peers keep the site certificate")
    p.add_argument("--web-tls-key", help="the key of --web-tls-cert")
    p.add_argument("--admin", dest="admins", action="append",
                   help="subject DN of a bootstrap administrator (repeatable)")
    p.add_argument("--insecure-http", dest="insecure_http", action="store_true", default=None,
                   help="NO TLS and NO authentication: local development only")
    p.add_argument("--log-level")
    p.add_argument("--log-format", choices=["text", "json"], help="text lines (default) or JSON lines")
    p.add_argument("--log-file", help="log to this file, rotated by size (default: stderr)")
    p.set_defaults(func=_cmd_serve)


def _cmd_serve(args: argparse.Namespace) -> int:
    import re

    from .config import PeerConfig

    overrides = {
        k: getattr(args, k)
        for k in ("name", "host", "port", "public_url", "state_dir", "publish_dir", "database_url", "executor",
                  "local_slots", "agent", "agent_interval", "threads", "log_level", "heartbeat_interval",
                  "heartbeat_misses", "pki_dir", "tls_cert", "tls_key", "tls_ca", "web_tls_cert", "web_tls_key", "admins",
                  "insecure_http", "allow_unisolated_jobs", "log_format", "log_file")
    }
    if args.join:
        overrides["join"] = [u.strip() for u in args.join.split(",") if u.strip()]
    try:
        config = PeerConfig.load(args.config, overrides=overrides)
    except (OSError, ValueError) as exc:
        print(f"error: bad configuration: {exc}", file=sys.stderr)
        return 2
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", config.name):
        print(f"error: peer name {config.name!r}: use 1-64 letters, digits, '-' or '_' (job IDs are <name>.<id>)",
              file=sys.stderr)
        return 2
    try:
        config.resolve_tls()
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from peer.executors.choice import ExecutorUnavailable, require_condor

    if config.executor == "condor":
        try:  # fail fast, before the server starts: refuses root, and needs a schedd that answers
            require_condor()
        except ExecutorUnavailable as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    from sqlalchemy.exc import SQLAlchemyError

    from peer.migrations import SchemaError, check

    try:  # fail fast: a database the peer would refuse to migrate (e.g. from a newer pocketgrid)
        check(config.sqlalchemy_url)
    except SchemaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except SQLAlchemyError as exc:
        print(f"error: cannot open the database {config.sqlalchemy_url.split('@')[-1]}: {exc}", file=sys.stderr)
        return 2
    from peer.server import serve

    return serve(config)


AGENT_HELP = "run an End-host Monitoring Agent that reports this host's load"


def _agent_args(sub: argparse._SubParsersAction) -> None:
    """Only the name: the agent's options come from ``ema_agent`` (which imports psutil), loaded
    by :func:`_run_agent` when the agent runs, so building the parser loads no server package."""
    sub.add_parser("agent", help=AGENT_HELP, add_help=False)


def _run_agent(rest: list[str]) -> int:
    from ema_agent import cli as agent_cli

    parser = argparse.ArgumentParser(prog="pocketgrid agent", description=AGENT_HELP)
    agent_cli.add_arguments(parser)
    return int(agent_cli.run(parser.parse_args(rest)) or 0)


def _demo_args(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="start 3 peers on loopback, run a sample analysis, fetch and verify outputs")
    p.add_argument("--keep", action="store_true", help="keep the state directory afterwards")
    p.add_argument("--inputs", type=int, default=6, help="number of sample input files")
    p.add_argument("--serve", action="store_true",
                   help="afterwards keep the peers up for the web app: print its URL and a pairing code "
                        "(also as a QR code) until Ctrl-C")
    p.add_argument("--host", default="127.0.0.1",
                   help="with --serve: address the peers listen on; 0.0.0.0 lets a phone on your network in")
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(keep=args.keep, n_inputs=args.inputs, serve=args.serve, host=args.host)


def _doctor_args(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help="check this site's deployment (certificates, state directory, port, clock "
                                      "skew, schedd, job account and isolation) "
                                      "and say what to fix; exit 0 OK, 1 warnings, 2 failures")
    p.add_argument("--config", help="TOML file (table [peer]), as for serve")
    p.add_argument("--name")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--state", dest="state_dir")
    p.add_argument("--executor", choices=["auto", "local", "condor"])
    p.add_argument("--public-url", help="the peer's URL (default https://HOST:PORT): asked for the members")
    p.add_argument("--join", help="peer URL(s) to compare clocks with when the peer is not running, comma separated")
    p.add_argument("--pki", dest="pki_dir")
    p.add_argument("--tls-cert")
    p.add_argument("--tls-key")
    p.add_argument("--tls-ca")
    p.add_argument("--json", action="store_true", help="print the checks as JSON")
    p.set_defaults(func=_cmd_doctor)


def _cmd_doctor(args: argparse.Namespace) -> int:
    from . import doctor
    from .config import PeerConfig

    overrides = {k: getattr(args, k) for k in ("name", "host", "port", "state_dir", "executor", "pki_dir",
                                                 "tls_cert", "tls_key", "tls_ca", "public_url")}
    if args.join:
        overrides["join"] = [u.strip() for u in args.join.split(",") if u.strip()]
    try:
        config = PeerConfig.load(args.config, overrides=overrides)
    except (OSError, ValueError) as exc:
        print(f"error: bad configuration: {exc}", file=sys.stderr)
        return 2
    checks = doctor.run_checks(config)
    print(doctor.report(checks, args.json))
    return doctor.exit_status(checks)


#: Commands that run server code: they need ``pip install "pocketgrid[server]"``.
SERVER_COMMANDS = frozenset({"serve", "agent", "demo", "doctor", *db_cli.COMMANDS})
#: What ``pocketgrid[server]`` adds, by import name.
SERVER_PACKAGES = ("flask", "werkzeug", "sqlalchemy", "alembic", "psutil", "htcondor2", "gunicorn", "aiohttp", "psycopg", "yaml",
                   "jwt")
SERVER_EXTRA = 'pip install "pocketgrid[server]"'


def _command_of(argv: Sequence[str]) -> str | None:
    """The sub-command named on a command line (the top level has no option that takes a value)."""
    return next((a for a in argv if not a.startswith("-")), None)


def _needs_server_extra(command: str, missing: str) -> int:
    print(f"error: 'pocketgrid {command}' runs server code, and this is the client-only base install "
          f"(no {missing}): {SERVER_EXTRA}", file=sys.stderr)
    return 2


def build_parser() -> argparse.ArgumentParser:
    """The whole command line; building it imports no server package (the thin client builds it too)."""
    parser = argparse.ArgumentParser(prog="pocketgrid", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"pocketgrid {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _demo_args(sub)
    _serve_args(sub)
    _agent_args(sub)
    _doctor_args(sub)
    db_cli.add_commands(sub)
    client_cli.add_commands(sub)
    pki_cli.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = _command_of(argv)
    if command in SERVER_COMMANDS:  # a base install says which extra to install, not a traceback
        missing = next((m for m in SERVER_PACKAGES if importlib.util.find_spec(m) is None), None)
        if missing is not None:
            return _needs_server_extra(command, missing)
    try:
        if command == "agent":
            return _run_agent(argv[argv.index("agent") + 1:])
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command not in SERVER_COMMANDS | {"pki"}:
            logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
            return client_cli.run(args)
        return int(args.func(args) or 0)
    except ModuleNotFoundError as exc:
        root = (exc.name or "").split(".")[0]
        if command not in SERVER_COMMANDS or root not in SERVER_PACKAGES:
            raise
        return _needs_server_extra(command, root)


if __name__ == "__main__":
    sys.exit(main())
