"""What a person does with the phone web app: real Chromium at 390x844, real TLS peers.

Pairing (typed and from the QR code's ``#pair=CODE``), staying logged in, logging out; the
sample histogram job picked from the publishing area; input states pushed live without a
reload (a gate the test opens); kill with its confirm step; outputs listed and a text output
read; the merged plot with the right number of inputs, growing as inputs complete; "run
again" with other inputs; another user's job invisible; layout budget (no horizontal scroll at
390 px, touch targets of 44 px, first load under 100 KB).  The ``page`` fixture fails every test
on a console error, an uncaught exception or a CSP violation (tests/browser/conftest.py).

With ``POCKETGRID_SCREENSHOTS=DIR`` the flow saves the main screens there (docs/screenshots/).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from pocketgrid.demo import merge
from tests.browser.conftest import PAIRING_CODE_LABEL, pair, unique
from tests.conftest import ROOT, wait_until

WEBAPP = ROOT / "mobile_client" / "webapp"
SAMPLE = ROOT / "pocketgrid" / "sample"
SHOTS = os.environ.get("POCKETGRID_SCREENSHOTS")

# A job the test holds at a gate: each input waits until the file "$3/open" exists, then input
# "bad*" fails with a message on stderr and exit 3, the others finish with exit 0.
GATE_SH = b"""#!/bin/sh
# usage: gate.sh INPUT INDEX GATE_DIR
echo "input $2 ($1) waits at the gate"
while [ ! -e "$3/open" ]; do sleep 0.1; done
case "$1" in
  bad*) echo "broken input: $1" >&2; exit 3;;
esac
echo "input $2 through the gate"
"""

# Writes a small histogram.json per input; input 0 at once, the others after the gate opens.
FAKE_HIST_SH = b"""#!/bin/sh
# usage: fakehist.sh INPUT INDEX GATE_DIR
if [ "$2" != 0 ]; then while [ ! -e "$3/open" ]; do sleep 0.1; done; fi
c=$(( $2 + 1 ))
printf '{"input":"%s","bins":4,"low":0,"high":4,"counts":[%d,1,0,1],"n":%d,"underflow":0,"overflow":1}' \\
    "$1" "$c" "$(( c + 2 ))" > histogram.json
"""


# Writes ~24 KB to stdout, waits at the gate, then writes a last line.
CHATTY_SH = b"""#!/bin/sh
# usage: chatty.sh INPUT INDEX GATE_DIR
i=0
while [ $i -lt 400 ]; do echo "line $i of a long output, padded to about sixty bytes"; i=$((i+1)); done
echo "waiting at the gate"
while [ ! -e "$3/open" ]; do sleep 0.1; done
echo "the end of $1"
"""


class ProcGate:
    """A gate a sandboxed job can see (it sees nothing but its own proc directory): a job given
    ``str(gate)`` as its GATE_DIR waits for ``<its proc dir>/<token>/open``; :meth:`open` creates that
    in every proc directory on the grid's peers (only jobs given this token look there)."""

    def __init__(self, grid: Any) -> None:
        self.grid = grid
        self.token = f"gate-{uuid.uuid4().hex[:10]}"

    def __str__(self) -> str:
        return self.token

    def open(self) -> None:
        for peer in (self.grid.a, self.grid.b):
            for proc_dir in (peer.state / "stage").glob("*/*"):
                if proc_dir.is_dir() and proc_dir.name.isdigit():
                    (proc_dir / self.token).mkdir(exist_ok=True)
                    (proc_dir / self.token / "open").touch()


def sub_text(executable: str, arguments: str) -> str:
    return f"executable = {executable}\narguments = {arguments}\noutput = stdout.txt\nerror = stderr.txt\nqueue\n"


def snap(page: Any, name: str) -> None:
    """Save a screenshot of the phone's screen when POCKETGRID_SCREENSHOTS names a directory."""
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        page.wait_for_timeout(2800)  # let the toast fade (a picture, not a test condition)
        page.screenshot(path=str(Path(SHOTS) / f"{name}.png"))


def job_id_of(page: Any) -> str:
    from urllib.parse import unquote

    page.wait_for_url("**/#job/*")
    return unquote(page.url.split("#job/", 1)[1].split("/", 1)[0])


