"""Shared test helpers: real peer processes on free loopback ports."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

import pytest
import requests

from pocketgrid import pki
from pocketgrid.loopback import free_port, report_load  # noqa: F401  (used by the test modules)
from pocketgrid.loopback import wait_until as _wait_until

ROOT = Path(__file__).resolve().parent.parent


def wait_until(predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05, what: str = "condition") -> Any:
    """Poll until ``predicate()`` is truthy; fail the test at the deadline."""
    try:
        return _wait_until(predicate, timeout, interval, what)
    except TimeoutError as exc:
        raise AssertionError(str(exc)) from None


class PeerProcess:
    """A real ``pocketgrid serve`` process.  With ``--pki`` in ``args`` it serves TLS (mutual TLS
    between peers); without, the test is about something else and the peer runs ``--insecure-http``."""

    def __init__(self, name: str, state: Path, port: int, args: list[str], env: dict[str, str]) -> None:
        self.name = name
        self.state = state
        self.port = port
        self.tls = "--pki" in args
        self.url = f"{'https' if self.tls else 'http'}://127.0.0.1:{port}"
        self.ca = str(Path(args[args.index("--pki") + 1]) / "ca.pem") if self.tls else None
        self.args = args if self.tls else [*args, "--insecure-http"]
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def publish(self) -> Path:
        return self.state / "publish"

    def start(self) -> "PeerProcess":
        self.state.mkdir(parents=True, exist_ok=True)
        log = open(self.state / "peer.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pocketgrid.cli", "serve", "--name", self.name, "--port", str(self.port),
             "--state", str(self.state), *self.args],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env, cwd=ROOT,
            start_new_session=True,
        )
        log.close()
        wait_until(self.healthy, 90, what=f"peer {self.name} to answer /healthz")
        return self

    def healthy(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"peer {self.name} exited: {self.log_tail()}")
        return requests.get(f"{self.url}/healthz", timeout=2, verify=self.ca or True).ok

    def log_tail(self, n: int = 4000) -> str:
        try:
            return (self.state / "peer.log").read_text()[-n:]
        except OSError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 25) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        if sig == signal.SIGKILL:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the gunicorn master and worker, not the job runners
        else:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture
def peers(tmp_path):
    """Factory: ``peers("site-a", join=..., extra=[...])`` starts a real peer process."""
    started: list[PeerProcess] = []
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    def start(name: str, *, join: str | None = None, extra: list[str] | None = None,
              site_pki: "SitePki | None" = None) -> PeerProcess:
        args = ["--threads", "8", *(extra or [])]
        if join:
            args += ["--join", join]
        if site_pki is not None:  # TLS, mutual TLS between peers, carol as administrator
            args = secure_args(site_pki, name, *args)
        p = PeerProcess(name, tmp_path / name, free_port(), args, env)
        p.site_pki = site_pki
        p.start()
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()


class SitePki:
    """A site PKI for tests: a CA, host certificates on demand, and users alice, bob and carol."""

    USERS = {"alice": ("Alice", "cms"), "bob": ("Bob", "atlas"), "carol": ("Carol Admin", "cms")}

    def __init__(self, root: Path) -> None:
        self.root = root
        pki.init_ca(root)
        self.users = {key: pki.issue_user(root, cn, vo=vo, file_name=key) for key, (cn, vo) in self.USERS.items()}

    @property
    def ca(self) -> str:
        return str(self.root / "ca.pem")

    def host(self, name: str) -> pki.Issued:
        cert = self.root / "hosts" / f"{name}.pem"
        if cert.exists():
            return pki.Issued(cert, cert.with_suffix(".key"), pki.load_certificate(cert).subject.rfc4514_string())
        return pki.issue_host(self.root, name)

    def dn(self, user: str) -> str:
        return self.users[user].subject


@pytest.fixture(scope="session")
def site_pki(tmp_path_factory) -> SitePki:
    return SitePki(tmp_path_factory.mktemp("site-pki"))


def user_session(peer: PeerProcess, site_pki: SitePki, user: str) -> requests.Session:
    """A plain session (no retries) logged in to ``peer`` as ``user`` by certificate challenge-response."""
    from mobile_client import Client
    from pocketgrid.http import Session

    issued = site_pki.users[user]
    token = Client(peer.url, ca=site_pki.ca, retries=0).login(issued.cert_path, issued.key_path)["token"]
    session = Session(verify=site_pki.ca)
    session.headers["Authorization"] = f"Bearer {token}"
    return session


def host_session(site_pki: SitePki, name: str) -> requests.Session:
    """A session presenting ``name``'s host certificate (mutual TLS), as a peer or agent does."""
    from pocketgrid.http import Session

    issued = site_pki.host(name)
    return Session(verify=site_pki.ca, cert=(str(issued.cert_path), str(issued.key_path)))


