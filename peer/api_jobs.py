"""``/api/v1/jobs``: submit, list, status (ETag + long-poll), kill, outputs.

Any peer answers for any job: a job ID names its owning peer
(``<peer>.<id>``), and requests for other peers' jobs are relayed there.
"""
from __future__ import annotations

import json
import math
import time
from concurrent.futures import ThreadPoolExecutor

import requests
from flask import Blueprint, Response, current_app, jsonify, request

from pocketgrid.errors import BadRequest

from .auth import identity, relay_headers
from .downloads import send_ranged
from .jobs import STATUS_EXTRAS, SubmitRequest, peer_of
from .proxy import relay
from .uploads import check_visible

bp = Blueprint("jobs", __name__, url_prefix="/api/v1/jobs")

#: How often a long-poll looks at the job's event log for growth.
WAIT_POLL_SECONDS = 0.1


def _svc():
    return current_app.extensions["pocketgrid"]


def _remote(job_id: str) -> str | None:
    """The owning peer's name if it is not this peer."""
    peer = peer_of(job_id)
    return None if peer == _svc().config.name else peer


def _relay(peer: str, extra_timeout: float = 0.0) -> Response:
    svc = _svc()
    return relay(svc.http, svc.membership, peer, timeout=svc.config.peer_timeout + extra_timeout)


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


@bp.post("")
def submit():
    svc = _svc()
    who = identity()
    req = _read_submit_request()
    for path in req.inputs:  # another user's uploads do not exist for this caller
        check_visible(svc.publishing, who, path)
    summary, replayed = svc.jobs.submit(req, owner=who.dn, idempotency_key=request.headers.get("Idempotency-Key"),
                                        proof=lambda peer: relay_headers(who, peer))
    if not replayed:
        svc.security.audit.record("submit", dn=who.dn, source=who.source,
                                  detail=f"job {summary['id']} ({req.name!r}, {len(req.inputs)} inputs)")
    response = jsonify(summary)
    response.status_code = 200 if replayed else 201
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    response.headers["Location"] = f"/api/v1/jobs/{summary['id']}"
    return response


# ---- list -----------------------------------------------------------------
@bp.get("")
def list_jobs():
    """The caller's jobs on every peer (``?local=1``: this peer only)."""
    svc = _svc()
    who = identity()
    jobs = svc.jobs.list_jobs(who.dn, is_admin=who.is_admin)
    unreachable: list[str] = []
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
                for name, result in pool.map(fetch, others):
                    if result is None:
                        unreachable.append(name)
                    else:
                        jobs.extend(result)
    jobs.sort(key=lambda j: j.get("created_at", 0), reverse=True)
    return jsonify({"jobs": jobs, "unreachable_peers": unreachable})


# ---- status ---------------------------------------------------------------
def _etag(body: dict, extras: frozenset[str] = frozenset()) -> str:
    """The job's status version: a few bytes, so an unchanged poll stays tiny on a phone link.
    A larger rendering (``?history=1``, ``?placement=1``) is another representation: its own tag."""
    suffix = "".join(sorted(e[0] for e in extras))
    return f'"{body["version"]}{"-" + suffix if suffix else ""}"'


def _extras() -> frozenset[str]:
    """``?history=1`` (each input's past states and reasons), ``?placement=1`` (the ranking's score parts)."""
    return frozenset(e for e in STATUS_EXTRAS if request.args.get(e) in {"1", "true"})


