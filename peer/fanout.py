"""Asking every other member at once: the grid-wide views (audit log, tokens) and pairing codes.

Any peer is an entry point, but some records live only on the peer where
they were made (audit events, issued tokens, outstanding pairing codes).
The entry peer asks the others in parallel over mutual TLS (the peer's own
session presents its host certificate) and gets back who answered what and
who did not answer at all.
"""
from __future__ import annotations

import contextvars
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import requests

from .auth import Identity, relay_headers
from .membership import Membership

#: At most this many members asked at the same time.
MAX_PARALLEL = 8


@dataclass(frozen=True)
class MemberReply:
    """One member's answer: its HTTP status and its JSON body (None if the body was not JSON)."""

    peer: str
    status: int
    body: Any


def other_members(membership: Membership) -> list[dict[str, Any]]:
    return [m for m in membership.members() if m["name"] != membership.name]


def ask_others(http: requests.Session, membership: Membership, method: str, path: str, *, timeout: float,
               json: Any = None, params: dict[str, Any] | None = None,
               headers: dict[str, str] | None = None,
               for_user: Identity | None = None) -> tuple[list[MemberReply], list[str]]:
    """``method path`` on every other member; returns (replies, names of the members that did not answer).

    ``for_user``: the request acts for that user, each member gets the user's
    proof (peer/auth.py ``relay_headers``; a delegation is for one member).
    """
    others = other_members(membership)
    if not others:
        return [], []
    # Built here, in the request's context (the worker threads have none).
    member_headers = {m["name"]: {**(headers or {}), **(relay_headers(for_user, m["name"]) if for_user else {})}
                      for m in others}

    def ask(member: dict[str, Any]) -> MemberReply | str:
        try:
            r = http.request(method, member["url"] + path, json=json, params=params,
                             headers=member_headers[member["name"]], timeout=timeout)
        except requests.RequestException:
            return member["name"]
        try:
            body = r.json()
        except ValueError:
            body = None
        return MemberReply(member["name"], r.status_code, body)

    replies: list[MemberReply] = []
    unreachable: list[str] = []
    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, len(others))) as pool:
        # each call in a copy of this request's context: it sends the request's X-Request-ID
        for result in [f.result() for f in [pool.submit(contextvars.copy_context().run, ask, m) for m in others]]:
            if isinstance(result, str):
                unreachable.append(result)
            else:
                replies.append(result)
    return replies, unreachable


def gather_records(http: requests.Session, membership: Membership, path: str, *, key: str, timeout: float,
                   params: dict[str, Any] | None = None, headers: dict[str, str] | None = None,
                   for_user: Identity | None = None) -> tuple[list[dict[str, Any]], list[str]]:
    """``GET path`` on every other member, the list under ``key`` of each answer tagged with its ``peer``.

    Returns (records, members that did not answer).  A member that answers
    something else than 200 with that list counts as not answering (its
    records are missing from the view, and the caller says so).
    """
    replies, unreachable = ask_others(http, membership, "GET", path, timeout=timeout, params=params,
                                      headers=headers, for_user=for_user)
    records: list[dict[str, Any]] = []
    for reply in replies:
        items = reply.body.get(key) if reply.status == 200 and isinstance(reply.body, dict) else None
        if not isinstance(items, list):
            unreachable.append(reply.peer)
            continue
        records.extend({**item, "peer": reply.peer} for item in items if isinstance(item, dict))
    return records, sorted(unreachable)


def grid_view(svc: Any, who: Any, path: str, *, key: str, records: list[dict[str, Any]], params: dict[str, Any],
              local_only: bool) -> tuple[list[dict[str, Any]], list[str]]:
    """This peer's ``records`` (tagged with its name) plus every other member's, for a user's request.

    The others are asked ``GET path?local=1&params`` for the same user, with
    the user's proof (peer/auth.py: each member verifies it itself).  Nothing is
    gathered with ``local_only``, for a relayed request (the relaying peer
    gathers) or for a caller that is not a user.  Returns (records, members
    that did not answer).
    """
    mine = [{**r, "peer": svc.config.name} for r in records]
    if local_only or who.kind != "user" or who.via is not None:
        return mine, []
    theirs, unreachable = gather_records(svc.http, svc.membership, path, key=key, params={**params, "local": 1},
                                         for_user=who, timeout=svc.config.peer_timeout)
    return mine + theirs, unreachable
