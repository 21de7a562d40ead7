"""The job screen for jobs that run across sites, as the person with the phone sees it.

A failed input shows its reason; *Retry failed inputs* (or *Retry* on the input's row) asks first
in the page, and the input runs again as a new attempt; each input's *History* lists its attempts
with their sites, times and verdicts (``GET /api/v1/jobs/<id>?history=1``, fetched only then); a
retry the peer refuses (409) is shown with the peer's own message; a history asked for while the
link is down says so and loads when the link returns.  A long job (30 inputs at a
peer with a long name) is summarised by state, filtered and shown 25 rows at a time, can be
pinned and unpinned, and the screen never scrolls sideways at 390 px.  A site that stops
answering: a kill pending there and the outputs it holds are said in plain words, and the page
notices by itself when the site has carried the kill out.

The executables fail until a file the test creates exists under /usr/local/bin (which the job
sandbox shows): the test decides when an input can succeed, no timing involved.
With ``POCKETGRID_SCREENSHOTS=DIR`` the tests save the job screen with its history there.
"""
from __future__ import annotations

import os
import re
import signal
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

from mobile_client import Client
from pocketgrid.demo import make_sample_data
from tests.browser.conftest import pair, unique
from tests.browser.test_webapp_flows import check_layout, snap, sub_text, submit_from_phone
from pocketgrid.loopback import report_load
from tests.conftest import PeerProcess, free_port, host_session, login_client, secure_args, wait_until
from tests.job_processes import attempt_dir, job_pids

#: A peer name as long as a host certificate allows, with nowhere to break a line.
LONG_SITE = "computing-centre_physics-department_university-of-example-site"
LONG_INPUT = "a-long-input-file-name-from-a-detector-run-without-any-spaces-0001.txt"


@pytest.fixture
def flag() -> Iterator[Path]:
    """A file the job's executable looks for (it fails while the file is missing)."""
    folder = Path("/usr/local/bin")
    if not os.access(folder, os.W_OK):
        pytest.skip("the test creates a file in /usr/local/bin, which this account cannot write "
                    "(tests run as root here and in CI)")
    path = folder / f"pg-test-ready-{uuid.uuid4().hex[:10]}"
    yield path
    path.unlink(missing_ok=True)


def needs_flag(tmp_path: Path, flag: Path) -> tuple[Path, Path]:
    """An executable that fails (exit 1, a line on stderr) until ``flag`` exists, and its submit file."""
    exe = tmp_path / "ready.sh"
    exe.write_text(f"#!/bin/sh\nif [ ! -e {flag} ]; then echo \"not ready: {flag.name} is missing\" >&2; exit 1; fi\n"
                   "echo \"done with $1\"\n")
    sub = tmp_path / "ready.sub"
    sub.write_text(sub_text("ready.sh", "$(input)"))
    return exe, sub


def attempts_of(alice: Any, job_id: str, index: int = 0) -> list[dict[str, Any]]:
    status, _ = alice.status(job_id, history=True)
    return status["inputs"][index]["attempts"]


def history_of(page: Any, index: int) -> Any:
    """Open input ``index``'s history (if it is closed) and return its panel."""
    toggle = page.get_by_role("button", name=f"History of input {index}")
    if toggle.get_attribute("aria-expanded") != "true":
        toggle.click()
    assert toggle.get_attribute("aria-expanded") == "true"
    return page.get_by_role("region", name=f"history of input {index}")


