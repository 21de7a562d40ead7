"""Peer configuration: one place, three layers.

Precedence (last wins): built-in safe defaults < a TOML file (``--config`` or
``$POCKETGRID_CONFIG``) < environment variables ``POCKETGRID_<FIELD>`` <
explicit command-line options.  Every field of :class:`PeerConfig` can be set
in each layer under the same name, so an operator never has to guess.
"""
from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping


@dataclass
class PeerConfig:
    """Everything a peer process needs; safe defaults for a laptop."""

    name: str = "peer"
    host: str = "127.0.0.1"
    port: int = 8650
    #: Base URL other peers and clients use to reach this peer.  Derived from
    #: host/port when empty; set it when the peer sits behind NAT or a proxy.
    public_url: str = ""
    state_dir: str = "./pocketgrid-state"
    #: The file publishing area (the paper's "file service" root).  Empty:
    #: ``<state_dir>/publish``.
    publish_dir: str = ""
    #: SQLAlchemy URL; empty = SQLite (WAL) in the state directory.
    database_url: str = ""
    executor: str = "auto"  # auto | local | condor
    #: Peers to join (comma separated in env/CLI).  Empty: start as broker.
    join: list[str] = field(default_factory=list)
    #: Run the EMA agent as a thread inside this peer.
    agent: bool = True
    agent_interval: float = 15.0
    agent_weights: dict[str, float] = field(default_factory=dict)
    #: The agent's reports carry the run times of this peer's procs that
    #: finished within this many seconds (peer/runtime_stats.py), which the
    #: broker's default policy learns from.
    runtime_window: float = 86400.0
    #: LocalExecutor: procs run at once (0 = number of CPUs).
    local_slots: int = 0
    #: LocalExecutor: how often a proc lost to a peer crash is re-run.
    local_max_restarts: int = 3
    #: LocalExecutor job isolation (peer/executors/sandbox.py): the account
    #: jobs run as when the peer is root; whether jobs may use the network;
    #: and whether jobs may run with NO isolation (as the peer's own account,
    #: able to read its host key) when neither bubblewrap nor an account
    #: switch is possible.  Only for a single-user machine.
    job_user: str = "nobody"
    job_network: bool = False
    allow_unisolated_jobs: bool = False
    #: Largest request body accepted (executable + submit file + uploads).
    max_body_bytes: int = 64 * 1024 * 1024
    #: Resumable uploads (tus, /api/v1/uploads): largest file in total (each
    #: PATCH is still at most ``max_body_bytes``), and how long an incomplete
    #: upload is kept after its last write.
    max_upload_bytes: int = 4 * 1024 * 1024 * 1024
    upload_expiry_seconds: float = 24 * 3600.0
    #: Retention (peer/retention.py), seconds; 0 = keep for ever.  A finished job
    #: (every proc final) and its staging directory and outputs go this long after
    #: it finished, unless pinned; a finished upload (``uploads/u-*/``) this long after
    #: its last write, unless a job still running here uses it; an Idempotency-Key
    #: this long after the submit (keep it shorter than the job retention).
    job_retention_seconds: float = 30 * 86400.0
    upload_retention_seconds: float = 30 * 86400.0
    idempotency_key_seconds: float = 7 * 86400.0
    #: How often the retention sweeper runs.
    retention_sweep_interval: float = 300.0
    #: Bytes one user's jobs and uploads may occupy on this peer (0 = no limit): a
    #: submission or upload that would go over is refused (413) with the numbers.
    user_quota_bytes: int = 50 * 1024 ** 3
    #: Audit records of refused tokens and of probes of other users' jobs per source
    #: address and minute; the rest are counted in one summary record.
    audit_refusals_per_minute: int = 10
    #: Largest file the in-file search ("grep") will read, and most matches.
    grep_max_file_bytes: int = 16 * 1024 * 1024
    grep_max_matches: int = 1000
    #: Most input files one job may name (each is a proc; 400 beyond).
    max_inputs_per_job: int = 1000
    #: Longest ``?wait=`` of a status long-poll.
    max_wait_seconds: float = 60.0
    #: Live job status (Server-Sent Events, peer/api_events.py): each open
    #: stream parks a server thread, so at most this many per user and peer
    #: (429 beyond), each closed after ``sse_stream_seconds`` (the browser
    #: reconnects with Last-Event-ID), a keepalive comment every ``sse_keepalive_seconds``.
    sse_max_streams_per_user: int = 4
    sse_stream_seconds: float = 60.0
    sse_keepalive_seconds: float = 15.0
    #: Requests that may hold a server thread while they wait (event streams
    #: and long-polls relayed to the job's home, peer/parking.py; a long-poll of
    #: a job whose home is here waits in the front); 0: all threads but a reserve
    #: of a quarter (at least 2) kept for health checks, logins and peer calls.
    max_parked_requests: int = 0
    #: Directory of the web app's files served at / (empty: the installed
    #: package's ``mobile_client/webapp``).
    webapp_dir: str = ""
    #: Server threads of the app process (one gunicorn worker, see docs/architecture.md).
    threads: int = 32
    # ---- the front (peer/front/: the process that owns the peer's connections) ----
    #: Client connections held at once, and from one address (0: no per-address
    #: limit; raise it when many users reach the peer through one NAT or proxy).
    #: Beyond either, a new connection is closed at once, before its TLS handshake.
    front_max_connections: int = 4096
    front_max_connections_per_address: int = 256
    #: How long an idle keep-alive connection stays open between requests.
    front_keepalive_seconds: float = 75.0
    #: Deadlines: the TLS handshake; a complete request head (from a new
    #: connection, or from the first byte of the next request); the longest
    #: silence while a request body arrives (408 after it).
    front_handshake_timeout: float = 10.0
    front_header_timeout: float = 10.0
    front_body_timeout: float = 10.0
    #: On SIGTERM: how long requests in flight may still run before the app stops.
    front_shutdown_seconds: float = 10.0
    #: Status long-polls the front holds at once (peer/front/waits.py: a coroutine
    #: each, no thread), from one user and from one address (0: no limit); 429
    #: with Retry-After beyond any of them.
    front_max_waits: int = 10000
    front_max_waits_per_user: int = 64
    front_max_waits_per_address: int = 256
    #: Run the front on uvloop (``pip install uvloop``) instead of asyncio's own loop.
    front_uvloop: bool = False
    #: Chunk size used when this peer downloads inputs from another peer.
    transfer_chunk_bytes: int = 1024 * 1024
    #: Timeout of peer-to-peer calls.
    peer_timeout: float = 10.0
    # ---- jobs across sites (peer/job_manager.py, docs/architecture.md) ----
    #: How often a job's home asks the other sites about its pieces (its own: at least every 0.5 s).
    monitor_interval: float = 2.0
    #: A site that has not answered its jobs' home for this long loses the attempts it holds.
    site_lost_after: float = 120.0
    #: Most attempts pocketgrid starts for one input after site failures (per round; a retry starts one).
    max_attempts: int = 4
    #: The n-th attempt of an input waits retry_backoff * 2^(n-2) seconds before it is sent.
    retry_backoff: float = 5.0
    #: An attempt evicted this many times at its site is lost (and runs elsewhere).
    max_evictions: int = 3
    #: Broker, late binding (broker/split.py): a split of a job's inputs gives each site its free slots
    #: plus at most this many waves of its slots of queue; the rest wait at the job's home and are split
    #: again as sites report free slots.  -1: every input is given at once (no late binding): the default,
    #: as late binding did not shorten issue 14's 200-input job (benchmarks/placement/README.md).
    split_waves_ahead: float = -1.0
    #: Broker: a report older than this many intervals marks a peer stale.
    report_stale_factor: float = 3.0
    #: Placement policy name: least-expected-load, least-expected-load-nominal
    #: (learns no run times), min-coefficient, round-robin or random (see
    #: broker/placement.py).
    placement_policy: str = "least-expected-load"
    #: Peers heartbeat the broker this often; when none has been answered for
    #: ``heartbeat_misses`` intervals (and that many failed in a row, retried
    #: every interval/misses) they elect a new one.
    heartbeat_interval: float = 5.0
    heartbeat_misses: int = 3
    #: CondorExecutor: seconds between probes of the schedd (its health in /healthz, this site's idle
    #: and held procs, why idle procs wait), each with ``condor_probe_timeout``; how long a kill waits
    #: for the schedd before it is remembered and carried out later (202).
    condor_probe_interval: float = 15.0
    condor_probe_timeout: float = 5.0
    condor_removal_timeout: float = 5.0
    #: TOML file with this site's submit-file policy (table [policy]: allow_/forbid_
    #: universes, keys, attributes; see peer/executors/policy.py).  Empty: the defaults.
    submit_policy: str = ""
    #: Unused since jobs spread over sites (a submission no longer waits for
    #: the broker: its home records it and sends it on later); kept so that
    #: existing configuration files still load.
    election_wait: float = 0.0
    # ---- security (docs/security.md) ------------------------------------
    #: This peer's host certificate and key (PEM) and the site CA bundle.
    #: Every server speaks TLS with them; peers present the host certificate
    #: as a TLS client certificate to each other (mutual TLS).
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str = ""
    #: A ``pocketgrid pki`` directory: fills the three above from
    #: ``ca.pem`` and ``hosts/<name>.pem|.key`` when they are empty.
    pki_dir: str = ""
    #: Optional certificate chain and key for the names people type into a
    #: browser (phones trust public CAs, not the site CA): presented to
    #: connections whose TLS server name (SNI) is not this peer's own URL host;
    #: peers and agents keep getting the site certificate (peer/tls_context.py).
    web_tls_cert: str = ""
    web_tls_key: str = ""
    #: Plain HTTP and no authentication at all (everyone is ``anonymous``).
    #: Local development only; the peer logs a loud warning.
    insecure_http: bool = False
    #: Bootstrap administrators: subject DNs that always hold every right
    #: (separate several with ';' in env/CLI: DNs contain commas).
    admins: list[str] = field(default_factory=list, metadata={"separator": ";"})
    #: Groups any authenticated user holds unless a rule denies them.
    acl_default_allow: list[str] = field(default_factory=lambda: ["files-read", "jobs-submit", "jobs-manage"])
    #: Lifetimes, seconds: login tokens, device (paired phone) tokens,
    #: login challenges and pairing codes.
    token_lifetime: float = 8 * 3600.0
    device_token_lifetime: float = 30 * 86400.0
    challenge_lifetime: float = 60.0
    pairing_code_lifetime: float = 300.0
    #: Wrong pairing codes one address may try per window before 429.
    pairing_max_failures: int = 5
    pairing_failure_window: float = 300.0
    log_level: str = "INFO"
    #: Logs (pocketgrid/logging_setup.py): ``text`` or ``json`` (JSON lines);
    #: a file (empty: stderr) rotated at ``log_max_bytes`` keeping
    #: ``log_backups`` old files (0 bytes: no rotation, reopened after logrotate).
    log_format: str = "text"
    log_file: str = ""
    log_max_bytes: int = 10 * 1024 * 1024
    log_backups: int = 5
    #: One access-log line per request (logger ``pocketgrid.access``).
    access_log: bool = True
    #: Who may read the Prometheus metrics at ``/metrics`` (peer/access.py):
    #: ``loopback-or-admin`` (requests from 127.0.0.0/8 or ::1 without
    #: credentials, and administrators), ``admin`` (administrators only) or
    #: ``open`` (anyone who reaches the peer).
    metrics_access: str = "loopback-or-admin"

    # ---- derived ----------------------------------------------------------
    @property
    def url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        scheme = "http" if self.insecure_http else "https"
        return f"{scheme}://{self.host}:{self.port}"

    def resolve_tls(self) -> None:
        """Fill the TLS paths from ``pki_dir`` and check them; raise ValueError with what to do."""
        if self.insecure_http:
            return
        if self.pki_dir:
            pki = Path(self.pki_dir)
            self.tls_ca = self.tls_ca or str(pki / "ca.pem")
            self.tls_cert = self.tls_cert or str(pki / "hosts" / f"{self.name}.pem")
            self.tls_key = self.tls_key or str(pki / "hosts" / f"{self.name}.key")
        missing = [n for n in ("tls_cert", "tls_key", "tls_ca") if not getattr(self, n)]
        if missing:
            raise ValueError(
                "TLS is required: give --pki DIR (made by `pocketgrid pki`) or tls_cert, tls_key and tls_ca; "
                "for local development only, --insecure-http"
            )
        for n in ("tls_cert", "tls_key", "tls_ca"):
            if not Path(getattr(self, n)).is_file():
                raise ValueError(f"{n}: no such file {getattr(self, n)!r} (create it with `pocketgrid pki`)")
        if bool(self.web_tls_cert) != bool(self.web_tls_key):
            raise ValueError("web_tls_cert and web_tls_key go together: give both (the chain and its key) or neither")
        for n in ("web_tls_cert", "web_tls_key"):
            if getattr(self, n) and not Path(getattr(self, n)).is_file():
                raise ValueError(f"{n}: no such file {getattr(self, n)!r}")

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir).resolve()

    @property
    def publish_path(self) -> Path:
        return Path(self.publish_dir).resolve() if self.publish_dir else self.state_path / "publish"

    @property
    def stage_path(self) -> Path:
        return self.state_path / "stage"

    @property
    def sqlalchemy_url(self) -> str:
        return self.database_url or f"sqlite:///{self.state_path / 'pocketgrid.db'}"

    # ---- loading -----------------------------------------------------------
    @classmethod
    def load(
        cls,
        toml_path: str | os.PathLike[str] | None = None,
        environ: Mapping[str, str] | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> "PeerConfig":
        """Build a config from defaults, a TOML file, the environment and overrides."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        toml_path = toml_path or environ.get("POCKETGRID_CONFIG")
        if toml_path:
            with open(toml_path, "rb") as fh:
                data = tomllib.load(fh)
            values.update(data.get("peer", data))
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for name in fields:
            env_value = environ.get(f"POCKETGRID_{name.upper()}")
            if env_value is not None:
                values[name] = env_value
        for key, value in (overrides or {}).items():
            if value is not None:
                values[key] = value
        unknown = set(values) - set(fields)
        if unknown:
            raise ValueError(f"unknown configuration keys: {', '.join(sorted(unknown))}")
        config = cls()
        for key, value in values.items():
            setattr(config, key, _coerce(fields[key], value))
        config.check_choices()
        if config.split_waves_ahead < 0 and config.split_waves_ahead != -1:
            raise ValueError(f"split_waves_ahead: expected a number >= 0, or -1 (no late binding), "
                             f"got {config.split_waves_ahead}")
        return config

    #: Fields whose value is one of a few words.
    CHOICES = {"metrics_access": ("loopback-or-admin", "admin", "open")}

    def check_choices(self) -> None:
        """ValueError naming the field and the words it takes, for a value that is none of them."""
        for name, allowed in self.CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}: expected one of {', '.join(allowed)}, got {getattr(self, name)!r}")


def _coerce(f: dataclasses.Field, value: Any) -> Any:
    """Coerce strings from the environment/CLI into the field's type."""
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
    if not isinstance(value, str):
        return value
    if isinstance(default, bool):
        if value.lower() in {"1", "true", "yes", "on"}:
            return True
        if value.lower() in {"0", "false", "no", "off"}:
            return False
        raise ValueError(f"{f.name}: expected true/false, got {value!r}")
    if isinstance(default, int):
        return int(value)
    if isinstance(default, float):
        return float(value)
    if isinstance(default, list):
        return [v.strip() for v in value.split(f.metadata.get("separator", ",")) if v.strip()]
    if isinstance(default, dict):
        out: dict[str, float] = {}
        for item in value.split(","):
            if item.strip():
                k, _, v = item.partition("=")
                out[k.strip()] = float(v)
        return out
    return value