def choose_from_area(page: Any, base: str, what: str, path: str) -> None:
    """Pick the executable or the submit file (``what``) from the publishing area."""
    folder, _, name = path.rpartition("/")
    page.goto(f"{base}/#files?pick={what}" + (f"&path={folder}" if folder else ""))
    title = {"executable": "Choose the executable", "submit": "Choose the submit file"}[what]
    page.get_by_role("button", name=f"{title}: {path}").click()
    page.wait_for_url("**/#submit")


def submit_from_phone(page: Any, base: str, name: str, exe: Path, submit: Path, inputs: list[str]) -> str:
    """A job whose executable and submit file come from the phone's storage; returns its ID."""
    page.goto(f"{base}/#files?path=samples")
    for path in inputs:
        page.get_by_label(path.rpartition("/")[2], exact=True).check()
    page.goto(f"{base}/#submit")
    page.get_by_label("Job name").fill(name)
    page.get_by_label("Executable from this phone").set_input_files(str(exe))
    page.locator("#exe-chosen").get_by_text(exe.name, exact=True).wait_for()
    page.get_by_label("Submit file from this phone").set_input_files(str(submit))
    page.locator("#sub-chosen").get_by_text(submit.name, exact=True).wait_for()
    page.get_by_role("button", name="Submit job").click()
    return job_id_of(page)


def inputs_of(page: Any) -> Any:
    return page.locator("#job-inputs > li")


# ---- pairing and the session ---------------------------------------------------------------------

def test_pair_from_the_qr_fragment_stay_logged_in_and_log_out(page: Any, grid: Any, pairing_code: Any) -> None:
    base = grid.a.url
    page.goto(f"{base}/#pair={pairing_code()}")
    page.get_by_role("heading", name="Jobs").wait_for()
    assert "pair=" not in page.url  # the code does not stay in the address or the history
    who = page.evaluate("fetch('/api/v1/auth/whoami').then((r) => r.json())")
    assert who["dn"] == grid.pki.dn("alice") and who["token"]["kind"] == "device" and who["csrf"]
    assert who["admin"] is False  # a paired device never holds admin rights
    assert not page.evaluate("document.cookie")  # the session cookie is HttpOnly: script never sees it

    page.reload()  # stays logged in: the cookie, and whoami on load
    page.get_by_role("heading", name="Jobs").wait_for()
    assert page.locator("#who").inner_text() == "Alice"

    page.get_by_role("link", name="Account").click()
    page.get_by_role("button", name="Log out").click()
    page.get_by_label(PAIRING_CODE_LABEL).wait_for()
    assert page.evaluate("fetch('/api/v1/auth/whoami').then((r) => r.status)") == 401
    page.reload()
    page.get_by_label(PAIRING_CODE_LABEL).wait_for()  # logged out for good: the pairing screen again


def test_a_revoked_phone_is_shown_the_pairing_screen_and_forgets_the_jobs(
        paired_page: Any, grid: Any, alice: Any) -> None:
    page = paired_page
    wait_until(lambda: page.evaluate("navigator.serviceWorker.controller !== null"), 20,
               what="the service worker to control the page")
    page.reload()  # the jobs list now goes through the service worker, which keeps a copy
    page.get_by_role("heading", name="Jobs").wait_for()
    data_caches = "caches.keys().then((k) => k.filter((n) => n.startsWith('pg-data')).length)"
    wait_until(lambda: page.evaluate(data_caches) == 1, 10, what="the jobs list kept for offline use")
    who = page.evaluate("fetch('/api/v1/auth/whoami').then((r) => r.json())")
    alice.revoke_token(who["token"]["id"])
    page.reload()
    page.get_by_label(PAIRING_CODE_LABEL).wait_for()
    page.get_by_text("Your session has ended").wait_for()
    assert page.evaluate(data_caches) == 0


def test_a_wrong_code_says_so_and_stays_on_the_pairing_screen(page: Any, grid: Any, pairing_code: Any) -> None:
    page.goto(f"{grid.a.url}/")
    page.get_by_label(PAIRING_CODE_LABEL).wait_for()
    snap(page, "pair")
    page.get_by_label(PAIRING_CODE_LABEL).fill("ZZZZ-ZZZZ")
    page.get_by_role("button", name="Pair").click()
    page.locator("#pair-message.error").get_by_text("Pairing failed").wait_for()
    assert page.get_by_role("heading", name="Jobs").count() == 0
    pair(page, grid.a.url, pairing_code())  # a right code still works afterwards


