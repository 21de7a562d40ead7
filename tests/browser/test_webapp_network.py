"""The web app on a link that fails: real Chromium at 390x844, real peers over TLS.

* an upload cut mid-way by a proxy resumes (tus) and is verified, and the job runs on it;
* a download cut again and again resumes from the bytes the app keeps and verifies SHA-256;
* a reload with the network off shows the cached jobs, marked stale, and catches up online;
* the page fixture fails a test on a CSP violation, a console error or an uncaught exception.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.browser.conftest import ProblemCollector, pair, unique
from tests.conftest import ROOT, wait_until
from tests.job_processes import attempt_dir


def pump(page: Any) -> None:
    """Let Playwright deliver the browser's events (the sync API does so only inside its calls)."""
    page.evaluate("0")


# ---- (d) what must fail a test does fail it -------------------------------------------------------

INJECT = """() => {
  const s = document.createElement("script");
  s.textContent = "window.__pgInlineRan = true";
  document.head.append(s);
  document.body.setAttribute("style", "outline: 3px solid red");
  console.error("meta-test: a console error");
  setTimeout(() => { throw new Error("meta-test: an uncaught exception"); }, 0);
}"""


def test_collector_catches_csp_violations_console_and_page_errors(page: Any, problems: ProblemCollector, grid: Any) -> None:
    page.goto(grid.a.url + "/")
    problems.clear()  # only what the injection causes
    page.evaluate(INJECT)
    wait_until(lambda: (pump(page), problems.of_kind("pageerror") and len(problems.of_kind("csp")) >= 2)[1],
               10, what="the collector to see the injected problems")
    # The peer's CSP is in force: the inline script did not run, the style attribute was refused.
    assert page.evaluate("window.__pgInlineRan === undefined")
    directives = {p.text.split(" violation of ")[1].split(":")[0] for p in problems.of_kind("csp")}
    assert {"script-src-elem", "style-src-attr"} <= directives, problems.problems
    assert any("meta-test: a console error" in p.text for p in problems.of_kind("console"))
    assert any("meta-test: an uncaught exception" in p.text for p in problems.of_kind("pageerror"))
    problems.clear()  # caught on purpose: this test passes


INNER = '''
CSP = "default-src 'none'; script-src 'self'; style-src 'self'"
URL = "https://pocketgrid-meta.invalid/"


def serve(page, body):
    page.route(URL, lambda route: route.fulfill(
        status=200, body=body, headers={"Content-Type": "text/html", "Content-Security-Policy": CSP}))
    page.goto(URL)
    page.evaluate("0")


def test_clean(page):
    serve(page, "<!doctype html><title>clean</title><p>fine</p>")


def test_csp_violation(page):
    serve(page, "<!doctype html><title>bad</title><p style='color:red'>inline style</p>")


def test_console_error(page):
    serve(page, "<!doctype html><title>bad</title><p>x</p>")
    page.evaluate("console.error('inner: something broke')")


def test_uncaught_exception(page):
    serve(page, "<!doctype html><title>bad</title><p>x</p>")
    page.evaluate("setTimeout(() => { throw new Error('inner: uncaught'); }, 0)")
    page.wait_for_function("document.readyState === 'complete'")
    page.evaluate("new Promise((resolve) => setTimeout(resolve, 50))")
'''


def test_a_page_with_a_problem_fails_its_test(tmp_path: Path) -> None:
    """Run the fixtures on tests that provoke each problem: each of those fails, a clean one passes."""
    inner = tmp_path / "test_inner_pages.py"
    inner.write_text(textwrap.dedent(INNER))
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "tests.conftest", "-p", "tests.browser.conftest",
         "-c", str(ROOT / "pyproject.toml"), "--rootdir", str(ROOT), "-p", "no:cacheprovider", "-rA", str(inner)],
        cwd=ROOT, capture_output=True, text=True, timeout=240, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    out = run.stdout + run.stderr
    assert run.returncode == 1, out
    summary = [line for line in out.splitlines() if line.startswith(("PASSED", "ERROR", "FAILED"))]
    assert any(line.startswith("PASSED") and line.endswith("::test_clean") for line in summary), out
    for name, kind, text in (("test_csp_violation", "[csp]", "style-src-attr"),
                             ("test_console_error", "[console]", "inner: something broke"),
                             ("test_uncaught_exception", "[pageerror]", "inner: uncaught")):
        assert f"ERROR at teardown of {name}" in out, out
        section = out.split(f"ERROR at teardown of {name}", 1)[1].split("ERROR at teardown of", 1)[0]
        assert kind in section and text in section, section


# ---- helpers that drive the app like a person --------------------------------------------------

def numbers_file(path: Path, lines: int, seed: int = 7) -> Path:
    """An input for the sample histogram analysis: ``lines`` numbers, one a line."""
    import random

    rng = random.Random(seed)
    path.write_text("".join(f"{rng.gauss(0.0, 1.0):.6f}\n" for _ in range(lines)))
    return path


