"""``/api/v1/jobs``: submit, list, status (ETag + long-poll), kill, retry, outputs.

The peer a job is submitted to is its home (peer/job_home.py): a job ID
names it (``<home>.<id>``), and any other peer relays requests for the job
there, or to its manager or another holder of its record when the home is
silent (peer/job_routes.py).  The home answers from the job's record; an output is served here
when its piece is here, else relayed from the home to the site that holds
it, with the user's proof.
"""
from __future__ import annotations

import contextvars
import json
import math
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests
from flask import Blueprint, Response, current_app, jsonify, request

from pocketgrid.errors import BadRequest, PocketgridError

from .auth import identity, relay_headers
from .compression import strong_tag
from .downloads import send_ranged
from . import job_routes
from .front.headers import ENVIRON_FRONT_WAITS, WAIT, wait_header
from .in_use import file_key, job_key
from .job_home import SubmitRequest
from .on_close import call_on_close
from .proxy import relay
from .uploads import check_visible

bp = Blueprint("jobs", __name__, url_prefix="/api/v1/jobs")

def _svc():
    return current_app.extensions["pocketgrid"]


def _forward(job_id: str, extra_timeout: float = 0.0) -> Response | None:
    """Relay this request to the peer answering for the job (its manager, its home, a holder of its
    record: peer/job_routes.py); None: answer here."""
    svc = _svc()
    return job_routes.forward(svc, job_id, timeout=svc.config.peer_timeout + extra_timeout)


def _wait_arg() -> float:
    raw = request.args.get("wait", "0")
    try:
        wait = float(raw)
    except ValueError:
        raise BadRequest(f"wait must be a number of seconds, got {raw!r}") from None
    if not math.isfinite(wait) or wait < 0:
        raise BadRequest("wait must be a finite number of seconds, not negative")
    return min(wait, _svc().config.max_wait_seconds)


# ---- submit ---------------------------------------------------------------
def _read_submit_request() -> SubmitRequest:
    form, files = request.form, request.files
    exe = files.get("executable")
    if exe is None:
        raise BadRequest("missing the 'executable' file part")
    executable = exe.read()
    submit_file = files.get("submit")
    if submit_file is not None:
        try:
            submit_text = submit_file.read().decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest("the submit file is not UTF-8 text") from None
        submit_name = form.get("submit_name") or submit_file.filename or "job.sub"
    elif "submit_text" in form:
        submit_text = form["submit_text"]
        submit_name = form.get("submit_name") or "job.sub"
    else:
        raise BadRequest("missing the submit file: send a 'submit' file part or a 'submit_text' field")
    raw_inputs = form.get("inputs")
    if raw_inputs is not None:
        try:
            inputs = json.loads(raw_inputs)
        except ValueError:
            raise BadRequest("'inputs' must be a JSON list of paths in the publishing area") from None
    else:
        inputs = form.getlist("input")
    if not isinstance(inputs, list) or not all(isinstance(i, str) for i in inputs):
        raise BadRequest("'inputs' must be a JSON list of paths in the publishing area")
    return SubmitRequest(
        name=form.get("name", "").strip(),
        executable=executable,
        executable_name=form.get("executable_name") or exe.filename or "",
        submit_text=submit_text,
        submit_name=submit_name,
        inputs=inputs,
    )


def _input_keys(paths: list[str]) -> set[str]:
    """The in-use keys of a submission's inputs (paths that do not resolve get the job service's own error)."""
    area = _svc().publishing
    keys = set()
    for p in paths:
        try:
            keys.add(file_key(area.relative(area.file(p))))
        except PocketgridError:
            continue
    return keys


@bp.post("")
def submit():
    svc = _svc()
    who = identity()
    req = _read_submit_request()
    for path in req.inputs:  # another user's uploads do not exist for this caller
        check_visible(svc.publishing, who, path)
    # the inputs are read (hashed here) until the record is committed; from then on the record names them
    # and the retention sweeper keeps them while it has not finished (peer/retention.py)
    with svc.in_use.holding(*_input_keys(req.inputs)):
        summary, replayed = svc.home.submit(req, owner=who.dn, owner_vo=who.vo,
                                            idempotency_key=request.headers.get("Idempotency-Key"))
    if not replayed:
        svc.security.audit.record("submit", dn=who.dn, source=who.source,
                                  detail=f"job {summary['id']} ({req.name!r}, {len(req.inputs)} inputs)")
    svc.metrics.submitted(replayed)
    response = jsonify(summary)
    response.status_code = 200 if replayed else 201
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    response.headers["Location"] = f"/api/v1/jobs/{summary['id']}"
    return response


