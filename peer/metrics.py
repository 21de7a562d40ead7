"""Prometheus metrics of one peer: ``GET /metrics`` (prometheus_client; docs/operations.md, *Metrics*).

One :class:`Metrics` per app: ``create_app`` builds it into the services with
a ``CollectorRegistry`` of its own (nothing registers at import time, so
several peers in one process never share a series).  The peer is one
gunicorn worker process (peer/server.py), so one registry is the whole
story: no multiprocess mode.

Two kinds of metric:

* **Events**, counted where they happen: requests (Flask hooks here: the
  route's rule, never the raw path, so the label set stays bounded),
  submits, logins, refused tokens and revocations, placement decisions
  (the broker role), broker role changes, bytes staged, uploaded and
  downloaded.
* **State**, read at scrape time by the collectors below: jobs and inputs
  by state (the summaries of the job records whose home is this peer:
  :func:`records_counts`), the
  broker epoch and role, the members, parked requests, elections started,
  and while this peer holds the broker role each peer's in-flight procs,
  load-report age, coefficient and liveness from the role's tables.

A collector that fails (the database down, say) leaves its metrics out of
that scrape, logs why and counts ``pocketgrid_metrics_collector_errors_total``;
the rest of the scrape is still answered.
"""
from __future__ import annotations

import logging
import time
from collections import Counter as Tally
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

import jwt
from flask import Blueprint, Flask, Response, current_app, g, request
from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

import pocketgrid

if TYPE_CHECKING:  # pragma: no cover
    from .app import PeerServices

log = logging.getLogger(__name__)

PREFIX = "pocketgrid"
#: Request latency buckets, seconds: short API calls up to long-polls (``max_wait_seconds``, 60 s by default).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
#: Route label of a request that matched no route (a 404 from the router): never the raw path.
UNMATCHED = "(unmatched)"
#: Methods named in the method label; anything else a client invents is "other".
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
#: What a file response is, by endpoint (peer/downloads.py ``send_ranged`` reports each one).
DOWNLOAD_KINDS = {
    "files.download": "file",
    "files.download_upload": "file",
    "jobs.output_file": "output",
    "jobs.executable": "executable",
    "peer.read_file": "staging",  # another peer fetching an input it stages
}
#: Every state a job or an input can be in (peer/event_log.py ProcState): each is exported, 0 when none.
STATES = ("idle", "running", "held", "completed", "failed", "removed")
FINAL_STATES = frozenset({"completed", "failed", "removed"})


@dataclass
class JobCounts:
    """Jobs and inputs on this peer by state (``STATES``)."""

    jobs: dict[str, int] = field(default_factory=dict)
    inputs: dict[str, int] = field(default_factory=dict)


