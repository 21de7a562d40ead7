"""What each route needs: one table, checked before every request.

Every endpoint is listed here with its audience: public, any authenticated
caller, hosts only (peer-to-peer and agent routes, mutual TLS), an ACL
operation group (peer/acl.py), or ``/metrics``' own rule (the
``metrics_access`` setting: :func:`metrics_open_to` and :func:`check_scrape`).  An endpoint missing from the table is
refused (fail closed), and a test checks that every route is listed.

Ownership (a job is its submitter's) is not here: the job service answers
404 to anyone else, so a job's existence is not revealed (peer/jobs.py).
"""
from __future__ import annotations

import ipaddress
from typing import Any

from flask import current_app, request

from pocketgrid.client_certificate import tls_client_certificate
from pocketgrid.errors import Forbidden

from .auth import TOKEN_HEADER, identity
from .session_cookie import COOKIE_NAME

PUBLIC = "public"
AUTHENTICATED = "authenticated"
HOST = "host"
#: ``/metrics``: whoever ``metrics_access`` lets in (see :func:`check_scrape`).
METRICS = "metrics"

#: endpoint -> PUBLIC | AUTHENTICATED | HOST | an ACL group name
ROUTES: dict[str, str] = {
    "system.healthz": PUBLIC,
    "system.openapi_json": PUBLIC,
    "system.openapi_yaml": PUBLIC,
    "system.broker": AUTHENTICATED,
    "system.placements": "admin",  # GET /api/v1/broker/placements: the broker's recent decisions
    "auth.challenge": PUBLIC,
    "auth.login": PUBLIC,
    "auth.pair": PUBLIC,
    "auth.logout": AUTHENTICATED,
    "auth.whoami": AUTHENTICATED,
    "auth.pairing_code": AUTHENTICATED,
    "auth.tokens": AUTHENTICATED,
    "auth.revoke_token": AUTHENTICATED,
    "files.listing": "files-read",
    "files.download": "files-read",
    "files.download_upload": "files-read",  # GET /api/v1/files/uploads/<path>: a download like any other
    "files.upload": "jobs-submit",
    "uploads.options": PUBLIC,  # tus discovery: versions, extensions, size limit
    "uploads.create": "jobs-submit",
    "uploads.info": "jobs-submit",  # owner only: another user's upload is 404 (peer/resumable_uploads.py)
    "uploads.append": "jobs-submit",
    "uploads.terminate": "jobs-submit",
    "jobs.submit": "jobs-submit",
    "jobs.list_jobs": "jobs-manage",
    "jobs.status": "jobs-manage",
    "jobs.kill": "jobs-manage",
    "jobs.retry": "jobs-manage",
    "jobs.release": "jobs-manage",
    "jobs.outputs": "jobs-manage",
    "jobs.output_file": "jobs-manage",
    "jobs.spec": "jobs-manage",
    "jobs.executable": "jobs-manage",
    "jobs.pin": "jobs-manage",
    "jobs.unpin": "jobs-manage",
    "jobs.purge": "jobs-manage",
    "files.delete_upload": "jobs-submit",  # your own uploads only (another user's is 404)
    "events.job_events": "jobs-manage",
    "webapp.index": PUBLIC,
    "webapp.static_file": PUBLIC,
    "admin.acl_list": "admin",
    "admin.acl_add": "admin",
    "admin.acl_remove": "admin",
    "admin.audit": "admin",
    "admin.gc_plan": "admin",
    "admin.gc_run": "admin",
    "metrics.metrics": METRICS,  # Prometheus: /metrics, not under /api/v1 (peer/metrics.py)
}
#: Blueprints whose every route is for hosts only.
HOST_BLUEPRINTS = frozenset({"peer", "broker"})


def audience(endpoint: str) -> str | None:
    if endpoint.partition(".")[0] in HOST_BLUEPRINTS:
        return HOST
    return ROUTES.get(endpoint)


