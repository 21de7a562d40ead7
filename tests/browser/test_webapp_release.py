"""Releasing a held job from the phone, and where the job went and why.

The job holds itself (its submit file's ``on_exit_hold``: a hold of its own, which its home leaves
held for its owner) when a file it needs does not exist.  The job screen shows the hold's reason
and a *Release held inputs* button next to *Kill job*, with the same confirm step.  Released with
nothing fixed, the input runs again and is held again; once the file exists (under
/usr/local/bin, which the job sandbox shows), released again, it completes.
"""
from __future__ import annotations

import os
import re
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.browser.conftest import unique
from tests.browser.test_webapp_flows import submit_from_phone
from tests.conftest import wait_until


@pytest.fixture
def interpreter():
    folder = Path("/usr/local/bin")
    if not os.access(folder, os.W_OK):
        pytest.skip("the test creates an interpreter in /usr/local/bin, which this account cannot write "
                    "(tests run as root here and in CI)")
    path = folder / f"pg-test-interp-{uuid.uuid4().hex[:10]}"
    yield path
    path.unlink(missing_ok=True)


def test_a_held_input_released_from_the_phone_runs_again(paired_page: Any, grid: Any, alice: Any,
                                                          tmp_path: Path, interpreter: Path) -> None:
    page, base = paired_page, grid.a.url
    exe = tmp_path / "fix.sh"
    exe.write_text(f"#!/bin/sh\n[ -e {interpreter} ] || exit 1\necho \"done with $1\" > out.txt\n")
    sub = tmp_path / "fix.sub"
    sub.write_text("executable = fix.sh\narguments = $(input)\non_exit_hold = ExitCode != 0\n"
                   f'on_exit_hold_reason = "needs {interpreter}"\nqueue\n')
    job_id = submit_from_phone(page, base, unique("held"), exe, sub, grid.inputs[:1])
    try:
        held = page.get_by_role("listitem", name=re.compile(r"^input 0: held, held: .*" + re.escape(interpreter.name)))
        held.wait_for(timeout=60_000)
        held.get_by_text(re.compile(r"^Held: ")).wait_for()
        assert re.match(r"^site-[ab]: est \d+\.\d s \(wait ", page.locator("#job-placement").inner_text())
        assert page.get_by_role("button", name="Kill job").count() == 1

        page.get_by_role("button", name="Release held inputs").click()
        dialog = page.get_by_role("alertdialog")
        dialog.get_by_role("button", name="Keep held").click()
        assert dialog.count() == 0 and "job_released" not in events_of(alice, job_id)

        page.get_by_role("button", name="Release held inputs").click()  # nothing fixed: held again
        page.get_by_role("alertdialog").get_by_role("button", name="Release").click()
        wait_until(lambda: events_of(alice, job_id)[-3:] == ["job_released", "execute", "job_held"], 60,
                   what="the released input to run and be held again")
        held.wait_for(timeout=60_000)

        interpreter.write_text("")  # the cause goes away
        page.get_by_role("button", name="Release held inputs").click()
        page.get_by_role("alertdialog").get_by_role("button", name="Release").click()
        page.get_by_role("listitem", name="input 0: completed, exit 0").wait_for(timeout=60_000)
        assert page.get_by_role("button", name="Release held inputs").count() == 0
        assert page.get_by_role("listitem", name="input 0: completed, exit 0").get_by_text("Held:").count() == 0
    finally:
        alice.kill(job_id)  # never left held for the next test (a no-op once finished)


def events_of(alice: Any, job_id: str) -> list[str]:
    status, _ = alice.status(job_id, history=True)
    return [h["event"] for h in status["inputs"][0]["history"]]
