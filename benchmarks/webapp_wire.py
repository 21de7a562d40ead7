"""What the phone web app costs on the wire: first and repeat load, watching a job, a dropped download.

One real TLS peer (a fresh site PKI) on loopback; Debian's Chromium (/usr/bin/chromium, driven
by Playwright, trusting the site CA through its own NSS database) as phones of 390x844.  Every
phone reaches the peer through its own ``tests/cutting_proxy.CuttingProxy``, whose byte counters
give what crossed the wire (TCP payload both ways: TLS records, handshakes included; TCP/IP
headers not).  Playwright's ``request.sizes()`` gives the HTTP view (headers + encoded body).

(a) First load: a fresh phone opens ``/`` and the pairing screen shows; until the network is
    idle (the service worker has installed and fetched its shell).  The budget (100 KB) is for
    the compressed HTML, JS and CSS the page loads.
(b) Repeat load: the same phone, paired, reloads the jobs screen (the service worker serves
    the shell; the API answers come from the network).
(c) Watching a running 20-input job (each input sleeps 9 s; the peer runs 2 at a time, so
    it runs ~90 s) for ``--watch-seconds`` (90): two phones at once on the
    same job's page, one with Server-Sent Events, one with the long-poll fallback
    (``?wait=25`` + ``If-None-Match``; the phone's ``EventSource`` is removed so the app falls
    back).  Bytes and requests per minute.
(d) Dropped link -> resumed download: a phone downloads a 3 MB output through a proxy that cuts
    every connection after ``--cut-kib`` (1024) KiB; time from each failed request (the drop as
    the page sees it) to the response of the next range request (the app's backoff included).

Printed, not asserted.  A minute or two in all.

    python -m benchmarks.webapp_wire [--watch-seconds 90] [--cut-kib 1024]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from mobile_client import Client
from pocketgrid import pki
from pocketgrid.http import Session
from tests.cutting_proxy import CuttingProxy

from .harness import TlsPeer, common_arguments, emit, report_load

CHROMIUM = "/usr/bin/chromium"
PHONE = {"width": 390, "height": 844}
KB = 1000
SLEEP_SH = b"#!/bin/sh\n# one input of the watched job: a few seconds of work\nsleep 9\necho done $1\n"
SLEEP_SUB = "executable = s.sh\narguments = $(input)\noutput = out.txt\nqueue\n"
BIG_SH = b"#!/bin/sh\nhead -c 3000000 /dev/urandom > big.bin\n"
BIG_SUB = "executable = big.sh\noutput = out.txt\nqueue\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.webapp_wire", description=__doc__.splitlines()[0])
    p.add_argument("--watch-seconds", type=float, default=90.0,
                   help="how long the phones watch the job (default 90: the job runs ~90 s, an SSE stream lasts 60 s)")
    p.add_argument("--inputs", type=int, default=20, help="inputs of the watched job (default 20)")
    p.add_argument("--cut-kib", type=int, default=1024, help="(d): the proxy cuts each connection after this (default 1024)")
    common_arguments(p)
    return p.parse_args(argv)


# ---- the browser ----------------------------------------------------------------------------------
def nss_home(root: Path, ca: Path) -> Path:
    """A HOME whose NSS database trusts ``ca`` (how Chromium on Linux learns a private CA)."""
    home = root / "chromium-home"
    db = home / ".pki" / "nssdb"
    db.mkdir(parents=True)
    subprocess.run(["certutil", "-d", f"sql:{db}", "-N", "--empty-password"], check=True, capture_output=True)
    subprocess.run(["certutil", "-d", f"sql:{db}", "-A", "-t", "C,,", "-n", "pocketgrid", "-i", str(ca)],
                   check=True, capture_output=True)
    return home


class Phone:
    """One browser context (390x844, touch) behind its own cutting proxy; records every request."""

    def __init__(self, browser: Any, peer: TlsPeer, *, no_event_source: bool = False) -> None:
        self.proxy = CuttingProxy("127.0.0.1", peer.port).start()
        self.base = self.proxy.url_for("https")
        self.context = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True, accept_downloads=True)
        self.context.set_default_timeout(30_000)
        if no_event_source:
            self.context.add_init_script("window.EventSource = undefined;")
        self.finished: list[Any] = []
        self.requests: list[tuple[float, Any]] = []
        self.context.on("request", lambda r: self.requests.append((time.monotonic(), r)))
        self.context.on("requestfinished", lambda r: self.finished.append(r))
        self.page = self.context.new_page()

    def wire(self) -> dict[str, int]:
        return {"to_phone": self.proxy.bytes_to_client, "from_phone": self.proxy.bytes_to_target,
                "connections": self.proxy.connections}

    def close(self) -> None:
        self.context.close()
        self.proxy.stop()


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    d = {k: after[k] - before[k] for k in after}
    d["total"] = d["to_phone"] + d["from_phone"]
    return d


def http_view(requests: list[Any]) -> dict[str, Any]:
    """Per kind (app files / API) and origin (page / service worker): requests and HTTP bytes
    (down: response headers + encoded body; body: the encoded body alone; up: request headers + body)."""
    out: dict[str, Any] = {}
    for r in requests:
        path = r.url.split("://", 1)[1].split("/", 1)[1] if "://" in r.url else r.url
        kind = "api" if path.startswith("api/") else "app"
        who = "service_worker" if r.service_worker else "page"
        resp = r.response()
        from_sw = bool(resp and resp.from_service_worker)
        key = f"{kind}_{who}" + ("_from_sw_cache" if from_sw else "")
        sizes = r.sizes()
        row = out.setdefault(key, {"requests": 0, "down_bytes": 0, "body_bytes": 0, "up_bytes": 0})
        row["requests"] += 1
        if not from_sw:  # a response the service worker made never crossed the wire
            row["down_bytes"] += sizes["responseHeadersSize"] + sizes["responseBodySize"]
            row["body_bytes"] += sizes["responseBodySize"]
            row["up_bytes"] += sizes["requestHeadersSize"] + sizes["requestBodySize"]
    return out


def pair(phone: Phone, client: Client) -> None:
    page = phone.page
    page.goto(phone.base + "/")
    page.get_by_label("Pairing code").fill(client.pairing_code()["code"])
    page.get_by_role("button", name="Pair").click()
    page.get_by_role("heading", name="Jobs").wait_for()


# ---- the measurements ---------------------------------------------------------------------------
def first_and_repeat_load(browser: Any, peer: TlsPeer, alice: Client) -> dict[str, Any]:
    phone = Phone(browser, peer)
    try:
        page = phone.page
        before = phone.wire()
        page.goto(phone.base + "/")
        page.get_by_label("Pairing code").wait_for()
        page.evaluate("navigator.serviceWorker.ready.then(() => true)")
        page.wait_for_load_state("networkidle")
        first = {"wire": delta(phone.wire(), before), "http": http_view(phone.finished)}
        first["budget_bytes"] = first["http"].get("app_page", {}).get("body_bytes", 0)

        page.get_by_label("Pairing code").fill(alice.pairing_code()["code"])
        page.get_by_role("button", name="Pair").click()
        page.get_by_role("heading", name="Jobs").wait_for()
        page.wait_for_load_state("networkidle")

        phone.finished.clear()
        before = phone.wire()
        page.reload()
        page.get_by_role("heading", name="Jobs").wait_for()
        page.wait_for_load_state("networkidle")
        repeat = {"wire": delta(phone.wire(), before), "http": http_view(phone.finished),
                  "controlled_by_service_worker": page.evaluate("navigator.serviceWorker.controller !== null")}
        return {"first_load": first, "repeat_load": repeat}
    finally:
        phone.close()


def watch_job(browser: Any, peer: TlsPeer, alice: Client, n_inputs: int, seconds: float) -> dict[str, Any]:
    names = [f"w{i:02d}.txt" for i in range(n_inputs)]
    for name in names:
        (peer.publish / name).write_text("1\n")
    sse, poll = Phone(browser, peer), Phone(browser, peer, no_event_source=True)
    try:
        for phone in (sse, poll):
            pair(phone, alice)
        job = alice.submit("watched", SLEEP_SH, "s.sub", names, executable_name="s.sh", submit_text=SLEEP_SUB)
        for phone, mode in ((sse, "Live (pushed by the peer)"), (poll, "Live (checking with long polls)")):
            phone.page.goto(f"{phone.base}/#job/{job['id']}")
            phone.page.get_by_text(mode).wait_for()
        version_at_start = alice.status(job["id"])[0].get("version")
        start = time.monotonic()
        marks = {id(p): (p.wire(), len(p.requests)) for p in (sse, poll)}
        deadline = start + seconds
        while time.monotonic() < deadline:
            sse.page.wait_for_timeout(500)  # lets both phones' events in; the job runs meanwhile
            if alice.status(job["id"])[0]["state"] in {"completed", "failed", "removed"}:
                break
        elapsed = time.monotonic() - start
        final, _ = alice.status(job["id"])
        out: dict[str, Any] = {"job_state_at_end": final["state"], "counts_at_end": final["counts"],
                               "versions": [version_at_start, final.get("version")], "seconds": round(elapsed, 1)}
        for label, phone in (("sse", sse), ("long_poll", poll)):
            wire0, n0 = marks[id(phone)]
            wire = delta(phone.wire(), wire0)
            reqs = [r for _, r in phone.requests[n0:]]
            per_min = 60.0 / elapsed
            out[label] = {"bytes": wire["total"], "bytes_per_minute": round(wire["total"] * per_min),
                          "requests": len(reqs), "requests_per_minute": round(len(reqs) * per_min, 1),
                          "new_connections": wire["connections"],
                          "shows": phone.page.locator("#job-live").inner_text()}
        return out
    finally:
        sse.close()
        poll.close()


def dropped_download(browser: Any, peer: TlsPeer, alice: Client, cut: int) -> dict[str, Any]:
    job = alice.submit("big-output", BIG_SH, "big.sub", ["w00.txt"], executable_name="big.sh", submit_text=BIG_SUB)
    alice.wait(job["id"], timeout=60)
    phone = Phone(browser, peer)
    try:
        pair(phone, alice)
        page = phone.page
        events: list[tuple[float, str]] = []
        target = "/outputs/0/big.bin"
        page.on("requestfailed", lambda r: events.append((time.monotonic(), "fail")) if r.url.endswith(target) else None)
        page.on("response", lambda r: events.append((time.monotonic(), "response")) if r.url.endswith(target) else None)
        page.goto(f"{phone.base}/#job/{job['id']}/outputs")
        button = page.get_by_role("button", name="Download big.bin of input 0")
        button.wait_for()
        phone.proxy.set_cut(cut)
        t0 = time.monotonic()
        button.click()
        card = page.get_by_label("download big.bin: verified")
        verified = True
        try:
            card.wait_for(timeout=120_000)
        except Exception:  # noqa: BLE001  (report what happened instead)
            verified = False
        total = time.monotonic() - t0
        gaps = []
        for i, (t, kind) in enumerate(events):
            if kind == "fail":
                nxt = next((t2 for t2, k2 in events[i + 1:] if k2 == "response"), None)
                if nxt is not None:
                    gaps.append(nxt - t)
        return {"cut_every_bytes": cut, "file_bytes": 3_000_000, "verified": verified,
                "seconds_to_verified": round(total, 2), "cuts": phone.proxy.cuts,
                "requests": sum(1 for _, k in events if k == "response"),
                "bytes_to_phone": phone.proxy.bytes_to_client,
                "drop_to_resumed_s": {"n": len(gaps), "min": round(min(gaps), 3) if gaps else None,
                                      "median": round(statistics.median(gaps), 3) if gaps else None,
                                      "max": round(max(gaps), 3) if gaps else None}}
    finally:
        phone.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not Path(CHROMIUM).exists() or shutil.which("certutil") is None:
        print(f"needs {CHROMIUM} and certutil: apt-get install chromium libnss3-tools")
        return 2
    from playwright.sync_api import sync_playwright

    root = Path(tempfile.mkdtemp(prefix="pocketgrid-webwire-", dir=args.workdir))
    peer = None
    try:
        pki_dir = root / "pki"
        ca = pki.init_ca(pki_dir)
        host = pki.issue_host(pki_dir, "site-a")
        user = pki.issue_user(pki_dir, "Alice Bench", vo="bench")
        peer = TlsPeer("site-a", root / "site-a", pki_dir=pki_dir, admin=user.subject, threads=32,
                       log_level=args.log_level)
        peer.extra += ["--slots", "2"]  # the watched job's pace does not depend on this machine's CPUs
        peer.start()
        report_load(peer.url, peer, 0.1, session=Session(verify=str(ca.cert_path),
                                                          cert=(str(host.cert_path), str(host.key_path))))
        alice = Client(peer.url, ca=ca.cert_path, retries=0)
        alice.login(user.cert_path, user.key_path)
        home = nss_home(root, ca.cert_path)
        env = {**os.environ, "HOME": str(home)}
        with sync_playwright() as driver:
            browser = driver.chromium.launch(executable_path=CHROMIUM, headless=True, env=env)
            loads = first_and_repeat_load(browser, peer, alice)
            watch = watch_job(browser, peer, alice, args.inputs, args.watch_seconds)
            drop = dropped_download(browser, peer, alice, args.cut_kib * 1024)
            browser.close()
    finally:
        if peer is not None:
            peer.stop()
        if args.keep:
            print(f"kept state in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)

    first, repeat = loads["first_load"], loads["repeat_load"]
    human = (
        f"first load: {first['budget_bytes'] / KB:.1f} KB of compressed app files (budget 100 KB), "
        f"{first['wire']['total'] / KB:.1f} KB on the wire with TLS and the service worker's install; "
        f"repeat load: {repeat['wire']['total'] / KB:.1f} KB on the wire. "
        f"Watching a {args.inputs}-input job: SSE {watch['sse']['bytes_per_minute'] / KB:.1f} KB/min, "
        f"{watch['sse']['requests_per_minute']} requests/min; long-poll "
        f"{watch['long_poll']['bytes_per_minute'] / KB:.1f} KB/min, {watch['long_poll']['requests_per_minute']} requests/min. "
        f"Dropped link -> resumed download: median {drop['drop_to_resumed_s']['median']} s over "
        f"{drop['drop_to_resumed_s']['n']} drops (verified: {drop['verified']}).")
    emit("webapp_wire", {"loads": loads, "watch": watch, "dropped_download": drop}, human)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