class Metrics:
    """The peer's registry, its event counters, and the hooks that feed them."""

    def __init__(self, *, peer: str) -> None:
        self.peer = peer
        # No ``*_created`` series beside each counter and histogram: in the text format Prometheus stores
        # them as gauges, doubling the series for nothing.  (The library's switch is per process; the
        # peer's worker has only this registry, and every Metrics sets the same.)
        disable_created_metrics()
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(f"{PREFIX}_http_requests", "HTTP requests answered, by method, route (the "
                                "route's rule, e.g. /api/v1/jobs/<job_id>) and status code",
                                ["method", "route", "status"], registry=r)
        self.latency = Histogram(f"{PREFIX}_http_request_duration_seconds", "Time to produce the answer (not "
                                 "to send its body: a download's transfer is not in it; a long-poll's wait is)",
                                 ["method", "route"], buckets=LATENCY_BUCKETS, registry=r)
        self.submits = Counter(f"{PREFIX}_submits", "Job submissions answered by this (entry) peer: created, or "
                               "replayed (a retried Idempotency-Key); refused ones are in the request counter",
                               ["outcome"], registry=r)
        self.logins = Counter(f"{PREFIX}_logins", "Logins: certificate challenge-response or pairing code, by "
                              "outcome", ["method", "outcome"], registry=r)
        self.token_refusals = Counter(f"{PREFIX}_token_refusals", "Requests refused for their credential (bearer "
                                      "token, session cookie, or a user's proof relayed by a peer), by reason: "
                                      "expired, revoked, invalid (malformed, forged, unknown issuer, misused)",
                                      ["credential", "reason"], registry=r)
        self.revocations = Counter(f"{PREFIX}_token_revocations", "Tokens revoked here (logout, or a token "
                                   "revoked by its owner or an administrator)", registry=r)
        self.placements = Counter(f"{PREFIX}_placements", "Placement decisions made by this peer while it held "
                                  "the broker role, by the peer chosen", ["peer"], registry=r)
        self.role_changes = Counter(f"{PREFIX}_broker_role_changes", "This peer took the broker role (an "
                                    "election won) or stepped down (a better claim arrived)", ["change"], registry=r)
        self.staged = Counter(f"{PREFIX}_staged_bytes", "Input bytes staged for jobs on this peer: copied from its "
                              "own publishing area (local) or downloaded from the entry peer (peer)",
                              ["source"], registry=r)
        self.uploaded = Counter(f"{PREFIX}_uploaded_bytes", "Bytes users uploaded and this peer stored: a PUT to "
                                "/api/v1/files/uploads/... (put) or tus PATCH chunks (tus)", ["protocol"], registry=r)
        self.downloaded = Counter(f"{PREFIX}_downloaded_bytes", "Bytes of file answers this peer started (200/206, "
                                  "their Content-Length; a transfer cut short counts whole): published files and "
                                  "uploads (file), job outputs (output), executables (executable), inputs read by "
                                  "a peer staging a job (staging)", ["what"], registry=r)
        # registered by watch(), after the collectors: a scrape shows its own failures
        self.collector_errors = Counter(f"{PREFIX}_metrics_collector_errors", "Scrapes in which a collector "
                                        "failed (its metrics were left out; the log says why)", ["collector"],
                                        registry=None)
        for outcome in ("created", "replayed"):  # every bounded label set from the start: rates work at once
            self.submits.labels(outcome=outcome)
        for method in ("certificate", "pairing"):
            for outcome in ("ok", "failed"):
                self.logins.labels(method=method, outcome=outcome)
        for change in ("taken", "stepped_down"):
            self.role_changes.labels(change=change)
        for source in ("local", "peer"):
            self.staged.labels(source=source)
        for protocol in ("put", "tus"):
            self.uploaded.labels(protocol=protocol)
        for what in sorted(set(DOWNLOAD_KINDS.values())):
            self.downloaded.labels(what=what)
        ProcessCollector(registry=r)  # the worker's CPU, memory, open files: a peer that runs for years
        PlatformCollector(registry=r)

    # ---- wiring ---------------------------------------------------------------
    def watch(self, services: "PeerServices", job_counts: Callable[[], JobCounts]) -> None:
        """Register the scrape-time collectors over ``services``; ``job_counts`` answers jobs/inputs by state."""
        for name, collect in (("peer", lambda: _peer_families(services)),
                              ("jobs", lambda: _job_families(job_counts())),
                              ("broker", lambda: _broker_families(services))):
            self.registry.register(_Guarded(name, collect, self.collector_errors))
        self.registry.register(self.collector_errors)

    def install(self, app: Flask) -> None:
        """The request hooks (register before check_access: refused requests count too) and ``/metrics``."""
        app.before_request(_start)
        app.after_request(_status)
        app.teardown_request(self._finish)
        app.register_blueprint(bp)

    # ---- events -----------------------------------------------------------------
    def _finish(self, _exc: BaseException | None) -> None:
        started = g.pop("metrics_started", None)
        if started is None:
            return
        rule = request.url_rule
        route = rule.rule if rule is not None else UNMATCHED
        method = request.method if request.method in METHODS else "other"
        status = g.pop("metrics_status", 500)  # no answer recorded: an error escaped every handler
        self.requests.labels(method=method, route=route, status=str(status)).inc()
        self.latency.labels(method=method, route=route).observe(time.perf_counter() - started)

    def submitted(self, replayed: bool) -> None:
        self.submits.labels(outcome="replayed" if replayed else "created").inc()

    def login(self, method: str, ok: bool) -> None:
        self.logins.labels(method=method, outcome="ok" if ok else "failed").inc()

    def token_refused(self, presented: str, is_revoked: Callable[[str], bool]) -> None:
        """A request's credential was refused (call in its request context): why, from the token itself."""
        if request.headers.get("X-Pocketgrid-User-Token"):
            credential = "relayed"
        elif request.headers.get("Authorization"):
            credential = "bearer"
        else:
            credential = "cookie"
        self.token_refusals.labels(credential=credential, reason=refusal_reason(presented, is_revoked)).inc()

    def placed(self, peer: str) -> None:
        self.placements.labels(peer=peer).inc()

    def role_changed(self, change: str) -> None:
        self.role_changes.labels(change=change).inc()

    def staged_bytes(self, source: str, nbytes: int) -> None:
        self.staged.labels(source=source).inc(max(0, nbytes))

    def uploaded_bytes(self, protocol: str, nbytes: int) -> None:
        self.uploaded.labels(protocol=protocol).inc(max(0, nbytes))

    def file_response(self, response: Response) -> None:
        """A file answer (peer/downloads.py): count its bytes if it carries the file (200, or 206 a range)."""
        if request.method != "GET" or response.status_code not in (200, 206) or not response.content_length:
            return
        what = DOWNLOAD_KINDS.get(request.endpoint or "", "other")
        self.downloaded.labels(what=what).inc(response.content_length)


