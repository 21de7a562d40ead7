"""Resumable, verified uploads to a peer: a small tus 1.0.0 client on ``requests``.

    from mobile_client.upload import upload
    result = upload(session, "https://peer:8650", "data/run7.txt")
    result.path   # the publishing-area path to use as a job input

Why not the official ``tuspy``: it pulls in aiohttp and tinydb, too heavy for
the thin client on a weak device; the protocol needs a handful of headers
(peer/api_uploads.py is the server side), so this is a few functions.

How it resumes:

* The file's SHA-256 is computed locally first and sent in ``Upload-Metadata``;
  the peer checks it over the whole file when the last byte arrives (460 on a
  mismatch), so a file that reached the peer is the file that was sent.
* The upload URL is remembered in ``~/.pocketgrid/uploads/<key>.json`` (key =
  SHA-256 of the absolute path, size, mtime, peer and target name), so running
  the same command again after Ctrl-C or a dropped link asks the peer for its
  offset (HEAD) and sends only the rest.  A changed file gets a new key.
* Chunks of ``chunk_bytes`` (4 MiB) are PATCHed; after a connection error the
  client asks for the offset again and goes on from there.  Progress resets
  the give-up counter: a transfer that keeps moving keeps going; only
  ``max_failures`` failures in a row without a byte of progress end it, with a
  message that a rerun resumes.
"""
from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urljoin

import requests

from pocketgrid.transfer import IntegrityError

from .credentials import home

log = logging.getLogger(__name__)

TUS_VERSION = "1.0.0"
ENDPOINT = "/api/v1/uploads"
DEFAULT_CHUNK = 4 * 1024 * 1024
CHUNK_TYPE = "application/offset+octet-stream"
#: Errors that mean "the link broke": retry from the peer's offset.
TRANSIENT = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)
def _transient(exc: Exception) -> bool:
    """A broken link (retry from the peer's offset), not a certificate that does not verify (retrying is no use)."""
    return isinstance(exc, TRANSIENT) and "certificate verify failed" not in str(exc).lower()


#: Answers worth retrying (busy, overloaded, a proxy in between hiccuped).
RETRY_STATUS = frozenset({423, 429, 500, 502, 503, 504})

Progress = Callable[[int, int | None], None]


class UploadRejected(Exception):
    """The peer refused the upload (bad name, too large, not allowed...): retrying will not help."""

    def __init__(self, status: int, message: str, body: dict[str, Any] | None = None) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message
        self.body = body or {}


class UploadInterrupted(ConnectionError):
    """The link kept failing without progress; running the same upload again resumes where the peer is."""


@dataclass
class UploadResult:
    path: str  # publishing-area path: use it as a job input
    size: int
    sha256: str
    url: str  # the upload's URL at the peer
    resumed_from: int  # bytes the peer already had when this run started (0: a fresh upload)
    sent: int  # bytes this run sent (PATCH bodies, also those cut short)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def file_sha256(path: Path, progress: Progress | None = None) -> str:
    """SHA-256 of a local file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    total = path.stat().st_size
    done = 0
    with open(path, "rb") as fh:
        while block := fh.read(1024 * 1024):
            digest.update(block)
            done += len(block)
            if progress:
                progress(done, total)
    return digest.hexdigest()


def encode_metadata(values: dict[str, str]) -> str:
    """tus ``Upload-Metadata``: ``key base64(value)`` pairs separated by commas."""
    for key in values:
        if not key or " " in key or "," in key or not key.isascii():
            raise ValueError(f"invalid metadata key {key!r}")
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in values.items())


# ---- remembering uploads across runs --------------------------------------------------------------

def state_dir() -> Path:
    return home() / "uploads"


def resume_key(local: Path, peer: str, name: str) -> str:
    st = local.stat()
    ident = "\0".join([str(local.resolve()), str(st.st_size), str(st.st_mtime_ns), peer.rstrip("/"), name])
    return hashlib.sha256(ident.encode()).hexdigest()


#: Records of uploads never finished are forgotten after this long (the peer expires them after a day).
RECORD_MAX_AGE = 7 * 86400.0


def _prune_records(directory: Path) -> None:
    cutoff = time.time() - RECORD_MAX_AGE
    for old in directory.glob("*.json"):
        try:
            if old.stat().st_mtime < cutoff:
                old.unlink()
        except OSError:
            pass  # another run removed it, or it is not ours to remove


def _load_record(path: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        log.warning("ignoring the unreadable upload record %s", path)
        return None
    return record if isinstance(record, dict) and isinstance(record.get("url"), str) else None


def _save_record(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".upload.")  # 0600
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(record, fh, indent=2)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def plain_session(template: requests.Session) -> requests.Session:
    """A session with ``template``'s CA, client certificate and headers (the token) but no automatic
    retries: :func:`upload` retries from the peer's offset itself, a blind resend would only meet 409."""
    from pocketgrid.http import Session

    session = Session(verify=template.verify, cert=template.cert)
    session.headers.update(template.headers)
    return session