# ---- list -----------------------------------------------------------------
@bp.get("")
def list_jobs():
    """The caller's jobs at every peer (``?local=1``: the jobs whose home is this peer)."""
    svc = _svc()
    who = identity()
    jobs = svc.home.list_jobs(who.dn, is_admin=who.is_admin)
    unreachable: list[str] = []
    #: job ID -> the peers whose own list named it; the peers whose list we have
    listed_by: dict[str, set[str]] = {j["id"]: {svc.config.name} for j in jobs}
    answered = {svc.config.name}
    if request.args.get("local") not in {"1", "true"}:
        others = [m for m in svc.membership.members() if m["name"] != svc.config.name]
        headers = {m["name"]: relay_headers(who, m["name"]) for m in others}  # the user's proof, per member

        def fetch(member):
            try:
                r = svc.http.get(f"{member['url']}/api/v1/jobs?local=1", headers=headers[member["name"]],
                                 timeout=svc.config.peer_timeout)
                r.raise_for_status()
                return member["name"], r.json()["jobs"]
            except (requests.RequestException, ValueError, KeyError):
                return member["name"], None

        if others:
            with ThreadPoolExecutor(max_workers=min(8, len(others))) as pool:
                # each call in a copy of this request's context: it sends the request's X-Request-ID
                futures = [pool.submit(contextvars.copy_context().run, fetch, m) for m in others]
                for name, result in (f.result() for f in futures):
                    if result is None:
                        unreachable.append(name)
                    else:
                        answered.add(name)
                        jobs.extend(result)
                        for j in result:
                            listed_by.setdefault(j.get("id"), set()).add(name)
    best: dict[str, dict] = {}
    for j in jobs:  # one entry per job, whichever peers answered for it: the copy with the highest claim
        manager = j.get("manager")
        if manager in answered and manager not in listed_by.get(j.get("id"), set()):
            continue  # a replica of a job its manager no longer lists (removed there: the replica goes soon)
        claim = (int(j.get("manager_epoch") or 1), int(j.get("version") or 0))
        held = best.get(j.get("id"))
        if held is None or claim > (int(held.get("manager_epoch") or 1), int(held.get("version") or 0)):
            best[j.get("id")] = j
    unique = list(best.values())
    unique.sort(key=lambda j: j.get("created_at", 0), reverse=True)
    return jsonify({"jobs": unique, "unreachable_peers": unreachable})


# ---- status ---------------------------------------------------------------
#: What ``?history=1`` and ``?placement=1`` add to a job's status (a larger representation: its own ETag).
STATUS_EXTRAS = ("history", "placement")


def _extras() -> frozenset[str]:
    """``?history=1`` (each input's attempts and its current proc's past states), ``?placement=1`` (every
    dispatch round's split with the ranking's score parts)."""
    return frozenset(e for e in STATUS_EXTRAS if request.args.get(e, "0").lower() in {"1", "true", "yes"})


def _etag(version: int, extras: frozenset[str] = frozenset()) -> str:
    """The record's version: a few bytes, so an unchanged poll stays tiny on a phone link.  A larger
    rendering (``?history=1``, ``?placement=1``) is another representation: its own tag."""
    suffix = "".join(sorted(e[0] for e in extras))
    return f'"{version}-{suffix}"' if suffix else f'"{version}"'


@bp.get("/<job_id>")
def status(job_id: str):
    """The job's status from its record.  ``If-None-Match`` + ``?wait=N`` long-polls until it changes (in the
    front, which asks again on a change, when the request came through it; else parking this thread);
    ``?history=1`` adds each input's attempts and its current proc's past states; ``?placement=1`` every
    dispatch round's split in detail."""
    wait = _wait_arg()
    svc = _svc()
    inm = strong_tag(request.headers.get("If-None-Match"))  # W/"12" (a gzipped answer's tag) is "12"
    if not (wait and inm and job_routes.remote(svc, job_id)):
        forwarded = _forward(job_id)
        if forwarded is not None:
            return forwarded
    else:
        svc.parking.enter("a relayed status long-poll")  # the relay holds this thread while the home waits
        try:
            forwarded = _forward(job_id, extra_timeout=wait)
        except BaseException:
            svc.parking.leave()
            raise
        if forwarded is None:
            svc.parking.leave()  # answered here after all (the manager is silent: our replica answers)
        else:
            call_on_close(forwarded, svc.parking.leave)  # a relayed body: Response.call_on_close never runs
            return forwarded
    who = identity()
    extras = _extras()
    if wait and inm is not None and request.environ.get(ENVIRON_FRONT_WAITS):
        return _status_now(job_id, who, extras, inm, wait)
    deadline = time.monotonic() + wait
    parked = False
    entry = None
    try:
        while True:
            known = svc.home.known_version(job_id, who.dn, who.is_admin)
            if inm is not None and known is not None and _etag(known, extras) == inm:
                left = deadline - time.monotonic()
                if left <= 0:
                    return Response(status=304, headers={"ETag": inm, "Cache-Control": "no-cache"})
                if not parked:  # only a poll that really waits holds a thread
                    svc.parking.enter("a status long-poll")
                    parked = True
                svc.home.wait(job_id, known, left)
                continue
            entry = svc.home.status(job_id, who.dn, is_admin=who.is_admin, history="history" in extras,
                                    placement="placement" in extras)
            if _etag(entry.version, extras) != inm or time.monotonic() >= deadline:
                break
    finally:
        if parked:
            svc.parking.leave()
    etag = _etag(entry.version, extras)
    if etag == inm:
        return Response(status=304, headers={"ETag": etag, "Cache-Control": "no-cache"})
    return Response(entry.json, mimetype="application/json", headers={"ETag": etag, "Cache-Control": "no-cache"})