def refusal_reason(token: str, is_revoked: Callable[[str], bool]) -> str:
    """``expired``, ``revoked`` or ``invalid``, read from the refused token's own (unverified) claims, in
    the order peer/tokens.py checks them.  Labels only: the refusal itself was decided by the verifier."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except (jwt.InvalidTokenError, ValueError, TypeError):
        return "invalid"
    exp, jti = claims.get("exp"), claims.get("jti")
    if isinstance(exp, (int, float)) and exp <= time.time():
        return "expired"
    if isinstance(jti, str) and is_revoked(jti):
        return "revoked"
    return "invalid"


def _start() -> None:
    g.metrics_started = time.perf_counter()


def _status(response: Response) -> Response:
    g.metrics_status = response.status_code
    return response


# ---- /metrics --------------------------------------------------------------------
bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def metrics() -> Response:
    """The exposition (text format 0.0.4, or OpenMetrics when the scraper asks for it); access: peer/access.py."""
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    body = encoder(current_app.extensions["pocketgrid"].metrics.registry)
    return Response(body, headers={"Content-Type": content_type, "Cache-Control": "no-store"})


# ---- scrape-time collectors ----------------------------------------------------------
class _Guarded(Collector):
    """One collector: a failure leaves its families out of this scrape, logged and counted."""

    def __init__(self, name: str, collect: Callable[[], Iterable[Metric]], errors: Counter) -> None:
        self.name = name
        self._collect = collect
        self._errors = errors
        errors.labels(collector=name)

    def collect(self) -> Iterator[Metric]:
        try:
            families = list(self._collect())
        except Exception:  # the database down, a table missing: the rest of the scrape still answers
            log.exception("metrics: the %s collector failed; its metrics are left out of this scrape", self.name)
            self._errors.labels(collector=self.name).inc()
            return iter(())
        return iter(families)


def _peer_families(svc: "PeerServices") -> Iterator[Metric]:
    info = InfoMetricFamily(f"{PREFIX}_peer", "This peer: its name, executor and pocketgrid version")
    info.add_metric([], {"peer": svc.config.name, "executor": svc.executor.name, "version": pocketgrid.__version__})
    yield info
    membership = svc.membership
    yield GaugeMetricFamily(f"{PREFIX}_broker_epoch", "The broker epoch this peer knows (it grows with each "
                            "election)", value=membership.epoch)
    yield GaugeMetricFamily(f"{PREFIX}_broker_role_held", "1 while this peer holds the broker role",
                            value=1 if svc.broker_role is not None else 0)
    yield GaugeMetricFamily(f"{PREFIX}_members", "Members of the system this peer knows (itself included)",
                            value=len(membership.members()))
    elections = svc.elector.elections if svc.elector is not None else 0
    yield CounterMetricFamily(f"{PREFIX}_elections", "Elections this peer started (the broker missed its "
                              "heartbeats)", value=elections)
    yield GaugeMetricFamily(f"{PREFIX}_parked_requests", "Requests holding a server thread while they wait "
                            "(long-polls and event streams relayed to the job's home)", value=svc.parking.parked)
    yield GaugeMetricFamily(f"{PREFIX}_parked_requests_limit", "Most requests that may park at once (429 "
                            "beyond)", value=svc.parking.limit)


def _job_families(counts: JobCounts) -> Iterator[Metric]:
    jobs = GaugeMetricFamily(f"{PREFIX}_jobs", "Jobs this peer runs (their records are here), by overall state",
                             labels=["state"])
    inputs = GaugeMetricFamily(f"{PREFIX}_job_inputs", "Inputs (procs) of the jobs this peer runs, by state",
                               labels=["state"])
    for state in STATES:
        jobs.add_metric([state], counts.jobs.get(state, 0))
        inputs.add_metric([state], counts.inputs.get(state, 0))
    yield jobs
    yield inputs


def _broker_families(svc: "PeerServices") -> Iterator[Metric]:
    """The broker role's load table, while this peer holds the role (empty families otherwise)."""
    in_flight = GaugeMetricFamily(f"{PREFIX}_broker_in_flight_procs", "Procs placed on each peer since its last "
                                  "load report (this peer holds the broker role)", labels=["peer"])
    age = GaugeMetricFamily(f"{PREFIX}_broker_load_report_age_seconds", "Age of each peer's last load report "
                            "(from its sampling time; this peer holds the broker role)", labels=["peer"])
    coefficient = GaugeMetricFamily(f"{PREFIX}_broker_load_coefficient", "Each peer's last reported load "
                                    "coefficient (lower: less loaded)", labels=["peer"])
    alive = GaugeMetricFamily(f"{PREFIX}_broker_peer_alive", "1 while placement considers the peer alive",
                              labels=["peer"])
    role = svc.broker_role
    for row in role.load_table() if role is not None else []:
        peer = [row["peer"]]
        in_flight.add_metric(peer, row.get("in_flight") or 0)
        age.add_metric(peer, max(0.0, float(row.get("report_age") or 0.0)))
        coefficient.add_metric(peer, float(row["coefficient"]))
        alive.add_metric(peer, 1 if row.get("alive") else 0)
    yield from (in_flight, age, coefficient, alive)


# ---- jobs by state ---------------------------------------------------------------------
def records_counts(services: "PeerServices") -> Callable[[], JobCounts]:
    """Jobs and inputs by state for the jobs whose records are here (this peer is their home).

    Each record keeps ``summary`` (its overall ``state`` and its inputs' ``counts``), refreshed in the
    same transaction as every change the user can see (peer/record_store.py ``touch``): a scrape is one
    query over the unpurged records this peer manages (not the replicas it keeps for others: each job is
    counted once, by its manager) and reads no attempts, pieces or event logs.
    """
    from sqlalchemy import select

    from .models import JobRecord

    def counts() -> JobCounts:
        jobs: Tally[str] = Tally()
        inputs: Tally[str] = Tally()
        with services.db.sessions() as s:
            for summary in s.scalars(select(JobRecord.summary).where(
                    JobRecord.purged_at.is_(None), JobRecord.manager == services.config.name)):
                summary = summary or {}
                jobs[summary.get("state") or "idle"] += 1
                for state, n in (summary.get("counts") or {}).items():
                    inputs[state] += int(n)
        return JobCounts(jobs=dict(jobs), inputs=dict(inputs))

    return counts
