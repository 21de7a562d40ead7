"""Where a request for a job is answered: here, at the job's manager, or at whoever holds its record.

A job ID names its home (``<home>.<hex>``), and every peer relays a job's requests there
(peer/proxy.py).  With replicas (peer/replicas.py) the record may be managed elsewhere, and the home may
be dead, so the rule is (docs/architecture.md, *The home dies*):

1. This peer manages the job: answer here.
2. This peer keeps a replica: relay to the manager it names (a second hop is allowed for a request
   relayed here, never a third, never back to a peer it came through); when the manager does not
   answer, answer here from the replica (a change is refused with 503 by peer/job_home.py).
3. Otherwise relay to the home by the ID; when it does not answer, ask the other members who holds
   the record (``GET /api/v1/peer/records/<id>``) and relay to the best holder (the manager, else the
   highest claim), and remember that holder for a while (``LOCATED_SECONDS``): the next requests go
   there first, without waiting on the silent home again.  Nobody: the home's 502 "unreachable"
   stands.
"""
from __future__ import annotations

from typing import Any

from flask import Response

from pocketgrid.errors import BadGateway

from .jobs import peer_of
from .proxy import relay, relayed_by


def forward(svc: Any, job_id: str, *, timeout: float | tuple[float, float]) -> Response | None:
    """Relay this request for ``job_id`` to the peer that answers for it; None: answer here."""
    me = svc.config.name
    manager = svc.home.manager_of(job_id)
    hops = relayed_by()
    if manager == me:
        return None
    if manager is not None:  # a replica here
        if len(hops) >= 2 or manager in hops:
            return None
        try:
            return relay(svc.http, svc.membership, manager, timeout=timeout, second_hop=bool(hops))
        except BadGateway as exc:
            if not exc.details.get("unreachable"):
                raise
            return None  # the manager is silent: our copy answers
    home = peer_of(job_id)
    if home == me:
        return None  # no record here: the job service says 404
    if hops:  # relayed here (a holder found earlier), and no copy here: the job service answers 404
        return None
    holder = svc.replicas.located(job_id)
    if holder is not None:  # the home did not answer lately: go to the holder found then, first
        try:
            return relay(svc.http, svc.membership, holder, timeout=timeout)
        except BadGateway as exc:
            if not exc.details.get("unreachable"):
                raise
            svc.replicas.forget_located(job_id)
    try:
        return relay(svc.http, svc.membership, home, timeout=timeout)
    except BadGateway as exc:
        if not exc.details.get("unreachable") or hops:
            raise
        holder = svc.replicas.locate(job_id, skip={home})
        if holder is None:
            raise
        return relay(svc.http, svc.membership, holder, timeout=timeout)


def remote(svc: Any, job_id: str) -> bool:
    """Whether a request for ``job_id`` would first go to another peer (for a long-poll's parking)."""
    manager = svc.home.manager_of(job_id)
    if manager is not None:
        return manager != svc.config.name and len(relayed_by()) < 2 and manager not in relayed_by()
    return peer_of(job_id) != svc.config.name
