"""What each user's files occupy on this peer, and the per-user quota.

A user's bytes on a peer are the staging directories of the user's pieces here
(inputs, executable, outputs, event log; counted under their job's ID, so a
refusal names what ``pocketgrid purge`` takes), the files this peer keeps for
the jobs whose home it is (``<state>/records/<job>/``: executable and submit
file), the user's upload directory
(``uploads/u-<hash>/``) and the full announced length of the user's
unfinished resumable uploads (they will need it).  Files are counted by
apparent size, each inode once (the executable and submit file are hard
links in every input's directory).  This is walked when a submission or an
upload asks for room (rare, next to status polls); a finished job's size
does not change any more, so it is walked once and kept in memory
(benchmarks/retention_cost.py: 1000 finished jobs of 28 files, about a
second for the first walk here, a few ms after).

The quota (``user_quota_bytes``, 0 = none) is checked when a piece of a job is
accepted here (before staging) and when an upload is created; a refusal is a 413
whose ``quota`` list says, per site, what is used, the limit, what the
request needed, and the largest things to remove.  It is a soft limit: two
submissions checked at the same moment may together go over by one job, and
a running job's outputs are counted only at the next check.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select

from pocketgrid.errors import TooLarge

from .db import Database
from .models import Job, JobRecord, ResumableUpload
from .publishing import PublishingArea
from .uploads import upload_dir

#: How many of the largest jobs and uploads a refusal names.
LARGEST_SHOWN = 5


def human(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def tree_bytes(root: Path, seen: set[tuple[int, int]] | None = None) -> int:
    """Apparent size of the regular files below ``root``, each inode once; symlinks are not followed."""
    seen = set() if seen is None else seen
    total = 0
    stack = [root]
    while stack:
        current = stack.pop()
        try:
            entries = list(os.scandir(current))
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
                elif entry.is_file(follow_symlinks=False):
                    st = entry.stat(follow_symlinks=False)
                    if (st.st_dev, st.st_ino) not in seen:
                        seen.add((st.st_dev, st.st_ino))
                        total += st.st_size
            except FileNotFoundError:
                continue
    return total


@dataclass
class Usage:
    """One user's bytes on this peer."""

    owner: str
    jobs: dict[str, int] = field(default_factory=dict)  # job ID -> bytes
    uploads: dict[str, int] = field(default_factory=dict)  # publishing-area path -> bytes
    reserved: int = 0  # unfinished resumable uploads, at their announced length

    @property
    def total(self) -> int:
        return sum(self.jobs.values()) + sum(self.uploads.values()) + self.reserved

    def largest(self, n: int = LARGEST_SHOWN) -> list[dict[str, object]]:
        items = [{"kind": "job", "name": k, "bytes": v} for k, v in self.jobs.items()]
        items += [{"kind": "upload", "name": k, "bytes": v} for k, v in self.uploads.items()]
        return sorted(items, key=lambda i: -int(i["bytes"]))[:n]  # type: ignore[call-overload]

    def to_dict(self) -> dict[str, object]:
        return {"owner": self.owner, "bytes": self.total, "jobs_bytes": sum(self.jobs.values()),
                "uploads_bytes": sum(self.uploads.values()), "reserved_bytes": self.reserved,
                "largest": self.largest()}


#: What a refusal tells the user to do.
PURGE_HINT = ("free space with `pocketgrid purge JOB` (a finished job and its outputs) or "
              "`pocketgrid purge --upload PATH` (an upload)")


class QuotaExceeded(TooLarge):
    """Over a user's quota on one or more sites: ``quota`` lists each site's numbers and ``summary``."""

    @classmethod
    def every_site(cls, refusals: list["QuotaExceeded"]) -> "QuotaExceeded":
        if len(refusals) == 1:
            return refusals[0]
        sites = [q for r in refusals for q in r.details.get("quota", [])]  # type: ignore[union-attr]
        return cls("no site can take this job within your storage quota: "
                   + "; ".join(str(q.get("summary", "")) for q in sites) + f". {PURGE_HINT}", quota=sites)