def secure_args(site_pki: SitePki, name: str, *extra: str) -> list[str]:
    """``serve`` options for a TLS peer of the test site, carol as bootstrap administrator."""
    site_pki.host(name)
    return ["--pki", str(site_pki.root), "--admin", site_pki.dn("carol"), *extra]


# ---- HTCondor: the tests' own configuration (issue 16) ------------------------------------------
#
# The htcondor2 bindings and the condor_* tools find the machine's HTCondor configuration by
# themselves, so "no schedd answers" would be whatever the host has.  Every test therefore runs with a
# configuration of its own that names a schedd and a collector where nothing listens; child processes
# (peers, the htcondor2 helper, the agent's pool query, condor_* tools) inherit it through the
# environment.  Only the tests marked ``condor`` use the host's pool, through ``host_condor()``.

#: The host's own HTCondor settings, as the tests found them (restored by ``host_condor()``).
HOST_CONDOR_ENV = {k: v for k, v in os.environ.items() if k == "CONDOR_CONFIG" or k.upper().startswith("_CONDOR_")}


def write_condor_config(directory: Path, address: str) -> Path:
    """An HTCondor configuration in ``directory`` whose schedd and collector are ``address`` (host:port)."""
    local = directory / "condor"
    for sub in ("log", "spool", "execute", "lock", "run"):
        (local / sub).mkdir(parents=True, exist_ok=True)
    path = directory / "condor_config"
    path.write_text(
        "# written by tests/conftest.py: nothing listens at this address\n"
        f"LOCAL_DIR = {local}\nLOG = $(LOCAL_DIR)/log\nSPOOL = $(LOCAL_DIR)/spool\n"
        "EXECUTE = $(LOCAL_DIR)/execute\nLOCK = $(LOCAL_DIR)/lock\nRUN = $(LOCAL_DIR)/run\n"
        f"SCHEDD_HOST = {address}\nCOLLECTOR_HOST = {address}\nuse_shared_port = false\n"
    )
    return path


def _reload_htcondor() -> None:
    """Make the bindings already imported in this process read the configuration again."""
    for name in ("htcondor2", "htcondor"):
        module = sys.modules.get(name)
        if module is not None and hasattr(module, "reload_config"):
            module.reload_config()


@contextmanager
def condor_environment(settings: dict[str, str]):
    """Exactly ``settings`` as this process's CONDOR_CONFIG/_CONDOR_* variables (and its bindings')."""
    with pytest.MonkeyPatch.context() as mp:
        for k in list(os.environ):
            if k == "CONDOR_CONFIG" or k.upper().startswith("_CONDOR_"):
                mp.delenv(k)
        for k, v in settings.items():
            mp.setenv(k, v)
        _reload_htcondor()
        try:
            yield
        finally:
            mp.undo()
            _reload_htcondor()


@contextmanager
def refused_address():
    """``127.0.0.1:PORT`` of a socket that is bound but never listens: every connection is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture(scope="session", autouse=True)
def own_condor_config(tmp_path_factory) -> Any:
    """The whole session runs with an HTCondor configuration of its own (see above)."""
    with refused_address() as address:
        path = write_condor_config(tmp_path_factory.mktemp("condor-config"), address)
        with condor_environment({"CONDOR_CONFIG": str(path)}):
            yield path


@pytest.fixture
def no_schedd(tmp_path: Path) -> Any:
    """This test's own HTCondor configuration, in its tmp dir: no schedd answers.  Yields the address."""
    with refused_address() as address:
        path = write_condor_config(tmp_path / "no-schedd", address)
        with condor_environment({"CONDOR_CONFIG": str(path)}):
            yield address


@contextmanager
def host_condor():
    """The host's own HTCondor configuration, for the ``condor``-marked tests (a real pool) only."""
    with condor_environment(HOST_CONDOR_ENV):
        yield


def start_secure(root: Path, site_pki: SitePki, name: str, *extra: str, join: PeerProcess | None = None,
                 env: dict[str, str] | None = None) -> PeerProcess:
    """A started TLS peer of the test site (no agent, 8 threads) in ``root/name``, joining ``join`` if given."""
    args = secure_args(site_pki, name, "--no-agent", "--threads", "8", *extra)
    if join:
        args += ["--join", join.url]
    return PeerProcess(name, root / name, free_port(), args, {**os.environ, **(env or {})}).start()


def login_client(peer: PeerProcess, site_pki: SitePki, user: str) -> Any:
    """A client (no retries) logged in to ``peer`` as ``user`` with the user's certificate."""
    from mobile_client import Client

    issued = site_pki.users[user]
    c = Client(peer.url, ca=site_pki.ca, retries=0)
    c.login(issued.cert_path, issued.key_path)
    return c
