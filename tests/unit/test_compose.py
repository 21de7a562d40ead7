"""compose/ cannot be started here (no Docker engine), so check that it is honest.

* the compose file parses, every site's command parses with pocketgrid's own
  argument parser (``pocketgrid.cli.build_parser``) and uses the Condor
  executor; ports, public URLs, ``--join`` URLs, volumes and the healthcheck
  agree with each other and with the service names; one site is the broker;
* every ``pocketgrid`` command in the client script parses, and the inputs it
  submits are the ones the entry site publishes;
* the entry point drops to the unprivileged job owner; the shell scripts are
  syntactically valid;
* the Dockerfiles install what compose/README.md says they install, and copy
  what exists.
"""
from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from pocketgrid.cli import build_parser
from pocketgrid.demo import make_sample_data
from tests.conftest import ROOT

COMPOSE = ROOT / "compose"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())


def sites(compose: dict) -> dict[str, dict]:
    return {name: svc for name, svc in compose["services"].items() if name.startswith("site-")}


def serve_args(svc: dict):
    args = build_parser().parse_args(svc["command"])
    assert args.command == "serve"
    return args


def container_port(mapping: str) -> int:
    return int(str(mapping).rsplit(":", 1)[1].split("/")[0])


def test_services_and_images(compose: dict) -> None:
    assert set(compose["services"]) == {"site-a", "site-b", "site-c", "client"}
    for name, svc in sites(compose).items():
        assert svc["build"]["dockerfile"] == "compose/Dockerfile.site"
        assert (COMPOSE / svc["build"]["context"] / svc["build"]["dockerfile"]).resolve().is_file()
        assert svc["hostname"] == name
    client = compose["services"]["client"]
    assert (COMPOSE / client["build"]["context"] / client["build"]["dockerfile"]).resolve().is_file()


def test_site_commands_parse_and_agree_with_ports_urls_and_volumes(compose: dict) -> None:
    host_ports = []
    for name, svc in sites(compose).items():
        args = serve_args(svc)
        assert args.name == name and re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name)
        assert args.executor == "condor"
        assert args.host == "0.0.0.0"
        ports = [container_port(p) for p in svc["ports"]]
        assert ports == [args.port]
        host_ports.append(str(svc["ports"][0]).split(":")[0])
        url = urlsplit(args.public_url)
        assert (url.scheme, url.hostname, url.port) == ("http", name, args.port)
        mounts = {v.split(":", 1)[1]: v.split(":", 1)[0] for v in svc["volumes"]}
        assert mounts.get(args.state_dir) in compose["volumes"]
        assert not args.state_dir.startswith("/tmp")  # HTCondor daemons may have a private /tmp
        health = " ".join(svc["healthcheck"]["test"])
        assert f"127.0.0.1:{args.port}/healthz" in health
    assert len(set(host_ports)) == len(host_ports)


def test_one_broker_and_joins_point_at_it(compose: dict) -> None:
    all_sites = sites(compose)
    brokers = [n for n, s in all_sites.items() if not serve_args(s).join]
    assert brokers == ["site-a"]
    broker_args = serve_args(all_sites["site-a"])
    for name, svc in all_sites.items():
        args = serve_args(svc)
        if not args.join:
            continue
        for join in args.join.split(","):
            assert join == broker_args.public_url
        assert svc["depends_on"]["site-a"]["condition"] == "service_healthy"


def test_client_script_commands_parse_and_use_the_published_inputs(compose: dict, tmp_path: Path) -> None:
    client = compose["services"]["client"]
    peers = client["environment"]["POCKETGRID_PEERS"].split(",")
    all_sites = sites(compose)
    for url in peers:
        u = urlsplit(url)
        assert u.hostname in all_sites and u.port == serve_args(all_sites[u.hostname]).port
    entry = urlsplit(peers[0]).hostname
    assert set(client["depends_on"]) == set(all_sites)

    script = (COMPOSE / "client-demo.sh").read_text()
    calls = re.findall(r"\bpocketgrid (?:status|files|submit|outputs|fetch|kill)\b[^|)\n]*", script)
    assert {c.split()[1] for c in calls} >= {"status", "files", "submit", "outputs", "fetch"}
    submitted = None
    for call in calls:
        call = call.replace("2>/dev/null", "")
        words = [w.replace("$PEERS", ",".join(peers)).replace("$SAMPLE", "/sample").replace("$JOB", "site-b.x")
                 for w in shlex.split(call)]
        args = build_parser().parse_args(words[1:])
        assert args.peer == ",".join(peers)
        if args.command == "submit":
            submitted = args.inputs
            assert args.executable.name == "histogram.py" and args.submit_file.name == "histogram.sub"
    # The entry site publishes exactly those inputs (POCKETGRID_SAMPLE_INPUTS -> pocketgrid.demo.make_sample_data).
    n = int(all_sites[entry]["environment"]["POCKETGRID_SAMPLE_INPUTS"])
    assert submitted == make_sample_data(tmp_path, n, n_values=1)
    sample = ROOT / "pocketgrid" / "sample"
    assert (sample / "histogram.py").is_file() and (sample / "histogram.sub").is_file()