def _status_now(job_id: str, who, extras: frozenset[str], inm: str, wait: float) -> Response:
    """A long-poll through the front, which holds the waiting itself (peer/front/proxy.py): answer at once,
    and when nothing changed say how to wait (the job, the version the client has, whose wait, how long)."""
    svc = _svc()
    known = svc.home.known_version(job_id, who.dn, who.is_admin)  # None unless ``who`` may see it
    if known is None or _etag(known, extras) != inm:
        entry = svc.home.status(job_id, who.dn, is_admin=who.is_admin, history="history" in extras,
                                placement="placement" in extras)  # 404 / 403 for anyone else's job
        known = entry.version
        if _etag(known, extras) != inm:
            return Response(entry.json, mimetype="application/json",
                            headers={"ETag": _etag(known, extras), "Cache-Control": "no-cache"})
    return Response(status=304, headers={"ETag": inm, "Cache-Control": "no-cache",
                                         WAIT: wait_header(job_id, known, who.dn, wait)})


# ---- kill -----------------------------------------------------------------
@bp.delete("/<job_id>")
def kill(job_id: str):
    """Remove every active attempt of the job at its site (now, or when a silent site answers)."""
    forwarded = _forward(job_id)
    if forwarded is not None:
        return forwarded
    who = identity()
    svc = _svc()
    result = svc.home.kill(job_id, who.dn, is_admin=who.is_admin)
    pending = result.get("removal")
    svc.security.audit.record("kill", dn=who.dn, source=who.source,
                              detail=f"job {job_id}: {result.get('removed_procs', 0)} inputs stopped"
                                     + (f"; removal {pending}" if pending else ""))
    response = jsonify(result)
    if pending:
        response.status_code = 202  # accepted; carried out at the site when it (or its schedd) answers
    return response


# ---- retry ----------------------------------------------------------------
def _input_numbers(value: Any) -> list[int] | None:
    """A body's ``"inputs"``: None when absent, else a non-empty list of input numbers (or a 400)."""
    if value is None:
        return None
    if not isinstance(value, list) or not value or not all(isinstance(i, int) and not isinstance(i, bool)
                                                           for i in value):
        raise BadRequest("'inputs' must be a non-empty list of input numbers (integers)")
    return value


@bp.post("/<job_id>/retry")
def retry(job_id: str):
    """Run finished inputs again: ``{"inputs": [i, ...]}`` or ``{"failed": true}``."""
    forwarded = _forward(job_id)
    if forwarded is not None:
        return forwarded
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise BadRequest('send a JSON object: {"inputs": [0, 3]} or {"failed": true}')
    indexes = _input_numbers(body.get("inputs"))
    failed = body.get("failed", False)
    if not isinstance(failed, bool):
        raise BadRequest("'failed' must be true or false")
    if indexes is None and not failed:
        raise BadRequest('say which inputs to run again: {"inputs": [0, 3]} or {"failed": true}')
    who = identity()
    svc = _svc()
    result = svc.home.retry(job_id, who.dn, is_admin=who.is_admin, indexes=indexes, failed=failed)
    svc.security.audit.record("retry", dn=who.dn, source=who.source,
                              detail=f"job {job_id}: inputs {result['inputs']} run again")
    return jsonify(result)


# ---- release --------------------------------------------------------------
def _release_indexes() -> list[int] | None:
    """The inputs to release from the JSON body ``{"inputs": [0, 2]}``; None (no body): every held one."""
    if not request.get_data():
        return None
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise BadRequest('send a JSON object {"inputs": [index, ...]}, or no body to release every held input')
    return _input_numbers(body.get("inputs"))


