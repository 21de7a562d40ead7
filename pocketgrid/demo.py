"""``pocketgrid demo``: the whole path on loopback, verified end to end.

Creates a site PKI (CA, a host certificate per peer, a user certificate),
starts a broker-peer and two more peers (real `pocketgrid serve` processes: the TLS front and its app, with
mutual TLS between them, each with its EMA agent thread), logs the user in by
challenge-response, publishes sample data, submits a histogram analysis (one
proc per input) through a peer that is not the broker, pairs a "phone" with a
short code, follows the job from the phone with long-polls, fetches every
output in resumable chunks verified by SHA-256, merges the histograms, then
revokes the phone's token.  Exit status 0 only if all of that worked; every
process it started is stopped before it returns.

With ``--serve`` the peers then stay up for the web app: it prints the app's
URL, how to trust the demo CA, and a fresh pairing code (also as a QR code of
``https://HOST:PORT/#pair=CODE``, which the app reads) every few minutes,
until Ctrl-C.  ``--host 0.0.0.0`` lets a phone on the same network in: the
peers listen on every address and their host certificates also name this
machine's LAN address.
"""
from __future__ import annotations

import json
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path
from urllib.parse import urlsplit

import requests

from mobile_client import ApiError, Client
from pocketgrid.http import Session
from mobile_client.cli import _bar_factory, _status_text

from . import pki
from .loopback import free_port, wait_until

log = logging.getLogger("pocketgrid.demo")

PEERS = ("site-a", "site-b", "site-c")
AGENT_INTERVAL = 2.0
#: --serve: a new pairing code this often (codes live pairing_code_lifetime, 5 minutes).
CODE_EVERY = 240.0


class DemoFailed(Exception):
    pass


def wait_for(what: str, predicate, timeout: float, interval: float = 0.1):
    """Poll ``predicate`` until it returns a truthy value; DemoFailed at the deadline."""
    try:
        return wait_until(predicate, timeout, interval, what)
    except TimeoutError as exc:
        raise DemoFailed(str(exc)) from None


class Cluster:
    """Peers started as real processes; stopped (and reaped) on exit."""

    def __init__(self, root: Path, pki_dir: Path, admin: str, host: str = "127.0.0.1") -> None:
        self.root = root
        self.pki_dir = pki_dir
        self.admin = admin
        self.host = host
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.urls: dict[str, str] = {}

    def start_peer(self, name: str, join: str | None = None, extra: list[str] | None = None) -> str:
        port = free_port()
        url = f"https://127.0.0.1:{port}"
        state = self.root / name
        state.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pocketgrid.cli", "serve", "--name", name, "--port", str(port),
               "--state", str(state), "--agent-interval", str(AGENT_INTERVAL), "--threads", "8",
               "--pki", str(self.pki_dir), "--admin", self.admin]
        if join:
            cmd += ["--join", join]
        if self.host != "127.0.0.1":  # listen there for browsers; peers keep talking over loopback
            cmd += ["--host", self.host, "--public-url", url]
        cmd += extra or []
        logf = open(state / "peer.log", "ab")
        self.procs[name] = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            start_new_session=True)
        logf.close()
        self.urls[name] = url
        return url

    def wait_healthy(self, timeout: float = 30.0) -> None:
        for name, url in self.urls.items():
            def healthy(name=name, url=url):
                if self.procs[name].poll() is not None:
                    raise DemoFailed(f"peer {name} exited early; see {self.root / name / 'peer.log'}")
                return requests.get(f"{url}/healthz", timeout=2, verify=str(self.pki_dir / "ca.pem")).ok
            wait_for(f"peer {name} to answer", healthy, timeout)

    def wait_joined(self, broker_url: str, timeout: float = 30.0) -> None:
        """Until every peer is in the broker's membership (a token issued by a peer that has not joined
        yet is unknown to the others).  Asked with the broker's own host certificate."""
        host = self.pki_dir / "hosts" / PEERS[0]
        with Session(verify=str(self.pki_dir / "ca.pem"),  # keeps the site CA even with REQUESTS_CA_BUNDLE
                     cert=(str(host.with_suffix(".pem")), str(host.with_suffix(".key")))) as session:
            wait_for("every peer to join the broker",
                     lambda: len(session.get(f"{broker_url}/api/v1/broker", timeout=2).json()["members"]) == len(self.urls),
                     timeout)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 25
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def make_sample_data(publish: Path, n_inputs: int, n_values: int = 20000, seed: int = 2004) -> list[str]:
    rng = random.Random(seed)
    data = publish / "samples"
    data.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n_inputs):
        mean = rng.uniform(-1.0, 1.0)
        path = data / f"run{i:03d}.txt"
        path.write_text("\n".join(f"{rng.gauss(mean, 1.0):.5f}" for _ in range(n_values)) + "\n")
        names.append(f"samples/{path.name}")
    return names