# ---- the sample analysis from the publishing area ---------------------------------------------------

def test_sample_job_from_the_publishing_area_outputs_and_merged_plot(
        paired_page: Any, grid: Any, alice: Any) -> None:
    page, base = paired_page, grid.a.url
    page.get_by_role("link", name="Files").click()
    page.get_by_role("link", name="folder samples").click()
    for path in grid.inputs:
        page.get_by_label(path.rpartition("/")[2], exact=True).check()
    page.get_by_role("status").filter(has_text=f"{len(grid.inputs)} inputs picked").wait_for()
    snap(page, "files")

    # Wildcard search and search inside files find what a person looks for.
    page.get_by_label("Wildcard search").fill("readme*")
    page.get_by_role("button", name="Search").click()
    page.get_by_label("readme.txt", exact=False).wait_for()
    page.goto(f"{base}/#files")
    page.get_by_label("Search inside files").fill("HISTOGRAM ANALYSIS")
    page.get_by_role("button", name="Search").click()
    page.get_by_role("list", name="Search results").get_by_text("notes/readme.txt").wait_for()

    name = unique("hist")
    page.goto(f"{base}/#submit")
    page.get_by_label("Job name").fill(name)
    choose_from_area(page, base, "executable", "histogram.py")
    choose_from_area(page, base, "submit", "histogram.sub")
    assert "$(input)" in page.get_by_label("Submit file text").input_value()
    assert page.locator("#draft-inputs > li").count() == len(grid.inputs)
    snap(page, "submit")
    page.get_by_role("button", name="Submit job").click()
    job_id = job_id_of(page)
    page.get_by_role("heading", name=name).wait_for()
    for i in range(len(grid.inputs)):
        page.get_by_role("listitem", name=f"input {i}: completed, exit 0").wait_for(timeout=90_000)
    page.get_by_role("status").filter(has_text="Finished").wait_for()
    # One job, owned by alice, with the inputs picked on the phone.
    spec = alice.session.get(f"{base}/api/v1/jobs/{job_id}/spec", timeout=10).json()
    assert spec["inputs"] == grid.inputs and spec["executable_name"] == "histogram.py"
    assert [j["id"] for j in alice.jobs() if j["name"] == name] == [job_id]

    # Outputs per input; a text output read in the page.
    page.get_by_role("link", name="Outputs").click()
    for i in range(len(grid.inputs)):
        page.get_by_role("region", name=f"outputs of input {i}").get_by_text("histogram.json").wait_for()
    page.get_by_role("button", name="Read stdout.txt of input 1").click()
    viewer = page.locator("#viewer-text")
    viewer.get_by_text(f"{grid.inputs[1].rpartition('/')[2]}: 2000 values histogrammed").wait_for()
    snap(page, "outputs")

    # The merged plot: every input contributed, and its numbers are the sum of the outputs.
    page.get_by_role("link", name="Plot").click()
    page.get_by_role("img", name=f"histogram merged from {len(grid.inputs)} of {len(grid.inputs)} inputs").wait_for()
    out = {}
    for i in range(len(grid.inputs)):
        r = alice.session.get(f"{base}/api/v1/jobs/{job_id}/outputs/{i}/histogram.json", timeout=10)
        out[i] = r.json()
    merged = merge(list(out.values()))
    caption = page.locator("figure.plot figcaption").inner_text()
    assert caption.startswith(f"{merged['n']} values in {merged['bins']} bins"), caption
    assert f"underflow {merged['underflow']}, overflow {merged['overflow']}" in caption
    heights = [float(h) for h in page.locator("#histogram-svg rect.bar-rect").evaluate_all(
        "(rs) => rs.map((r) => r.getAttribute('height'))")]
    assert len(heights) == merged["bins"]
    peak = max(merged["counts"])
    assert heights.index(max(heights)) == merged["counts"].index(peak)
    snap(page, "histogram")


# ---- live states, failures, kill ---------------------------------------------------------------------