@bp.get("/<job_id>")
def status(job_id: str):
    """Per-input status.  ``If-None-Match`` + ``?wait=N`` long-polls until it changes."""
    wait = _wait_arg()
    peer = _remote(job_id)
    svc = _svc()
    inm = request.headers.get("If-None-Match")
    if peer:
        if not (wait and inm):
            return _relay(peer)
        svc.parking.enter("a relayed status long-poll")  # the relay holds this thread while the owner waits
        try:
            response = _relay(peer, extra_timeout=wait)
        except BaseException:
            svc.parking.leave()
            raise
        response.call_on_close(svc.parking.leave)
        return response
    who = identity()
    extras = _extras()
    deadline = time.monotonic() + wait
    parked = False
    try:
        while True:
            size = svc.jobs.log_size(job_id) if wait and inm else 0  # taken first: growth during the read is seen
            entry = svc.jobs.status_entry(job_id, who.dn, is_admin=who.is_admin, extras=extras)
            etag = _etag(entry.body, extras)
            if etag != inm or time.monotonic() >= deadline:
                break
            if not parked:  # only a poll that really waits holds a thread
                svc.parking.enter("a status long-poll")
                parked = True
            while svc.jobs.log_size(job_id) == size and time.monotonic() < deadline:
                time.sleep(WAIT_POLL_SECONDS)
    finally:
        if parked:
            svc.parking.leave()
    if etag == inm:
        return Response(status=304, headers={"ETag": etag, "Cache-Control": "no-cache"})
    return Response(entry.json, mimetype="application/json", headers={"ETag": etag, "Cache-Control": "no-cache"})


# ---- kill -----------------------------------------------------------------
@bp.delete("/<job_id>")
def kill(job_id: str):
    peer = _remote(job_id)
    if peer:
        return _relay(peer)
    who = identity()
    svc = _svc()
    result = svc.jobs.kill(job_id, who.dn, is_admin=who.is_admin)
    svc.security.audit.record("kill", dn=who.dn, source=who.source,
                              detail=f"job {job_id}: {result.get('removed_procs', 0)} procs removed")
    return jsonify(result)


# ---- release --------------------------------------------------------------
def _release_indexes() -> list[int] | None:
    """The inputs to release from the JSON body ``{"inputs": [0, 2]}``; None (no body): every held one."""
    if not request.get_data():
        return None
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise BadRequest('send a JSON object {"inputs": [index, ...]}, or no body to release every held input')
    inputs = body.get("inputs")
    if inputs is None:
        return None
    if not isinstance(inputs, list) or not inputs or not all(
            isinstance(i, int) and not isinstance(i, bool) for i in inputs):
        raise BadRequest("'inputs' must be a non-empty list of input numbers (integers)")
    return inputs


@bp.post("/<job_id>/release")
def release(job_id: str):
    """Release held inputs (all, or ``{"inputs": [...]}``); a job with none held is a 409."""
    peer = _remote(job_id)
    if peer:
        return _relay(peer)
    who = identity()
    svc = _svc()
    result = svc.jobs.release(job_id, who.dn, is_admin=who.is_admin, indexes=_release_indexes())
    svc.security.audit.record("release", dn=who.dn, source=who.source,
                              detail=f"job {job_id}: inputs {result['inputs']} released ({result['released_procs']} procs)")
    return jsonify(result)


# ---- outputs --------------------------------------------------------------
@bp.get("/<job_id>/outputs")
def outputs(job_id: str):
    peer = _remote(job_id)
    if peer:
        return _relay(peer)
    who = identity()
    return jsonify(_svc().jobs.outputs(job_id, who.dn, is_admin=who.is_admin))


@bp.get("/<job_id>/outputs/<int:index>/<path:name>")
def output_file(job_id: str, index: int, name: str):
    peer = _remote(job_id)
    if peer:
        return _relay(peer)  # the read timeout applies per chunk, not to the whole file
    who = identity()
    svc = _svc()
    path = svc.jobs.output_file(job_id, who.dn, index, name, is_admin=who.is_admin)
    return send_ranged(path)


# ---- run again ------------------------------------------------------------
@bp.get("/<job_id>/spec")
def spec(job_id: str):
    """What the job was submitted with (name, executable and submit file names, submit text, inputs)."""
    peer = _remote(job_id)
    if peer:
        return _relay(peer)
    who = identity()
    return jsonify(_svc().jobs.spec(job_id, who.dn, is_admin=who.is_admin))


@bp.get("/<job_id>/executable")
def executable(job_id: str):
    """The job's executable, byte for byte (to submit it again)."""
    peer = _remote(job_id)
    if peer:
        return _relay(peer)
    who = identity()
    path = _svc().jobs.executable_path(job_id, who.dn, is_admin=who.is_admin)
    response = send_ranged(path)
    response.headers["Content-Type"] = "application/octet-stream"
    return response
