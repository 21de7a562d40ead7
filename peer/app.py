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

import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

import requests
from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException, RequestedRangeNotSatisfiable

from broker import api as broker_api
from broker.models import BrokerBase
from broker.placement import JobRequest
from broker.role import BrokerRole
from pocketgrid.config import PeerConfig
from pocketgrid.errors import PocketgridError, Unavailable

from . import api_files, api_jobs, api_peer, api_system
from .auth import Identity, anonymous
from .db import Database
from .digests import DigestCache
from .executors import Executor, choose_executor
from .jobs import JobService
from .membership import Membership
from .models import Base
from .publishing import PublishingArea
from .staging import Stager

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
    broker_role: BrokerRole | None
    authenticate: Callable[[], Identity] = anonymous
    agent: Any = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _started: bool = False

    def current_broker(self) -> dict[str, str] | None:
        return self.membership.broker

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        self.executor.start()
        if self.config.join and self.broker_role is None:
            threading.Thread(
                target=self.membership.join, args=(self.config.join, self._stop), name="join", daemon=True
            ).start()
        if self.config.agent:
            from ema_agent.coefficient import Weights
            from ema_agent.reporter import Reporter

            self.agent = Reporter(
                self.config.name,
                self.config.url,
                [self.config.url, *self.config.join],
                interval=self.config.agent_interval,
                weights=Weights.from_dict(self.config.agent_weights),
            )
            self.agent.start_thread()

    def stop(self) -> None:
        self._stop.set()
        if self.agent is not None:
            self.agent.stop(timeout=5)
        self.executor.stop()
        self.db.dispose()

    # ---- placement, from the entry peer's point of view --------------------
    def place(self, job_key: str, n_procs: int, input_bytes: int) -> list[dict[str, Any]]:
        """Ask the broker (ourselves, or over HTTP) for a ranking of peers."""
        if self.broker_role is not None:
            ranking = self.broker_role.place(
                job_key, JobRequest(n_procs=n_procs, input_bytes={self.config.name: input_bytes}, entry_peer=self.config.name)
            )
            return [r.__dict__ for r in ranking]
        broker = self.membership.broker
        if broker is None:
            raise Unavailable("this peer has not joined a broker yet; retry shortly", retry_after=2)
        body = {
            "job_key": job_key,
            "n_procs": n_procs,
            "input_bytes": {self.config.name: input_bytes},
            "entry_peer": self.config.name,
        }
        for _hop in range(3):
            try:
                r = self.http.post(f"{broker['url']}/api/v1/broker/placements", json=body, timeout=self.config.peer_timeout)
            except requests.RequestException as exc:
                raise Unavailable(f"the broker {broker['name']} is unreachable ({type(exc).__name__}); retry shortly", retry_after=5) from None
            if r.status_code == 409 and r.json().get("broker"):
                broker = r.json()["broker"]
                continue
            if not r.ok:
                raise Unavailable(f"the broker refused placement: {r.text[:200]}", retry_after=5)
            return r.json()["ranking"]
        raise Unavailable("could not find the broker; retry shortly", retry_after=5)


def _http_session(pool: int) -> requests.Session:
    session = requests.Session()
    adapter = requests.adapters.HTTPAdapter(pool_connections=pool, pool_maxsize=pool)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = "pocketgrid-peer/0.1"
    return session


def build_services(config: PeerConfig) -> PeerServices:
    config.state_path.mkdir(parents=True, exist_ok=True)
    db = Database(config.sqlalchemy_url)
    db.create_all(Base.metadata, BrokerBase.metadata)
    http = _http_session(config.threads)
    publishing = PublishingArea(config.publish_path)
    digests = DigestCache(db)
    stager = Stager(config.stage_path, http=http, chunk_bytes=config.transfer_chunk_bytes)
    stager.sweep_incomplete()
    executor = choose_executor(
        config.executor,
        db,
        config.stage_path,
        peer_name=config.name,
        slots=config.local_slots,
        max_restarts=config.local_max_restarts,
    )
    membership = Membership(db, name=config.name, url=config.url, http=http, timeout=config.peer_timeout)
    broker_role = None
    if not config.join:
        broker_role = BrokerRole(
            db.sessions,
            name=config.name,
            url=config.url,
            epoch=1,
            policy=config.placement_policy,
            stale_factor=config.report_stale_factor,
            http=http,
            on_change=membership.apply,
        )
        broker_role.ensure_self_registered()
        membership.become_broker(1)
        membership.apply(broker_role.membership())
    services: PeerServices  # the job service calls back into services.place
    jobs = JobService(
        name=config.name,
        url=config.url,
        db=db,
        publishing=publishing,
        stager=stager,
        executor=executor,
        membership=membership,
        digests=digests,
        http=http,
        place=lambda key, n, b: services.place(key, n, b),
        peer_timeout=config.peer_timeout,
    )
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
        broker_role=broker_role,
    )
    return services


def create_app(config: PeerConfig | None = None, *, start_services: bool = True) -> Flask:
    config = config or PeerConfig.load()
    app = Flask("pocketgrid.peer")
    app.config["MAX_CONTENT_LENGTH"] = config.max_body_bytes
    app.json.sort_keys = False
    services = build_services(config)
    app.extensions["pocketgrid"] = services
    for bp in (api_system.bp, api_files.bp, api_jobs.bp, api_peer.bp, broker_api.bp):
        app.register_blueprint(bp)
    _register_error_handlers(app)
    if start_services:
        services.start()
    return app


def _register_error_handlers(app: Flask) -> None:
    @app.errorhandler(PocketgridError)
    def _pocketgrid_error(exc: PocketgridError):
        response = jsonify(exc.to_dict())
        response.status_code = exc.status
        retry_after = exc.details.get("retry_after")
        if retry_after is not None:
            response.headers["Retry-After"] = str(retry_after)
        return response

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        response = jsonify({"error": exc.description, "status": exc.code})
        response.status_code = exc.code or 500
        if isinstance(exc, RequestedRangeNotSatisfiable) and exc.length is not None:
            response.headers["Content-Range"] = f"bytes */{exc.length}"
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("unhandled error")
        response = jsonify({"error": f"internal error: {type(exc).__name__}", "status": 500})
        response.status_code = 500
        return response