def test_states_change_live_without_a_reload_and_a_failed_input_shows_its_stderr(
        paired_page: Any, grid: Any, tmp_path: Path) -> None:
    page, base = paired_page, grid.a.url
    gate = ProcGate(grid)
    exe = tmp_path / "gate.sh"
    exe.write_bytes(GATE_SH)
    sub = tmp_path / "gate.sub"
    sub.write_text(sub_text("gate.sh", f"$(input) $(input_index) {gate}"))
    bad = grid.a.publish / "samples" / "bad-input.txt"
    bad.write_text("not a number\n")
    try:
        submit_from_phone(page, base, unique("gated"), exe, sub, [grid.inputs[0], "samples/bad-input.txt"])
        watch_the_gated_job(page, gate)
    finally:
        gate.open()  # never left waiting for the next test


def watch_the_gated_job(page: Any, gate: "ProcGate") -> None:
    page.get_by_role("listitem", name="input 0: running").wait_for(timeout=60_000)
    page.evaluate("window.__sameDocument = true")  # gone if the page reloads

    gate.open()
    page.get_by_role("listitem", name="input 0: completed, exit 0").wait_for(timeout=60_000)
    failed = page.get_by_role("listitem", name="input 1: failed, exit 3")
    failed.wait_for(timeout=60_000)
    assert page.evaluate("window.__sameDocument === true")  # pushed live, not reloaded
    failed.get_by_label("stderr of input 1").get_by_text("broken input: bad-input.txt").wait_for()
    snap(page, "job")
    assert page.get_by_role("status").filter(has_text="Finished").count() == 1
    assert page.get_by_role("button", name="Kill job").count() == 0  # nothing left to kill
    page.get_by_role("link", name="‹ All jobs").click()
    page.get_by_role("link", name=re.compile(r"^job gated-.*: failed$")).first.wait_for()
    snap(page, "jobs")


def test_kill_asks_first_then_stops_the_job(paired_page: Any, grid: Any, alice: Any, tmp_path: Path) -> None:
    page, base = paired_page, grid.a.url
    exe = tmp_path / "gate.sh"
    exe.write_bytes(GATE_SH)
    sub = tmp_path / "gate.sub"
    sub.write_text(sub_text("gate.sh", f"$(input) $(input_index) {ProcGate(grid)}"))
    job_id = submit_from_phone(page, base, unique("to-kill"), exe, sub, grid.inputs[:2])
    try:
        kill_from_the_page(page)
    finally:
        alice.kill(job_id)  # never left running for the next test (a no-op once removed)


def kill_from_the_page(page: Any) -> None:
    page.get_by_role("listitem", name="input 0: running").wait_for(timeout=60_000)

    page.get_by_role("button", name="Kill job").click()
    dialog = page.get_by_role("alertdialog")
    dialog.get_by_role("button", name="Keep running").click()
    assert dialog.count() == 0
    assert page.get_by_role("listitem", name="input 0: running").count() == 1  # nothing was killed

    page.get_by_role("button", name="Kill job").click()
    page.get_by_role("alertdialog").get_by_role("button", name="Kill job").click()
    page.get_by_role("listitem", name=re.compile(r"^input 0: removed")).wait_for(timeout=60_000)
    page.get_by_role("listitem", name=re.compile(r"^input 1: removed")).wait_for(timeout=60_000)
    page.get_by_role("link", name="‹ All jobs").click()
    page.get_by_role("link", name=re.compile(r"^job to-kill-.*: removed$")).first.wait_for()


def test_a_running_output_is_read_as_its_tail_and_follows_the_job(
        paired_page: Any, grid: Any, tmp_path: Path) -> None:
    page, base = paired_page, grid.a.url
    gate = ProcGate(grid)
    exe = tmp_path / "chatty.sh"
    exe.write_bytes(CHATTY_SH)
    sub = tmp_path / "chatty.sub"
    sub.write_text(sub_text("chatty.sh", f"$(input) $(input_index) {gate}"))
    try:
        job_id = submit_from_phone(page, base, unique("chatty"), exe, sub, grid.inputs[:1])
        page.get_by_role("listitem", name="input 0: running").wait_for(timeout=60_000)
        page.goto(f"{base}/#job/{job_id}/outputs")
        page.get_by_role("button", name="Read stdout.txt of input 0").click()
        viewer = page.locator("#viewer-text")
        viewer.get_by_text("waiting at the gate").wait_for()
        page.locator("#viewer").get_by_role("status").get_by_text("(tail)").wait_for()  # the end, not all 24 KB
        assert "line 0 of" not in viewer.inner_text() and "line 399 of" in viewer.inner_text()
        gate.open()
        viewer.get_by_text(f"the end of {grid.inputs[0].rpartition('/')[2]}").wait_for(timeout=60_000)
    finally:
        gate.open()


