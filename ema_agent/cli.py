"""``pocketgrid agent``: run the End-host Monitoring Agent for one peer.

The top-level ``pocketgrid`` command builds its sub-parser with
:func:`add_arguments` and calls :func:`run`; this module owns nothing else of
the CLI, so the agent stays runnable without any server package installed.

    pocketgrid agent --peer URL --name NAME [--interval 15] [--weights k=v,...]
                     [--known URL,...] [--timeout 5] [--once] [--log-level INFO]
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
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
    parser.add_argument("--log-level", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="(default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    """Run the agent as configured by ``args``; returns the process exit code.

    Exit codes: 0 stopped normally (SIGTERM/SIGINT) or ``--once`` accepted,
    1 ``--once`` not accepted, 2 bad configuration.
    """
    logging.basicConfig(
        level=getattr(logging, args.log_level, logging.INFO),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        weights = parse_weights(args.weights)
        reporter = Reporter(
            args.name,
            args.peer,
            _split_urls(args.known),
            interval=args.interval,
            weights=weights,
            timeout=args.timeout,
        )
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


def _stop_on_sigterm(reporter: Reporter) -> None:
    """Make SIGTERM (systemd, docker stop) end the loop cleanly; main thread only."""
    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: stopping", signum)
        reporter.stop()

    signal.signal(signal.SIGTERM, handler)
