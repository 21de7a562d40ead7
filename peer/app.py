"""The peer's Flask application factory.

``create_app(config)`` builds everything one peer needs (database, publishing
area, stager, executor, membership, job service, the broker role when this
peer holds it, the in-process EMA agent) into a :class:`PeerServices` kept
in ``app.extensions["pocketgrid"]``.  Nothing is created at import time.

Background work (the executor's scheduler, joining the broker, the agent)
starts in :meth:`PeerServices.start`.  The server runs ONE worker process
with threads (peer/server.py), so each of these exists once per peer.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from dataclasses import asdict, dataclass, field
from typing import Any

import requests
from urllib.parse import urlsplit, urlunsplit

from flask import Flask, Response, jsonify, request
from flask.json.provider import DefaultJSONProvider
from werkzeug.exceptions import HTTPException, RequestedRangeNotSatisfiable

from broker import api as broker_api
from broker.models import BrokerBase
from broker.placement import JobRequest
from broker.role import BrokerRole, UnknownPeer
from pocketgrid.http import Session
from pocketgrid.config import PeerConfig
from pocketgrid.errors import BadRequest, PocketgridError, Unavailable

from . import api_admin, api_auth, api_events, api_files, api_jobs, api_peer, api_system, compression, security_headers, webapp
from . import access_log, api_uploads, request_ids
from .access import check_access
from .auth import TOKEN_HEADER, USER_HEADER
from .csrf import check_csrf
from .db import Database
from .digests import DigestCache
from .election import Elector
from .executors.base import Executor
from .executors.choice import choose_executor
from .dispatch import Dispatcher
from .in_use import InUse
from .job_home import JobHome
from .job_manager import JobManager
from .jobs import JobService, NotYours
from .membership import Membership
from .record_store import RecordStore
from .replicas import Replicas
from .records import Limits
from .metrics import Metrics, records_counts
from .models import Base
from .parking import Parking, default_limit
from .publishing import PublishingArea
from .retention import Retention
from .runtime_stats import RunTimeCollector
from .security import Security, build_security
from .staging import Stager
from .storage import Quotas

log = logging.getLogger(__name__)


@dataclass
class PeerServices:
    config: PeerConfig
    db: Database
    http: requests.Session
    publishing: PublishingArea
    digests: DigestCache
    stager: Stager
    executor: Executor
    membership: Membership
    jobs: JobService
    home: JobHome
    manager: JobManager
    #: Job records on a second peer: deputies, replicas, takeover, the return (peer/replicas.py).
    replicas: Replicas
    broker_role: BrokerRole | None
    security: Security
    parking: Parking
    #: Downloads and submissions reading a job or a file now (peer/in_use.py).
    in_use: InUse
    quotas: Quotas
    retention: Retention
    #: Prometheus metrics: this app's registry, counters and collectors (peer/metrics.py).
    metrics: Metrics
    agent: Any = None
    elector: Any = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _started: bool = False
    _role_lock: threading.Lock = field(default_factory=threading.Lock)

    def current_broker(self) -> dict[str, str] | None:
        return self.membership.broker

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        self.executor.start()
        self.home.sweep_incomplete()
        self.replicas.reconcile()  # a job taken over while this peer was away is not managed here again
        self.manager.watch_local()
        self.manager.start()
        self.retention.start()
        if self.broker_role is None:
            self._join_async(self._join_urls())
        self.membership.on_step_down = self.step_down
        self.elector = Elector(
            self.membership,
            self.http,
            interval=self.config.heartbeat_interval,
            misses=self.config.heartbeat_misses,
            take_role=self.take_broker_role,
            announce=lambda: self.broker_role.announce() if self.broker_role is not None else None,
        )
        self.elector.start()
        if self.config.agent:
            from ema_agent.coefficient import Weights
            from ema_agent.reporter import Reporter

            pool_source = None
            if self.executor.name == "condor":  # a head node: the pool's load, not just this host's
                from ema_agent.pool import make_pool_source

                pool_source = make_pool_source()
            self.agent = Reporter(
                self.config.name,
                self.config.url,
                [self.config.url, *self.config.join],
                interval=self.config.agent_interval,
                weights=Weights.from_dict(self.config.agent_weights),
                pool_source=pool_source,
                site_source=self.executor.site_counts,  # held and unmatchable procs: not load
                runtimes_source=RunTimeCollector(self.db, self.config.stage_path,
                                                 window=self.config.runtime_window).source,
                session=self.http,  # the peer's host certificate and CA: reports are mutual TLS
            )
            self.executor.on_site_change = self.agent.report_soon  # those counts changed: report now
            self.agent.start_thread()

    def _join_urls(self) -> list[str]:
        urls = list(self.config.join)
        if self.membership.broker and self.membership.broker["name"] != self.config.name:
            urls.insert(0, self.membership.broker["url"])
        return urls or [m["url"] for m in self.membership.members() if m["name"] != self.config.name]

    def _join_async(self, urls: list[str]) -> None:
        def join() -> None:
            self.membership.join(urls, self._stop)
            broker = self.membership.broker
            if broker is not None and broker["name"] != self.config.name:
                self.security.sync.pull(broker["url"])  # ACL rules and revocations made while we were away

        threading.Thread(target=join, name="join", daemon=True).start()

    def take_broker_role(self, epoch: int) -> None:
        """Hold the broker role from now on (start-up without --join, or an election won)."""
        with self._role_lock:
            if epoch <= self.membership.epoch and not self.membership.is_broker:
                log.info("not claiming epoch %d: a claim for epoch %d arrived meanwhile", epoch, self.membership.epoch)
                return
            role = _new_broker_role(self.config, self.db, self.http, self.membership, epoch, self.metrics)
            role.seed(self.membership.members(with_certs=True))  # keep everyone's certificate
            self.membership.become_broker(epoch)
            self.broker_role = role
            role.announce()
        self.metrics.role_changed("taken")
        log.warning("holding the broker role, epoch %d", epoch)

    def step_down(self, new_broker: dict[str, str]) -> None:
        """A better claim arrived: become a plain peer and register with the new broker."""
        with self._role_lock:
            self.broker_role = None
        self.metrics.role_changed("stepped_down")
        self._join_async([new_broker["url"]])

    def stop(self) -> None:
        self._stop.set()
        if self.elector is not None:
            self.elector.stop()
        if self.agent is not None:
            self.agent.stop(timeout=5)
        self.retention.stop()
        self.manager.stop()
        self.executor.stop()
        self.db.dispose()

    # ---- placement, from a job's home ----------------------------------------
    def split(self, job_key: str, n_procs: int, input_sizes: list[int], avoid: list[str],
              exclude: list[str] = (), history_key: str | None = None) -> dict[str, Any]:  # type: ignore[assignment]
        """Ask the broker to split ``n_procs`` inputs (held here) over the sites.

        The broker's decision: ``{"id", "shares": [...], "ranking": [...], "policy", "decided_at",
        "unassigned", "refused_all"}`` (the shares may hold fewer inputs than asked: the rest,
        ``unassigned``, stay pending here and are split again next round); ``exclude``: sites that refused these inputs for good; ``history_key``: the
        job's (owner + executable), so the estimate uses this program's learned run times.
        Unavailable when no broker answers (an election): the job manager tries again next round.
        """
        job = JobRequest(n_procs=n_procs, input_bytes={self.config.name: sum(input_sizes)},
                         entry_peer=self.config.name, history_key=history_key)
        role = self.broker_role
        if role is not None:
            return role.split_decision(job_key, job, input_sizes=input_sizes, avoid=frozenset(avoid),
                                       exclude=frozenset(exclude))
        broker = self.membership.broker
        if broker is None:
            raise Unavailable("this peer has not joined a broker yet", retry_after=2)
        body = {"job_key": job_key, "n_procs": n_procs, "input_bytes": job.input_bytes,
                "entry_peer": self.config.name, "split": True, "input_sizes": input_sizes, "avoid": list(avoid),
                "exclude": list(exclude), **({"history_key": history_key} if history_key else {})}
        for _hop in range(3):
            try:
                r = self.http.post(f"{broker['url']}/api/v1/broker/placements", json=body,
                                   timeout=self.config.peer_timeout)
            except requests.RequestException as exc:
                raise Unavailable(f"the broker {broker['name']} is unreachable ({type(exc).__name__})") from None
            if r.status_code == 409 and r.json().get("broker"):
                broker = r.json()["broker"]
                continue
            if not r.ok:
                raise Unavailable(f"the broker refused the split: {r.text[:200]}")
            answer = r.json()
            return {"id": answer.get("id"), "shares": answer.get("shares") or [],
                    "ranking": answer.get("ranking") or [], "policy": answer.get("policy"),
                    "decided_at": answer.get("decided_at") or time.time(),
                    "unassigned": int(answer.get("unassigned") or 0),
                    "refused_all": bool(answer.get("refused_all"))}
        raise Unavailable("could not find the broker")


def _new_broker_role(config: PeerConfig, db: Database, http: requests.Session, membership: Membership, epoch: int,
                     metrics: Metrics) -> BrokerRole:
    return BrokerRole(
        db.sessions,
        name=config.name,
        url=config.url,
        epoch=epoch,
        policy=config.placement_policy,
        stale_factor=config.report_stale_factor,
        http=http,
        on_change=membership.apply,
        dead_after=config.heartbeat_interval * (config.heartbeat_misses + 1),
        cert=None if config.insecure_http else Path(config.tls_cert).read_text(),
        on_place=metrics.placed,
        split_waves_ahead=None if config.split_waves_ahead < 0 else config.split_waves_ahead,
    )


def _report_placement_failure(services: "PeerServices", peer: str) -> None:
    """Tell the broker that sending a piece to ``peer`` failed, so it can ban a peer that keeps failing.

    Best effort and short: the inputs are already on their way elsewhere, and
    a broker that cannot be told only bans less.
    """
    if services.broker_role is not None:
        try:
            services.broker_role.report_failure(peer)
        except UnknownPeer:
            pass
        return
    broker = services.membership.broker
    if broker is None:
        return
    try:
        services.http.post(f"{broker['url']}/api/v1/broker/placements/outcome",
                           json={"peer": peer, "ok": False}, timeout=min(services.config.peer_timeout, 2.0))
    except requests.RequestException as exc:
        log.info("could not report the failed forward to %s to the broker: %s", peer, exc)


def _job_rows(db: Database):
    """``ids -> the ones that have a job row`` (for the start-up sweep of orphaned staging directories)."""
    from sqlalchemy import select

    from .models import Job

    def known(ids: list[str]) -> set[str]:
        with db.sessions() as s:
            return set(s.scalars(select(Job.id).where(Job.id.in_(ids))))

    return known


def _report_placed(services: "PeerServices", job_key: str, peer: str, job_id: str,
                   failed: list[dict[str, str]]) -> None:
    """Tell the broker who took the job (and who failed first), for the admins' decision list.

    Off the request path (a thread) and best effort: the job exists either way.
    """
    role = services.broker_role
    if role is not None:
        role.record_outcome(job_key, peer, job_id=job_id, failed=failed)
        try:
            role.report_success(peer)
        except UnknownPeer:
            pass
        return
    broker = services.membership.broker
    if broker is None:
        return

    def send() -> None:
        try:
            services.http.post(f"{broker['url']}/api/v1/broker/placements/outcome",
                               json={"peer": peer, "ok": True, "job_key": job_key, "job_id": job_id, "failed": failed},
                               timeout=min(services.config.peer_timeout, 5.0))
        except requests.RequestException as exc:
            log.info("could not report where job %s went to the broker: %s", job_id, exc)

    threading.Thread(target=send, name="placement-outcome", daemon=True).start()


def _http_session(config: PeerConfig) -> requests.Session:
    """Peer-to-peer HTTP: verifies peers against the site CA and presents our host certificate."""
    pool = config.threads
    session = Session() if config.insecure_http else Session(verify=config.tls_ca,
                                                             cert=(config.tls_cert, config.tls_key))
    # every call made while serving a request carries its X-Request-ID (peer/request_ids.py)
    adapter = request_ids.RequestIdAdapter(pool_connections=pool, pool_maxsize=pool)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = "pocketgrid-peer/0.1"
    return session


def build_services(config: PeerConfig) -> PeerServices:
    config.resolve_tls()
    config.state_path.mkdir(mode=0o700, parents=True, exist_ok=True)
    config.state_path.chmod(0o700)  # the peer's alone: jobs and other accounts must not read it
    from .executors.sandbox import SandboxSettings, exposed_files

    for warning in exposed_files([config.state_path] + ([] if config.insecure_http else [Path(config.tls_key)])):
        log.warning("SECRET EXPOSED: %s", warning)
    db = Database(config.sqlalchemy_url)
    db.upgrade_schema()  # Alembic, to head, before anything uses the database (peer/migrations/)
    metrics = Metrics(peer=config.name)  # this app's own registry: several peers may share a process
    http = _http_session(config)
    publishing = PublishingArea(config.publish_path)
    digests = DigestCache(db)
    stager = Stager(config.stage_path, http=http, chunk_bytes=config.transfer_chunk_bytes,
                    on_staged=metrics.staged_bytes)
    stager.sweep_incomplete()
    stager.sweep_orphans(_job_rows(db), peer_name=config.name)  # before any request: nothing is committing
    executor = choose_executor(
        config.executor,
        db,
        config.stage_path,
        peer_name=config.name,
        slots=config.local_slots,
        max_restarts=config.local_max_restarts,
        sandbox=SandboxSettings(job_user=config.job_user, network=config.job_network,
                                allow_unisolated=config.allow_unisolated_jobs),
        condor_options={"probe_interval": config.condor_probe_interval, "probe_timeout": config.condor_probe_timeout,
                        "removal_timeout": config.condor_removal_timeout},
    )
    membership = Membership(db, name=config.name, url=config.url, http=http, timeout=config.peer_timeout)
    broker_role = None
    if not config.join:
        # No --join: hold the role, unless the system moved on while we were
        # away (a returning old broker sees the higher epoch and rejoins).
        view = membership.probe()
        if view is not None and view["broker"]["name"] != config.name and membership.better(
            int(view["epoch"]), view["broker"], view.get("members")
        ):
            log.warning("broker is %s (epoch %s): joining it as a plain peer", view["broker"]["name"], view["epoch"])
            membership.follow(view["broker"], int(view["epoch"]))
        else:
            broker_role = _new_broker_role(config, db, http, membership, max(membership.epoch, 1), metrics)
            broker_role.seed(membership.members(with_certs=True))
            broker_role.ensure_self_registered()
            membership.become_broker(max(membership.epoch, 1))
            membership.apply(broker_role.membership())
    quotas = Quotas(peer_name=config.name, db=db, stage_root=config.stage_path, publishing=publishing,
                    limit_bytes=config.user_quota_bytes, records_root=config.state_path / "records")
    services: PeerServices  # the job manager calls back into services.split
    from .executors.policy import load_site_policy

    # the peer's own URL host is the site's too: a job's URLs may not point back at it
    policy = load_site_policy(config.submit_policy, site_host_names=[urlsplit(config.url).hostname or ""])
    jobs = JobService(
        policy=policy,
        name=config.name,
        db=db,
        publishing=publishing,
        stager=stager,
        executor=executor,
        digests=digests,
        max_inputs=config.max_inputs_per_job,
        quotas=quotas,
        retention_seconds=config.job_retention_seconds,
    )
    store = RecordStore(db)
    records_root = config.state_path / "records"
    security = build_security(config, db, membership, http)

    def proof(owner: str, vo: str | None, site: str) -> dict[str, str]:
        """The owner's proof for ``site``: a delegation the home signs for that site alone (peer/auth.py)."""
        if config.insecure_http or security.tokens is None:
            return {}
        user = json.dumps({"dn": owner, "vo": vo, "source": "job manager"})
        return {USER_HEADER: user, TOKEN_HEADER: security.tokens.delegate(owner, vo, site)}

    def check_input(meta: dict[str, Any]) -> str | None:
        """An input is still the file that was submitted (else it fails at once, saying so)."""
        try:
            path = publishing.file(meta["path"])
            if path.stat().st_size == meta["size"] and digests.sha256(path) == meta["sha256"]:
                return None
        except (PocketgridError, OSError):
            pass
        return (f"the input {meta['path']} changed (or is gone) since the job was submitted: "
                "submit the job again to run it on the new file")

    dispatcher = Dispatcher(name=config.name, http=http, accept_local=jobs.accept, proof=proof,
                            timeout=max(config.peer_timeout, 120.0))
    manager = JobManager(
        name=config.name,
        url=config.url,
        store=store,
        jobs=jobs,
        dispatcher=dispatcher,
        http=http,
        membership=membership,
        split=lambda *args, **kw: services.split(*args, **kw),
        report_failure=lambda peer: _report_placement_failure(services, peer),
        report_placed=lambda key, peer, job_id, failed: _report_placed(services, key, peer, job_id, failed),
        check_input=check_input,
        purge_local=lambda piece: services.retention.purge_piece(piece),
        records_root=records_root,
        limits=Limits(max_attempts=config.max_attempts, retry_backoff=config.retry_backoff,
                      max_evictions=config.max_evictions),
        monitor_interval=config.monitor_interval,
        site_lost_after=config.site_lost_after,
        peer_timeout=config.peer_timeout,
    )
    replicas = Replicas(name=config.name, url=config.url, store=store, membership=membership, http=http,
                        records_root=records_root, publishing=publishing, digests=digests,
                        limits=manager.limits, site_lost_after=config.site_lost_after,
                        peer_timeout=config.peer_timeout, chunk_bytes=config.transfer_chunk_bytes,
                        wake=manager.wake)
    manager.replicas = replicas
    manager.check_copy = replicas.check_copy
    jobs.replica_input = replicas.input_path
    home = JobHome(
        name=config.name,
        db=db,
        store=store,
        publishing=publishing,
        digests=digests,
        jobs=jobs,
        membership=membership,
        http=http,
        records_root=records_root,
        wake=manager.wake,
        unreachable=manager.unreachable_sites,
        policy=policy,
        max_inputs=config.max_inputs_per_job,
        peer_timeout=config.peer_timeout,
        retention_seconds=config.job_retention_seconds,
        remove_now=manager.remove_now,
        replicas=replicas,
        site_lost_after=config.site_lost_after,
    )
    in_use = InUse()
    retention = Retention(name=config.name, db=db, jobs=jobs, stager=stager, publishing=publishing, in_use=in_use,
                          job_seconds=config.job_retention_seconds, upload_seconds=config.upload_retention_seconds,
                          idempotency_seconds=config.idempotency_key_seconds,
                          interval=config.retention_sweep_interval, quotas=quotas, store=store,
                          records_root=records_root, wake=manager.wake, site_lost_after=config.site_lost_after)
    retention.also.append(security.audit.flush)  # summaries of rate-limited refusals, also when the flood stopped
    services = PeerServices(
        config=config,
        db=db,
        http=http,
        publishing=publishing,
        digests=digests,
        stager=stager,
        executor=executor,
        membership=membership,
        jobs=jobs,
        home=home,
        manager=manager,
        replicas=replicas,
        broker_role=broker_role,
        security=security,
        parking=Parking(config.max_parked_requests or default_limit(config.threads)),
        in_use=in_use,
        quotas=quotas,
        retention=retention,
        metrics=metrics,
    )
    # jobs and inputs by state: from the records of the jobs whose home is here
    metrics.watch(services, records_counts(services))
    return services


