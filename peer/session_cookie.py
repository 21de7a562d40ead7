"""The browser session cookie: a paired phone's device token, out of reach of script.

``pg_session`` is ``Secure`` (HTTPS only), ``HttpOnly`` (no script reads it),
``SameSite=Strict`` (never sent on a request another site starts) and
``Path=/``; it lives as long as the device token it carries.  peer/auth.py
accepts it when a request has no ``Authorization`` header; peer/csrf.py
then asks for the CSRF header on writes.
"""
from __future__ import annotations

import time

from flask import Response

COOKIE_NAME = "pg_session"


def set_session_cookie(response: Response, token: str, expires_at: float) -> None:
    response.set_cookie(COOKIE_NAME, token, max_age=max(0, int(expires_at - time.time())), path="/",
                        secure=True, httponly=True, samesite="Strict")


def clear_session_cookie(response: Response) -> None:
    response.set_cookie(COOKIE_NAME, "", max_age=0, expires=0, path="/", secure=True, httponly=True,
                        samesite="Strict")
