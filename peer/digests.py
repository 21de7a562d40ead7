"""SHA-256 of files, computed once per (size, mtime) and kept in the database.

A 1 GiB output costs a full read to hash; listing the outputs of a job again
must not pay that again.  A file still being written changes size or mtime,
so a stale digest is never served.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from sqlalchemy.exc import IntegrityError

from .db import Database
from .models import FileDigest


class DigestCache:
    def __init__(self, db: Database) -> None:
        self.db = db

    def sha256(self, path: Path) -> str:
        st = os.stat(path)
        key = str(path)
        with self.db.sessions() as s:
            row = s.get(FileDigest, key)
            if row is not None and row.size == st.st_size and row.mtime_ns == st.st_mtime_ns:
                return row.sha256
        with open(path, "rb") as fh:
            digest = hashlib.file_digest(fh, "sha256").hexdigest()
        after = os.stat(path)
        if (after.st_size, after.st_mtime_ns) != (st.st_size, st.st_mtime_ns):
            return digest  # changed while hashing: answer, but do not cache
        try:
            with self.db.session() as s:
                row = s.get(FileDigest, key)
                if row is None:
                    s.add(FileDigest(path=key, size=st.st_size, mtime_ns=st.st_mtime_ns, sha256=digest))
                else:
                    row.size, row.mtime_ns, row.sha256 = st.st_size, st.st_mtime_ns, digest
        except IntegrityError:
            pass  # another thread cached it first
        return digest
