"""The phone web app's static files, served by every peer (public: no login to load it).

The files live in the package directory ``mobile_client/webapp/`` (shipped as
package data, so ``pip install`` serves the app with no Node).  ``GET /`` is
``index.html``; ``GET /<file>`` any other file of that directory.

* Paths are joined with Werkzeug's ``safe_join`` (no ``..``, no absolute
  paths); dot-files and anything that is not a regular file answer 404.
* Each file is read once per (mtime, size) and kept in memory with its
  gzip-compressed bytes (stdlib ``gzip``): the app is a few small files.
  A client that accepts gzip gets the compressed bytes with
  ``Content-Encoding: gzip``; every answer says ``Vary: Accept-Encoding``.
* ``ETag`` (a hash of the bytes sent, different for the gzip form) and
  ``Cache-Control: no-cache``: the browser and the service worker
  revalidate, and an unchanged file costs a 304 (Werkzeug's
  ``make_conditional``).
* Routes under ``/api/`` never reach this module (see :class:`AppPathConverter`),
  so an unknown API path stays a JSON 404 of the API.
"""
from __future__ import annotations

import gzip
import hashlib
import mimetypes
import threading
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from flask import Blueprint, Response, current_app, request
from werkzeug.routing import PathConverter
from werkzeug.security import safe_join

from pocketgrid.errors import NotFound

bp = Blueprint("webapp", __name__)

#: Types the browser must see exactly (Python's table varies by version).
MIME_TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".css": "text/css",
    ".json": "application/json",
    ".webmanifest": "application/manifest+json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".txt": "text/plain",
    ".map": "application/json",
}
#: Worth compressing; images other than SVG already are.
_COMPRESSIBLE = ("text/", "application/json", "application/manifest+json", "image/svg+xml")


class AppPathConverter(PathConverter):
    """A path that does not start with ``api/``: the API keeps its own 404s and 405s."""

    regex = r"(?!api(?:/|$))[^/].*?"


def webapp_root() -> Path:
    """The directory the app's files are served from (``webapp_dir``, default the installed package's)."""
    configured = current_app.extensions["pocketgrid"].config.webapp_dir
    return Path(configured) if configured else Path(str(resources.files("mobile_client") / "webapp"))


@dataclass(frozen=True)
class _Cached:
    key: tuple[int, int]
    mimetype: str
    raw: bytes
    raw_etag: str
    gz: bytes | None
    gz_etag: str | None


class _FileCache:
    """Bytes (plain and gzip) of each served file, valid while its mtime and size are unchanged."""

    def __init__(self) -> None:
        self._items: dict[Path, _Cached] = {}
        self._lock = threading.Lock()

    def get(self, path: Path) -> _Cached:
        st = path.stat()
        key = (st.st_mtime_ns, st.st_size)
        found = self._items.get(path)
        if found is not None and found.key == key:
            return found
        raw = path.read_bytes()
        mimetype = MIME_TYPES.get(path.suffix.lower()) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        digest = hashlib.sha256(raw).hexdigest()[:24]
        gz = gz_etag = None
        if mimetype.startswith(_COMPRESSIBLE) and len(raw) > 256:
            gz = gzip.compress(raw, compresslevel=9, mtime=0)  # mtime=0: the same bytes every time
            gz_etag = f"{digest}-gz"
        item = _Cached(key, mimetype, raw, digest, gz, gz_etag)
        with self._lock:
            self._items[path] = item
        return item


_cache = _FileCache()


def _resolve(name: str) -> Path:
    root = webapp_root()
    joined = safe_join(str(root), name)
    if joined is None or any(part.startswith(".") for part in Path(name).parts):
        raise NotFound(f"no such file {name!r}")
    path = Path(joined)
    try:
        found = path.is_file()
    except OSError:  # a name too long for the file system (ENAMETOOLONG): no such file either
        found = False
    if not found:
        if not root.is_dir():
            raise NotFound("the web app is not installed on this peer (no mobile_client/webapp directory)")
        raise NotFound(f"no such file {name!r}: open / for the web app")
    return path


def _serve(name: str) -> Response:
    item = _cache.get(_resolve(name))
    use_gzip = item.gz is not None and request.accept_encodings["gzip"] > 0
    response = Response(item.gz if use_gzip else item.raw, mimetype=item.mimetype)
    if use_gzip:
        response.headers["Content-Encoding"] = "gzip"
    response.headers["Vary"] = "Accept-Encoding"
    response.headers["Cache-Control"] = "no-cache"
    response.set_etag(item.gz_etag if use_gzip else item.raw_etag)
    if name == "sw.js":
        response.headers["Service-Worker-Allowed"] = "/"
    return response.make_conditional(request)


@bp.get("/")
def index():
    return _serve("index.html")


@bp.get("/<app_path:name>")
def static_file(name: str):
    return _serve(name)


def install(app) -> None:
    """Register the converter (needed before the blueprint's rules are added) and the blueprint."""
    app.url_map.converters["app_path"] = AppPathConverter
    app.register_blueprint(bp)
