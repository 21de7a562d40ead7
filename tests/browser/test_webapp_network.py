"""The web app on a link that fails: real Chromium at 390x844, real peers over TLS.

* an upload cut mid-way by a proxy resumes (tus) and is verified, and the job runs on it;
* a download cut again and again resumes from the bytes the app keeps and verifies SHA-256;
* a reload with the network off shows the cached jobs, marked stale, and catches up online;
* the page fixture fails a test on a CSP violation, a console error or an uncaught exception.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.browser.conftest import ProblemCollector, pair, unique
from tests.conftest import ROOT, wait_until


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