def test_a_failed_input_shows_why_and_retry_failed_inputs_runs_it_again_on_a_site_the_history_names(
        paired_page: Any, grid: Any, alice: Any, tmp_path: Path, flag: Path) -> None:
    page, base = paired_page, grid.a.url
    exe, sub = needs_flag(tmp_path, flag)
    job_id = submit_from_phone(page, base, unique("retry"), exe, sub, grid.inputs[:1])
    try:
        failed = page.get_by_role("listitem", name="input 0: failed, exit 1")
        failed.wait_for(timeout=60_000)
        failed.get_by_text("exit code 1").wait_for()
        failed.get_by_label("stderr of input 0").get_by_text(f"not ready: {flag.name} is missing").wait_for()
        now = alice.status(job_id)[0]["inputs"][0]  # (a busy machine may have lost an attempt to a site)
        failed.get_by_text(f"on {now['site']}" + (f" (attempt {now['attempt']})" if now["attempt"] > 1 else ""),
                           exact=True).wait_for()
        before = len(attempts_of(alice, job_id))

        page.get_by_role("button", name="Retry failed inputs").click()
        dialog = page.get_by_role("alertdialog")
        dialog.get_by_role("button", name="Cancel").click()
        assert dialog.count() == 0 and len(attempts_of(alice, job_id)) == before  # asked first: nothing ran

        flag.write_text("")  # now the input can succeed
        page.get_by_role("button", name="Retry failed inputs").click()
        page.get_by_role("alertdialog").get_by_role("button", name="Retry").click()
        page.get_by_role("listitem", name="input 0: completed, exit 0").wait_for(timeout=60_000)
        assert page.get_by_role("button", name="Retry failed inputs").count() == 0
        page.get_by_role("status").filter(has_text="Finished").wait_for()

        attempts = attempts_of(alice, job_id)
        ran = [a for a in attempts if a["state"] in ("failed", "completed")]
        assert [(a["state"], a["retry"]) for a in ran] == [("failed", False), ("completed", True)], attempts
        bad, good = ran
        panel = history_of(page, 0)
        for a in attempts:  # every attempt, with its site
            panel.get_by_role("listitem", name=re.compile(rf"^attempt {a['attempt']} on {re.escape(a['site'])}: {a['state']}")).wait_for()
        one = panel.get_by_role("listitem", name=f"attempt {bad['attempt']} on {bad['site']}: failed, exit code 1")
        two = panel.get_by_role("listitem", name=re.compile(rf"^attempt {good['attempt']} on {re.escape(good['site'])}: completed"))
        two.get_by_text("started by a retry; its outputs are the input's result").wait_for()
        assert re.search(r"started .*ended ", one.inner_text())  # when it ran, not only where
        page.get_by_role("listitem", name="input 0: completed, exit 0").get_by_text(
            f"on {good['site']} (attempt {good['attempt']})").wait_for()
        page.locator("#inputs-title").evaluate("(el) => el.scrollIntoView()")
        snap(page, "job-history")
    finally:
        alice.kill(job_id)


def test_retry_from_an_inputs_row_and_a_refused_retry_says_why(
        paired_page: Any, grid: Any, alice: Any, tmp_path: Path, flag: Path) -> None:
    page, base = paired_page, grid.a.url
    exe, sub = needs_flag(tmp_path, flag)
    job_id = submit_from_phone(page, base, unique("row-retry"), exe, sub, grid.inputs[:1])
    try:
        page.get_by_role("listitem", name="input 0: failed, exit 1").wait_for(timeout=60_000)
        panel = history_of(page, 0)  # open before the retry: it follows the job live
        panel.get_by_role("listitem", name=re.compile(r"^attempt \d+ on site-[ab]: failed")).wait_for()

        page.get_by_role("button", name="Retry input 0").click()
        row_dialog = page.locator("#job-inputs").get_by_role("alertdialog")  # the confirm stands in the row
        row_dialog.get_by_role("button", name="Retry").click()
        page.get_by_role("button", name="History of input 0").focus()
        # Still not ready: the new attempt fails too, and the open history shows both, with their sites.
        def failed_twice() -> list[dict[str, Any]] | None:
            atts = attempts_of(alice, job_id)
            ran = [a for a in atts if a["state"] == "failed"]
            return ran if len(ran) == 2 and atts[-1] is ran[-1] else None
        first, second = wait_until(failed_twice, 60, what="the second attempt to fail")
        assert second["retry"] and not first["retry"]
        panel.get_by_role("listitem", name=f"attempt {second['attempt']} on {second['site']}: failed, exit code 1").wait_for()
        # The row changed under it (failed, idle, running, failed), live: the focus stayed where it was.
        assert page.evaluate("document.activeElement.getAttribute('aria-label')") == "History of input 0"
        assert panel.get_by_role("listitem", name=f"attempt {first['attempt']} on {first['site']}: failed, exit code 1").count() == 1

        # The dialog is open while the input is retried elsewhere (the CLI, another phone) and succeeds:
        # confirming then is refused, and the page says what the peer said.
        page.get_by_role("button", name="Retry failed inputs").click()
        dialog = page.get_by_role("alertdialog")
        dialog.wait_for()
        flag.write_text("")
        alice.retry(job_id, failed=True)
        assert alice.wait(job_id, timeout=60)["state"] == "completed"
        dialog.get_by_role("button", name="Retry").click()
        alert = page.get_by_role("alert").filter(has_text="nothing to retry")
        alert.wait_for()
        assert alert.inner_text() == "Retry refused: nothing to retry: no input of this job has failed"
        page.get_by_role("listitem", name="input 0: completed, exit 0").wait_for(timeout=30_000)
    finally:
        alice.kill(job_id)


