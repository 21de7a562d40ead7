"""The file publishing area: browse, wildcard search, search inside files, checksums.

Every user-supplied path goes through :meth:`PublishingArea.resolve`, which is
the single place that refuses traversal: ``..`` segments, absolute paths,
NUL bytes, backslashes, and symlinks whose target leaves the area.
"""
from __future__ import annotations

import hashlib
import os
import re
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator

from pocketgrid.errors import BadRequest, Conflict, NotFound, TooLarge

#: Names are plain: no separators, no control characters, not "." or "..".
_BAD_NAME = re.compile(r"[\x00-\x1f\x7f/\\]")


def check_name(name: str, what: str = "name") -> str:
    """Validate a single path component (a file or input name)."""
    if not name or name in {".", ".."} or _BAD_NAME.search(name):
        raise BadRequest(
            f"invalid {what} {name!r}: use a plain file name without '/', '\\', control characters, '.' or '..'"
        )
    if len(name.encode("utf-8", "surrogatepass")) > 255:
        raise BadRequest(f"invalid {what}: a file name may be at most 255 bytes (UTF-8) long")
    return name


def check_relative_path(path: str, what: str = "path") -> PurePosixPath:
    """Validate a relative POSIX path; refuse anything that could climb out."""
    if not path:
        return PurePosixPath(".")
    if "\x00" in path or "\\" in path:
        raise BadRequest(f"invalid {what} {path!r}: NUL bytes and backslashes are not allowed")
    pure = PurePosixPath(path)
    if pure.is_absolute():
        raise BadRequest(f"invalid {what} {path!r}: absolute paths are not allowed; give a path relative to the area")
    if any(part == ".." for part in pure.parts):
        raise BadRequest(f"invalid {what} {path!r}: '..' is not allowed")
    # The file system's own limits (NAME_MAX, PATH_MAX, in bytes): past them every lookup fails with
    # ENAMETOOLONG, so say so here instead of letting the lookup raise.
    if len(path.encode("utf-8", "surrogatepass")) > 4096 or any(len(p.encode("utf-8", "surrogatepass")) > 255
                                                                  for p in pure.parts):
        raise BadRequest(f"invalid {what}: a name longer than 255 bytes or a path longer than 4096 bytes "
                         "cannot exist in the area")
    return pure


@dataclass
class Entry:
    path: str
    type: str  # "file" | "dir"
    size: int
    mtime: float

    def to_dict(self) -> dict[str, object]:
        return {"path": self.path, "type": self.type, "size": self.size, "mtime": self.mtime}


@dataclass
class Match:
    path: str
    line: int
    text: str

    def to_dict(self) -> dict[str, object]:
        return {"path": self.path, "line": self.line, "text": self.text}


def _everything(path: str) -> bool:
    return True