@bp.post("/<job_id>/release")
def release(job_id: str):
    """Release held inputs (all, or ``{"inputs": [...]}``); a job with none held is a 409."""
    forwarded = _forward(job_id)
    if forwarded is not None:
        return forwarded
    who = identity()
    svc = _svc()
    result = svc.home.release(job_id, who.dn, is_admin=who.is_admin, indexes=_release_indexes())
    svc.security.audit.record("release", dn=who.dn, source=who.source,
                              detail=f"job {job_id}: inputs {result['inputs']} released ({result['released_procs']} procs)")
    return jsonify(result)


# ---- outputs --------------------------------------------------------------
@bp.get("/<job_id>/outputs")
def outputs(job_id: str):
    forwarded = _forward(job_id)
    if forwarded is not None:
        return forwarded
    start, limit = _page_args()
    who = identity()
    return jsonify(_svc().home.outputs(job_id, who.dn, is_admin=who.is_admin, start=start, limit=limit,
                                       proof=lambda site: relay_headers(who, site)))


def _page_args() -> tuple[int, int | None]:
    """``?start=`` (an input number, 0 if absent) and ``?limit=`` (1 to 1000 inputs; absent: all)."""
    start, limit = request.args.get("start", "0"), request.args.get("limit")
    if not (start.isascii() and start.isdigit()) or int(start) > 10**9:
        raise BadRequest(f"start must be an input number (a whole number from 0), got {start[:40]!r}")
    if limit is not None and (not (limit.isascii() and limit.isdigit()) or not 1 <= int(limit) <= 1000):
        raise BadRequest(f"limit must be a whole number of inputs from 1 to 1000, got {limit[:40]!r}")
    return int(start), None if limit is None else int(limit)


@bp.get("/<job_id>/outputs/<int:index>/<path:name>")
def output_file(job_id: str, index: int, name: str):
    forwarded = _forward(job_id)  # the read timeout applies per chunk, not to the whole file
    if forwarded is not None:
        return forwarded
    who = identity()
    svc = _svc()
    site, piece, owner = svc.home.output_location(job_id, who.dn, index, is_admin=who.is_admin)
    if site == svc.config.name:
        # held until the last byte is sent: the retention sweeper keeps the piece meanwhile
        return svc.in_use.serve(job_key(job_id), lambda: svc.in_use.serve(job_key(piece), lambda: send_ranged(
            svc.jobs.output_file(piece, owner, index, name, is_admin=True))))
    return svc.in_use.serve(job_key(job_id), lambda: relay(
        svc.http, svc.membership, site, timeout=svc.config.peer_timeout,
        path=f"/api/v1/peer/pieces/{piece}/outputs/{index}/{name}"))


# ---- run again ------------------------------------------------------------
@bp.get("/<job_id>/spec")
def spec(job_id: str):
    """What the job was submitted with (name, executable and submit file names, submit text, inputs)."""
    forwarded = _forward(job_id)
    if forwarded is not None:
        return forwarded
    who = identity()
    return jsonify(_svc().home.spec(job_id, who.dn, is_admin=who.is_admin))


@bp.get("/<job_id>/executable")
def executable(job_id: str):
    """The job's executable, byte for byte (to submit it again)."""
    forwarded = _forward(job_id)
    if forwarded is not None:
        return forwarded
    who = identity()
    svc = _svc()

    def respond():
        response = send_ranged(svc.home.executable_path(job_id, who.dn, is_admin=who.is_admin))
        response.headers["Content-Type"] = "application/octet-stream"
        return response

    return svc.in_use.serve(job_key(job_id), respond)


# ---- retention: pin, unpin, purge -------------------------------------------
@bp.post("/<job_id>/pin")
def pin(job_id: str):
    """Keep a job (and its outputs) until it is unpinned: the retention sweeper passes it by."""
    forwarded = _forward(job_id)
    if forwarded is not None:
        return forwarded
    who = identity()
    return jsonify(_svc().retention.pin(job_id, who.dn, is_admin=who.is_admin, pinned=True))


@bp.delete("/<job_id>/pin")
def unpin(job_id: str):
    """Let a job expire again (job_retention_seconds after it finished)."""
    forwarded = _forward(job_id)
    if forwarded is not None:
        return forwarded
    who = identity()
    return jsonify(_svc().retention.pin(job_id, who.dn, is_admin=who.is_admin, pinned=False))


@bp.post("/<job_id>/purge")
def purge(job_id: str):
    """Remove a finished job, its files and its record now (to free space: see the quota)."""
    forwarded = _forward(job_id)
    if forwarded is not None:
        return forwarded
    who = identity()
    svc = _svc()
    result = svc.retention.purge(job_id, who.dn, is_admin=who.is_admin)
    svc.security.audit.record("purge", dn=who.dn, source=who.source, detail=f"job {job_id}: {result['bytes']} bytes")
    return jsonify(result)