def merge(histograms: list[dict]) -> dict:
    first = histograms[0]
    merged = {k: first[k] for k in ("bins", "low", "high")}
    merged["counts"] = [sum(h["counts"][i] for h in histograms) for i in range(first["bins"])]
    for k in ("n", "underflow", "overflow"):
        merged[k] = sum(h[k] for h in histograms)
    return merged


def render(h: dict, width: int = 50) -> str:
    peak = max(h["counts"]) or 1
    step = (h["high"] - h["low"]) / h["bins"]
    rows = []
    for i, c in enumerate(h["counts"]):
        lo = h["low"] + i * step
        rows.append(f"{lo:+6.2f} | {'#' * round(width * c / peak):<{width}} {c}")
    rows.append(f"n={h['n']}  underflow={h['underflow']}  overflow={h['overflow']}")
    return "\n".join(rows)


def lan_address() -> str:
    """This machine's address on its network (the interface of the default route), or 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # UDP: nothing is sent, this only picks the outgoing interface
            return s.getsockname()[0]
        except OSError:
            return "127.0.0.1"


def app_host_for(host: str) -> str:
    """The address to put in the app's URL for peers listening on ``host``."""
    if host in ("0.0.0.0", "::", ""):
        return lan_address()
    return "127.0.0.1" if host == "localhost" else host


def qr_text(link: str) -> str | None:
    """The link as a QR code for the terminal (segno, in the server extra), or None without segno."""
    try:
        import segno
    except ImportError:
        return None
    import io

    out = io.StringIO()
    segno.make(link, error="m").terminal(out=out, compact=True)
    return out.getvalue()


def serve_web_app(cluster: Cluster, client: Client, user: pki.Issued, ca_path: Path, app_host: str) -> None:
    """Keep the peers up for the web app; a fresh pairing code every few minutes, until Ctrl-C."""
    entry = cluster.urls[PEERS[1]]
    app_url = f"https://{app_host}:{urlsplit(entry).port}/"
    others = ", ".join(f"https://{app_host}:{urlsplit(u).port}/" for n, u in cluster.urls.items() if n != PEERS[1])
    print(f"\nthe web app: {app_url}   (every peer serves it: {others})")
    print(f"its certificate is from the demo CA, {ca_path}. Trust that CA in the browser first (the service worker")
    print("  and offline mode need a trusted certificate):")
    print("  desktop Chrome/Edge: Settings > Privacy and security > Security > Manage certificates > Authorities >")
    print("    Import; Firefox: Settings > Privacy & Security > Certificates > View Certificates > Authorities > Import")
    print("  Android: copy ca.pem to the phone, Settings > Security > Encryption & credentials > Install a")
    print("    certificate > CA certificate; iPhone: open ca.pem, install the profile, then Settings > General >")
    print("    About > Certificate Trust Settings > enable full trust for \"pocketgrid demo CA\"")
    if app_host == "127.0.0.1":
        print("  (only this machine can open it; `pocketgrid demo --serve --host 0.0.0.0` lets a phone on your"
              " network in)")
    print("pair the browser with the code below (or scan the QR code: it opens the app with the code filled in);")
    print("Ctrl-C stops the peers.", flush=True)
    while True:
        try:
            code = client.pairing_code()
        except ApiError as exc:
            if exc.status != 401:
                raise
            client.login(user.cert_path, user.key_path)  # the login token expired (8 h): log in again
            continue
        link = f"{app_url}#pair={code['code']}"
        qr = qr_text(link)
        print(f"\npairing code {code['code']} (valid until {time.strftime('%H:%M:%S', time.localtime(code['expires_at']))}):"
              f" {link}")
        if qr:
            print(qr, end="", flush=True)
        deadline = time.monotonic() + CODE_EVERY
        while time.monotonic() < deadline:
            dead = [name for name, proc in cluster.procs.items() if proc.poll() is not None]
            if dead:
                raise DemoFailed(f"peer {dead[0]} exited; see {cluster.root / dead[0] / 'peer.log'}")
            time.sleep(1.0)


def _stop_on_signal(signum: int, frame) -> None:
    raise KeyboardInterrupt  # SIGTERM, SIGHUP (a closed terminal): stop the peers as Ctrl-C does