# ---- the protocol ----------------------------------------------------------------------------------

def _error(r: requests.Response) -> UploadRejected:
    try:
        body = r.json()
        message = str(body.get("error", r.text))
    except ValueError:
        body, message = None, (r.text[:300] or r.reason or "no explanation")
    return UploadRejected(r.status_code, message, body)


class _Uploader:
    def __init__(self, session: requests.Session, *, timeout: float, chunk_bytes: int, max_failures: int,
                 retry_delay: float) -> None:
        self.session = session
        self.timeout = timeout
        self.chunk_bytes = chunk_bytes
        self.max_failures = max_failures
        self.retry_delay = retry_delay
        self.headers = {"Tus-Resumable": TUS_VERSION}

    def retrying(self, what: str, call: Callable[[], Any]) -> Any:
        """``call()``, retried with backoff on connection errors (requests that carry no file bytes)."""
        delay = self.retry_delay
        for attempt in range(1, self.max_failures + 1):
            try:
                return call()
            except TRANSIENT as exc:
                if not _transient(exc):
                    raise
                if attempt == self.max_failures:
                    raise UploadInterrupted(f"could not {what} after {attempt} attempts ({type(exc).__name__}: {exc}); "
                                            "check the link and run the same command again to resume") from None
                log.warning("could not %s (%s); retrying", what, type(exc).__name__)
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 30.0)
        raise AssertionError("unreachable")

    def create(self, base_url: str, size: int, name: str, sha256: str) -> str:
        r = self.session.post(
            f"{base_url}{ENDPOINT}",
            headers={**self.headers, "Upload-Length": str(size),
                     "Upload-Metadata": encode_metadata({"filename": name, "sha256": sha256})},
            timeout=self.timeout,
        )
        if r.status_code != 201 or "Location" not in r.headers:
            raise _error(r)
        return urljoin(f"{base_url}{ENDPOINT}", r.headers["Location"])

    def offset(self, url: str) -> int | None:
        """The peer's offset, or None when the peer no longer knows the upload (expired, failed, removed)."""
        r = self.session.head(url, headers=self.headers, timeout=self.timeout)
        if r.status_code in (404, 410):
            return None
        if r.status_code >= 400:
            raise _error(r)  # HEAD has no body: the status says it (401 log in again, 403 not allowed...)
        if r.status_code != 200 or "Upload-Offset" not in r.headers:
            raise UploadRejected(r.status_code, f"the peer answered HEAD {url} with {r.status_code} "
                                                f"and no Upload-Offset: is it a pocketgrid peer?")
        return int(r.headers["Upload-Offset"])

    def info(self, url: str) -> dict[str, Any]:
        r = self.session.get(url, timeout=self.timeout)
        if r.status_code != 200:
            raise _error(r)
        return r.json()

    def send(self, url: str, local: Path, size: int, offset: int, progress: Progress | None) -> tuple[int, int]:
        """PATCH from ``offset`` to the end; returns ``(final offset, bytes sent)``."""
        failures = 0
        sent = 0
        delay = self.retry_delay
        with open(local, "rb") as fh:
            while offset < size:
                fh.seek(offset)
                chunk = fh.read(min(self.chunk_bytes, size - offset))
                if len(chunk) != min(self.chunk_bytes, size - offset):
                    raise IntegrityError(f"{local} changed while it was uploaded (shorter than {size} bytes)")
                problem: str
                try:
                    sent += len(chunk)
                    r = self.session.patch(
                        url, data=chunk, timeout=self.timeout,
                        headers={**self.headers, "Upload-Offset": str(offset), "Content-Type": CHUNK_TYPE},
                    )
                except TRANSIENT as exc:
                    if not _transient(exc):
                        raise
                    problem = f"{type(exc).__name__}: {exc}"
                else:
                    if r.status_code == 204:
                        offset = int(r.headers["Upload-Offset"])
                        failures, delay = 0, self.retry_delay
                        if progress:
                            progress(offset, size)
                        continue
                    if r.status_code == 460:
                        raise IntegrityError(f"the peer refused {local.name}: {_error(r).message}")
                    if r.status_code not in RETRY_STATUS and r.status_code != 409:
                        raise _error(r)
                    problem = f"HTTP {r.status_code}: {_error(r).message}"
                    if r.status_code == 409:  # our offset was stale: ask, and go on (no failure if it moved)
                        delay = 0.0
                # Where is the peer now?  Progress (even of a chunk cut short) resets the counter.
                failures += 1
                try:
                    now = self.offset(url)
                except TRANSIENT as exc:
                    if not _transient(exc):
                        raise
                    now = offset
                    problem = f"{problem}; then {type(exc).__name__}"
                if now is None:
                    raise UploadRejected(410, "the peer forgot this upload (it expired or failed); run again to start over")
                if now > offset:
                    failures = 0
                    delay = self.retry_delay
                    if progress:
                        progress(now, size)
                elif now < offset:
                    log.info("the peer has %d bytes, fewer than the %d acknowledged; resending from there", now, offset)
                offset = now
                if failures >= self.max_failures:
                    raise UploadInterrupted(
                        f"upload of {local.name} stopped at byte {offset} of {size} after {failures} failures "
                        f"without progress (last: {problem}); run the same command again to resume")
                if failures:
                    log.warning("upload of %s: %s; resuming at byte %d", local.name, problem, offset)
                    if delay:
                        time.sleep(delay * (0.5 + random.random()))
                    delay = min(max(delay, self.retry_delay) * 2, 30.0)
        return offset, sent


