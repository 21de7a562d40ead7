"""Sending a piece of a job to a site: the request, its origin key, and what its answer means.

A piece is some inputs of one job that one site runs as one cluster.  The
home sends it as before a whole job was forwarded (multipart ``POST
/api/v1/peer/jobs``: the metadata with each input's index in the job, name,
path at the home, size and SHA-256, plus the executable), with the owner's
proof (a delegation the home signs for that site alone, peer/auth.py).

A job taken over from its home (peer/replicas.py) is sent by its new manager
under its own name (``entry_peer``): each input then names its ``source``,
the manager's copy (``/api/v1/peer/records/<job>/inputs/<i>``), as the path
in the home's publishing area means nothing at the manager.

The **origin key** is derived from the job, the site and the attempts' (input,
number) pairs: sending the same piece again after a lost answer finds the
piece the site already made (it de-duplicates on home + origin key), and a
later attempt of the same input is a different piece.

An answer is one of (:class:`Outcome`): the piece ID; a **refusal** for
good of these inputs by this site (413 with ``quota``: the owner's storage
quota there is full; 400 with ``"elsewhere": true``: it does not run the
submit file as written): the site is healthy, the inputs are placed again
without it; a **definite** failure (the site was never reached, refused the
piece otherwise, or failed to stage it: the site has no piece, those
attempts are lost); or **ambiguous** (the request went out and no answer
came: the piece may exist, so it is sent again with the same key later,
never to another site under that key).
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import requests

from pocketgrid.errors import NotRunnableHere, PocketgridError
from pocketgrid.http import never_reached

from .models import JobAttempt, JobRecord

log = logging.getLogger(__name__)


def piece_key(job_id: str, site: str, attempts: Sequence[tuple[int, int]]) -> str:
    """The origin key of the piece holding these ``(input index, attempt number)`` pairs at ``site``."""
    pairs = ",".join(f"{i}:{n}" for i, n in sorted(attempts))
    return hashlib.sha256(f"{job_id}\x00{site}\x00{pairs}".encode()).hexdigest()


def piece_meta(record: JobRecord, attempts: Sequence[JobAttempt], *, home: str, home_url: str,
               key: str) -> dict[str, Any]:
    """The metadata of a piece (what ``POST /api/v1/peer/jobs`` takes), inputs in index order."""
    inputs = []
    for a in sorted(attempts, key=lambda a: a.index):
        meta = record.inputs[a.index]
        item = {"index": a.index, "name": meta["name"], "path": meta["path"], "size": meta["size"],
                "sha256": meta["sha256"]}
        if record.home != home:  # a job taken over from its home: the inputs are this manager's copies
            item["source"] = f"/api/v1/peer/records/{record.id}/inputs/{a.index}"
        inputs.append(item)
    return {
        "name": record.name,
        "owner": record.owner,
        "executable_name": record.executable_name,
        "submit_name": record.submit_name,
        "submit_text": record.submit_text,
        "entry_peer": home,
        "entry_url": home_url,
        "origin_key": key,
        "inputs": inputs,
        "job_id": record.id,  # the site names the job (not its piece) in quotas and retention
        "history_key": record.history_key,  # the site learns this program's run times under it
        "pinned": bool(record.pinned),  # a pinned job's pieces are never expired at their sites
    }


def refusal_of(status: int, body: dict[str, Any]) -> dict[str, Any] | None:
    """A site's answer that refuses the piece for good (not a site failure), as a refusal; else None.

    413 with ``quota`` (storage.QuotaExceeded) and 400 with ``"elsewhere": true`` (NotRunnableHere).
    """
    message = str(body.get("error") or "")
    if status == 413 and isinstance(body.get("quota"), list):
        return {"kind": "quota", "message": message, "quota": body["quota"]}
    if status == NotRunnableHere.status and body.get("elsewhere") is True:
        return {"kind": "elsewhere", "message": message}
    return None


@dataclass(frozen=True)
class Outcome:
    """How sending a piece went."""

    piece: str | None = None  #: the site's piece ID
    failure: str | None = None  #: a definite failure: what the site (or the network) said
    ambiguous: bool = False  #: sent, no answer: send again with the same key
    #: the site refused these inputs for good: ``{"kind": "quota" | "elsewhere", "message", "quota"?}``
    refusal: dict[str, Any] | None = None
    #: what the site warned about when it took the piece (e.g. no slot of it matches the job)
    warnings: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.piece is not None


class Dispatcher:
    """Sends pieces: to this peer's own job service directly, to other sites over mutual TLS."""

    def __init__(self, *, name: str, http: requests.Session, accept_local: Callable[[dict[str, Any], bytes], dict],
                 proof: Callable[[str, str | None, str], dict[str, str]], timeout: float = 120.0) -> None:
        self.name = name
        self.http = http
        self.accept_local = accept_local
        self.proof = proof
        self.timeout = timeout

    def send(self, site: str, url: str | None, meta: dict[str, Any], executable: Path,
             owner_vo: str | None) -> Outcome:
        try:
            data = executable.read_bytes()
        except OSError as exc:
            return Outcome(failure=f"the job's executable is gone from its home: {exc}")
        if site == self.name:
            try:
                summary = self.accept_local(meta, data)
                return Outcome(piece=summary["id"], warnings=tuple(summary.get("warnings") or ()))
            except PocketgridError as exc:
                refusal = refusal_of(exc.status, exc.to_dict())
                if refusal is not None:
                    return Outcome(refusal=refusal)
                return Outcome(failure=exc.message)
            except Exception as exc:  # staging here failed in a way nobody foresaw: a site failure, said
                log.exception("piece for %s failed here", meta.get("name"))
                return Outcome(failure=f"{type(exc).__name__}: {exc}")
        if url is None:
            return Outcome(failure=f"{site} is not a member of this system (any more)")
        try:
            r = self.http.post(
                f"{url}/api/v1/peer/jobs",
                headers=self.proof(meta["owner"], owner_vo, site),
                data={"meta": json.dumps(meta)},
                files={"executable": (meta["executable_name"], data, "application/octet-stream")},
                timeout=self.timeout,  # staging may download inputs
            )
        except (requests.ConnectTimeout, requests.ConnectionError) as exc:
            if never_reached(exc):
                return Outcome(failure=f"cannot reach {site}: {type(exc).__name__}")
            return Outcome(ambiguous=True)
        except requests.RequestException:
            return Outcome(ambiguous=True)
        if r.status_code == 500:  # it may have failed after making the piece: ask again with the same key
            log.warning("%s answered 500 to a piece: %s", site, r.text[:200])
            return Outcome(ambiguous=True)
        try:
            body = r.json()
        except ValueError:
            body = {}
        if not r.ok:
            refusal = refusal_of(r.status_code, body) if isinstance(body, dict) else None
            if refusal is not None:
                return Outcome(refusal=refusal)
            message = body.get("error") if isinstance(body, dict) else None
            return Outcome(failure=f"{site} answered {r.status_code}: {message or r.text[:200]}")
        piece = body.get("id") if isinstance(body, dict) else None
        if not isinstance(piece, str):
            return Outcome(ambiguous=True)
        warnings = body.get("warnings") if isinstance(body.get("warnings"), list) else []
        return Outcome(piece=piece, warnings=tuple(str(w) for w in warnings))