def test_an_inputs_history_asked_for_with_the_link_down_loads_when_it_comes_back(
        paired_page: Any, grid: Any, alice: Any, context: Any) -> None:
    page, base = paired_page, grid.a.url
    job = alice.submit(unique("history-offline"), b"#!/bin/sh\necho \"ok $1\"\n", "ok.sub", grid.inputs[:1],
                       executable_name="ok.sh", submit_text=sub_text("ok.sh", "$(input)"))
    assert alice.wait(job["id"], timeout=60)["state"] == "completed"
    page.goto(f"{base}/#job/{job['id']}")
    page.get_by_role("listitem", name="input 0: completed, exit 0").wait_for()
    page.get_by_role("status").filter(has_text="Finished").wait_for()  # no live stream left to notice the link

    context.set_offline(True)
    panel = history_of(page, 0)
    panel.get_by_text("Offline: the history cannot be loaded now; it loads when the link is back.").wait_for(timeout=30_000)
    context.set_offline(False)
    site = attempts_of(alice, job["id"])[0]["site"]
    panel.get_by_role("listitem", name=re.compile(rf"^attempt 1 on {re.escape(site)}: completed")).wait_for(timeout=40_000)
    assert panel.get_by_text("Offline").count() == 0


def test_an_idle_input_says_why_it_waits(paired_page: Any, grid: Any, alice: Any) -> None:
    page, base = paired_page, grid.a.url
    sub = sub_text("ok.sh", "$(input)").replace("queue\n", "request_memory = 100000000\nqueue\n")  # MB: no slot has it
    job = alice.submit(unique("waits"), b"#!/bin/sh\necho ok\n", "waits.sub", grid.inputs[:1],
                       executable_name="ok.sh", submit_text=sub)
    try:
        page.goto(f"{base}/#job/{job['id']}")
        row = page.get_by_role("listitem", name="input 0: idle")
        why = row.get_by_text(re.compile(r"^Why it waits: no slot matches \(of \d+\): \S"))
        why.wait_for(timeout=60_000)
        site = alice.status(job["id"])[0]["inputs"][0]["site"]
        assert site and row.get_by_text(f"on {site}", exact=True).count() == 1
    finally:
        alice.kill(job["id"])


# ---- a long job at a peer with a long name ----------------------------------------------------------

#: Every element of the page that reaches past the screen's right edge (inside elements that scroll
#: sideways on purpose, like a stderr <pre>, nothing counts).
OVERFLOWING = """() => [...document.querySelectorAll('main *')]
    .filter((el) => el.offsetParent !== null && !el.closest('pre, .subnav'))
    .filter((el) => el.getBoundingClientRect().right > document.documentElement.clientWidth + 0.5)
    .map((el) => `${el.tagName.toLowerCase()}#${el.id}.${el.className}: ${el.textContent.trim().slice(0, 40)}`)"""


@pytest.fixture(scope="module")
def far_site(tmp_path_factory: pytest.TempPathFactory, site_pki: Any) -> Iterator[PeerProcess]:
    """A peer of its own (its own broker) with a long name, 29 sample inputs and one long-named one."""
    root = tmp_path_factory.mktemp("far-site")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    peer = PeerProcess(LONG_SITE, root / "peer", free_port(),
                       secure_args(site_pki, LONG_SITE, "--threads", "16", "--agent-interval", "2", "--slots", "8"), env)
    try:
        peer.start()
        make_sample_data(peer.publish, 29, n_values=10)
        (peer.publish / "samples" / LONG_INPUT).write_text("1.0\n")
        yield peer
    finally:
        peer.stop()


