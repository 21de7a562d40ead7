"""``/api/v1/uploads``: resumable, verified uploads over tus 1.0.0 (core, creation, creation-with-upload, termination).

The protocol (https://tus.io/protocols/resumable-upload, version 1.0.0):

* ``OPTIONS /api/v1/uploads`` (public): ``Tus-Version``, ``Tus-Extension``, ``Tus-Max-Size``.
* ``POST /api/v1/uploads`` with ``Upload-Length`` and ``Upload-Metadata: filename <b64>,sha256 <b64 of hex>``
  -> 201 and ``Location: /api/v1/uploads/<id>``.  A body of type ``application/offset+octet-stream``
  is the first chunk (creation-with-upload); the answer then carries ``Upload-Offset``.
* ``HEAD /api/v1/uploads/<id>`` -> ``Upload-Offset``, ``Upload-Length``, ``Upload-Metadata``.
* ``PATCH /api/v1/uploads/<id>`` with ``Upload-Offset`` and ``Content-Type: application/offset+octet-stream``
  -> 204 and the new ``Upload-Offset``; 409 when the offset is not the peer's; 460 when the finished
  file's SHA-256 is not the announced one (the upload is discarded).
* ``DELETE /api/v1/uploads/<id>`` -> 204 (termination).
* ``GET /api/v1/uploads/<id>`` (not tus) -> JSON ``{id, filename, offset, length, complete, path, sha256, ...}``:
  ``path`` is the publishing-area path to use as a job input once complete.

Every tus request except OPTIONS must carry ``Tus-Resumable: 1.0.0`` (412 otherwise), every answer
carries it.  Errors are JSON as everywhere else in the API.  The store is peer/resumable_uploads.py.
"""
from __future__ import annotations

from flask import Blueprint, Flask, Response, current_app, jsonify, request
from werkzeug.exceptions import ClientDisconnected
from werkzeug.http import http_date

from pocketgrid.errors import BadRequest, PocketgridError, TooLarge

from .auth import identity
from .resumable_uploads import TUS_VERSION, ResumableUploads, UploadInfo, parse_length

bp = Blueprint("uploads", __name__, url_prefix="/api/v1/uploads")

EXTENSIONS = "creation,creation-with-upload,termination"
CHUNK_TYPE = "application/offset+octet-stream"
#: Servers and clients SHOULD time out a stalled body after 30 s (tus core): a phone that lost its link
#: must not hold the upload's lock for ever.
READ_TIMEOUT_SECONDS = 30.0
EXTENSION_KEY = "pocketgrid.uploads"


class PreconditionFailed(PocketgridError):
    status = 412


class UnsupportedMediaType(PocketgridError):
    status = 415


def init_app(app: Flask) -> ResumableUploads:
    """Build the store (sweeping expired uploads left from before) and register the blueprint."""
    svc = app.extensions["pocketgrid"]
    store = ResumableUploads(
        svc.db, svc.publishing, svc.digests, svc.config.state_path / "uploads-incoming",
        max_upload_bytes=svc.config.max_upload_bytes, expiry_seconds=svc.config.upload_expiry_seconds,
        quotas=svc.quotas, on_write=lambda nbytes: svc.metrics.uploaded_bytes("tus", nbytes),
    )
    store.sweep()
    app.extensions[EXTENSION_KEY] = store
    app.register_blueprint(bp)
    return store


def _store() -> ResumableUploads:
    return current_app.extensions[EXTENSION_KEY]


@bp.after_request
def _tus_headers(response: Response) -> Response:
    response.headers["Tus-Resumable"] = TUS_VERSION
    response.headers.setdefault("Cache-Control", "no-store")
    if response.status_code == 412:  # tus: a version mismatch names the versions this server speaks
        response.headers["Tus-Version"] = TUS_VERSION
    return response


def _require_tus() -> None:
    version = request.headers.get("Tus-Resumable")
    if version != TUS_VERSION:
        raise PreconditionFailed(
            f"send the header Tus-Resumable: {TUS_VERSION} (this peer speaks tus {TUS_VERSION}"
            + (f", not {version[:20]!r}" if version else "") + ")")


def _chunk_length() -> int:
    if request.content_length is None:
        raise BadRequest("send the chunk with a Content-Length header")
    return request.content_length


def _empty(status: int) -> Response:
    response = Response(status=status)
    del response.headers["Content-Type"]  # no body
    return response


