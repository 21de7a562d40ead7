"""Staging a piece: ``<stage>/<piece_id>/<index>/`` per input, built under a temporary name.

A *piece* is what one site runs of a job (docs/architecture.md, *Jobs across
sites*): some of the job's inputs, each in the directory named by its index
in the job, so ``$(input_index)`` means the same on every site.  Layout::

    <stage>/<piece_id>/
        job.log              the HTCondor user log of every proc of the piece
        3/  <executable> <submit file> <input 3>   (+ whatever the job writes)
        7/  <executable> <submit file> <input 7>
        ...

The executable and submit file are hard-linked into each subdirectory (copied
when the filesystem refuses links).  Inputs are copied from the publishing
area when this peer is the entry peer, otherwise downloaded from the entry
peer's file service with :func:`pocketgrid.transfer.download` (resumable,
SHA-256 verified).  Everything is built in ``.tmp-<job_id>`` and renamed into
place only when complete, so a crash never leaves a half-staged job that looks
submitted; leftovers are swept at start-up, and so are complete staging
directories whose job row was never committed (:meth:`Stager.sweep_orphans`).
"""
from __future__ import annotations

import contextvars
import logging
import os
import re
import shutil
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import requests

from pocketgrid.transfer import download

log = logging.getLogger(__name__)

LOG_NAME = "job.log"
#: Per-job bookkeeping that is not the user's (runner specs and logs).
META_DIR = ".pocketgrid"


@dataclass
class InputSource:
    """Where one input comes from: a local file, or a URL on the entry peer."""

    name: str  #: file name inside the proc's subdirectory
    local_path: Path | None = None
    url: str | None = None
    sha256: str | None = None
    size: int | None = None
    #: The input's index in the job (its directory's name); None: its position in the list.
    index: int | None = None


@dataclass
class StagedJob:
    job_id: str
    root: Path
    executable_name: str
    submit_name: str
    input_names: list[str]
    proc_dirs: list[Path] = field(default_factory=list)
    #: Each input's index in the job, in the order of ``input_names`` and ``proc_dirs``.
    indexes: list[int] = field(default_factory=list)

    @property
    def log_path(self) -> Path:
        return self.root / LOG_NAME

    @property
    def meta_dir(self) -> Path:
        return self.root / META_DIR

    @property
    def executable_path(self) -> Path:
        """The one staged copy of the executable (each proc dir has a link to it)."""
        return self.meta_dir / "files" / self.executable_name

    def job_indexes(self) -> list[int]:
        """Each input's index in the job (``indexes``, else their positions)."""
        return list(self.indexes) or list(range(len(self.input_names)))

    def staged_names(self) -> set[str]:
        """Files we put in a proc dir (so they are not reported as outputs)."""
        return {self.executable_name, self.submit_name}


