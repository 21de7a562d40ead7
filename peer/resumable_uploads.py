"""Resumable, verified uploads (tus 1.0): the store behind ``/api/v1/uploads`` (peer/api_uploads.py).

An upload is a row in ``resumable_uploads`` (peer/models.py) plus its bytes
in ``<state>/uploads-incoming/<id>.part``; both survive a peer restart, so an
upload cut by a dropped link *or* by a restarted peer resumes from the last
byte the peer stored.

* Bytes are written with ``os.pwrite`` at the upload's offset.  The offset in
  the database moves only after the bytes before it were ``fdatasync``-ed
  (every few MiB during a PATCH and at its end, also when the client's
  connection drops mid-body: tus asks servers to keep what arrived).
* One PATCH at a time per upload (a per-upload lock: the peer is one process,
  peer/server.py); a second one waits briefly, then gets 423 (retry).
* When the last byte arrives the whole file is hashed (SHA-256) and compared
  with the ``sha256`` the client announced in ``Upload-Metadata``.  A match
  moves the file atomically into the owner's private upload area
  ``uploads/u-<hash of DN>/<filename>`` of the publishing area
  (peer/uploads.py), replacing a file of that name, as
  ``PUT /api/v1/files/uploads/<name>`` does.  A mismatch discards the bytes
  and answers 460.
* Incomplete uploads expire ``upload_expiry_seconds`` after their last write
  (24 h by default): swept at start-up and lazily, answered 410 meanwhile.
* Another user's upload ID answers 404, as if it did not exist.
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import errno
import hashlib
import logging
import os
import re
import secrets
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable

from sqlalchemy import delete, select

from pocketgrid.errors import BadRequest, Conflict, NotFound, PocketgridError, TooLarge, TooManyRequests

from .db import Database
from .digests import DigestCache
from .models import ResumableUpload
from .publishing import PublishingArea, check_destination, check_name, check_relative_path
from .storage import Quotas
from .uploads import upload_dir

log = logging.getLogger(__name__)

TUS_VERSION = "1.0.0"
#: Bytes read from the request per ``pwrite``.
READ_CHUNK = 1024 * 1024
#: ``fdatasync`` and record the offset at least this often during a long PATCH.
CHECKPOINT_BYTES = 4 * 1024 * 1024
#: How long a PATCH (or HEAD) waits for another PATCH of the same upload before 423.
LOCK_WAIT_SECONDS = 5.0
#: Unfinished uploads one user may have at a time (each may reserve up to max_upload_bytes of disk).
MAX_INCOMPLETE_PER_USER = 20
#: Metadata keys the peer needs.
REQUIRED_METADATA = ("filename", "sha256")

_HEX64 = re.compile(r"[0-9a-f]{64}")
_UPLOAD_ID = re.compile(r"[0-9a-f]{32}")
_METADATA_KEY = re.compile(r"[\x21-\x2b\x2d-\x7e]+")  # printable ASCII, no space, no comma


class ChecksumMismatch(PocketgridError):
    """The whole file's SHA-256 is not the announced one (tus's 460 "Checksum Mismatch")."""

    status = 460


class Gone(PocketgridError):
    """The upload expired or failed verification; start a new one."""

    status = 410


class Locked(PocketgridError):
    """Another PATCH of the same upload is still running."""

    status = 423


class InsufficientStorage(PocketgridError):
    status = 507


@dataclass(frozen=True)
class UploadInfo:
    """What the API shows of an upload."""

    id: str
    owner: str
    filename: str
    length: int
    offset: int
    sha256: str
    metadata: str  # the Upload-Metadata header as the client sent it (HEAD echoes it)
    state: str  # incomplete | complete | failed
    path: str | None  # publishing-area path once complete
    error: str | None
    created_at: float
    expires_at: float
    #: Set on the answer of the request whose last byte completed (and verified) the upload.
    completed_now: bool = False

    @property
    def complete(self) -> bool:
        return self.state == "complete"

    def to_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "filename": self.filename,
            "offset": self.offset,
            "length": self.length,
            "complete": self.complete,
            "state": self.state,
            "path": self.path,
            "sha256": self.sha256,
            "error": self.error,
            "expires_at": self.expires_at,
        }


def parse_metadata(header: str) -> dict[str, str]:
    """Parse tus ``Upload-Metadata``: comma-separated ``key base64(value)`` pairs (the value may be absent).

    Keys are non-empty printable ASCII without spaces or commas and unique;
    values are strict base64 of UTF-8 text here (the peer's keys are text).
    """
    out: dict[str, str] = {}
    if not header.strip():
        return out
    for pair in header.split(","):
        parts = pair.strip().split(" ")
        if len(parts) > 2 or not parts[0]:
            raise BadRequest(f"invalid Upload-Metadata pair {pair.strip()!r}: use 'key base64value', pairs separated by commas")
        key = parts[0]
        if not _METADATA_KEY.fullmatch(key):
            raise BadRequest(f"invalid Upload-Metadata key {key!r}: printable ASCII without spaces or commas")
        if key in out:
            raise BadRequest(f"Upload-Metadata key {key!r} appears twice")
        raw = parts[1] if len(parts) == 2 else ""
        try:
            value = base64.b64decode(raw, validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            raise BadRequest(f"Upload-Metadata value of {key!r} is not base64 of UTF-8 text") from None
        out[key] = value
    return out


def parse_length(value: str | None, header: str) -> int:
    """A non-negative decimal integer header (Upload-Length, Upload-Offset)."""
    if value is None:
        raise BadRequest(f"missing {header} header")
    if not value.isascii() or not value.isdigit():
        raise BadRequest(f"{header} must be a non-negative integer, not {value[:40]!r}")
    return int(value)


def check_upload_name(filename: str) -> str:
    """The file's path below the private upload area, validated as ``PUT /api/v1/files/uploads/<name>`` does."""
    pure = check_relative_path(filename, "file name")
    if str(pure) == ".":
        raise BadRequest("the upload needs a file name (Upload-Metadata key 'filename')")
    check_name(pure.name, "file name")
    return pure.as_posix()


class ResumableUploads:
    """The uploads of one peer."""

    def __init__(
        self,
        db: Database,
        publishing: PublishingArea,
        digests: DigestCache,
        incoming: Path,
        *,
        max_upload_bytes: int,
        expiry_seconds: float,
        quotas: Quotas | None = None,
        on_write: Callable[[int], None] | None = None,
    ) -> None:
        #: Told how many bytes each PATCH stored (also when its body was cut short): the peer's metrics.
        self.on_write = on_write or (lambda nbytes: None)
        self.db = db
        self.quotas = quotas
        self.publishing = publishing
        self.digests = digests
        self.incoming = incoming
        self.incoming.mkdir(parents=True, exist_ok=True)
        self.max_upload_bytes = max_upload_bytes
        self.expiry_seconds = expiry_seconds
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._last_sweep = 0.0

    # ---- helpers ------------------------------------------------------------
    def _part(self, upload_id: str) -> Path:
        return self.incoming / f"{upload_id}.part"

    def _lock(self, upload_id: str) -> threading.Lock:
        if not _UPLOAD_ID.fullmatch(upload_id):  # no lock (and no memory) for IDs that cannot exist
            raise NotFound(f"no such upload: {upload_id[:80]!r}")
        with self._locks_guard:
            return self._locks.setdefault(upload_id, threading.Lock())

    def _acquire(self, upload_id: str, wait: float = LOCK_WAIT_SECONDS) -> threading.Lock:
        lock = self._lock(upload_id)
        if not lock.acquire(timeout=wait):
            raise Locked("another request is still writing to this upload; retry in a moment", retry_after=2)
        return lock

    @staticmethod
    def _info(row: ResumableUpload) -> UploadInfo:
        return UploadInfo(row.id, row.owner, row.filename, row.length, row.offset, row.sha256, row.upload_metadata,
                          row.state, row.path, row.error, row.created_at, row.expires_at)

    def _row(self, session, owner: str, upload_id: str) -> ResumableUpload:
        """The caller's upload row, 404 for unknown or someone else's, 410 for expired or failed ones."""
        row = session.get(ResumableUpload, upload_id) if _UPLOAD_ID.fullmatch(upload_id) else None
        if row is None or row.owner != owner:
            raise NotFound(f"no such upload: {upload_id!r} (it may have expired; start a new upload)")
        if row.state == "failed":
            raise Gone(f"this upload failed: {row.error}; start a new upload", upload=self._info(row).to_dict())
        if row.state == "incomplete" and row.expires_at < time.time():
            raise Gone("this upload expired before it was complete; start a new upload")
        return row

    def _maybe_sweep(self) -> None:
        if time.monotonic() - self._last_sweep > min(3600.0, self.expiry_seconds / 4):
            self.sweep()

    # ---- operations ----------------------------------------------------------
    def create(self, owner: str, length: int, metadata_header: str) -> UploadInfo:
        """A new upload of ``length`` bytes; 400/413/507 before anything is stored."""
        self._maybe_sweep()
        metadata = parse_metadata(metadata_header)
        missing = [k for k in REQUIRED_METADATA if k not in metadata]
        if missing:
            raise BadRequest("Upload-Metadata must carry " + " and ".join(missing)
                             + " (base64): the file's name and the lowercase hex SHA-256 of its content")
        filename = check_upload_name(metadata["filename"])
        # The final path must stay inside the area (a symlinked upload directory would not).
        check_destination(self.publishing.resolve(f"{upload_dir(owner)}/{filename}", must_exist=False), filename)
        sha256 = metadata["sha256"].strip().lower()
        if not _HEX64.fullmatch(sha256):
            raise BadRequest("Upload-Metadata sha256 must be the file's SHA-256 as 64 hex digits")
        if length > self.max_upload_bytes:
            raise TooLarge(f"the file is {length} bytes, over this peer's upload limit of {self.max_upload_bytes} bytes",
                           max_upload_bytes=self.max_upload_bytes)
        if self.quotas is not None:  # the owner's jobs and uploads here, this one included: 413 with the numbers
            self.quotas.check(owner, length, f"the upload {filename!r}")
        now = time.time()
        with self.db.sessions() as s:
            unfinished = list(s.execute(
                select(ResumableUpload.owner, ResumableUpload.length - ResumableUpload.offset)
                .where(ResumableUpload.state == "incomplete", ResumableUpload.expires_at >= now)))
        if sum(1 for who, _ in unfinished if who == owner) >= MAX_INCOMPLETE_PER_USER:
            raise TooManyRequests(f"you have {MAX_INCOMPLETE_PER_USER} unfinished uploads on this peer: finish or "
                                  "delete some first (they expire a day after their last write)", retry_after=60)
        free = shutil.disk_usage(self.incoming).free - sum(rest for _, rest in unfinished)  # promised to others
        if length > free:
            raise InsufficientStorage(f"the peer has {max(free, 0)} bytes of free space left for uploads, "
                                      f"not enough for {length} bytes")
        upload_id = secrets.token_hex(16)
        with open(self._part(upload_id), "xb"):
            pass
        with self.db.session() as s:
            row = ResumableUpload(id=upload_id, owner=owner, filename=filename, length=length, offset=0, sha256=sha256,
                                  upload_metadata=metadata_header, state="incomplete", created_at=now,
                                  expires_at=now + self.expiry_seconds)
            s.add(row)
        info = self._info(row)
        if length == 0:  # nothing to send: verify and publish at once
            lock = self._acquire(upload_id)
            try:
                info = self._complete(upload_id)
            finally:
                lock.release()
        return info

    def get(self, owner: str, upload_id: str, *, settle: bool = False) -> UploadInfo:
        """The upload's state.  ``settle``: wait (briefly) for a PATCH still running, so the offset is final."""
        lock = None
        if settle:
            lock = self._lock(upload_id)
            if not lock.acquire(timeout=LOCK_WAIT_SECONDS):
                lock = None  # answer what is recorded; the client's PATCH will meet 409 or 423
        try:
            with self.db.session() as s:
                row = self._row(s, owner, upload_id)
                if row.state == "incomplete":
                    self._reconcile(row)
                return self._info(row)
        finally:
            if lock is not None:
                lock.release()

    def _reconcile(self, row: ResumableUpload) -> None:
        """After a crash of the machine the file may hold fewer bytes than recorded: trust the file then."""
        try:
            size = self._part(row.id).stat().st_size
        except FileNotFoundError:
            size = 0
            open(self._part(row.id), "xb").close()
        if size < row.offset:
            log.warning("upload %s: %d bytes on disk, %d recorded; resuming at %d", row.id, size, row.offset, size)
            row.offset = size

    def append(
        self,
        owner: str,
        upload_id: str,
        offset: int,
        stream: BinaryIO,
        content_length: int,
        *,
        max_body_bytes: int,
    ) -> UploadInfo:
        """Write a PATCH body at ``offset``.  409 when ``offset`` is not the upload's; 460 if the finished file
        does not match its SHA-256.  A body cut short (the client's link dropped) keeps what arrived and
        re-raises the read error."""
        lock = self._acquire(upload_id)
        try:
            with self.db.session() as s:
                row = self._row(s, owner, upload_id)
                if row.state == "incomplete":
                    self._reconcile(row)
                current, length, state = row.offset, row.length, row.state
            if state == "complete":
                if offset == length and content_length == 0:
                    return self.get(owner, upload_id)
                raise Conflict(f"this upload is already complete ({length} bytes); nothing more to send",
                               offset=length)
            if offset != current:
                raise Conflict(f"Upload-Offset {offset} is not where this upload is: the peer has {current} bytes; "
                               f"send from byte {current} (HEAD tells the offset)", offset=current)
            if content_length > max_body_bytes:
                raise TooLarge(f"send at most {max_body_bytes} bytes per PATCH (this one has {content_length}); "
                               "split the file into smaller chunks", max_body_bytes=max_body_bytes)
            if offset + content_length > length:
                raise TooLarge(f"{content_length} bytes at offset {offset} go past the upload's length of {length} bytes")
            written = self._write(upload_id, offset, stream, content_length)
            if written == length:
                return self._complete(upload_id)
            return self.get(owner, upload_id)
        finally:
            lock.release()

    def _write(self, upload_id: str, offset: int, stream: BinaryIO, content_length: int) -> int:
        """Copy the body to the part file at ``offset``; record the new offset (also when the body is cut)."""
        fd = os.open(self._part(upload_id), os.O_WRONLY | os.O_CREAT, 0o600)
        position = offset
        recorded = offset
        try:
            if os.fstat(fd).st_size > offset:
                os.ftruncate(fd, offset)  # bytes past the recorded offset were never acknowledged
            remaining = content_length
            while remaining > 0:
                data = stream.read(min(READ_CHUNK, remaining))
                if not data:
                    break  # the body ended early
                view = memoryview(data)
                while view:
                    n = os.pwrite(fd, view, position)
                    position += n
                    view = view[n:]
                remaining -= len(data)
                if position - recorded >= CHECKPOINT_BYTES:
                    os.fdatasync(fd)
                    self._record(upload_id, position)
                    recorded = position
        finally:
            try:
                os.fdatasync(fd)
            finally:
                os.close(fd)
            if position != recorded:
                self._record(upload_id, position)
            self.on_write(position - offset)
        return position

    def _record(self, upload_id: str, offset: int) -> None:
        with self.db.session() as s:
            row = s.get(ResumableUpload, upload_id)
            if row is not None:
                row.offset = offset
                row.expires_at = time.time() + self.expiry_seconds

    def _complete(self, upload_id: str) -> UploadInfo:
        """All bytes are here: verify the SHA-256 over the whole file, then publish it (caller holds the lock)."""
        part = self._part(upload_id)
        with self.db.session() as s:
            row = s.get(ResumableUpload, upload_id)
            assert row is not None
            owner, filename, expected = row.owner, row.filename, row.sha256
        with open(part, "rb") as fh:
            actual = hashlib.file_digest(fh, "sha256").hexdigest()
        if actual != expected:
            part.unlink(missing_ok=True)
            message = (f"the uploaded bytes have SHA-256 {actual}, not the {expected} announced: "
                       "the file changed or was damaged on the way; upload it again")
            with self.db.session() as s:
                row = s.get(ResumableUpload, upload_id)
                row.state, row.error = "failed", "SHA-256 mismatch"
            log.warning("upload %s of %r: SHA-256 mismatch, discarded", upload_id, filename)
            raise ChecksumMismatch(message, sha256=actual, expected_sha256=expected)
        try:
            dest = self.publishing.resolve(f"{upload_dir(owner)}/{filename}", must_exist=False)
            check_destination(dest, filename)
        except (BadRequest, Conflict) as exc:  # the area changed since the upload began
            part.unlink(missing_ok=True)
            with self.db.session() as s:
                row = s.get(ResumableUpload, upload_id)
                row.state, row.error = "failed", exc.message
            raise
        dest.parent.mkdir(parents=True, exist_ok=True)
        _move_into(part, dest)
        self.digests.sha256(dest)  # cache it: the job service asks for it at submit
        with self.db.session() as s:
            row = s.get(ResumableUpload, upload_id)
            row.state, row.path, row.offset = "complete", self.publishing.relative(dest), row.length
            row.expires_at = time.time() + self.expiry_seconds  # the record stays a while for late clients
            info = dataclasses.replace(self._info(row), completed_now=True)
        log.info("upload %s complete: %s (%d bytes)", upload_id, info.path, info.length)
        return info

    def terminate(self, owner: str, upload_id: str) -> None:
        """tus termination: forget the upload and its bytes (a completed file stays published)."""
        lock = self._acquire(upload_id)
        try:
            with self.db.session() as s:
                row = s.get(ResumableUpload, upload_id) if _UPLOAD_ID.fullmatch(upload_id) else None
                if row is None or row.owner != owner:
                    raise NotFound(f"no such upload: {upload_id!r}")
                s.delete(row)
            self._part(upload_id).unlink(missing_ok=True)
        finally:
            lock.release()
        with self._locks_guard:
            self._locks.pop(upload_id, None)

    def sweep(self) -> int:
        """Remove expired uploads and stray part files; returns how many uploads went."""
        self._last_sweep = time.monotonic()
        now = time.time()
        with self.db.session() as s:
            expired = list(s.scalars(select(ResumableUpload.id).where(ResumableUpload.expires_at < now)))
            if expired:
                s.execute(delete(ResumableUpload).where(ResumableUpload.id.in_(expired)))
            known = set(s.scalars(select(ResumableUpload.id).where(ResumableUpload.state == "incomplete")))
        for part in self.incoming.glob("*.part"):
            if part.stem not in known:
                part.unlink(missing_ok=True)
        with self._locks_guard:  # forget the locks of uploads that are gone (unless one is held right now)
            for upload_id in [u for u, lock in self._locks.items() if u not in known and not lock.locked()]:
                del self._locks[upload_id]
        if expired:
            log.info("removed %d expired uploads", len(expired))
        return len(expired)


def _move_into(part: Path, dest: Path) -> None:
    """Atomically put ``part`` at ``dest`` (a copy first when the publishing area is another file system)."""
    try:
        os.replace(part, dest)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".upload")
        try:
            with os.fdopen(fd, "wb") as out, open(part, "rb") as src:
                shutil.copyfileobj(src, out, 1024 * 1024)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp_name, dest)
        finally:
            Path(tmp_name).unlink(missing_ok=True)
        part.unlink(missing_ok=True)
    dir_fd = os.open(dest.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