def choose_sample_analysis(page: Any, base_url: str) -> None:
    """Executable and submit file of the sample analysis, picked from the publishing area."""
    page.goto(f"{base_url}/#files?pick=executable")
    page.get_by_role("button", name="Choose the executable: histogram.py").click()
    page.wait_for_url("**/#submit")
    page.goto(f"{base_url}/#files?pick=submit")
    page.get_by_role("button", name="Choose the submit file: histogram.sub").click()
    page.wait_for_url("**/#submit")
    page.locator("#exe-chosen").get_by_text("histogram.py", exact=True).wait_for()
    page.locator("#sub-chosen").get_by_text("histogram.sub", exact=True).wait_for()


def wait_or_explain(locator: Any, timeout_ms: float, explain: Any) -> None:
    """``locator.wait_for``; at the deadline, fail with what the page shows instead."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        locator.wait_for(timeout=timeout_ms)
    except PlaywrightTimeout:
        raise AssertionError(f"timed out after {timeout_ms / 1000:g} s waiting for {locator}: {explain()}") from None


def job_id_of(page: Any) -> str:
    """The job the app shows (it opens ``#job/<id>`` after a submit)."""
    from urllib.parse import unquote

    page.wait_for_url("**/#job/*")
    return unquote(page.url.split("#job/", 1)[1].split("/", 1)[0])


# ---- (a) an upload over a link that drops -------------------------------------------------------

CUT_UPLOAD = 48 * 1024


def test_upload_cut_mid_way_resumes_verifies_and_the_job_runs_on_it(
        page: Any, grid: Any, alice: Any, pairing_code: Any, cutting_proxy: Any, tmp_path: Path) -> None:
    proxy = cutting_proxy(grid.a)
    base = proxy.url_for("https")
    pair(page, base, pairing_code())
    choose_sample_analysis(page, base)
    name = unique("uploaded")
    page.get_by_label("Job name").fill(name)
    local = numbers_file(tmp_path / f"{name}.txt", 40_000)  # ~360 KB: many times the cut
    size = local.stat().st_size
    assert size > 5 * CUT_UPLOAD

    proxy.set_cut(CUT_UPLOAD)  # from now on every connection drops after 48 KB either way
    cuts_before = proxy.cuts
    page.get_by_label("Upload inputs from this phone").set_input_files(str(local))
    page.get_by_role("listitem", name=f"upload {local.name}: verified").wait_for(timeout=120_000)
    proxy.set_cut(None)
    # Each connection carried at most 48 KB: only an upload that resumes from the peer's
    # offset can have finished, and it took several cuts to do so.
    assert proxy.cuts - cuts_before >= size // CUT_UPLOAD - 1, (proxy.cuts, cuts_before)

    # The verified file is in alice's upload area, byte for byte, and is the draft's input.
    inputs = page.locator("#draft-inputs")
    path = inputs.get_by_text(local.name).inner_text().strip()
    assert path.startswith("uploads/u-") and path.endswith("/" + local.name), path
    assert (grid.a.publish / path).read_bytes() == local.read_bytes()
    assert alice.checksum(path) == hashlib.sha256(local.read_bytes()).hexdigest()

    page.get_by_role("button", name="Submit job").click()
    job_id = job_id_of(page)
    page.get_by_role("listitem", name="input 0: completed, exit 0").wait_for(timeout=60_000)
    final = alice.wait(job_id, timeout=30)
    assert final["state"] == "completed"
    assert [i["input"] for i in final["inputs"]] == [local.name]  # staged under its own name
    spec = alice.session.get(f"{grid.a.url}/api/v1/jobs/{job_id}/spec", timeout=10)
    assert spec.ok and spec.json()["inputs"] == [path], spec.text
    out = tmp_path / "out"
    alice.fetch_all(job_id, out)
    histogram = json.loads((out / "0" / "histogram.json").read_text())
    assert histogram["n"] == 40_000  # the job read the whole uploaded file


# ---- (c) offline: the cached jobs, marked stale; catching up ------------------------------------

HISTOGRAM = (Path(__file__).resolve().parents[2] / "pocketgrid" / "sample")


def submit_sample(client: Any, grid: Any, name: str, inputs: list[str] | None = None) -> dict[str, Any]:
    return client.submit(name, (HISTOGRAM / "histogram.py").read_bytes(), "histogram.sub", inputs or grid.inputs[:1],
                         executable_name="histogram.py", submit_text=(HISTOGRAM / "histogram.sub").read_text())


def test_offline_reload_shows_cached_jobs_marked_stale_and_catches_up(
        paired_page: Any, grid: Any, alice: Any, context: Any) -> None:
    page = paired_page
    base = grid.a.url
    first = unique("before-offline")
    job = submit_sample(alice, grid, first)
    assert alice.wait(job["id"], timeout=60)["state"] == "completed"
    page.wait_for_function("navigator.serviceWorker && navigator.serviceWorker.controller !== null", timeout=20_000)
    page.goto(f"{base}/#jobs")
    page.reload()  # the list now goes through the service worker, which keeps it
    page.get_by_role("link", name=f"job {first}: completed").wait_for()

    context.set_offline(True)
    page.reload()
    page.get_by_role("link", name=f"job {first}: completed (stale)").wait_for()
    banner = page.locator("#offline")
    assert banner.is_visible() and "offline" in banner.inner_text()

    second = unique("while-offline")  # the peer gets a job the phone cannot know about yet
    job2 = submit_sample(alice, grid, second)
    assert alice.wait(job2["id"], timeout=60)["state"] == "completed"
    assert page.get_by_role("link", name=f"job {second}: completed").count() == 0

    # The link returns: the app catches up without a reload.  Not only on the `online` event:
    # a page loaded while offline may never get one (Chromium here reports navigator.onLine
    # true after such a reload, and phones on a link that drops upstream of the radio do the
    # same), so a page showing stale data must also try again by itself now and then.
    context.set_offline(False)
    page.get_by_role("link", name=f"job {second}: completed", exact=True).wait_for(timeout=60_000)
    page.get_by_role("link", name=f"job {first}: completed", exact=True).wait_for()
    assert not banner.is_visible()


# ---- (b) a download over a link that drops ------------------------------------------------------

BIG_SH = b"""#!/bin/sh
# usage: big.sh INPUT: a 3 MB output of random bytes (incompressible)
head -c 3000000 /dev/urandom > big.bin
echo "wrote big.bin for $1"
"""
BIG_SUB = "executable = big.sh\narguments = $(input)\noutput = stdout.txt\nerror = stderr.txt\nqueue\n"
CUT_DOWNLOAD = 256 * 1024


def test_download_cut_again_and_again_resumes_from_stored_bytes_and_verifies(
        page: Any, grid: Any, alice: Any, pairing_code: Any, cutting_proxy: Any) -> None:
    job = alice.submit(unique("big-output"), BIG_SH, "big.sub", grid.inputs[:1], executable_name="big.sh",
                       submit_text=BIG_SUB)
    final = alice.wait(job["id"], timeout=60)
    assert final["state"] == "completed", final
    history, _ = alice.status(job["id"], history=True)  # where input 0 ran: its site and piece
    on_peer = (attempt_dir(grid.peers, history, 0) / "big.bin").read_bytes()
    size = len(on_peer)
    assert size == 3_000_000

    proxy = cutting_proxy(grid.a)  # its input may run on site-b: site-a, its home, relays the output
    base = proxy.url_for("https")
    pair(page, base, pairing_code())
    ranges: list[str | None] = []  # the Range header of every request the page makes for the file
    page.on("request", lambda r: ranges.append(r.headers.get("range")) if r.url.endswith("/outputs/0/big.bin") else None)
    page.goto(f"{base}/#job/{job['id']}/outputs")
    download_button = page.get_by_role("button", name="Download big.bin of input 0")
    download_button.wait_for()

    proxy.set_cut(CUT_DOWNLOAD)  # every connection drops after 256 KB either way
    cuts_before, bytes_before = proxy.cuts, proxy.bytes_to_client
    download_button.click()
    card = page.get_by_label("download big.bin: verified")
    wait_or_explain(card, 120_000, lambda: f"the download card says {page.locator('.output-row .stack').all_inner_texts()}; "
                                           f"{proxy.cuts - cuts_before} cuts; Range headers sent: {ranges}")
    proxy.set_cut(None)
    cuts = proxy.cuts - cuts_before
    wire = proxy.bytes_to_client - bytes_before

    # It went on from the bytes it had each time, never back towards the start.  (Each
    # connection carried at most 256 KB: a download that starts over cannot have finished.)
    assert cuts >= size // CUT_DOWNLOAD - 1, (cuts, ranges)
    assert all(r is None or r.startswith("bytes=") for r in ranges), ranges
    starts = [0 if r is None else int(r.removeprefix("bytes=").split("-")[0]) for r in ranges]
    assert starts == sorted(starts) and starts[-1] > 0, starts
    assert wire < 3 * size, (wire, size)  # what the phone paid for: the file, plus what the cuts cost
    digest = hashlib.sha256(on_peer).hexdigest()
    assert digest[:16] in card.inner_text()  # "Verified: SHA-256 matches (<first 16 hex>…)"

    # What it hands over is the file on the peer, byte for byte.
    with page.expect_download() as saved:
        page.get_by_role("link", name="Save big.bin").click()
    assert Path(saved.value.path()).read_bytes() == on_peer
    assert saved.value.suggested_filename == "big.bin"