def test_the_plot_grows_as_inputs_complete(paired_page: Any, grid: Any, tmp_path: Path) -> None:
    page, base = paired_page, grid.a.url
    gate = ProcGate(grid)
    exe = tmp_path / "fakehist.sh"
    exe.write_bytes(FAKE_HIST_SH)
    sub = tmp_path / "fakehist.sub"
    sub.write_text(sub_text("fakehist.sh", f"$(input) $(input_index) {gate}"))
    try:
        job_id = submit_from_phone(page, base, unique("growing"), exe, sub, grid.inputs[:3])
        watch_the_plot_grow(page, base, job_id, gate)
    finally:
        gate.open()


def watch_the_plot_grow(page: Any, base: str, job_id: str, gate: "ProcGate") -> None:
    page.goto(f"{base}/#job/{job_id}/plot")
    page.get_by_role("img", name="histogram merged from 1 of 3 inputs").wait_for(timeout=60_000)
    assert page.locator("figure.plot figcaption").inner_text().startswith("3 values in 4 bins")
    gate.open()
    page.get_by_role("img", name="histogram merged from 3 of 3 inputs").wait_for(timeout=60_000)
    caption = page.locator("figure.plot figcaption").inner_text()
    assert caption.startswith("12 values in 4 bins from 0 to 4; underflow 0, overflow 3"), caption


def test_a_submit_whose_answer_is_lost_is_retried_with_the_same_key_and_makes_one_job(
        paired_page: Any, grid: Any, alice: Any) -> None:
    """The link drops after the peer made the job but before its answer arrived: the app
    retries with the same Idempotency-Key and the peer answers the job it already made."""
    from pocketgrid.http import Session

    page, base = paired_page, grid.a.url
    keys: list[str] = []
    statuses: list[int] = []
    forward = Session(verify=grid.ca)

    def lose_the_first_answer(route: Any) -> None:
        request = route.request
        if request.method != "POST":
            route.continue_()
            return
        keys.append(request.headers["idempotency-key"])
        if len(keys) == 1:  # deliver the request to the peer, then drop the link before the answer
            headers = {k: v for k, v in request.all_headers().items() if not k.startswith(":")}
            made = forward.post(request.url, headers=headers, data=request.post_data_buffer, timeout=30)
            assert made.status_code == 201, made.text
            route.abort("connectionreset")
        else:
            route.continue_()

    page.route(f"{base}/api/v1/jobs", lose_the_first_answer)
    page.on("response", lambda r: statuses.append(r.status) if r.url == f"{base}/api/v1/jobs" and r.request.method == "POST" else None)
    name = unique("lost-answer")
    page.goto(f"{base}/#submit")
    page.get_by_label("Job name").fill(name)
    choose_from_area(page, base, "executable", "histogram.py")
    choose_from_area(page, base, "submit", "histogram.sub")
    page.goto(f"{base}/#files?path=samples")
    page.get_by_label(grid.inputs[0].rpartition("/")[2], exact=True).check()
    page.goto(f"{base}/#submit")
    page.get_by_role("button", name="Submit job").click()
    job_id = job_id_of(page)
    assert len(keys) == 2 and keys[0] == keys[1], keys
    assert statuses == [200], statuses  # the retry's answer: a replay of the job made the first time
    assert [j["id"] for j in alice.jobs() if j["name"] == name] == [job_id]  # one job, not two


