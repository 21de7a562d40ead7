"""``pocketgrid agent``: run the End-host Monitoring Agent for one peer.

The top-level ``pocketgrid`` command builds its sub-parser with
:func:`add_arguments` and calls :func:`run`; this module owns nothing else of
the CLI, so the agent stays runnable without any server package installed.

    pocketgrid agent --peer URL --name NAME --pki DIR [--interval 15] [--weights k=v,...]
                     [--known URL,...] [--timeout 5] [--once] [--log-level INFO]
                     [--collector HOST[:PORT] | --no-pool]

On a Condor head node the agent reports the pool's figures (slots, idle and
running jobs, from the collector: ``--collector``, else ``COLLECTOR_HOST`` of
HTCondor's configuration), as the agent inside a Condor peer does; where no
pool answers it reports this host's figures, and its log says which it sends
and why.  ``--no-pool`` reports host figures only.

Reports go over mutual TLS: the agent checks the peers against the site CA
and presents the host certificate of the peer it reports for
(``DIR/hosts/NAME.pem``); the broker refuses reports for other names.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from types import FrameType

from .coefficient import Weights
from .reporter import DEFAULT_INTERVAL, DEFAULT_TIMEOUT, Reporter

log = logging.getLogger(__name__)


def parse_weights(text: str | None) -> Weights:
    """``"cpu=1,memory=0.5"`` -> :class:`Weights` (defaults for keys not given).

    Raises ValueError with a readable message on a malformed pair or an
    unknown key.
    """
    values: dict[str, str] = {}
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"bad weight {item!r}: expected key=value")
        values[key.strip()] = value.strip()
    return Weights.from_dict(values)


def _split_urls(text: str | None) -> list[str]:
    return [u.strip() for u in (text or "").split(",") if u.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the agent's options to ``parser`` (a sub-command parser)."""
    parser.add_argument("--peer", required=True, metavar="URL",
                        help="base URL of the peer this host belongs to (reported as its URL)")
    parser.add_argument("--name", required=True, help="name of that peer, as the broker knows it")
    parser.add_argument("--interval", type=float, default=DEFAULT_INTERVAL, metavar="SECONDS",
                        help="seconds between reports (default: %(default)s)")
    parser.add_argument("--weights", default="", metavar="K=V,...",
                        help="override coefficient weights, e.g. cpu=1,memory=0.5,load1=1 "
                             "(keys: " + ", ".join(Weights().to_dict()) + ")")
    parser.add_argument("--known", default="", metavar="URL,...",
                        help="further peer URLs to ask for the broker when --peer is down")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                        help="timeout of every HTTP call (default: %(default)s)")
    parser.add_argument("--once", action="store_true",
                        help="send one report and exit (0 if accepted, 1 if not)")
    parser.add_argument("--pki", metavar="DIR",
                        help="`pocketgrid pki` directory: ca.pem and hosts/NAME.pem|.key (mutual TLS)")
    parser.add_argument("--cert", help="host certificate (default DIR/hosts/NAME.pem)")
    parser.add_argument("--key", help="its private key (default DIR/hosts/NAME.key)")
    parser.add_argument("--ca", help="site CA bundle (default DIR/ca.pem)")
    parser.add_argument("--collector", default="", metavar="HOST[:PORT]",
                        help="the HTCondor collector to take pool figures from (default: COLLECTOR_HOST of "
                             "HTCondor's configuration; with neither, host figures only)")
    parser.add_argument("--no-pool", action="store_true",
                        help="report this host's figures only, never the pool's")
    parser.add_argument("--log-level", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="(default: %(default)s)")
    parser.add_argument("--log-format", default="text", choices=["text", "json"],
                        help="text lines or JSON lines (default: %(default)s)")
    parser.add_argument("--log-file", default="", metavar="FILE", help="log to FILE, rotated by size (default: stderr)")


def run(args: argparse.Namespace) -> int:
    """Run the agent as configured by ``args``; returns the process exit code.

    Exit codes: 0 stopped normally (SIGTERM/SIGINT) or ``--once`` accepted,
    1 ``--once`` not accepted, 2 bad configuration.
    """
    from pocketgrid.logging_setup import configure_logging

    configure_logging(args.log_level, getattr(args, "log_format", "text"), getattr(args, "log_file", "") or None,
                      name=args.name)
    try:
        weights = parse_weights(args.weights)
        session = _tls_session(args)
        reporter = Reporter(
            args.name,
            args.peer,
            _split_urls(args.known),
            interval=args.interval,
            weights=weights,
            timeout=args.timeout,
            session=session,
            pool_source=_pool_source(args),
        )
        reporter.site_source = _site_source(reporter)
    except ValueError as exc:
        log.error("invalid agent configuration: %s", exc)
        return 2

    try:
        if args.once:
            ok = reporter.report_once()
            if ok:
                log.info("report accepted by %s: coefficient %.3f",
                         reporter.broker_url, (reporter.last_report or {}).get("coefficient", 0.0))
            return 0 if ok else 1
        _stop_on_sigterm(reporter)
        try:
            reporter.run_forever()
        except KeyboardInterrupt:
            reporter.stop()
        return 0
    finally:
        reporter.close()
        if session is not None:
            session.close()


def _pool_source(args: argparse.Namespace):
    """The pool figures' source: the collector's (as for an agent inside a Condor peer), unless --no-pool."""
    if getattr(args, "no_pool", False):
        if getattr(args, "collector", ""):
            raise ValueError("--collector and --no-pool contradict each other: give one")
        return None
    from .pool import make_pool_source

    return make_pool_source(args.timeout, collector=getattr(args, "collector", "") or None)


def _site_source(reporter: Reporter):
    """This site's held and unmatchable procs, as the peer's ``/healthz`` shows them (``executor.procs``):
    the standalone agent reports them with its figures, as the agent inside the peer does."""

    def source():
        response = reporter.session.get(reporter.peer_url + "/healthz", timeout=reporter.timeout)
        response.raise_for_status()
        executor = (response.json() or {}).get("executor") or {}
        return executor.get("procs")

    return source


def _tls_session(args: argparse.Namespace):
    """A session with the site CA and this host's certificate, or None for plain-HTTP development peers."""
    import os

    from pocketgrid.http import Session

    pki = args.pki or ""
    cert = args.cert or (pki and os.path.join(pki, "hosts", f"{args.name}.pem"))
    key = args.key or (pki and os.path.join(pki, "hosts", f"{args.name}.key"))
    ca = args.ca or (pki and os.path.join(pki, "ca.pem"))
    if not (cert or key or ca):
        if args.peer.startswith("https://"):
            raise ValueError("an https peer needs --pki DIR (or --cert, --key and --ca) to report over mutual TLS")
        return None
    for label, path in (("certificate", cert), ("key", key), ("CA bundle", ca)):
        if not path or not os.path.isfile(path):
            raise ValueError(f"{label} {path or '(not given)'} not found: give --pki DIR or --cert/--key/--ca")
    session = Session(verify=ca, cert=(cert, key))
    session.headers["User-Agent"] = "pocketgrid-ema/0.1"
    return session


def _stop_on_sigterm(reporter: Reporter) -> None:
    """Make SIGTERM (systemd, docker stop) end the loop cleanly; main thread only."""
    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: stopping", signum)
        reporter.stop()

    signal.signal(signal.SIGTERM, handler)