class Quotas:
    def __init__(self, *, peer_name: str, db: Database, stage_root: Path, publishing: PublishingArea,
                 limit_bytes: int, records_root: Path | None = None) -> None:
        self.peer_name = peer_name
        self.records_root = records_root
        self.db = db
        self.stage_root = stage_root
        self.publishing = publishing
        self.limit_bytes = limit_bytes
        #: Bytes of finished jobs (they no longer change), by job ID.
        self._finished: dict[str, int] = {}
        self._lock = threading.Lock()

    def forget(self, job_id: str) -> None:
        """A job was removed."""
        with self._lock:
            self._finished.pop(job_id, None)

    def usage(self, owner: str) -> Usage:
        usage = Usage(owner)
        seen: set[tuple[int, int]] = set()
        now = time.time()
        with self.db.sessions() as s:
            jobs = list(s.execute(select(Job.id, Job.finished_at, Job.record_id).where(Job.owner == owner)))
            homed = list(s.scalars(select(JobRecord.id).where(JobRecord.owner == owner,
                                                              JobRecord.purged_at.is_(None))))
            usage.reserved = sum(s.scalars(select(ResumableUpload.length).where(
                ResumableUpload.owner == owner, ResumableUpload.state == "incomplete",
                ResumableUpload.expires_at >= now)))
        for job_id, finished_at, record_id in jobs:
            with self._lock:
                known = self._finished.get(job_id) if finished_at is not None else None
            if known is None:
                known = tree_bytes(self.stage_root / job_id, seen)  # a running piece: its outputs grow
                if finished_at is not None:
                    with self._lock:
                        self._finished[job_id] = known
            name = record_id or job_id  # the job the user knows (and purges), not its piece
            usage.jobs[name] = usage.jobs.get(name, 0) + known
        if self.records_root is not None:
            for job_id in homed:  # the executable and submit file this home (or a deputy) keeps
                # not a deputy's copies of the inputs (records/<job>/inputs/): they are the system's
                # safety net against the home's death, not something the user asked this peer to keep
                usage.jobs[job_id] = usage.jobs.get(job_id, 0) + tree_bytes(self.records_root / job_id / "files",
                                                                            seen)
        mine = self.publishing.root / upload_dir(owner)
        for dirpath, dirnames, filenames in os.walk(mine):
            for fn in filenames:
                full = Path(dirpath) / fn
                try:
                    st = full.lstat()
                except FileNotFoundError:
                    continue
                if full.is_file() and not full.is_symlink() and (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    usage.uploads[full.relative_to(self.publishing.root).as_posix()] = st.st_size
        return usage

    def check(self, owner: str, needed: int, what: str) -> None:
        """413 when ``owner`` would go over the quota on this peer by adding ``needed`` bytes for ``what``."""
        if self.limit_bytes <= 0:
            return
        usage = self.usage(owner)
        if usage.total + needed <= self.limit_bytes:
            return
        largest = usage.largest()
        if needed > self.limit_bytes:
            summary = (f"{self.peer_name}: {what} needs {human(needed)}, more than your whole quota of "
                       f"{human(self.limit_bytes)} on this site")
        else:
            summary = (f"{self.peer_name}: {what} needs {human(needed)}, and you already use {human(usage.total)} "
                       f"of your {human(self.limit_bytes)} quota on this site")
            if largest:
                summary += " (largest: " + ", ".join(f"{i['name']} {human(int(i['bytes']))}" for i in largest) + ")"
        raise QuotaExceeded(f"{summary}. {PURGE_HINT}", quota=[{
            "peer": self.peer_name, "used_bytes": usage.total, "limit_bytes": self.limit_bytes,
            "needed_bytes": needed, "largest": largest, "summary": summary}])
