"""The thin client loads no server code: checked in clean interpreters, in this (server) venv.

``pip install pocketgrid`` with no extras is the client for weak devices, so
importing ``mobile_client`` or running a client command of the ``pocketgrid``
CLI must not import a server package (flask, sqlalchemy, htcondor, psutil,
gunicorn, ...), even where they are installed.  Each check runs a fresh
interpreter: ``-X importtime`` lists every module the command imported, and
a second run hides the server packages (``sys.modules[name] = None``, so
importing one fails as in a base install) and runs the commands anyway.
The server commands in such an install name the extra to install.

``scripts/check_thin_client.sh`` (run by CI) does the same with the real base
install in a fresh venv.
"""
from __future__ import annotations

import subprocess
import sys

import pytest

from pocketgrid.cli import SERVER_COMMANDS, SERVER_PACKAGES, build_parser
from tests.conftest import ROOT, free_port

#: Top-level names no client path may import (server packages and server code).
SERVER_CODE = {"flask", "werkzeug", "sqlalchemy", "alembic", "psutil", "htcondor", "htcondor2", "classad2", "gunicorn",
               "aiohttp", "psycopg", "yaml", "jwt", "peer", "broker", "ema_agent"}


def client_commands() -> list[str]:
    sub = next(a for a in build_parser()._actions if hasattr(a, "choices") and a.choices)
    return sorted(set(sub.choices) - SERVER_COMMANDS)


def imported_by(*args: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run ``python -X importtime -m pocketgrid.cli ARGS``; its result and the top-level modules it imported."""
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "pocketgrid.cli", *args], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    names = {line.rsplit("|", 1)[1].strip().split(".")[0]
             for line in out.stderr.splitlines() if line.startswith("import time:") and line.count("|") == 2}
    assert "pocketgrid" in names, out.stderr[-2000:]  # the listing is real
    return out, names


def test_server_packages_are_what_the_server_extra_installs() -> None:
    assert set(SERVER_PACKAGES) <= SERVER_CODE and SERVER_COMMANDS == {"serve", "agent", "demo", "doctor", "db", "backup",
                                                                     "restore"}
    assert "status" in client_commands() and "pki" in client_commands()


@pytest.mark.parametrize("args", [["--help"], *[[c, "--help"] for c in client_commands()]],
                         ids=lambda a: " ".join(a))
def test_client_help_imports_no_server_code(args: list[str]) -> None:
    out, names = imported_by(*args)
    assert out.returncode == 0 and "usage: pocketgrid" in out.stdout, out.stderr[-2000:]
    assert names & SERVER_CODE == set()


def test_a_client_command_that_runs_imports_no_server_code() -> None:
    """Past the parser: a real status call (to a peer that is down) and the error path."""
    out, names = imported_by("status", "--peer", f"https://127.0.0.1:{free_port()}")
    assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert names & SERVER_CODE == set()


def test_the_client_library_imports_no_server_code() -> None:
    code = (
        "import importlib, pkgutil, sys, mobile_client\n"
        "for m in pkgutil.walk_packages(mobile_client.__path__, 'mobile_client.'):\n"
        "    importlib.import_module(m.name)\n"
        "import pocketgrid.cli, pocketgrid.http, pocketgrid.transfer, pocketgrid.pki, pocketgrid.pki_cli\n"
        "pocketgrid.cli.build_parser().parse_args(['status'])\n"
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    loaded = set(out.stdout.split())
    assert "mobile_client" in loaded and loaded & SERVER_CODE == set()


def _without_server_packages(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """``pocketgrid ARGV`` in an interpreter where the server packages cannot be imported (a base install)."""
    code = (
        "import sys\n"
        f"sys.modules.update({{m: None for m in {sorted(SERVER_CODE - {'peer', 'broker', 'ema_agent'})!r}}})\n"
        "from pocketgrid.cli import main\n"
        f"sys.exit(main({argv!r}))\n"
    )
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("argv", [["--help"], ["status", "--help"], ["fetch", "--help"], ["acl", "list", "--help"]])
def test_client_commands_work_without_the_server_packages(argv: list[str]) -> None:
    out = _without_server_packages(argv)
    assert out.returncode == 0 and "usage: pocketgrid" in out.stdout, out.stderr


@pytest.mark.parametrize("argv", [["serve", "--name", "x", "--insecure-http"], ["serve", "--help"],
                                  ["agent", "--help"], ["agent", "--peer", "https://127.0.0.1:1", "--name", "x"],
                                  ["demo"]], ids=lambda a: " ".join(a))
def test_server_commands_without_the_server_packages_name_the_extra(argv: list[str], tmp_path) -> None:
    if argv[:2] == ["serve", "--name"]:
        argv = [*argv, "--state", str(tmp_path)]
    out = _without_server_packages(argv)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert 'pip install "pocketgrid[server]"' in out.stderr and f"pocketgrid {argv[0]}" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []  # nothing was started or written
