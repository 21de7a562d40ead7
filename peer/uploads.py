"""Private upload areas: a user's uploads are visible to that user (and administrators) only.

Uploads land in ``uploads/u-<16 hex of SHA-256(DN)>/`` of the publishing
area.  The rest of the area is shared (a site publishes data for everyone),
but nothing below another user's upload directory is listed, found by a
wildcard or a search, downloaded, or accepted as a job input; such paths
answer 404 "no such file", so their existence is not revealed.
"""
from __future__ import annotations

import hashlib
from typing import Callable

from pocketgrid.errors import NotFound

from .auth import Identity
from .publishing import PublishingArea

UPLOADS = "uploads"


def upload_dir(dn: str) -> str:
    return f"{UPLOADS}/u-{hashlib.sha256(dn.encode()).hexdigest()[:16]}"


def visibility(who: Identity) -> Callable[[str], bool]:
    """A predicate on canonical area-relative paths: may ``who`` see this one?"""
    if who.is_admin:
        return lambda path: True
    mine = upload_dir(who.dn)

    def visible(path: str) -> bool:
        parts = path.split("/")
        return parts[0] != UPLOADS or len(parts) < 2 or "/".join(parts[:2]) == mine

    return visible


def check_visible(area: PublishingArea, who: Identity, path: str) -> None:
    """404 for a path inside someone else's upload directory (bad paths keep their own errors)."""
    real = area.resolve(path, must_exist=False)
    if real != area.root and not visibility(who)(area.relative(real)):
        raise NotFound(f"no such file in the publishing area: {path!r}")