def test_run_again_with_other_inputs(paired_page: Any, grid: Any, alice: Any) -> None:
    page, base = paired_page, grid.a.url
    first = alice.submit(unique("first-run"), (SAMPLE / "histogram.py").read_bytes(), "histogram.sub", grid.inputs[:1],
                         executable_name="histogram.py", submit_text=(SAMPLE / "histogram.sub").read_text())
    page.goto(f"{base}/#job/{first['id']}")
    page.get_by_role("button", name="Run again with other inputs").click()
    page.wait_for_url("**/#submit")
    page.locator("#exe-chosen").get_by_text("histogram.py", exact=True).wait_for()
    assert "$(input)" in page.get_by_label("Submit file text").input_value()
    name = unique("second-run")
    page.get_by_label("Job name").fill(name)
    page.goto(f"{base}/#files?path=samples")
    page.get_by_label(grid.inputs[2].rpartition("/")[2], exact=True).check()
    page.goto(f"{base}/#submit")
    page.get_by_role("button", name="Submit job").click()
    job_id = job_id_of(page)
    page.get_by_role("listitem", name="input 0: completed, exit 0").wait_for(timeout=90_000)
    spec = alice.session.get(f"{base}/api/v1/jobs/{job_id}/spec", timeout=10).json()
    assert spec["inputs"] == [grid.inputs[2]] and spec["name"] == name
    exe = alice.session.get(f"{base}/api/v1/jobs/{job_id}/executable", timeout=10).content
    assert exe == (SAMPLE / "histogram.py").read_bytes()  # the earlier job's executable, byte for byte


def test_without_event_source_states_still_change_live_by_long_poll(
        context: Any, page: Any, grid: Any, pairing_code: Any, tmp_path: Path) -> None:
    context.add_init_script("delete window.EventSource")  # a browser (or proxy) with no SSE
    base = grid.a.url
    pair(page, base, pairing_code())
    gate = ProcGate(grid)
    exe = tmp_path / "gate.sh"
    exe.write_bytes(GATE_SH)
    sub = tmp_path / "gate.sub"
    sub.write_text(sub_text("gate.sh", f"$(input) $(input_index) {gate}"))
    try:
        submit_from_phone(page, base, unique("polled"), exe, sub, grid.inputs[:1])
        page.get_by_role("listitem", name="input 0: running").wait_for(timeout=60_000)
        page.get_by_role("status").filter(has_text="long polls").wait_for()
        page.evaluate("window.__sameDocument = true")
        gate.open()
        page.get_by_role("listitem", name="input 0: completed, exit 0").wait_for(timeout=60_000)
        assert page.evaluate("window.__sameDocument === true")
    finally:
        gate.open()


def test_download_kept_in_indexeddb_where_opfs_cannot_write(
        context: Any, page: Any, grid: Any, alice: Any, pairing_code: Any) -> None:
    # Safari before 17: OPFS without createWritable.  The app must fall back to IndexedDB.
    context.add_init_script("if (self.FileSystemFileHandle) delete FileSystemFileHandle.prototype.createWritable")
    job = alice.submit(unique("for-idb"), (SAMPLE / "histogram.py").read_bytes(), "histogram.sub", grid.inputs[:1],
                       executable_name="histogram.py", submit_text=(SAMPLE / "histogram.sub").read_text())
    assert alice.wait(job["id"], timeout=60)["state"] == "completed"
    base = grid.a.url
    pair(page, base, pairing_code())
    page.goto(f"{base}/#job/{job['id']}/outputs")
    page.get_by_role("button", name="Download histogram.json of input 0").click()
    card = page.get_by_label("download histogram.json: verified")
    card.get_by_text("kept in IndexedDB").wait_for()
    with page.expect_download() as saving:
        card.get_by_role("link", name="Save histogram.json").click()
    assert saving.value.suggested_filename == "histogram.json"
    saved = Path(saving.value.path()).read_text()
    expected = alice.session.get(f"{base}/api/v1/jobs/{job['id']}/outputs/0/histogram.json", timeout=10).text
    assert saved == expected


def test_any_peer_serves_the_app_and_a_code_from_another_peer_pairs_there(
        page: Any, grid: Any, alice: Any, pairing_code: Any) -> None:
    mine = alice.submit(unique("seen-from-b"), (SAMPLE / "histogram.py").read_bytes(), "histogram.sub",
                        grid.inputs[:1], executable_name="histogram.py",
                        submit_text=(SAMPLE / "histogram.sub").read_text())
    pair(page, grid.b.url, pairing_code())  # the code was minted at site-a
    page.get_by_role("link", name=re.compile(rf"^job {mine['name']}: ")).wait_for()
    page.get_by_role("link", name=re.compile(rf"^job {mine['name']}: ")).click()
    page.get_by_role("heading", name=mine["name"]).wait_for()


# ---- privacy ---------------------------------------------------------------------------------------

