"""What is being read right now: open downloads and submissions, counted per job and per file.

The retention sweeper (peer/retention.py) must never remove a job whose output
is being downloaded, or an upload a submission is staging from.  Each such
reader holds a key (``job:<id>``, ``file:<publishing-area path>``) for as long
as it reads; a download holds it until its response is closed, i.e. until the
server has sent the last byte or the client went away.  Removal *claims* a key:
that succeeds only while nobody holds it, and from then on a new reader is
refused (404, as for a job that is gone) until the removal is over.

The peer is one worker process (peer/server.py), so a lock and a counter
are the whole story: no file locks, nothing in the database.
"""
from __future__ import annotations

import threading
from collections import Counter
from contextlib import contextmanager
from typing import Callable, Iterator, TypeVar

from flask import Response

from pocketgrid.errors import NotFound

from .on_close import call_on_close

T = TypeVar("T", bound=Response)


def job_key(job_id: str) -> str:
    return f"job:{job_id}"


def file_key(path: str) -> str:
    """``path``: canonical, relative to the publishing area (``uploads/u-.../name``)."""
    return f"file:{path}"


class InUse:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._removing: set[str] = set()

    def acquire(self, *keys: str) -> None:
        """Hold ``keys`` (all or none); 404 if one of them is being removed right now."""
        with self._lock:
            gone = next((k for k in keys if k in self._removing), None)
            if gone is not None:
                kind, _, name = gone.partition(":")
                raise NotFound(f"no such {'job' if kind == 'job' else 'file'} {name!r}: it is being removed "
                               "(it expired, or its owner removed it)")
            self._counts.update(keys)

    def release(self, *keys: str) -> None:
        with self._lock:
            self._counts.subtract(keys)
            for k in keys:
                if self._counts[k] <= 0:
                    del self._counts[k]

    @contextmanager
    def holding(self, *keys: str) -> Iterator[None]:
        self.acquire(*keys)
        try:
            yield
        finally:
            self.release(*keys)

    def serve(self, key: str, respond: Callable[[], T]) -> T:
        """``respond()`` (a download) with ``key`` held until its response is closed."""
        self.acquire(key)
        try:
            response = respond()
        except BaseException:
            self.release(key)
            raise
        call_on_close(response, lambda: self.release(key))
        return response

    def count(self, key: str) -> int:
        with self._lock:
            return self._counts.get(key, 0)

    def claim(self, key: str) -> bool:
        """For removal: True (and new readers refused) if nobody holds ``key``; False if someone does."""
        with self._lock:
            if self._counts.get(key, 0) > 0 or key in self._removing:
                return False
            self._removing.add(key)
            return True

    def unclaim(self, key: str) -> None:
        with self._lock:
            self._removing.discard(key)
