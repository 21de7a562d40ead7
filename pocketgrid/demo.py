"""``pocketgrid demo``: the whole path on loopback, verified end to end.

Creates a site PKI (CA, a host certificate per peer, a user certificate),
starts a broker-peer and two more peers (real gunicorn servers with TLS and
mutual TLS between them, each with its EMA agent thread), logs the user in by
challenge-response, publishes sample data, submits a histogram analysis (one
proc per input) through a peer that is not the broker, pairs a "phone" with a
short code, follows the job from the phone with long-polls, fetches every
output in resumable chunks verified by SHA-256, merges the histograms, then
revokes the phone's token.  Exit status 0 only if all of that worked; every
process it started is stopped before it returns.
"""
from __future__ import annotations

import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

import requests

from mobile_client import ApiError, Client
from pocketgrid.http import Session
from mobile_client.cli import _bar_factory, _status_text

from . import pki
from .loopback import free_port, wait_until

log = logging.getLogger("pocketgrid.demo")

PEERS = ("site-a", "site-b", "site-c")
AGENT_INTERVAL = 2.0


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

    def __init__(self, root: Path, pki_dir: Path, admin: str) -> None:
        self.root = root
        self.pki_dir = pki_dir
        self.admin = admin
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


def run_demo(*, keep: bool = False, n_inputs: int = 6) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    root = Path(tempfile.mkdtemp(prefix="pocketgrid-demo-"))
    pki_dir = root / "pki"
    ca = pki.init_ca(pki_dir, common_name="pocketgrid demo CA")
    for name in PEERS:
        pki.issue_host(pki_dir, name)
    user = pki.issue_user(pki_dir, "Alice Demo", vo="demo")
    cluster = Cluster(root, pki_dir, admin=user.subject)
    t0 = time.monotonic()
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
        print(f"submitted through {PEERS[1]}: job {job['id']} placed on {job['peer']} ({job['inputs']} procs)")

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
        print(f"\nmerged histogram of {n_inputs} inputs, run on {final['peer']}:")
        print(render(merged))
        client.revoke_token(paired["token_id"])
        try:
            phone.status(job["id"])
        except ApiError as exc:
            print(f"\nrevoked the phone's token; its next poll: HTTP {exc.status} ({exc.message})")
        else:
            raise DemoFailed("the phone's token still works after revocation")
        print(f"\ndemo finished in {time.monotonic() - t0:.1f} s")
        return 0
    except DemoFailed as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # report, stop the peers, fail
        print(f"demo failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        cluster.stop()
        if keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
