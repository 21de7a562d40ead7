"""Keeping security state the same on every peer: ACL rules and revoked tokens.

Any peer is an entry point, so a rule set on one peer and a logout done on
one peer must hold on all of them.  A change is applied locally first, then
pushed to every member (``POST /api/v1/peer/security``, mutual TLS) in the
background.  A peer that was down during a push catches up when it joins
or rejoins (start-up, a new broker after an election): it pulls the
broker's state and merges it.

Merging: revoked token IDs are a set (union, kept until the token expires).
ACL rule sets carry a version; a peer replaces its rules with an incoming
set only if that set's version is higher (ties keep the local set, so two
administrators editing two peers at the same moment may leave the peers
apart until the next change — documented in docs/security.md).
"""
from __future__ import annotations

import logging
import threading
from typing import Any

import requests

from pocketgrid.errors import BadRequest

from .membership import Membership

log = logging.getLogger(__name__)

PATH = "/api/v1/peer/security"


class SecuritySync:
    def __init__(self, *, membership: Membership, http: requests.Session, acl: Any, tokens: Any,
                 timeout: float = 5.0) -> None:
        self.membership = membership
        self.http = http
        self.acl = acl
        self.tokens = tokens
        self.timeout = timeout

    # ---- what this peer knows -------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "acl": {"version": self.acl.version(), "rules": [r.to_dict() for r in self.acl.rules()]},
            "revoked": self.tokens.revocations() if self.tokens is not None else [],
        }

    def apply(self, body: Any) -> dict[str, Any]:
        """Merge a pushed or pulled state; bad input changes nothing."""
        if not isinstance(body, dict):
            raise BadRequest("expected {acl?: {version, rules}, revoked?: [{jti, expires_at}]}")
        revoked = body.get("revoked", [])
        if not isinstance(revoked, list) or not all(
            isinstance(r, dict) and isinstance(r.get("jti"), str) and isinstance(r.get("expires_at"), (int, float))
            for r in revoked
        ):
            raise BadRequest("'revoked' must be a list of {jti, expires_at}")
        acl = body.get("acl")
        if acl is not None and (
            not isinstance(acl, dict) or not isinstance(acl.get("version"), int) or not isinstance(acl.get("rules"), list)
        ):
            raise BadRequest("'acl' must be {version: int, rules: [...]}")
        replaced = False
        if acl is not None and acl["version"] > self.acl.version():
            self.acl.replace_all(acl["rules"], version=acl["version"])
            replaced = True
        new_revocations = self.tokens.merge_revocations(revoked) if self.tokens is not None and revoked else 0
        return {"acl_replaced": replaced, "acl_version": self.acl.version(), "new_revocations": new_revocations}

    # ---- telling the others ---------------------------------------------------
    def push_revocation(self, jti: str, expires_at: float) -> None:
        self._push({"revoked": [{"jti": jti, "expires_at": expires_at}]})

    def push_acl(self) -> None:
        self._push({"acl": self.state()["acl"]})

    def _push(self, body: dict[str, Any]) -> None:
        others = [m for m in self.membership.members() if m["name"] != self.membership.name]
        for member in others:
            threading.Thread(target=self._send, args=(member, body), name="security-push", daemon=True).start()

    def _send(self, member: dict[str, Any], body: dict[str, Any]) -> None:
        try:
            r = self.http.post(member["url"] + PATH, json=body, timeout=self.timeout)
            r.raise_for_status()
        except requests.RequestException as exc:
            log.warning("could not push security state to %s (it catches up when it rejoins): %s", member["name"], exc)

    def pull(self, url: str) -> None:
        """Catch up from another peer (the broker, when joining)."""
        try:
            r = self.http.get(url + PATH, timeout=self.timeout)
            r.raise_for_status()
            result = self.apply(r.json())
        except (requests.RequestException, ValueError, BadRequest) as exc:
            log.warning("could not pull security state from %s: %s", url, exc)
            return
        log.info("security state from %s: %s", url, result)