def run_demo(*, keep: bool = False, n_inputs: int = 6, serve: bool = False, host: str = "127.0.0.1") -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    if host != "127.0.0.1" and not serve:
        print("error: --host is for --serve (the peers of a plain demo stop when it ends): add --serve",
              file=sys.stderr)
        return 2
    for sig in (signal.SIGTERM, signal.SIGHUP):  # the peers run in their own sessions: never leave them behind
        signal.signal(sig, _stop_on_signal)
    root = Path(tempfile.mkdtemp(prefix="pocketgrid-demo-"))
    pki_dir = root / "pki"
    ca = pki.init_ca(pki_dir, common_name="pocketgrid demo CA")
    app_host = app_host_for(host) if serve else "127.0.0.1"
    for name in PEERS:  # with --serve --host, the certificate must also name the address a phone uses
        pki.issue_host(pki_dir, name, sans=[name, "localhost", "127.0.0.1", app_host])
    user = pki.issue_user(pki_dir, "Alice Demo", vo="demo")
    cluster = Cluster(root, pki_dir, admin=user.subject, host=host if serve else "127.0.0.1")
    t0 = time.monotonic()
    failed = True  # until the end: a failure keeps the state directory, whose logs the message names
    try:
        print(f"state directory: {root}")
        print(f"site PKI: CA {ca.cert_path.name}, host certificates for {', '.join(PEERS)}, user {user.subject}")
        broker_url = cluster.start_peer(PEERS[0])
        for name in PEERS[1:]:
            cluster.start_peer(name, join=broker_url)
        cluster.wait_healthy()
        cluster.wait_joined(broker_url)
        print("peers up (TLS, mutual TLS between peers): " + ", ".join(f"{n} {u}" for n, u in cluster.urls.items())
              + f" (broker: {PEERS[0]})")

        entry = cluster.urls[PEERS[1]]
        client = Client([entry, broker_url], ca=ca.cert_path)
        login = client.login(user.cert_path, user.key_path)
        print(f"logged in as {login['dn']} by challenge-response (token valid {login['expires_at'] - time.time():.0f} s)")

        def all_reported():
            table = Client(broker_url, ca=ca.cert_path, token=client.token).system().get("load", [])
            return table if len(table) == len(PEERS) else None

        table = wait_for("every agent's first load report", all_reported, 30)
        for row in table:
            print(f"  load {row['peer']}: coefficient {row['coefficient']:.3f} (report age {row['report_age']:.1f} s)")

        inputs = make_sample_data(root / PEERS[1] / "publish", n_inputs)
        print(f"published {len(inputs)} input files on {PEERS[1]}; files matching '*.txt': {len(client.glob('*.txt'))}")

        sample = resources.files("pocketgrid") / "sample"
        exe = sample.joinpath("histogram.py").read_bytes()
        sub = sample.joinpath("histogram.sub").read_text()
        job = client.submit("histogram-demo", exe, "histogram.sub", inputs, executable_name="histogram.py", submit_text=sub)
        print(f"submitted through {PEERS[1]}: job {job['id']}, its home {job['peer']} ({job['inputs']} procs)")

        last = {"line": ""}

        def show(status: dict) -> None:
            line = f"  {status['state']}: " + ", ".join(f"{k} {v}" for k, v in sorted(status["counts"].items()))
            if line != last["line"]:
                print(line, flush=True)
                last["line"] = line

        code = client.pairing_code()["code"]
        phone = Client([entry, broker_url], ca=ca.cert_path)
        paired = phone.pair(code, device="demo-phone")
        print(f"paired a phone with code {code}: device token {paired['token_id']} for {paired['dn']}")
        final = phone.wait(job["id"], timeout=120, poll=10, on_change=show)
        if final["state"] != "completed":
            raise DemoFailed("the job did not complete:\n" + _status_text(final))

        results_dir = root / "results"
        results = phone.fetch_all(job["id"], results_dir, chunk_bytes=64 * 1024,
                                   progress_factory=_bar_factory(sys.stderr.isatty()))
        print(f"fetched {len(results)} output files, each verified by SHA-256")
        histograms = [json.loads(r.path.read_text()) for r in results if r.path.name == "histogram.json"]
        if len(histograms) != n_inputs:
            raise DemoFailed(f"expected {n_inputs} histograms, got {len(histograms)}")
        merged = merge(histograms)
        sites = ", ".join(sorted({i["site"] for i in final["inputs"] if i.get("site")}))
        print(f"\nmerged histogram of {n_inputs} inputs, run on {sites}:")
        print(render(merged))
        client.revoke_token(paired["token_id"])
        try:
            phone.status(job["id"])
        except ApiError as exc:
            print(f"\nrevoked the phone's token; its next poll: HTTP {exc.status} ({exc.message})")
        else:
            raise DemoFailed("the phone's token still works after revocation")
        print(f"\ndemo finished in {time.monotonic() - t0:.1f} s")
        failed = False
        if serve:
            try:
                serve_web_app(cluster, client, user, ca.cert_path, app_host)
            except KeyboardInterrupt:
                print("\nstopping the peers")
            except DemoFailed:
                failed = True  # a peer died: keep its log
                raise
        else:
            print("next: `pocketgrid demo --serve` keeps the peers up for the web app, to open in a browser or on"
                  " your phone;\n      to run your own site, see docs/operations.md (pocketgrid pki, pocketgrid serve)")
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted: stopping the peers", file=sys.stderr)
        failed = False
        return 130
    except DemoFailed as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # report, stop the peers, fail
        print(f"demo failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        cluster.stop()
        if keep or failed:
            print(f"kept {root} (each peer's log: {root}/<peer>/peer.log)", file=sys.stderr if failed else sys.stdout)
        else:
            shutil.rmtree(root, ignore_errors=True)