def test_a_long_job_is_summarised_filtered_paged_pinned_and_fits_a_phone_with_long_names(
        page: Any, far_site: PeerProcess, site_pki: Any) -> None:
    alice = Client(far_site.url, ca=site_pki.ca, retries=0)
    issued = site_pki.users["alice"]
    alice.login(issued.cert_path, issued.key_path)
    inputs = [f"samples/run{i:03d}.txt" for i in range(29)] + [f"samples/{LONG_INPUT}"]
    # Odd inputs fail (exit 1, a long unbroken word on stderr); even ones succeed.
    exe = b"#!/bin/sh\ncase \"$2\" in *[13579]) echo \"refused-input-$1-with-a-very-long-reason\" >&2; exit 1;; esac\necho ok\n"
    job = alice.submit(unique("long"), exe, "long.sub", inputs, executable_name="long.sh",
                       submit_text=sub_text("long.sh", "$(input) $(input_index)"))
    assert alice.wait(job["id"], timeout=120)["state"] == "failed"

    pair(page, far_site.url, alice.pairing_code()["code"])
    page.goto(f"{far_site.url}/#job/{job['id']}")
    rows = page.locator("#job-inputs > li")
    page.get_by_role("button", name="failed 15", exact=True).wait_for()
    assert rows.count() == 25  # not 30 rows at once
    page.get_by_text("25 of 30 shown").wait_for()
    page.get_by_role("button", name="Show 5 more").click()
    wait_until(lambda: rows.count() == 30, 10, what="the last 5 rows")

    page.get_by_role("button", name="failed 15", exact=True).click()
    assert page.get_by_role("button", name="failed 15", exact=True).get_attribute("aria-pressed") == "true"
    wait_until(lambda: rows.count() == 15, 10, what="the failed inputs only")
    assert all(re.match(r"^input \d*[13579]: failed, exit 1$", rows.nth(k).get_attribute("aria-label")) for k in range(15))
    assert page.get_by_role("button", name="Retry failed inputs").count() == 1
    history_of(page, 29).get_by_role("listitem", name=f"attempt 1 on {LONG_SITE}: failed, exit code 1").wait_for()

    page.get_by_role("button", name="All 30", exact=True).click()
    page.get_by_role("listitem", name="input 20: completed, exit 0").get_by_text(f"on {LONG_SITE}").wait_for()
    assert page.locator("#job-sites").inner_text() == LONG_SITE

    kept = page.locator("#job-retention")
    assert kept.inner_text().startswith("until ") and "removed with its outputs" in kept.inner_text()
    page.get_by_role("button", name="Pin job", exact=True).click()
    page.locator("#job-retention").get_by_text("pinned: kept until you unpin it").wait_for()
    assert alice.status(job["id"])[0]["pinned"] is True
    page.get_by_role("button", name="Unpin job").click()
    page.get_by_role("button", name="Pin job", exact=True).wait_for()
    assert page.locator("#job-retention").inner_text().startswith("until ")
    assert alice.status(job["id"])[0]["pinned"] is False

    check_layout(page, "a long job at a long-named site, history open")
    assert page.evaluate(OVERFLOWING) == []
    page.goto(f"{far_site.url}/#job/{job['id']}/outputs")
    page.get_by_role("region", name="outputs of input 24").get_by_text(f"on {LONG_SITE}").wait_for()
    assert page.get_by_role("region", name="outputs of input 25").count() == 0  # a page of 25 inputs at a time
    page.get_by_text("Outputs of 25 of 30 inputs shown").wait_for()
    page.get_by_role("button", name="Show 5 more").click()
    page.get_by_role("region", name="outputs of input 29").get_by_text(f"on {LONG_SITE}").wait_for()
    assert page.get_by_role("button", name="Show 5 more").is_hidden()  # the last page
    check_layout(page, "the outputs of a long job at a long-named site")
    assert page.evaluate(OVERFLOWING) == []
    page.goto(f"{far_site.url}/#job/{job['id']}")
    page.get_by_role("button", name="failed 15", exact=True).click()
    page.locator("#inputs-title").evaluate("(el) => el.scrollIntoView()")
    snap(page, "job-long")


# ---- a site that stops answering ---------------------------------------------------------------------

#: Input 0 waits at a gate nobody opens (until it is killed); every other input is done at once.
WAITS_SH = b"""#!/bin/sh
if [ "$2" = 0 ]; then while [ ! -e gate ]; do sleep 0.2; done; fi
echo "done with $1" > out.txt
"""
SLOTS = 4