class PublishingArea:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    # ---- paths ------------------------------------------------------------
    def resolve(self, path: str, *, must_exist: bool = True) -> Path:
        """Map a user path to a real path inside the area, or refuse it."""
        pure = check_relative_path(path)
        real = Path(os.path.realpath(self.root / pure))
        if real != self.root and self.root not in real.parents:
            raise BadRequest(f"invalid path {path!r}: it leaves the publishing area (symbolic link?)")
        if must_exist and not real.exists():
            raise NotFound(f"no such file in the publishing area: {path!r}")
        return real

    def relative(self, real: Path) -> str:
        return real.relative_to(self.root).as_posix()

    def file(self, path: str) -> Path:
        real = self.resolve(path)
        if not real.is_file():
            raise BadRequest(f"{path!r} is a directory, not a file")
        return real

    # ---- browsing ---------------------------------------------------------
    def _entry(self, real: Path) -> Entry:
        st = real.stat()
        kind = "dir" if stat.S_ISDIR(st.st_mode) else "file"
        return Entry(self.relative(real), kind, st.st_size if kind == "file" else 0, st.st_mtime)

    def list(self, path: str = "", *, visible: Callable[[str], bool] = _everything) -> list[Entry]:
        """``visible`` hides paths from a caller (another user's uploads, see peer/uploads.py)."""
        real = self.resolve(path)
        if real.is_file():
            return [self._entry(real)]
        out = []
        for child in sorted(real.iterdir()):
            if self._inside(child) and visible(self.relative(child)):
                out.append(self._entry(child))
        return out

    def _inside(self, p: Path) -> bool:
        real = Path(os.path.realpath(p))
        return real == self.root or self.root in real.parents

    def walk_files(self, under: str = "") -> Iterator[Path]:
        """Every regular file below ``under`` that really lies inside the area."""
        start = self.resolve(under)
        for dirpath, dirnames, filenames in os.walk(start, followlinks=False):
            dirnames.sort()
            for fn in sorted(filenames):
                p = Path(dirpath) / fn
                if p.is_file() and self._inside(p):
                    yield p

    def glob(self, pattern: str, *, limit: int = 10000, visible: Callable[[str], bool] = _everything) -> list[Entry]:
        """Wildcard search with shell semantics (``*``, ``?``, ``[...]``, ``**`` for any depth).

        A pattern without ``/`` matches file names at any depth, as a person
        typing ``*.dat`` expects.  Matching is pathlib's own globbing.
        """
        if not pattern:
            raise BadRequest("empty search pattern")
        check_relative_path(pattern, "pattern")
        try:
            matches = sorted(self.root.rglob(pattern) if "/" not in pattern else self.root.glob(pattern))
        except ValueError as exc:  # e.g. '**' not alone in a path segment
            raise BadRequest(f"invalid pattern {pattern!r}: {exc}") from None
        out = []
        for p in matches:
            if p.is_file() and self._inside(p) and visible(self.relative(p)):
                out.append(self._entry(p))
                if len(out) >= limit:
                    break
        return out

    def grep(
        self,
        text: str,
        *,
        pattern: str = "*",
        regex: bool = False,
        ignore_case: bool = False,
        max_file_bytes: int,
        max_matches: int,
        visible: Callable[[str], bool] = _everything,
    ) -> dict[str, object]:
        """Search inside files (the paper's "search within files"), with limits.

        Binary files and files over ``max_file_bytes`` are skipped and listed,
        so a person sees what was not searched instead of a silent miss.
        """
        if not text:
            raise BadRequest("empty search text")
        flags = re.IGNORECASE if ignore_case else 0
        try:
            rx = re.compile(text if regex else re.escape(text), flags)
        except re.error as exc:
            raise BadRequest(f"invalid regular expression: {exc}") from None
        matches: list[Match] = []
        skipped: list[str] = []
        truncated = False
        for entry in self.glob(pattern, visible=visible):
            real = self.root / entry.path
            if entry.size > max_file_bytes:
                skipped.append(entry.path)
                continue
            with open(real, "rb") as fh:
                head = fh.read(8192)
                if b"\x00" in head:
                    skipped.append(entry.path)
                    continue
                fh.seek(0)
                for lineno, raw in enumerate(fh, 1):
                    line = raw.decode("utf-8", "replace").rstrip("\r\n")
                    if rx.search(line):
                        matches.append(Match(entry.path, lineno, line[:500]))
                        if len(matches) >= max_matches:
                            truncated = True
                            break
            if truncated:
                break
        return {
            "matches": [m.to_dict() for m in matches],
            "truncated": truncated,
            "skipped": skipped,
        }

    # ---- checksums --------------------------------------------------------
    @staticmethod
    def digest(path: Path, algorithm: str = "sha256") -> str:
        if algorithm not in {"sha256", "md5"}:
            raise BadRequest(f"unsupported checksum {algorithm!r}; use sha256 or md5")
        with open(path, "rb") as fh:
            return hashlib.file_digest(fh, algorithm).hexdigest()

    def save_upload(self, relpath: str, stream, max_bytes: int, *, shown: str | None = None) -> Path:
        """Store an uploaded file atomically (temp name, then rename).

        ``shown`` is the path as the user gave it (for messages); 409 when a
        folder is where the file goes or a file where one of its folders goes.
        """
        pure = check_relative_path(relpath, "upload path")
        check_name(pure.name, "file name")
        dest = self.resolve(str(pure), must_exist=False)
        shown = relpath if shown is None else shown
        check_destination(dest, shown)
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):  # a file appeared in the way meanwhile
            raise Conflict(f"{shown!r}: one of its folders is a file in your upload area") from None
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".upload")
        tmp = Path(tmp_name)  # unique per request: concurrent uploads never share a temp file
        written = 0
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := stream.read(1024 * 1024):
                    written += len(chunk)
                    if written > max_bytes:
                        raise TooLarge(f"upload larger than the limit of {max_bytes} bytes")
                    out.write(chunk)
            try:
                os.replace(tmp, dest)
            except IsADirectoryError:  # a folder appeared there meanwhile
                raise Conflict(f"{shown!r} is a folder in your upload area: choose another file name") from None
        finally:
            tmp.unlink(missing_ok=True)
        return dest


def check_destination(dest: Path, shown: str) -> None:
    """409 when a folder sits where the file ``dest`` goes, or a file where one of its folders goes."""
    if dest.is_dir():
        raise Conflict(f"{shown!r} is a folder in your upload area: choose another file name")
    for parent in dest.parents:
        if parent.exists():
            if not parent.is_dir():
                raise Conflict(f"{shown!r}: {parent.name!r} is a file in your upload area, not a folder")
            break
