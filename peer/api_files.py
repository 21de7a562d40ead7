"""``/api/v1/files``: the publishing area (browse, wildcard, search inside, download)."""
from __future__ import annotations

import re

from flask import Blueprint, current_app, jsonify, request

from pocketgrid.errors import BadRequest

from .auth import identity
from .downloads import send_ranged
from .in_use import file_key
from .publishing import check_name, check_relative_path
from .uploads import check_visible, upload_dir, visibility

bp = Blueprint("files", __name__, url_prefix="/api/v1/files")

#: An upload area's directory name at the start of a path below uploads/.
_AREA = re.compile(r"u-[0-9a-f]{16}/")


def _svc():
    return current_app.extensions["pocketgrid"]


_ON, _OFF = {"1", "true", "yes"}, {"0", "false", "no"}


def _flag(name: str) -> bool:
    """A yes/no query parameter: absent is no; a value that is neither is the caller's mistake (400)."""
    value = request.args.get(name)
    if value is None or value in _OFF:
        return False
    if value in _ON:
        return True
    raise BadRequest(f"{name} must be one of {', '.join(sorted(_ON | _OFF))}, not {value!r}")


@bp.get("")
def listing():
    """List a directory (``?path=``), match a wildcard (``?glob=``) or search inside files (``?grep=``)."""
    svc = _svc()
    area = svc.publishing
    visible = visibility(identity())
    regex, ignore_case = _flag("regex"), _flag("icase")  # checked whatever the mode: a bad value is a mistake
    if "grep" in request.args:
        result = area.grep(
            request.args["grep"],
            pattern=request.args.get("glob", "*"),
            regex=regex,
            ignore_case=ignore_case,
            max_file_bytes=svc.config.grep_max_file_bytes,
            max_matches=svc.config.grep_max_matches,
            visible=visible,
        )
        return jsonify(result)
    if "glob" in request.args:
        return jsonify({"files": [e.to_dict() for e in area.glob(request.args["glob"], visible=visible)]})
    path = request.args.get("path", "")
    check_visible(area, identity(), path)
    return jsonify({"path": path, "files": [e.to_dict() for e in area.list(path, visible=visible)]})


@bp.get("/<path:path>")
def download(path: str):
    """Download with Range/If-Range/ETag; ``?checksum=md5|sha256`` answers the digest as JSON instead."""
    svc = _svc()
    check_visible(svc.publishing, identity(), path)
    real = svc.publishing.file(path)
    if "checksum" in request.args:
        algorithm = request.args["checksum"] or "sha256"
        digest = svc.digests.sha256(real) if algorithm == "sha256" else svc.publishing.digest(real, algorithm)
        return jsonify({"path": path, "size": real.stat().st_size, algorithm: digest})
    # held until the last byte is sent: the retention sweeper keeps an upload meanwhile
    return svc.in_use.serve(file_key(svc.publishing.relative(real)),
                            lambda: send_ranged(real, sha256=svc.digests.sha256(real)))


@bp.get("/uploads/<path:path>")
def download_upload(path: str):
    """An upload is downloaded like any published file (its own route: the OpenAPI document names it)."""
    return download(f"uploads/{path}")


@bp.delete("/uploads/<path:path>")
def delete_upload(path: str):
    """Remove one of your uploads now (409 while a job that has not finished uses it, or it is being read)."""
    svc = _svc()
    who = identity()
    # "u-<hash>/NAME" (as GET names it) or "NAME" inside the caller's own area (as PUT names it)
    full = f"uploads/{path}" if _AREA.match(path) else f"{upload_dir(who.dn)}/{path}"
    result = svc.retention.delete_upload(who, full)
    svc.security.audit.record("purge", dn=who.dn, source=who.source, detail=f"upload {result['path']}: "
                                                                            f"{result['bytes']} bytes")
    return jsonify(result)


@bp.put("/uploads/<path:path>")
def upload(path: str):
    """Upload an input file into the caller's private ``uploads/u-.../`` directory (raw body)."""
    svc = _svc()
    if request.content_length is None:
        raise BadRequest("send the file as the raw request body with a Content-Length")
    check_name(check_relative_path(path, "upload path").name, "file name")  # "." or "a/.." names no file
    svc.quotas.check(identity().dn, request.content_length, f"the upload {path!r}")  # 413 with the numbers
    real = svc.publishing.save_upload(f"{upload_dir(identity().dn)}/{path}", request.stream, svc.config.max_body_bytes,
                                      shown=path)
    svc.metrics.uploaded_bytes("put", real.stat().st_size)
    return jsonify({"path": svc.publishing.relative(real), "size": real.stat().st_size, "sha256": svc.digests.sha256(real)}), 201