def test_another_users_job_is_invisible(paired_page: Any, grid: Any, alice: Any, bob: Any) -> None:
    page, base = paired_page, grid.a.url
    mine = alice.submit(unique("alices"), (SAMPLE / "histogram.py").read_bytes(), "histogram.sub", grid.inputs[:1],
                        executable_name="histogram.py", submit_text=(SAMPLE / "histogram.sub").read_text())
    theirs = bob.submit(unique("bobs"), (SAMPLE / "histogram.py").read_bytes(), "histogram.sub", grid.inputs[:1],
                        executable_name="histogram.py", submit_text=(SAMPLE / "histogram.sub").read_text())
    page.goto(f"{base}/#jobs")
    page.get_by_role("button", name="Refresh").click()  # both jobs were made after the list loaded
    page.get_by_role("link", name=re.compile(rf"^job {mine['name']}: ")).wait_for()
    assert page.get_by_role("link", name=re.compile(rf"^job {theirs['name']}: ")).count() == 0
    assert theirs["name"] not in page.locator("main").inner_text()

    page.goto(f"{base}/#job/{theirs['id']}")  # even with the ID in hand
    page.locator("#job-live.error").wait_for()
    assert inputs_of(page).count() == 0 and theirs["name"] not in page.locator("main").inner_text()
    page.goto(f"{base}/#job/{theirs['id']}/outputs")
    page.locator("#output-groups .error").wait_for()
    assert page.get_by_role("button", name=re.compile("^(Read|Download) ")).count() == 0


# ---- budget and layout ----------------------------------------------------------------------------

#: What the page loaded: [path, bytes over the wire with headers, compressed body bytes] of the
#: document and each JS and CSS file (Resource Timing).
LOADED = """() => [...performance.getEntriesByType('navigation'), ...performance.getEntriesByType('resource')]
    .filter((e) => /\\.(js|css)$|\\/$/.test(new URL(e.name).pathname))
    .map((e) => [new URL(e.name).pathname, e.transferSize, e.encodedBodySize])"""


def check_layout(page: Any, screen: str) -> None:
    """No sideways scrolling at 390 px; every visible control at least 44 px tall."""
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"{screen} scrolls sideways: {width} px"
    small = page.evaluate("""() => [...document.querySelectorAll('button, a, input, select, textarea, summary')]
        .map((el) => el.matches('input[type=checkbox]') ? el.closest('label') || el : el)
        .filter((el) => el.offsetParent !== null && !el.classList.contains('skip'))
        .map((el) => [el.textContent.trim().slice(0, 30) || el.getAttribute('aria-label') || el.id,
                      el.getBoundingClientRect().height])
        .filter(([, h]) => h < 44)""")
    assert not small, f"{screen}: touch targets under 44 px: {small}"


def test_first_load_budget_no_horizontal_scroll_and_touch_targets(
        paired_page: Any, grid: Any, alice: Any, context: Any) -> None:
    page, base = paired_page, grid.a.url
    # First load of a fresh phone: what came over the wire (compressed) for HTML, JS and CSS.
    fresh = context.browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    try:
        first = fresh.new_page()
        first.goto(f"{base}/")
        first.get_by_label(PAIRING_CODE_LABEL).wait_for()
        first.wait_for_load_state("networkidle")
        check_layout(first, "the pairing screen")
        sizes = first.evaluate(LOADED)
        # A repeat visit: the app shell comes from the service worker, nothing over the wire.
        wait_until(lambda: first.evaluate("navigator.serviceWorker.controller !== null"), 20,
                   what="the service worker to control the page")
        first.reload()
        first.get_by_label(PAIRING_CODE_LABEL).wait_for()
        again = first.evaluate(LOADED)
    finally:
        fresh.close()
    paths = {p for p, _, _ in sizes}
    assert {"/", "/app.css", "/js/main.js", "/vendor/tus.js"} <= paths, paths
    body = sum(encoded for _, _, encoded in sizes)
    assert 0 < body <= 100 * 1024, sorted(sizes, key=lambda s: -s[2])
    print(f"first load: {len(sizes)} files, {body} bytes compressed bodies, "
          f"{sum(t for _, t, _ in sizes)} bytes with headers; repeat visit: {sum(t for _, t, _ in again)} bytes")
    assert {p for p, _, _ in again} == paths
    assert sum(t for _, t, _ in again) == 0, again

    job = alice.submit(unique("layout"), (SAMPLE / "histogram.py").read_bytes(), "histogram.sub", grid.inputs[:2],
                       executable_name="histogram.py", submit_text=(SAMPLE / "histogram.sub").read_text())
    assert alice.wait(job["id"], timeout=60)["state"] == "completed"
    screens = ["#jobs", "#files", "#files?path=samples", "#files?glob=*.txt", "#submit", "#account",
               f"#job/{job['id']}", f"#job/{job['id']}/outputs", f"#job/{job['id']}/plot"]
    for screen in screens:
        page.goto(f"{base}/{screen}")
        page.locator("main h1").first.wait_for()
        page.wait_for_load_state("networkidle")
        page.get_by_text("Loading…").first.wait_for(state="detached")
        check_layout(page, screen)


