"""Who is calling: the authentication seam.

Until certificate login lands (see docs/security.md), every caller is the
single local identity ``anonymous`` with no admin rights over other owners'
jobs.  Routes ask for :func:`identity` and never look at headers themselves,
so the real authenticator replaces only this module's function.
"""
from __future__ import annotations

from dataclasses import dataclass

from flask import current_app, g


@dataclass(frozen=True)
class Identity:
    dn: str
    vo: str | None = None
    is_admin: bool = False


ANONYMOUS = Identity(dn="anonymous")


def identity() -> Identity:
    """The caller's identity for this request (cached on ``flask.g``)."""
    ident = g.get("pocketgrid_identity")
    if ident is None:
        authenticate = current_app.extensions["pocketgrid"].authenticate
        ident = authenticate()
        g.pocketgrid_identity = ident
    return ident


def anonymous() -> Identity:
    return ANONYMOUS