def upload(
    session: requests.Session,
    base_url: str,
    local: str | os.PathLike[str],
    *,
    name: str | None = None,
    progress: Progress | None = None,
    chunk_bytes: int = DEFAULT_CHUNK,
    timeout: float = 30.0,
    max_failures: int = 6,
    retry_delay: float = 0.5,
    records: Path | None = None,
) -> UploadResult:
    """Upload ``local`` to the peer at ``base_url`` as ``name`` (default: its file name), resuming an
    earlier attempt of the same file; returns where it landed.  ``session`` carries the credentials
    and CA; give it no automatic retries (this function retries from the peer's offset itself).

    Raises :class:`UploadRejected` (the peer said no), :class:`UploadInterrupted` (the link kept
    failing; a rerun resumes) or :class:`pocketgrid.transfer.IntegrityError` (the peer's SHA-256
    of the bytes it got is not the file's)."""
    local = Path(local)
    base_url = base_url.rstrip("/")
    name = name or local.name
    size = local.stat().st_size
    uploader = _Uploader(session, timeout=timeout, chunk_bytes=chunk_bytes, max_failures=max_failures,
                         retry_delay=retry_delay)
    record_path = (records or state_dir()) / f"{resume_key(local, base_url, name)}.json"
    _prune_records(record_path.parent)
    record = _load_record(record_path)
    offset: int | None = None
    if record is not None:
        try:
            offset = uploader.retrying("ask the peer where the earlier upload stands",
                                       lambda: uploader.offset(record["url"]))
        except UploadRejected as exc:
            log.info("not resuming %s: %s", record["url"], exc)
            offset = None
        if offset is None:
            log.info("the peer no longer has the earlier upload of %s; starting over", local.name)
            record_path.unlink(missing_ok=True)
            record = None
    if record is None:
        sha256 = file_sha256(local)
        url = uploader.retrying("start the upload", lambda: uploader.create(base_url, size, name, sha256))
        record = {"url": url, "sha256": sha256, "path": str(local.resolve()), "size": size, "peer": base_url,
                  "name": name, "created_at": time.time()}
        _save_record(record_path, record)
        offset = 0
    assert offset is not None
    resumed_from = offset
    if progress:
        progress(offset, size)
    try:
        final, sent = uploader.send(record["url"], local, size, offset, progress)
        if final != size:  # pragma: no cover - send() loops until the end or raises
            raise UploadInterrupted(f"upload of {local.name} ended at byte {final} of {size}; run again to resume")
        info = uploader.retrying("read the finished upload", lambda: uploader.info(record["url"]))
    except (IntegrityError, UploadRejected) as exc:
        if isinstance(exc, IntegrityError) or exc.status in (404, 410):
            record_path.unlink(missing_ok=True)  # the peer discarded it: a rerun starts afresh
        raise
    if not info.get("complete") or not info.get("path"):
        raise UploadRejected(502, f"the peer has all {size} bytes but does not report the upload complete: {info}")
    if info.get("sha256") != record["sha256"]:
        raise IntegrityError(f"the peer reports SHA-256 {info.get('sha256')} for {local.name}, not {record['sha256']}")
    record_path.unlink(missing_ok=True)
    return UploadResult(path=info["path"], size=size, sha256=record["sha256"], url=record["url"],
                        resumed_from=resumed_from, sent=sent)