def test_entry_point_runs_the_peer_as_the_job_owner() -> None:
    entry = (COMPOSE / "site-entrypoint.sh").read_text()
    dockerfile = (COMPOSE / "Dockerfile.site").read_text()
    owner = re.search(r"^OWNER=(\S+)$", entry, re.M).group(1)
    assert re.search(rf"useradd\b[^\n]*\b{owner}\b", dockerfile)
    last = [ln for ln in entry.splitlines() if ln.strip()][-1]
    assert last.startswith('exec runuser -u "$OWNER" --') and "pocketgrid" in last and '"$@"' in last
    assert "condor_q" in entry  # waits for the schedd before starting the peer
    assert 'ENTRYPOINT ["/usr/local/bin/pocketgrid-site"]' in dockerfile
    assert "COPY compose/site-entrypoint.sh /usr/local/bin/pocketgrid-site" in dockerfile


@pytest.mark.parametrize("script, shell", [("site-entrypoint.sh", "bash"), ("client-demo.sh", "sh")])
def test_scripts_are_valid_shell(script: str, shell: str) -> None:
    if shutil.which(shell) is None:
        pytest.skip(f"{shell} is not installed")
    done = subprocess.run([shell, "-n", str(COMPOSE / script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def _run_lines(dockerfile: str) -> str:
    """The Dockerfile with continuation lines joined and pip's cache flag dropped (not worth documenting)."""
    return re.sub(r"\\\n\s*", " ", dockerfile).replace("--no-cache-dir ", "")


def _readme_section(title_start: str) -> str:
    readme = (COMPOSE / "README.md").read_text()
    start = readme.index(title_start)
    end = readme.find("\n\n", readme.find("\n- ", start))
    while end != -1 and readme[end + 2: end + 4] == "- ":
        end = readme.find("\n\n", end + 2)
    return readme[start:end if end != -1 else None]


@pytest.mark.parametrize("dockerfile, title", [
    ("Dockerfile.site", "Site image (`Dockerfile.site`"),
    ("Dockerfile.client", "Client image (`Dockerfile.client`"),
])
def test_dockerfiles_install_what_the_readme_says(dockerfile: str, title: str) -> None:
    text = (COMPOSE / dockerfile).read_text()
    flat = _run_lines(text)
    section = _readme_section(title)
    said = re.findall(r"^- `([^`]+)`", section, re.M)
    assert said, f"README lists nothing for {dockerfile}"
    for command in said:
        assert command in flat, f"README says {dockerfile} runs {command!r}; it does not"
    # ...and every install in the Dockerfile is in the README.
    installs = re.findall(r"((?:dnf|yum|apt-get) install -y [^&\n]+?|pip install [^&\n]+?)(?:\s*&&|\s*$)", flat, re.M)
    assert installs
    for inst in installs:
        assert inst.strip() in said, f"{dockerfile} runs {inst.strip()!r} but the README does not say so"
    # The base image the README names is the Dockerfile's.
    base = re.search(r"^FROM (\S+)", text, re.M).group(1)
    arg = re.search(r"^ARG HTCONDOR_TAG=(\S+)", text, re.M)
    if arg:
        base = base.replace("${HTCONDOR_TAG}", arg.group(1))
    assert f"`FROM {base}`" in section


def test_dockerfiles_copy_every_package_that_exists() -> None:
    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {p.rstrip("*") for p in include}
    for name in ("Dockerfile.site", "Dockerfile.client"):
        text = (COMPOSE / name).read_text()
        sources = [line.split()[1:-1] for line in text.splitlines() if line.startswith("COPY ")]
        for srcs in sources:
            for src in srcs:
                assert (ROOT / src).exists(), f"{name} copies {src}, which does not exist"
        copied = {Path(s).name for srcs in sources for s in srcs}
        assert packages <= copied, f"{name} misses {packages - copied}"