@pytest.fixture(scope="module")
def home_and_site(tmp_path_factory: pytest.TempPathFactory, site_pki: Any) -> Iterator[tuple[PeerProcess, PeerProcess]]:
    """A job's home (the broker) and one site with a long name that joined it; no agents: the test
    says what each has free, so that the inputs go to the site (which the test then silences)."""
    root = tmp_path_factory.mktemp("silent")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "POCKETGRID_MONITOR_INTERVAL": "0.5"}
    started: list[PeerProcess] = []

    def start(name: str, *join: str) -> PeerProcess:
        args = secure_args(site_pki, name, "--no-agent", "--threads", "16", "--slots", str(SLOTS), *join)
        p = PeerProcess(name, root / name, free_port(), args, env)
        started.append(p)
        return p.start()

    try:
        home = start("home-h")
        site = start(LONG_SITE, "--join", home.url)
        carol = login_client(home, site_pki, "carol")
        wait_until(lambda: len(carol.system()["members"]) == 2, 30, what="the site to join")
        make_sample_data(home.publish, 2, n_values=10)
        yield home, site
    finally:
        for p in started:
            for proc_dir in (p.state / "stage").glob("*/0"):  # never leave a waiting proc behind
                (proc_dir / "gate").touch()
            p.stop()


def test_a_kill_pending_at_a_silent_site_and_its_unreachable_outputs_are_said_in_plain_words(
        page: Any, home_and_site: tuple[PeerProcess, PeerProcess], site_pki: Any) -> None:
    home, site = home_and_site
    for peer, free in ((home, 0), (site, SLOTS)):  # only the site has room
        report_load(home.url, peer, 0.1, session=host_session(site_pki, peer.name),
                    metrics={"cores": SLOTS, "cpu_percent": 100.0 * (SLOTS - free) / SLOTS, "load1": SLOTS - free,
                             "clock_mhz": 2000.0})
    alice = login_client(home, site_pki, "alice")
    job = alice.submit(unique("silent"), WAITS_SH, "waits.sub", ["samples/run000.txt", "samples/run001.txt"],
                       executable_name="waits.sh", submit_text=sub_text("waits.sh", "$(input) $(input_index)"))
    pair(page, home.url, alice.pairing_code()["code"])
    page.goto(f"{home.url}/#job/{job['id']}")
    page.get_by_role("listitem", name="input 0: running").get_by_text(f"on {LONG_SITE}").wait_for(timeout=60_000)
    page.get_by_role("listitem", name="input 1: completed, exit 0").wait_for(timeout=60_000)
    proc_dir = attempt_dir([home, site], alice.status(job["id"], history=True)[0], 0)
    assert job_pids(proc_dir)

    site.stop(signal.SIGKILL)  # its runner lives on, waiting at its gate
    try:
        page.get_by_role("button", name="Kill job").click()
        page.get_by_role("alertdialog").get_by_role("button", name="Kill job").click()
        # First "under way" (the home is trying), then, once the site did not answer, why it waits:
        page.locator("#job-removal").get_by_text(
            f"Kill pending at {LONG_SITE}: it does not answer; it will be carried out when it does.",
            exact=True).wait_for(timeout=40_000)
        page.get_by_role("listitem", name=re.compile(r"^input 0: removed")).get_by_text(
            f"Kill pending at {LONG_SITE}: it does not answer", exact=False).wait_for()
        page.get_by_role("status").filter(has_text="a kill still waits for a site").wait_for()
        check_layout(page, "a kill pending at a long-named silent site")
        assert page.evaluate(OVERFLOWING) == []

        page.get_by_role("link", name="Outputs").click()
        said = page.locator("#outputs-unreachable")
        said.get_by_text(f"{LONG_SITE} does not answer now: the outputs kept there (inputs 0, 1) cannot be "
                         "listed or fetched until it does. They are not lost.").wait_for(timeout=30_000)
        page.get_by_role("region", name="outputs of input 1").get_by_text(f"Not listed: {LONG_SITE} does not answer now.").wait_for()
        assert page.evaluate(OVERFLOWING) == []
        page.get_by_role("link", name="Status").click()
        page.locator("#job-removal").wait_for()
    finally:
        site.start()
    # The site answers again: the kill is carried out there, and the page (a finished job, no live
    # stream) notices by itself.
    wait_until(lambda: not job_pids(proc_dir), 90, 0.5, what=f"the kill to be carried out at {LONG_SITE}")
    page.locator("#job-removal").wait_for(state="detached", timeout=40_000)
    page.get_by_role("status").filter(has_text="Finished: no more changes").wait_for()