class PeerJSONProvider(DefaultJSONProvider):
    """Flask's JSON, but a body nested too deeply for the parser is the client's error (400), not a 500."""

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        try:
            return super().loads(s, **kwargs)
        except RecursionError:
            raise BadRequest("JSON nested too deeply: send a flatter document") from None


def _relative_redirect(response: Response) -> Response:
    """Werkzeug's slash redirects (308, merge_slashes/strict_slashes) name the host of the request's
    Host header, which a client chooses: keep only the path and query, so no answer points elsewhere."""
    if 300 <= response.status_code < 400 and "Location" in response.headers:
        parts = urlsplit(response.headers["Location"])
        path = "/" + parts.path.lstrip("/")  # never "//host": a network-path reference
        response.headers["Location"] = urlunsplit(("", "", path, parts.query, ""))
    return response


def create_app(config: PeerConfig | None = None, *, start_services: bool = True) -> Flask:
    config = config or PeerConfig.load()
    app = Flask("pocketgrid.peer")
    app.json = PeerJSONProvider(app)
    app.config["MAX_CONTENT_LENGTH"] = config.max_body_bytes
    app.json.sort_keys = False
    services = build_services(config)
    app.extensions["pocketgrid"] = services
    request_ids.install(app)  # first: every later hook's log lines carry the request's ID
    services.metrics.install(app)  # before check_access: refused requests are counted and timed too
    if config.access_log:
        access_log.install(app)
    for bp in (api_system.bp, api_auth.bp, api_admin.bp, api_files.bp, api_jobs.bp, api_events.bp, api_peer.bp,
               broker_api.bp):
        app.register_blueprint(bp)
    uploads = api_uploads.init_app(app)  # tus resumable uploads (its store sweeps expired uploads now)
    services.retention.also.append(uploads.sweep)  # and with every retention sweep from then on
    webapp.install(app)  # the phone web app at / (its paths never shadow /api/)
    app.before_request(check_access)
    app.before_request(check_csrf)  # after check_access: it reads the identity check_access resolved
    security_headers.install(app)
    app.after_request(_relative_redirect)
    compression.install(app)  # registered last, runs first: the hooks above see (and count) the bytes sent
    _register_error_handlers(app)
    if start_services:
        services.start()
    return app


