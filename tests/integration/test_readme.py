"""The README's commands work when pasted: its ```sh blocks run in order in one shell.

Every ```sh block of README.md runs, in order, in one ``bash -euo pipefail``
session, with a temporary HOME, from a temporary copy of the repository root
(``.venv`` and ``pocketgrid/`` link to the real ones, so ``. .venv/bin/activate``
and ``../pocketgrid/sample/...`` work as in a checkout) and with a deadline.
Not run:

* the quick start's blocks (section "Quick start": CI runs them itself);
* a block right after an HTML comment ``<!-- needs: ... -->`` (e.g. an
  HTCondor head node) or ``<!-- not run: ... -->`` (e.g. a command that runs
  until Ctrl-C).

The fixed ports the README uses (``--port N``, ``127.0.0.1:N``) are replaced
by free ones.  The test asserts exit status 0, that the job's outputs were
fetched and verified, and that the README's own last commands stopped every
server it started (leftovers are killed, and fail the test).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port, wait_until

pytestmark = pytest.mark.integration

README = ROOT / "README.md"
DEADLINE = 240.0  # seconds for all the blocks together
SKIPPED_SECTIONS = {"Quick start"}
SKIP_MARKER = re.compile(r"^<!--\s*(needs:|not run\b)")
PORT = re.compile(r"(?<=127\.0\.0\.1:)(\d{4,5})\b|(?<=--port )(\d{4,5})\b")


@dataclass
class Block:
    line: int  # of the opening fence, 1-based
    section: str
    text: str
    skip: str | None  # why it is not run


def sh_blocks(markdown: str) -> list[Block]:
    """The ```sh blocks, with the section they are in and why (if) they are not run."""
    blocks: list[Block] = []
    section, previous, lines = "", "", markdown.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("## "):
            section = line[3:].strip()
        if line.strip() == "```sh":
            start, body = i + 1, []
            i += 1
            while lines[i].strip() != "```":
                body.append(lines[i])
                i += 1
            skip = None
            if section in SKIPPED_SECTIONS:
                skip = f"in section {section!r} (CI runs it)"
            elif SKIP_MARKER.match(previous.strip()):
                skip = previous.strip()
            blocks.append(Block(start, section, "\n".join(body) + "\n", skip))
        elif line.strip():
            previous = line
        i += 1
    return blocks


def test_the_extraction_finds_the_blocks_and_honours_the_markers() -> None:
    text = ("## Quick start\n```sh\nmake it\n```\n## Use\nsome text\n\n```sh\necho one\n```\n"
            "<!-- needs: htcondor -->\n```sh\ncondor\n```\n<!-- not run: runs until Ctrl-C -->\n\n"
            "```sh\nforever\n```\n```\nnot sh\n```\n```sh\necho two\n```\n")
    run = [b.text for b in sh_blocks(text) if b.skip is None]
    assert run == ["echo one\n", "echo two\n"]
    assert len(sh_blocks(text)) == 5
    real = sh_blocks(README.read_text(encoding="utf-8"))
    assert [b for b in real if b.skip is None], "README.md has no block to run"
    assert all(b.skip for b in real if b.section in SKIPPED_SECTIONS)


def _venv_into(repo: Path) -> None:
    """``repo/.venv`` for ``. .venv/bin/activate``: the venv running the tests (or a stand-in for it)."""
    if sys.prefix != sys.base_prefix:
        (repo / ".venv").symlink_to(sys.prefix, target_is_directory=True)
        return
    bin_dir = repo / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "activate").write_text(f'export PATH="{Path(sys.executable).parent}:$PATH"\n')


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - a process of another user took the id
        return False
    return True


def test_readme_commands_run_when_pasted(tmp_path: Path) -> None:
    blocks = [b for b in sh_blocks(README.read_text(encoding="utf-8")) if b.skip is None]
    for tool in ("bash", "curl"):
        if shutil.which(tool) is None:
            pytest.skip(f"the README's commands use {tool}, which is not installed here (.ci/run installs it)")
    ports: dict[str, str] = {}

    def free(m: re.Match[str]) -> str:
        return ports.setdefault(m.group(0), str(free_port()))

    repo, home = tmp_path / "repo", tmp_path / "home"
    repo.mkdir()
    home.mkdir()
    (repo / "pocketgrid").symlink_to(ROOT / "pocketgrid", target_is_directory=True)
    _venv_into(repo)
    script = "".join(f"printf '\\n### README.md line {b.line} (%s)\\n' {json.dumps(b.section)}\n"
                     f"{PORT.sub(free, b.text)}" for b in blocks)
    (tmp_path / "readme.sh").write_text(script)

    env = {k: v for k, v in os.environ.items() if not k.startswith(("POCKETGRID_", "VIRTUAL_ENV"))}
    env.update(HOME=str(home), PYTHONUNBUFFERED="1")
    log_path = tmp_path / "readme.log"
    with open(log_path, "wb") as log:
        bash = subprocess.Popen(["bash", "-euo", "pipefail", str(tmp_path / "readme.sh")], cwd=repo, env=env,
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    left_running = False
    try:
        try:
            code = bash.wait(DEADLINE)
        except subprocess.TimeoutExpired:
            code = None
        output = log_path.read_text(errors="replace")
        assert code is not None, f"the README's commands did not finish within {DEADLINE:.0f} s:\n{output[-6000:]}"
        assert code == 0, f"a README command failed (exit {code}):\n{output[-6000:]}"
        # the README's own last commands stop the servers it started
        try:
            wait_until(lambda: not _group_alive(bash.pid), 30, what="the README's peers to stop")
        except AssertionError:
            left_running = True
    finally:
        if _group_alive(bash.pid):
            os.killpg(bash.pid, signal.SIGKILL)
    assert not left_running, "the README started servers that its commands did not stop"
    assert "Traceback" not in output, output[-6000:]

    # What a user would notice: the job completed, and its outputs were fetched and verified.
    # The sample job: two published inputs of 20000 numbers; the upload job: one uploaded file of 5000.
    counts = sorted(json.loads(h.read_text())["n"] for h in (repo / "try" / "results").glob("*/*/histogram.json"))
    assert counts == [5000, 20000, 20000], output[-6000:]
    assert "verified" in output