# ---- the shipped files --------------------------------------------------------------------------------

def shell_version(shell: set[str]) -> str:
    """What VERSION in sw.js must be: a digest of every file the service worker keeps."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(shell):
        digest.update(path.encode() + b"\0" + (WEBAPP / (path.lstrip("/") or "index.html")).read_bytes())
    return f"shell-{digest.hexdigest()[:16]}"


def test_the_service_worker_keeps_every_file_of_the_app_shell() -> None:
    sw = (WEBAPP / "sw.js").read_text()
    shell = set(json.loads("[" + re.search(r"const SHELL = \[(.*?)\];", sw, re.S).group(1).strip().rstrip(",") + "]"))
    modules = {f"/{p.relative_to(WEBAPP).as_posix()}" for p in [*(WEBAPP / "js").glob("*.js"), *(WEBAPP / "vendor").glob("*.js")]}
    assert modules <= shell, f"not kept offline: {sorted(modules - shell)}"
    assert {"/", "/app.css", "/vendor/tus.js", "/manifest.webmanifest"} <= shell
    for path in shell - {"/"}:
        assert (WEBAPP / path.lstrip("/")).is_file(), path
    assert "/sw.js" not in shell
    # Cache-first: a changed file reaches phones only with a new VERSION (a new sw.js).
    version = re.search(r'const VERSION = "([^"]+)";', sw).group(1)
    assert version == shell_version(shell), (
        f"the app shell changed: set VERSION in sw.js to {shell_version(shell)!r} (it is {version!r})")
    manifest = json.loads((WEBAPP / "manifest.webmanifest").read_text())
    assert manifest["start_url"] == "/" and manifest["display"] == "standalone"
    for icon in manifest["icons"]:
        assert (WEBAPP / icon["src"].lstrip("/")).is_file(), icon


def test_no_inline_script_or_style_in_the_app() -> None:
    html = (WEBAPP / "index.html").read_text()
    assert not re.search(r"<script(?![^>]*\bsrc=)", html), "inline <script> in index.html"
    assert not re.search(r"\sstyle=|\son[a-z]+=", html), "inline style or handler in index.html"
    for js in (WEBAPP / "js").glob("*.js"):
        text = js.read_text()
        assert not re.search(r"\.style\.\w+\s*=|\.style\s*=|setAttribute\(\s*['\"]style|\.innerHTML\s*=|\beval\(|new Function", text), js.name


def test_sha256_of_a_file_too_big_for_crypto_subtle_is_computed_in_slices(page: Any, grid: Any) -> None:
    import hashlib

    page.goto(f"{grid.a.url}/")
    page.get_by_label(PAIRING_CODE_LABEL).wait_for()
    n = 9 * 1024 * 1024 + 123  # three slices of 4 MiB, the last one short
    script = """async (n) => {
      const { sha256Hex } = await import("/js/api.js");
      const bytes = new Uint8Array(n);
      for (let i = 0; i < n; i++) bytes[i] = (i * 7 + (i >> 11)) & 255;
      const blob = new Blob([bytes]);
      return [await sha256Hex(blob, { wholeMax: 1024 }), await sha256Hex(blob)];
    }"""
    sliced, whole = page.evaluate(script, n)
    expected = hashlib.sha256(bytes((i * 7 + (i >> 11)) & 255 for i in range(n))).hexdigest()
    assert sliced == whole == expected


@pytest.mark.skipif(not (ROOT / "web" / "node_modules" / "esbuild").exists(),
                    reason="web/node_modules is missing: npm ci --prefix web")
def test_the_vendored_tus_bundle_matches_its_sources() -> None:
    result = subprocess.run(["npm", "run", "--silent", "check", "--prefix", str(ROOT / "web")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