def _register_error_handlers(app: Flask) -> None:
    @app.errorhandler(NotYours)
    def _probe(exc: NotYours):
        """Another user's job: the same 404 as an unknown job, and a (rate-limited) audit record."""
        from .auth import identity

        who = identity(required=False)
        svc = app.extensions["pocketgrid"]
        if who is not None:
            svc.security.audit.refused("job-probe", dn=who.dn, source=who.source, outcome="denied",
                                       what="requests for other users' jobs",
                                       detail=f"{request.method} {request.path[:200]}: job {exc.job_id} belongs to "
                                              f"{exc.owner}")
        return _pocketgrid_error(exc)

    @app.errorhandler(PocketgridError)
    def _pocketgrid_error(exc: PocketgridError):
        response = jsonify(exc.to_dict())
        response.status_code = exc.status
        retry_after = exc.details.get("retry_after")
        if retry_after is not None:
            response.headers["Retry-After"] = str(retry_after)
        if exc.status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="pocketgrid"'
        return response

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        response = jsonify({"error": exc.description, "status": exc.code})
        response.status_code = exc.code or 500
        for name, value in exc.get_headers():  # e.g. Allow on a 405 (MethodNotAllowed.valid_methods)
            if name.lower() != "content-type":
                response.headers[name] = value
        if isinstance(exc, RequestedRangeNotSatisfiable) and exc.length is not None:
            response.headers["Content-Range"] = f"bytes */{exc.length}"
        return response

    @app.errorhandler(RecursionError)
    def _too_deep(exc: RecursionError):
        # JSON bodies are caught by PeerJSONProvider; this catches the rest (a JSON form field, say)
        log.warning("request refused: input nested too deeply for the parser (%s %s)", request.method, request.path)
        response = jsonify({"error": "input nested too deeply (JSON?): send a flatter document", "status": 400})
        response.status_code = 400
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("unhandled error")
        response = jsonify({"error": f"internal error: {type(exc).__name__}", "status": 500})
        response.status_code = 500
        return response