def _tus_response(info: UploadInfo, status: int, **extra: str) -> Response:
    response = _empty(status)
    response.headers["Upload-Offset"] = str(info.offset)
    if info.state == "incomplete":
        response.headers["Upload-Expires"] = http_date(info.expires_at)
    for k, v in extra.items():
        response.headers[k] = v
    return response


def _append(upload_id: str, offset: int) -> UploadInfo:
    """Write this request's body at ``offset``; audit the upload when it completed now."""
    svc = current_app.extensions["pocketgrid"]
    who = identity()
    length = _chunk_length()
    if length > svc.config.max_body_bytes:  # before request.stream, whose own 413 would say less
        raise TooLarge(f"send at most {svc.config.max_body_bytes} bytes per PATCH (this one has {length}); "
                       "split the file into smaller chunks", max_body_bytes=svc.config.max_body_bytes)
    sock = request.environ.get("gunicorn.socket")
    previous_timeout = sock.gettimeout() if sock is not None else None
    if sock is not None:
        sock.settimeout(READ_TIMEOUT_SECONDS)
    try:
        info = _store().append(who.dn, upload_id, offset, request.stream, length,
                               max_body_bytes=svc.config.max_body_bytes)
    except OSError as exc:  # the link dropped (or stalled) mid-body: what arrived is kept
        raise ClientDisconnected(f"the upload's connection broke after part of the chunk ({exc})") from None
    finally:
        if sock is not None:
            sock.settimeout(previous_timeout)
    if info.completed_now:
        svc.security.audit.record("upload", dn=who.dn, source=who.source,
                                  detail=f"{info.path} {info.length} bytes sha256 {info.sha256}")
    return info


def _options() -> Response:
    response = _empty(204)
    response.headers["Tus-Version"] = TUS_VERSION
    response.headers["Tus-Extension"] = EXTENSIONS
    response.headers["Tus-Max-Size"] = str(_store().max_upload_bytes)
    return response


@bp.route("", methods=["OPTIONS"], provide_automatic_options=False)
def options():
    """tus discovery: versions, extensions, the largest upload."""
    return _options()


@bp.route("", methods=["POST"], provide_automatic_options=False)  # OPTIONS is the public view above
def create():
    """tus creation (and creation-with-upload): a new upload; Location names it."""
    _require_tus()
    if "Upload-Defer-Length" in request.headers:
        raise BadRequest("Upload-Defer-Length is not supported: send Upload-Length with the file's size")
    length = parse_length(request.headers.get("Upload-Length"), "Upload-Length")
    has_body = bool(request.content_length)
    if has_body and request.mimetype != CHUNK_TYPE:
        raise UnsupportedMediaType(f"a first chunk sent with the creation needs Content-Type: {CHUNK_TYPE}")
    who = identity()
    info = _store().create(who.dn, length, request.headers.get("Upload-Metadata", ""))
    if info.completed_now:  # an empty file is complete at creation
        svc = current_app.extensions["pocketgrid"]
        svc.security.audit.record("upload", dn=who.dn, source=who.source,
                                  detail=f"{info.path} 0 bytes sha256 {info.sha256}")
    location = f"{bp.url_prefix}/{info.id}"
    if has_body:
        info = _append(info.id, 0)
    return _tus_response(info, 201, Location=location)


@bp.route("/<upload_id>", methods=["GET", "HEAD"])
def info(upload_id: str):
    """HEAD (tus): the offset to resume from.  GET: the upload as JSON, with the input path once complete."""
    who = identity()
    if request.method == "HEAD":
        _require_tus()
        upload = _store().get(who.dn, upload_id, settle=True)
        response = _tus_response(upload, 200, **{"Upload-Length": str(upload.length)})
        if upload.metadata:
            response.headers["Upload-Metadata"] = upload.metadata
        return response
    upload = _store().get(who.dn, upload_id)
    return jsonify(upload.to_dict())


@bp.patch("/<upload_id>")
def append(upload_id: str):
    """tus core: append a chunk at Upload-Offset."""
    _require_tus()
    if request.mimetype != CHUNK_TYPE:
        raise UnsupportedMediaType(f"send the chunk with Content-Type: {CHUNK_TYPE}")
    offset = parse_length(request.headers.get("Upload-Offset"), "Upload-Offset")
    upload = _append(upload_id, offset)
    return _tus_response(upload, 204)


@bp.delete("/<upload_id>")
def terminate(upload_id: str):
    """tus termination: forget an upload and its stored bytes."""
    _require_tus()
    _store().terminate(identity().dn, upload_id)
    return _empty(204)