def check_access() -> None:
    """``before_request``: 401 without credentials, 403 when the route or an ACL rule refuses."""
    endpoint = request.endpoint
    if endpoint is None:  # no such route: Flask answers 404
        return
    svc = current_app.extensions["pocketgrid"]
    needed = audience(endpoint)
    if needed == PUBLIC or svc.config.insecure_http:
        return
    if needed == METRICS:
        check_scrape(svc)
        return
    if needed is None:
        raise Forbidden(f"route {endpoint} has no access rule; refusing it")
    who = identity()
    if needed == HOST:
        if who.kind != "host":
            raise Forbidden("this is a peer-to-peer route: only peers and agents with a host certificate may call it")
        return
    if needed == AUTHENTICATED:  # users and hosts (peers ask each other who the broker is)
        return
    if who.kind == "host":
        raise Forbidden("a host certificate alone has host powers only: user routes need the user's own proof "
                        "(X-Pocketgrid-User-Token, sent by a peer relaying for that user)")
    if needed == "admin" and who.device:
        raise Forbidden("a paired device never holds admin rights: log in with your certificate for this")
    decision = svc.security.acl.decide(who.dn, who.vo, needed)
    if not decision.allowed:
        svc.security.audit.record("access-denied", dn=who.dn, source=who.source, outcome="denied",
                                  detail=f"{request.method} {request.path}: {decision.reason}")
        raise Forbidden(decision.reason)


def loopback(address: str | None) -> bool:
    """Is ``address`` a loopback address: anything in 127.0.0.0/8, ``::1``, or ``::ffff:127.x.y.z``?"""
    try:
        ip = ipaddress.ip_address((address or "").strip())
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def metrics_open_to(mode: str, remote_addr: str | None, credentials: bool) -> bool:
    """May this request read ``/metrics`` without being an administrator, under ``metrics_access = mode``?

    * ``open``: anyone who reaches the peer.
    * ``loopback-or-admin`` (the default): a request from a loopback address
      (127.0.0.0/8 or ``::1``) that presents no credentials (a Prometheus on
      the same host).  A request that presents credentials is judged by them.
    * ``admin``, and any other value (fail closed): nobody.

    Everyone else needs an administrator's credentials (:func:`check_scrape`).
    """
    if mode == "open":
        return True
    return mode == "loopback-or-admin" and not credentials and loopback(remote_addr)


def presents_credentials() -> bool:
    """Does the request carry any credential: a bearer token, a relayed proof, the session cookie, a TLS
    client certificate?"""
    return bool(request.headers.get("Authorization") or request.headers.get(TOKEN_HEADER)
                or request.cookies.get(COOKIE_NAME) or tls_client_certificate() is not None)


def check_scrape(svc: Any) -> None:
    """``/metrics``: 403 naming ``metrics_access`` unless the setting lets this request in."""
    mode = svc.config.metrics_access
    credentials = presents_credentials()
    if metrics_open_to(mode, request.remote_addr, credentials):
        return
    setting = f"metrics_access = {mode}"
    if not credentials:
        where = "requests from the loopback address without credentials and " if mode == "loopback-or-admin" else ""
        raise Forbidden(f"{setting}: /metrics answers {where}administrators only; send an administrator's token "
                        "(Authorization: Bearer ...), or change metrics_access in the peer's configuration")
    who = identity()  # 401 for a credential that does not verify
    if who.kind == "host":
        why = "a host certificate is not an administrator"
    elif who.device:
        why = "a paired device never holds admin rights"
    else:
        decision = svc.security.acl.decide(who.dn, who.vo, "admin")
        if decision.allowed:
            return
        why = decision.reason
    # rate-limited per address (audit_refusals_per_minute): a misconfigured scraper retries for ever
    svc.security.audit.refused("access-denied", dn=who.dn, source=who.source, outcome="denied",
                               what="refused scrapes of /metrics", detail=f"{request.method} {request.path}: "
                                                                          f"{setting}: {why}")
    raise Forbidden(f"{setting}: /metrics needs an administrator's credentials ({why})")