class Stager:
    def __init__(
        self, stage_root: Path, *, http: requests.Session, chunk_bytes: int = 1024 * 1024, parallel_downloads: int = 4,
        on_staged: Callable[[str, int], None] | None = None,
    ) -> None:
        #: Told ``("local", bytes)`` for each input copied from this peer's publishing area and
        #: ``("peer", bytes)`` for each input downloaded from the entry peer (the peer's metrics).
        self.on_staged = on_staged or (lambda source, nbytes: None)
        self.parallel_downloads = max(1, parallel_downloads)
        self.root = stage_root
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.root.chmod(0o700)  # every user's jobs: the peer's alone
        self.http = http
        self.chunk_bytes = chunk_bytes

    def job_root(self, job_id: str) -> Path:
        return self.root / job_id

    def sweep_incomplete(self) -> int:
        """Remove half-built staging directories left by a crash."""
        n = 0
        for p in self.root.glob(".tmp-*"):
            shutil.rmtree(p, ignore_errors=True)
            n += 1
        if n:
            log.info("removed %d incomplete staging directories", n)
        return n

    def sweep_orphans(self, known: Callable[[list[str]], set[str]], *, peer_name: str) -> int:
        """Remove staged job directories of this peer that have no job row.

        A crash between staging and the commit of the job's row (or a
        cluster the CondorExecutor's reconciliation removes because its row
        never came) leaves ``<stage>/<job_id>/`` behind with nothing that
        would ever serve or remove it.  ``known(ids)`` answers which of the
        given job IDs have a row.  Only directories named like this peer's
        job IDs (``<peer_name>.<hex>``) are considered.

        Call it only before requests are served (at start-up): a job whose
        row is being committed right now has its directory but not yet its
        row, and must not lose it.
        """
        pattern = re.compile(re.escape(peer_name) + r"\.[0-9a-f]+")
        candidates = sorted(p.name for p in self.root.iterdir() if p.is_dir() and pattern.fullmatch(p.name))
        removed = 0
        for start in range(0, len(candidates), 500):
            batch = candidates[start:start + 500]
            have = known(batch)
            for name in batch:
                if name not in have:
                    shutil.rmtree(self.root / name, ignore_errors=True)
                    removed += 1
                    log.info("removed the staging directory of %s: no job row (left by a crash before its "
                             "commit)", name)
        return removed

    def stage(
        self,
        job_id: str,
        *,
        executable: bytes,
        executable_name: str,
        submit_text: str,
        submit_name: str,
        inputs: list[InputSource],
    ) -> StagedJob:
        indexes = [i if s.index is None else int(s.index) for i, s in enumerate(inputs)]
        if len(set(indexes)) != len(indexes) or any(i < 0 for i in indexes):
            raise ValueError(f"input indexes {indexes!r} are not distinct indexes >= 0")
        final = self.job_root(job_id)
        if final.exists():
            raise FileExistsError(f"job {job_id} is already staged")
        tmp = self.root / f".tmp-{job_id}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            meta = tmp / META_DIR
            (meta / "files").mkdir(parents=True)  # user-named files apart from our procs/ and inputs/
            exe = meta / "files" / executable_name
            exe.write_bytes(executable)
            exe.chmod(exe.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
            sub = meta / "files" / submit_name
            sub.write_text(submit_text)
            fetched = self._fetch_remote(inputs, meta / "inputs")
            uses: dict[str, int] = {}
            for source in inputs:
                if source.url is not None:
                    uses[source.url] = uses.get(source.url, 0) + 1
            for index, source in zip(indexes, inputs):
                d = tmp / str(index)
                d.mkdir()
                _link_or_copy(exe, d / executable_name)
                _link_or_copy(sub, d / submit_name)
                dest = d / source.name
                if source.local_path is not None:
                    # A copy, not a link: a job that writes to its input must
                    # not change the published file.
                    shutil.copyfile(source.local_path, dest)
                    self.on_staged("local", dest.stat().st_size)
                else:
                    assert source.url is not None
                    uses[source.url] -= 1
                    if uses[source.url] == 0:
                        os.replace(fetched[source.url], dest)  # last use: move, do not write again
                    else:
                        shutil.copyfile(fetched[source.url], dest)
            (tmp / LOG_NAME).touch()
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return StagedJob(
            job_id=job_id,
            root=final,
            executable_name=executable_name,
            submit_name=submit_name,
            input_names=[s.name for s in inputs],
            proc_dirs=[final / str(i) for i in indexes],
            indexes=indexes,
        )

    def _fetch_remote(self, inputs: list[InputSource], into: Path) -> dict[str, Path]:
        """Download each distinct remote input once, several at a time, verified.

        No per-chunk fsync here: a crash discards the whole temporary staging
        directory, so durability of partial inputs buys nothing.
        """
        urls: dict[str, InputSource] = {}
        for source in inputs:
            if source.url is not None and source.url not in urls:
                urls[source.url] = source
        if not urls:
            return {}
        into.mkdir(parents=True, exist_ok=True)
        targets = {url: into / f"{i}-{src.name}" for i, (url, src) in enumerate(urls.items())}

        def fetch(url: str) -> None:
            src = urls[url]
            download(self.http, url, targets[url], expected_sha256=src.sha256, expected_size=src.size,
                     chunk_bytes=self.chunk_bytes, fsync=False)
            self.on_staged("peer", targets[url].stat().st_size)

        with ThreadPoolExecutor(max_workers=min(self.parallel_downloads, len(urls))) as pool:
            # in copies of the caller's context: the downloads carry the request's X-Request-ID
            for future in [pool.submit(contextvars.copy_context().run, fetch, url) for url in urls]:
                future.result()  # re-raises the first failure
        return targets


def remove_orphan(stage_root: Path, job_id: str, has_row: Callable[[str], bool]) -> bool:
    """Remove one job's staging directory if ``has_row(job_id)`` says it has no job row; True if removed.

    For the CondorExecutor's reconciliation, which names only jobs whose
    held cluster is older than any submission still in flight.
    """
    if not job_id or job_id.startswith(".") or "/" in job_id or "\x00" in job_id:
        return False
    path = Path(stage_root) / job_id
    if not path.is_dir() or has_row(job_id):
        return False
    shutil.rmtree(path, ignore_errors=True)
    log.info("removed the staging directory of %s: its cluster was removed and it has no job row", job_id)
    return True


def _link_or_copy(src: Path, dest: Path) -> None:
    try:
        os.link(src, dest)
    except OSError:
        shutil.copy2(src, dest)
