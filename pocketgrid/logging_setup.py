"""One log configuration for the peer, the agent and gunicorn (stdlib logging only).

Text by default, JSON lines with ``fmt="json"``; stderr, or a file rotated by
size (``RotatingFileHandler``: rotation needs no outside tool; an operator
who prefers logrotate sets ``max_bytes=0``, which turns rotation off, and
then a ``WatchedFileHandler`` reopens the file after logrotate moves it).
A ``request_id`` attribute on a record is printed when present: the
handler's :class:`RequestIdFilter` takes it from :data:`request_id_var`, which
the peer sets for the request a thread is serving (peer/request_ids.py), so
every line logged while serving a request carries that request's ID.  Needs no
server package, so the agent can use it.
"""
from __future__ import annotations

import json
import logging
import logging.handlers
import sys
from contextvars import ContextVar
from datetime import datetime, timezone
from typing import Any

FORMATS = ("text", "json")

#: The ID of the request the current thread is serving (None outside requests).
request_id_var: ContextVar[str | None] = ContextVar("pocketgrid_request_id", default=None)


class RequestIdFilter(logging.Filter):
    """Gives each record the current request's ID (``request_id``), unless it already has one."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            request_id = request_id_var.get()
            if request_id:
                record.request_id = request_id
        return True


class JsonLinesFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, peer, request_id, exception."""

    def __init__(self, name: str = "") -> None:
        super().__init__()
        self.peer_name = name

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "peer": self.peer_name,
        }
        request_id = getattr(record, "request_id", None)
        if request_id:
            out["request_id"] = request_id
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        return json.dumps(out, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``time name LEVEL logger [request_id]: message``."""

    def __init__(self, name: str = "") -> None:
        super().__init__(f"%(asctime)s {name} %(levelname)s %(name)s%(rid)s: %(message)s" if name
                         else "%(asctime)s %(levelname)s %(name)s%(rid)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        request_id = getattr(record, "request_id", None)
        record.rid = f" [{request_id}]" if request_id else ""
        return super().format(record)


def make_formatter(fmt: str = "text", name: str = "") -> logging.Formatter:
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r}: expected one of {', '.join(FORMATS)}")
    return JsonLinesFormatter(name) if fmt == "json" else TextFormatter(name)


def make_handler(file: str | None = None, max_bytes: int = 10 * 1024 * 1024, backups: int = 5) -> logging.Handler:
    """stderr when ``file`` is empty; else a size-rotated file (or a logrotate-friendly one when max_bytes is 0)."""
    if not file:
        return logging.StreamHandler(sys.stderr)
    if max_bytes > 0:
        return logging.handlers.RotatingFileHandler(file, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
    return logging.handlers.WatchedFileHandler(file, encoding="utf-8")


def configure_logging(level: str | int = "INFO", fmt: str = "text", file: str | None = None,
                      max_bytes: int = 10 * 1024 * 1024, backups: int = 5, name: str = "") -> logging.Handler:
    """Replace the root logger's handlers with one handler; gunicorn's loggers go through it too."""
    handler = make_handler(file, max_bytes, backups)
    handler.setFormatter(make_formatter(fmt, name))
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    global _current_handler
    _current_handler = handler
    root.setLevel(level.upper() if isinstance(level, str) else level)
    for logger_name in ("gunicorn.error", "gunicorn.access"):
        lg = logging.getLogger(logger_name)
        lg.handlers = []
        lg.propagate = True
    return handler


_current_handler: logging.Handler | None = None


def _configured_handler() -> logging.Handler:
    """dictConfig factory: the handler :func:`configure_logging` made (stderr if it was never called)."""
    return _current_handler or logging.StreamHandler(sys.stderr)


def gunicorn_logconfig_dict(level: str = "INFO") -> dict[str, Any]:
    """A gunicorn ``logconfig_dict``: root and gunicorn.error use configure_logging's handler; gunicorn.access is off.

    gunicorn merges this over its own defaults and calls ``logging.config.dictConfig``;
    the handler entry is a factory returning the handler already configured, so
    nothing is reopened and the format and file stay the same.
    """
    lvl = level.upper()
    # gunicorn's own access log is off: it would write each request line with its query string (a pairing
    # code, a token) and no request ID; the peer writes its own (peer/access_log.py).
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "handlers": {"pocketgrid": {"()": _configured_handler}},
        "formatters": {},
        "root": {"level": lvl, "handlers": ["pocketgrid"]},
        "loggers": {
            "gunicorn.error": {"level": lvl, "handlers": [], "propagate": True, "qualname": "gunicorn.error"},
            "gunicorn.access": {"level": "CRITICAL", "handlers": [], "propagate": False, "qualname": "gunicorn.access"},
        },
    }
