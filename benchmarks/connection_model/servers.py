"""The candidate servers, each started on the fixture's state (benchmarks/connection_model/fixture.py).

Every candidate listens with TLS on the fixture's port and serves the same app code:

* ``gthread32``        TODAY'S PRODUCT: ``pocketgrid serve --pki ... --threads 32`` (one gthread worker);
* ``gthread1000``      prototype: one gthread worker with 1000 threads (and room for 3000 connections);
* ``gthread32x2``      prototype: two gthread workers of 32 threads (breaks the once-per-peer rule: measure only);
* ``gevent``           prototype: gunicorn's gevent worker (one process, greenlets instead of threads);
* ``aio+gthread32``    prototype asyncio front (proto_aio_front.py, long-polls wait on its loop) in front of one
                       gthread worker of 32 threads on a Unix socket;
* ``aio+gthread16x2``  the same front in front of two gthread workers of 16 threads;
* ``nginx+gthread32``  Debian's nginx (1 worker process: TLS, client certificate verification, request
                       buffering, timeouts) in front of one gthread worker on a Unix socket;
* ``nginx+gthread16x2`` nginx in front of two gthread workers of 16 threads.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import requests

from ..harness import ROOT

NGINX_CONF = """
worker_processes {workers};
# benchmark only: the workers must reach the 0600 backend socket of the peer's account (production: a shared group)
user root;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
worker_rlimit_nofile 20000;
events {{ worker_connections 10000; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    # Read timeouts: the TLS handshake and the request head (client_header_timeout), the body (between reads).
    client_header_timeout 10s;
    client_body_timeout 10s;
    send_timeout 30s;
    keepalive_timeout 75s;
    client_max_body_size 64m;
    upstream backend {{
        server unix:{socket};
        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{port} ssl default_server;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        # Mutual TLS as the product does it: a client certificate is optional, but must verify if presented.
        ssl_client_certificate {ca};
        ssl_verify_client optional;
        ssl_verify_depth 2;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $remote_addr;
            # The verified certificate for the app; these replace anything the client sent under the same names.
            proxy_set_header X-Pg-Client-Cert $ssl_client_escaped_cert;
            proxy_set_header X-Pg-Client-Verify $ssl_client_verify;
            proxy_read_timeout 130s;
        }}
    }}
}}
"""


@dataclass
class Running:
    name: str
    url: str
    procs: list[subprocess.Popen] = field(default_factory=list)
    tmp: Path | None = None
    notes: str = ""

    def pids(self) -> list[int]:
        """Every process of the server (masters, workers, front), not job runners."""
        out = []
        for p in self.procs:
            try:
                root = psutil.Process(p.pid)
            except psutil.Error:
                continue
            out.append(root.pid)
            for c in root.children(recursive=True):
                try:
                    if "local_runner" not in " ".join(c.cmdline()):
                        out.append(c.pid)
                except psutil.Error:
                    pass
        return out

    def roles(self) -> dict[int, str]:
        out = {}
        for pid in self.pids():
            try:
                argv = psutil.Process(pid).cmdline()
                cmd = " ".join(argv)
                parent = psutil.Process(pid).ppid()
            except psutil.Error:
                continue
            if argv and argv[0].startswith("nginx"):
                out[pid] = "nginx-master" if "master process" in cmd else "nginx-worker"
            elif "proto_aio_front" in cmd:
                out[pid] = "aio-front"
            elif parent in {p.pid for p in self.procs}:
                out[pid] = "gunicorn-worker"
            else:
                out[pid] = "gunicorn-master"
        return out

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(self.procs):
            try:
                p.wait(25)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)


def _popen(cmd: list[str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as fh:
        return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)


def _wait_socket(path: Path, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"backend exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"no socket {path}")
        time.sleep(0.1)


def _wait_ready(url: str, ca: str, procs: list[subprocess.Popen], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"{p.args[:4]} exited with {p.returncode}")
        try:
            if requests.get(f"{url}/healthz", verify=ca, timeout=2).ok:
                return
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} not ready")
        time.sleep(0.2)


def start(name: str, fx: dict[str, Any], workdir: Path, log_level: str = "INFO") -> Running:
    py = sys.executable
    port = fx["port"]
    url = f"https://127.0.0.1:{port}"
    tmp = workdir / f"srv-{name.replace('+', '-')}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    log = tmp / "server.log"
    proto = [py, "-m", "benchmarks.connection_model.proto_gunicorn", "--fixture", str(Path(fx["state"]).parent),
             "--log-level", log_level]
    run = Running(name, url, tmp=tmp)
    sock = tmp / "backend.sock"
    if name == "gthread32":
        run.procs.append(_popen([py, "-m", "pocketgrid.cli", "serve", "--name", fx["name"], "--port", str(port),
                                 "--state", fx["state"], "--pki", fx["pki"], "--admin", fx["admin_dn"], "--no-agent",
                                 "--threads", "32", "--log-level", log_level], log))
    elif name == "gthread1000":
        run.procs.append(_popen(proto + ["--threads", "1000", "--worker-connections", "3000",
                                         "--max-parked", "990"], log))
    elif name == "gevent":
        run.procs.append(_popen(proto + ["--worker-class", "gevent", "--worker-connections", "3000",
                                         "--max-parked", "2000"], log))
    elif name == "gthread32x2":
        run.procs.append(_popen(proto + ["--workers", "2", "--threads", "32"], log))
    elif name.startswith(("aio+", "nginx+")):
        backend = name.split("+", 1)[1]
        workers, threads = (2, 16) if backend == "gthread16x2" else (1, 32)
        run.procs.append(_popen(proto + ["--workers", str(workers), "--threads", str(threads), "--bind",
                                         f"unix:{sock}", "--trusted-cert-header"], log))
        _wait_socket(sock, run.procs[0])
        if name.startswith("aio+"):
            run.procs.append(_popen([py, "-m", "benchmarks.connection_model.proto_aio_front", "--fixture",
                                     str(Path(fx["state"]).parent), "--port", str(port), "--backend", str(sock),
                                     "--loop-wait", "--uvloop"], tmp / "front.log"))
        else:
            pki = Path(fx["pki"])
            conf = tmp / "nginx.conf"
            conf.write_text(NGINX_CONF.format(workers=1, prefix=tmp, socket=sock, port=port, ca=fx["ca"],
                                              cert=pki / "hosts" / f"{fx['name']}.pem",
                                              key=pki / "hosts" / f"{fx['name']}.key"))
            run.procs.append(_popen(["nginx", "-c", str(conf), "-p", str(tmp), "-e", str(tmp / "error.log")],
                                    tmp / "nginx.out"))
    else:
        raise ValueError(name)
    try:
        _wait_ready(url, fx["ca"], run.procs)
    except BaseException:
        run.stop()
        raise
    return run


CANDIDATES = ["gthread32", "gthread1000", "gthread32x2", "aio+gthread32", "aio+gthread16x2", "nginx+gthread32",
              "nginx+gthread16x2"]
