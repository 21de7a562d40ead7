"""Errors a person can act on.  Shared by server and client (no server imports)."""
from __future__ import annotations


class PocketgridError(Exception):
    """Base class: ``status`` is the HTTP status the server answers with."""

    status = 500

    def __init__(self, message: str, *, status: int | None = None, **details: object) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        self.details = details

    def to_dict(self) -> dict[str, object]:
        return {"error": self.message, "status": self.status, **self.details}


class BadRequest(PocketgridError):
    status = 400


class NotRunnableHere(BadRequest):
    """This site will not run the job as written, and another site may: a submit command its executor
    does not honour, or requirements no slot here matches (by site policy).  A 400 whose body says
    ``"elsewhere": true``: the entry peer tries its next candidate, and answers the client with this
    400 only when no site took the job."""

    def __init__(self, message: str, **details: object) -> None:
        super().__init__(message, elsewhere=True, **details)


class NotFound(PocketgridError):
    status = 404


class Conflict(PocketgridError):
    status = 409


class TooLarge(PocketgridError):
    status = 413


class RangeNotSatisfiable(PocketgridError):
    status = 416


class Unavailable(PocketgridError):
    status = 503


class BadGateway(PocketgridError):
    status = 502


class Unauthorized(PocketgridError):
    """No valid credentials: log in (or pair) first."""

    status = 401


class Forbidden(PocketgridError):
    """Authenticated, but an ACL rule (or the route's audience) refuses it."""

    status = 403


class TooManyRequests(PocketgridError):
    status = 429
