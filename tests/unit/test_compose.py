"""compose/ cannot be started here (no Docker engine), so check that it is honest.

* the compose file parses, every site's command parses with pocketgrid's own
  argument parser (``pocketgrid.cli.build_parser``), uses the Condor executor,
  TLS (``--pki``) and the demo user as administrator; every URL is https and
  ports, public URLs, ``--join`` URLs, volumes and the healthcheck agree with
  each other and with the service names; one site is the broker; no service
  uses ``--insecure-http``;
* the one-shot ``pki`` service: every ``pocketgrid`` command of its script
  parses, and the script, run for real into a temporary directory, makes the
  CA, the host certificates (service name, localhost, 127.0.0.1) and the user
  whose DN the sites make administrator, where the sites and the client look
  for them, keeps the CA key out of the shared volume, and does nothing the
  second time;
* the sites' ``--pki`` directory is the one the entry point fills from the
  volume they mount; the healthcheck verifies TLS against the CA (run against
  a TLS server with a certificate of the site CA, and of another CA);
* every ``pocketgrid`` command in the client script parses (login first), the
  wait loop's pattern counts the members ``status --system`` prints, and the
  inputs it submits are the ones the entry site publishes;
* the entry point drops to the unprivileged job owner; the shell scripts are
  syntactically valid;
* the Dockerfiles install what compose/README.md says they install, and copy
  what exists;
* the images install what the top-level README's install table says: the
  client image ``pocketgrid`` with no extras (and nothing else), the site
  image the ``[server]`` extra (anything more only narrows a package that
  extra requires);
* the client and pki services run client commands only, and they work with
  every server package unimportable (pki-init.sh run for real, and the
  client script's own Python line).
"""
from __future__ import annotations

import argparse
import contextlib
import http.server
import io
import os
import re
import shlex
import shutil
import ssl
import stat
import subprocess
import sys
import threading
import tomllib
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import pytest
import yaml
from cryptography import x509

from mobile_client import cli as client_cli
from pocketgrid import pki
from pocketgrid.cli import build_parser
from pocketgrid.demo import make_sample_data
from pocketgrid.loopback import free_port
from tests.conftest import ROOT

COMPOSE = ROOT / "compose"
PKI_SCRIPT = COMPOSE / "pki-init.sh"
ENTRY = COMPOSE / "site-entrypoint.sh"
CLIENT_SCRIPT = COMPOSE / "client-demo.sh"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())


def sites(compose: dict) -> dict[str, dict]:
    return {name: svc for name, svc in compose["services"].items() if name.startswith("site-")}


def serve_args(svc: dict) -> argparse.Namespace:
    args = build_parser().parse_args(svc["command"])
    assert args.command == "serve"
    return args


def container_port(mapping: str) -> int:
    return int(str(mapping).rsplit(":", 1)[1].split("/")[0])


def mounts(svc: dict) -> dict[str, tuple[str, str]]:
    """Container path -> (volume, mode) of a service's short-syntax volumes."""
    out = {}
    for v in svc.get("volumes", []):
        source, target, *mode = v.split(":")
        out[target] = (source, mode[0] if mode else "rw")
    return out


def mount_of(svc: dict, volume: str) -> tuple[str, str]:
    """(container path, mode) where ``svc`` mounts the named volume ``volume``."""
    found = [(target, mode) for target, (source, mode) in mounts(svc).items() if source == volume]
    assert len(found) == 1, f"the service mounts volume {volume!r} {len(found)} times"
    return found[0]


def script_defaults(text: str) -> dict[str, tuple[str, str]]:
    """Shell variables set as ``VAR="${ENV:-default}"`` (or ``${ENV-default}``): VAR -> (ENV, default)."""
    return {m[0]: (m[1], m[2]) for m in re.findall(r'^(\w+)="\$\{(\w+):?-([^}]*)\}"$', text, re.M)}


def effective(text: str, environment: dict) -> dict[str, str]:
    """The values of those variables in a container with ``environment``."""
    return {var: str(environment.get(env, default)) for var, (env, default) in script_defaults(text).items()}


def in_volume(path: str, mount_point: str, local: Path) -> Path:
    """``path`` (inside a container that mounts a volume at ``mount_point``) as a file under ``local``."""
    rel = PurePosixPath(path).relative_to(mount_point)
    return local.joinpath(*rel.parts)


def all_commands(compose: dict) -> list[list[str]]:
    return [list(svc.get(key) or []) for svc in compose["services"].values() for key in ("entrypoint", "command")]


# --- services, sites -----------------------------------------------------------------------------

def test_services_and_images(compose: dict) -> None:
    assert set(compose["services"]) == {"pki", "site-a", "site-b", "site-c", "client"}
    for name, svc in sites(compose).items():
        assert svc["build"]["dockerfile"] == "compose/Dockerfile.site"
        assert (COMPOSE / svc["build"]["context"] / svc["build"]["dockerfile"]).resolve().is_file()
        assert svc["hostname"] == name
    client = compose["services"]["client"]
    assert (COMPOSE / client["build"]["context"] / client["build"]["dockerfile"]).resolve().is_file()
    # The pki service runs pki-init.sh in the client image (it has `pocketgrid pki`).
    svc = compose["services"]["pki"]
    assert svc["build"] == client["build"] and svc["image"] == client["image"]
    dockerfile = (COMPOSE / client["build"]["dockerfile"].removeprefix("compose/")).read_text()
    copied = re.search(r"^COPY compose/pki-init\.sh (\S+)$", dockerfile, re.M)
    assert copied and svc["entrypoint"] == [copied.group(1)]
    assert re.search(rf"^RUN chmod 0755 [^\n]*{re.escape(copied.group(1))}", dockerfile, re.M)
    assert svc["user"] == "root"  # it writes root-owned host keys and hands the user's key to "client"


def test_site_commands_parse_and_agree_with_ports_urls_and_volumes(compose: dict) -> None:
    host_ports = []
    for name, svc in sites(compose).items():
        args = serve_args(svc)
        assert args.name == name and re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name)
        assert args.executor == "condor"
        assert args.host == "0.0.0.0"
        assert not args.insecure_http and args.pki_dir
        ports = [container_port(p) for p in svc["ports"]]
        assert ports == [args.port]
        host_ports.append(str(svc["ports"][0]).split(":")[0])
        url = urlsplit(args.public_url)
        assert (url.scheme, url.hostname, url.port) == ("https", name, args.port)
        state = mounts(svc).get(args.state_dir)
        assert state and state[0] in compose["volumes"] and state[1] == "rw"
        assert not args.state_dir.startswith("/tmp")  # HTCondor daemons may have a private /tmp
        assert svc["depends_on"]["pki"]["condition"] == "service_completed_successfully"
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
            assert join == broker_args.public_url and urlsplit(join).scheme == "https"
        assert svc["depends_on"]["site-a"]["condition"] == "service_healthy"


def test_no_service_runs_without_tls(compose: dict) -> None:
    for command in all_commands(compose):
        assert "--insecure-http" not in command
    for svc in compose["services"].values():
        for key, value in (svc.get("environment") or {}).items():
            assert key != "POCKETGRID_INSECURE_HTTP", "PeerConfig reads POCKETGRID_<FIELD>"
            assert "http://" not in str(value)
    for path in (COMPOSE / "docker-compose.yml", ENTRY, CLIENT_SCRIPT, PKI_SCRIPT):
        text = path.read_text()
        assert "insecure" not in text.lower(), f"{path.name} mentions insecure mode"
        assert "http://" not in text, f"{path.name} has a plain-HTTP URL"


# --- the pki service ---------------------------------------------------------------------------

def pki_env(compose: dict) -> dict[str, str]:
    return {k: str(v) for k, v in compose["services"]["pki"]["environment"].items()}


def test_pki_service_paths_and_volumes(compose: dict) -> None:
    svc = compose["services"]["pki"]
    values = effective(PKI_SCRIPT.read_text(), pki_env(compose))
    # The script writes PKI_DIR into the shared volume "pki" and ca.key into "pki-ca"...
    assert mount_of(svc, "pki") == (values["PKI"], "rw")
    assert mount_of(svc, "pki-ca") == (values["CA_DIR"], "rw")
    assert {"pki", "pki-ca"} <= set(compose["volumes"])
    # ...which no other service mounts: nobody else can sign a certificate.
    for name, other in compose["services"].items():
        if name != "pki":
            assert "pki-ca" not in {source for source, _ in mounts(other).values()}, name
            assert mount_of(other, "pki")[1] == "ro", f"{name} must mount the PKI read-only"
    # One host certificate per site; everyone who uses the PKI waits for it.
    assert sorted(svc["command"]) == sorted(sites(compose))
    assert svc.get("restart") == "no"
    for name, other in compose["services"].items():
        if name != "pki":
            assert other["depends_on"]["pki"]["condition"] == "service_completed_successfully", name
    # The account the user's key is given to is the one the client image runs as.
    client_dockerfile = (COMPOSE / "Dockerfile.client").read_text()
    assert re.search(rf"^USER {re.escape(values['USER_OWNER'])}$", client_dockerfile, re.M)


def pki_calls(compose: dict, stage: Path) -> list[argparse.Namespace]:
    """Every ``pocketgrid`` command of pki-init.sh, as the pki service runs it, parsed by pocketgrid's CLI."""
    text = PKI_SCRIPT.read_text()
    values = effective(text, pki_env(compose))
    values["STAGE"] = str(stage)
    lines = re.findall(r"^\s*(pocketgrid .*)$", text, re.M)
    assert lines
    loop = re.search(r'^for (\w+) in "\$@"; do$', text, re.M)
    parsed = []
    for line in lines:
        targets = compose["services"]["pki"]["command"] if loop and f"${loop.group(1)}" in line else [None]
        for target in targets:
            words = []
            for w in shlex.split(line):
                if loop and target is not None:
                    w = w.replace(f"${loop.group(1)}", target)
                for var, value in sorted(values.items(), key=lambda kv: -len(kv[0])):
                    w = w.replace(f"${var}", value)
                assert "$" not in w, f"unresolved variable in {line!r}"
                words.append(w)
            parsed.append(build_parser().parse_args(words[1:]))
    return parsed


def test_pki_script_commands_parse_with_pocketgrid_cli(compose: dict, tmp_path: Path) -> None:
    calls = pki_calls(compose, tmp_path / "stage")
    assert all(a.command == "pki" and a.dir == str(tmp_path / "stage") for a in calls)
    kinds = [a.pki_command for a in calls]
    assert kinds[0] == "init-ca" and kinds.count("init-ca") == 1
    hosts = {a.name: a.san for a in calls if a.pki_command == "issue-host"}
    assert set(hosts) == set(sites(compose))
    for name, sans in hosts.items():
        assert sans == [name, "localhost", "127.0.0.1"]
    users = [a for a in calls if a.pki_command == "issue-user"]
    env = pki_env(compose)
    assert [(u.cn, u.vo) for u in users] == [(env["DEMO_USER_CN"], env["DEMO_USER_VO"])]


def run_pki_script(compose: dict, pki_dir: Path, ca_dir: Path) -> subprocess.CompletedProcess[str]:
    """pki-init.sh as the pki service runs it, but into local directories and without chown (not root)."""
    bin_dir = Path(sys.executable).parent
    if shutil.which("sh") is None or not (bin_dir / "pocketgrid").exists():
        pytest.skip("needs sh and the pocketgrid command next to this Python")
    env = {**os.environ, **pki_env(compose), "PKI_DIR": str(pki_dir), "PKI_CA_DIR": str(ca_dir),
           "PKI_USER_OWNER": "", "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("POCKETGRID_PKI", None)
    return subprocess.run(["sh", str(PKI_SCRIPT), *compose["services"]["pki"]["command"]],
                          env=env, capture_output=True, text=True, timeout=120)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_pki_script_makes_what_the_sites_and_the_client_use(compose: dict, tmp_path: Path) -> None:
    volume, ca_volume = tmp_path / "pki", tmp_path / "pki-ca"
    volume.mkdir()  # Docker makes the mount point
    done = run_pki_script(compose, volume, ca_volume)
    assert done.returncode == 0, done.stderr + done.stdout

    ca = pki.load_certificate(volume / "ca.pem")
    assert not (volume / "ca.key").exists() and (ca_volume / "ca.key").is_file()
    assert mode(ca_volume / "ca.key") == 0o600 and mode(volume / "ca.pem") == 0o644
    assert mode(volume) == 0o755 and mode(volume / "hosts") == 0o700 and mode(volume / "users") == 0o700
    assert not (volume / ".staging").exists()

    for name in sites(compose):
        cert = pki.load_certificate(volume / "hosts" / f"{name}.pem")
        assert cert.issuer == ca.subject and pki.is_host_certificate(cert)
        assert cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == name
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert set(san.get_values_for_type(x509.DNSName)) == {name, "localhost"}
        assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
        assert mode(volume / "hosts" / f"{name}.key") == 0o600
        pki.load_private_key(volume / "hosts" / f"{name}.key")

    # The client's login certificate, key and CA are files the script made, in the volume it mounts.
    client = compose["services"]["client"]
    point, _ = mount_of(client, "pki")
    values = effective(CLIENT_SCRIPT.read_text(), client["environment"])
    assert in_volume(values["CA"], point, volume) == volume / "ca.pem"
    user_cert = pki.load_certificate(in_volume(values["CERT"], point, volume))
    assert user_cert.issuer == ca.subject and not pki.is_host_certificate(user_cert)
    assert mode(in_volume(values["KEY"], point, volume)) == 0o600
    key = pki.load_private_key(in_volume(values["KEY"], point, volume))
    assert key.public_key().public_numbers() == user_cert.public_key().public_numbers()

    # Every site makes exactly that user a bootstrap administrator.
    dn, vo = pki.identity_of(user_cert)
    assert vo == pki_env(compose)["DEMO_USER_VO"]
    for name, svc in sites(compose).items():
        assert serve_args(svc).admins == [dn], name

    # Idempotent: a second run leaves everything as it was.
    before = {p: p.read_bytes() for p in volume.rglob("*") if p.is_file()}
    again = run_pki_script(compose, volume, ca_volume)
    assert again.returncode == 0, again.stderr
    assert "nothing to do" in again.stdout
    assert {p: p.read_bytes() for p in volume.rglob("*") if p.is_file()} == before


def test_pki_script_redoes_an_interrupted_run(compose: dict, tmp_path: Path) -> None:
    volume, ca_volume = tmp_path / "pki", tmp_path / "pki-ca"
    (volume / ".staging").mkdir(parents=True)
    (volume / ".staging" / "ca.pem").write_text("half-made")
    (volume / "hosts").mkdir()
    (volume / "hosts" / "site-a.pem").write_text("from a CA that was never finished")
    done = run_pki_script(compose, volume, ca_volume)
    assert done.returncode == 0, done.stderr + done.stdout
    ca = pki.load_certificate(volume / "ca.pem")
    assert pki.load_certificate(volume / "hosts" / "site-a.pem").issuer == ca.subject


# --- sites: the entry point's PKI copy and the healthcheck ----------------------------------------

def entry_constant(name: str) -> str:
    found = re.search(rf"^{name}=(\S+)", ENTRY.read_text(), re.M)
    assert found, f"site-entrypoint.sh sets no {name}"
    return found.group(1)


def test_sites_pki_directory_is_what_the_entry_point_prepares(compose: dict) -> None:
    entry = ENTRY.read_text()
    prepared = entry_constant("PKI")
    copy_block = entry[entry.index('if [[ -n "${POCKETGRID_PKI_SOURCE:-}" ]]; then'):entry.index("/start.sh >")]
    # ca.pem and this peer's host certificate and key, owned by the job owner; the key 0600, the directory 0700.
    assert re.search(r'install -d -m 0700 -o "\$OWNER" -g "\$OWNER" "\$PKI" "\$PKI/hosts"', copy_block)
    for src, dst, m in (("ca.pem", "ca.pem", "0644"), ("hosts/$name.pem", "hosts/$name.pem", "0644"),
                        ("hosts/$name.key", "hosts/$name.key", "0600")):
        line = f'install -m {m} -o "$OWNER" -g "$OWNER" "$POCKETGRID_PKI_SOURCE/{src}" "$PKI/{dst}"'
        assert line in copy_block, line
    assert copy_block.count("$POCKETGRID_PKI_SOURCE/hosts/") == 2  # its own certificate and key, nothing else
    assert entry.index(copy_block) < entry.index("exec runuser")
    for name, svc in sites(compose).items():
        args = serve_args(svc)
        assert args.pki_dir == prepared, name
        source = svc["environment"]["POCKETGRID_PKI_SOURCE"]
        assert mount_of(svc, "pki") == (source, "ro"), name


def test_entry_point_finds_the_peer_name_in_each_command(compose: dict) -> None:
    if shutil.which("bash") is None:
        pytest.skip("bash is not installed")
    entry = ENTRY.read_text()
    function = re.search(r"^peer_name\(\) \{\n.*?^\}\n", entry, re.M | re.S).group(0)
    for name, svc in sites(compose).items():
        done = subprocess.run(["bash", "-c", f'{function}\npeer_name "$@"', "peer_name", *svc["command"]],
                              capture_output=True, text=True)
        assert done.returncode == 0 and done.stdout == f"{name}\n", done.stderr
    done = subprocess.run(["bash", "-c", f'{function}\npeer_name "$@"', "peer_name", "serve", "--name=x-1"],
                          capture_output=True, text=True)
    assert done.stdout == "x-1\n"


class _Healthz(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        body = b'{"status": "ok"}' if self.path == "/healthz" else b"{}"
        self.send_response(200 if self.path == "/healthz" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def tls_server(cert: Path, key: Path):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), _Healthz)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_healthcheck_verifies_tls_against_the_site_ca(compose: dict, tmp_path: Path) -> None:
    for name, svc in sites(compose).items():
        args = serve_args(svc)
        test = svc["healthcheck"]["test"]
        assert test[:3] == ["CMD", "/opt/pocketgrid/bin/python", "-c"]
        code = test[3]
        assert f"'https://127.0.0.1:{args.port}/healthz'" in code
        assert f"cafile='{args.pki_dir}/ca.pem'" in code
        assert "CERT_NONE" not in code and "check_hostname" not in code and "_create_unverified" not in code
    # Run it: it passes against a peer with a certificate of the site CA (127.0.0.1 is in its SANs)...
    site, rogue = tmp_path / "site", tmp_path / "rogue"
    pki.init_ca(site)
    pki.init_ca(rogue, common_name="someone else's CA")
    good = pki.issue_host(site, "site-a", sans=["site-a", "localhost", "127.0.0.1"])
    bad = pki.issue_host(rogue, "site-a", sans=["site-a", "localhost", "127.0.0.1"])

    def run(cert: pki.Issued) -> subprocess.CompletedProcess[str]:
        with tls_server(cert.cert_path, cert.key_path) as port:
            local = code.replace(f":{args.port}/", f":{port}/").replace(f"{args.pki_dir}/ca.pem", str(site / "ca.pem"))
            return subprocess.run([sys.executable, "-c", local], capture_output=True, text=True, timeout=30)

    done = run(good)
    assert done.returncode == 0, done.stderr
    # ...and fails against one the CA did not sign.
    done = run(bad)
    assert done.returncode != 0 and "CERTIFICATE_VERIFY_FAILED" in done.stderr


# --- the client --------------------------------------------------------------------------------

def client_calls(compose: dict) -> list[argparse.Namespace]:
    client = compose["services"]["client"]
    script = CLIENT_SCRIPT.read_text()
    values = {**effective(script, client["environment"]), "SAMPLE": "/sample", "JOB": "site-b.x"}
    calls = re.findall(r"\bpocketgrid (?:login|status|files|submit|outputs|fetch|kill)\b[^|)\n]*", script)
    parsed = []
    for call in calls:
        call = call.replace("2>/dev/null", "").replace(">&2", "").replace("|| true", "")
        words = shlex.split(call)
        for var, value in sorted(values.items(), key=lambda kv: -len(kv[0])):
            words = [w.replace(f"${var}", value) for w in words]
        assert not any("$" in w for w in words), f"unresolved variable in {call!r}"
        parsed.append(build_parser().parse_args(words[1:]))
    return parsed


def test_client_logs_in_over_tls_first(compose: dict) -> None:
    client = compose["services"]["client"]
    env = client["environment"]
    peers = env["POCKETGRID_PEERS"].split(",")
    all_sites = sites(compose)
    for url in peers:
        u = urlsplit(url)
        assert u.scheme == "https"
        assert u.hostname in all_sites and u.port == serve_args(all_sites[u.hostname]).port
    point, mode_ = mount_of(client, "pki")
    assert mode_ == "ro" and PurePosixPath(env["POCKETGRID_CA"]).is_relative_to(point)
    values = effective(CLIENT_SCRIPT.read_text(), env)
    # The script's own defaults are what compose sets (running the image alone behaves the same).
    defaults = {var: default for var, (_, default) in script_defaults(CLIENT_SCRIPT.read_text()).items()}
    assert {k: defaults[k] for k in ("PEERS", "CA", "CERT", "KEY")} == {k: values[k] for k in ("PEERS", "CA", "CERT", "KEY")}

    calls = client_calls(compose)
    login = calls[0]
    assert login.command == "login", "the client must log in before anything else"
    assert (login.url or login.peer) == ",".join(peers)
    assert login.ca == env["POCKETGRID_CA"]
    assert str(login.cert) == values["CERT"] and str(login.key) == values["KEY"]
    assert [c.command for c in calls].count("login") == 1


def test_client_script_commands_parse_and_use_the_published_inputs(compose: dict, tmp_path: Path) -> None:
    client = compose["services"]["client"]
    peers = client["environment"]["POCKETGRID_PEERS"].split(",")
    all_sites = sites(compose)
    entry = urlsplit(peers[0]).hostname
    assert set(client["depends_on"]) == set(all_sites) | {"pki"}
    for name in all_sites:
        assert client["depends_on"][name]["condition"] == "service_healthy"

    calls = [c for c in client_calls(compose) if c.command != "login"]
    assert {c.command for c in calls} >= {"status", "files", "submit", "outputs", "fetch"}
    submitted = None
    for args in calls:
        assert args.peer == ",".join(peers)
        if args.command == "submit":
            submitted = args.inputs
            assert args.executable.name == "histogram.py" and args.submit_file.name == "histogram.sub"
    # The entry site publishes exactly those inputs (POCKETGRID_SAMPLE_INPUTS -> pocketgrid.demo.make_sample_data).
    n = int(all_sites[entry]["environment"]["POCKETGRID_SAMPLE_INPUTS"])
    assert submitted == make_sample_data(tmp_path, n, n_values=1)
    sample = ROOT / "pocketgrid" / "sample"
    assert (sample / "histogram.py").is_file() and (sample / "histogram.sub").is_file()


def test_wait_loop_counts_the_members_status_prints(compose: dict) -> None:
    """The loop greps ``pocketgrid status --system`` for member URLs: they must match (they are https now)."""
    script = CLIENT_SCRIPT.read_text()
    loop = re.search(r"^until \[ \"\$\(pocketgrid status --system [^|]*\| grep -c '([^']+)'\)\" -ge (\d+) \]", script, re.M)
    assert loop, "the wait loop changed shape; update this test"
    pattern, needed = loop.group(1), int(loop.group(2))
    assert needed == len(sites(compose))
    members = [{"seq": i + 1, "name": name, "url": serve_args(svc).public_url}
               for i, (name, svc) in enumerate(sites(compose).items())]

    class FakeClient:
        def __init__(self, shown: list[dict]) -> None:
            self.shown = shown

        def system(self, detail: bool = False) -> dict:
            return {"broker": {"name": "site-a", "url": members[0]["url"]}, "epoch": 1, "members": self.shown}

    def count(shown: list[dict]) -> int:
        """What ``grep -c PATTERN`` counts in the real ``status --system`` output."""
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            client_cli.cmd_status(FakeClient(shown), argparse.Namespace(system=True, json=False, job=None, wait=False))
        return sum(pattern in line for line in out.getvalue().splitlines())

    assert count(members) == needed
    assert count(members[:needed - 1]) < needed  # a system still forming keeps the client waiting


# --- entry point, scripts, Dockerfiles -------------------------------------------------------

def test_entry_point_runs_the_peer_as_the_job_owner() -> None:
    entry = ENTRY.read_text()
    dockerfile = (COMPOSE / "Dockerfile.site").read_text()
    owner = entry_constant("OWNER")
    assert re.search(rf"useradd\b[^\n]*\b{owner}\b", dockerfile)
    last = [ln for ln in entry.splitlines() if ln.strip()][-1]
    assert last.startswith('exec runuser -u "$OWNER" --') and "pocketgrid" in last and '"$@"' in last
    assert "condor_q" in entry  # waits for the schedd before starting the peer
    assert 'ENTRYPOINT ["/usr/local/bin/pocketgrid-site"]' in dockerfile
    assert "COPY compose/site-entrypoint.sh /usr/local/bin/pocketgrid-site" in dockerfile


@pytest.mark.parametrize("script, shell", [("site-entrypoint.sh", "bash"), ("client-demo.sh", "sh"),
                                           ("pki-init.sh", "sh")])
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


# --- the images install what the README's install says; the client needs no server extra ---------

#: What ``pocketgrid[server]`` adds, by import name, and the server-side packages of the distribution.
SERVER_IMPORTS = ("flask", "werkzeug", "sqlalchemy", "psutil", "htcondor", "htcondor2", "classad2", "gunicorn",
                  "aiohttp", "psycopg", "yaml", "jwt", "segno", "peer", "broker", "ema_agent")


def _pip_targets(dockerfile: str) -> list[str]:
    """Every argument of every ``pip install`` in the Dockerfile (options dropped, quotes removed)."""
    flat = _run_lines((COMPOSE / dockerfile).read_text())
    targets = []
    for args in re.findall(r"pip install ([^&\n]+)", flat):
        targets += [w for w in shlex.split(args) if not w.startswith("-")]
    return targets


def _extras(spec: str) -> set[str]:
    found = re.fullmatch(r"[^\[]+(?:\[([^\]]*)\])?", spec)
    assert found, spec
    return {e.strip() for e in (found.group(1) or "").split(",") if e.strip()}


def _readme_installs() -> dict[str, set[str]]:
    """The install table of the top-level README: what each row installs -> the extras it names."""
    rows = re.findall(r"^\| `pip install ([^`]+)`", (ROOT / "README.md").read_text(), re.M)
    return {row: _extras(shlex.split(row)[0]) for row in rows}


def test_client_image_installs_pocketgrid_with_no_extras() -> None:
    """The client (and pki) image is the README's base install: the project with no extras, nothing else."""
    assert _pip_targets("Dockerfile.client") == ["/src"]
    assert _readme_installs()["pocketgrid"] == set()  # the README's client install names no extra either


def test_site_image_installs_the_readmes_server_install() -> None:
    from packaging.requirements import Requirement

    targets = _pip_targets("Dockerfile.site")
    project = [t for t in targets if t.startswith("/src")]
    assert len(project) == 1 and _extras(project[0]) == {"server"}
    assert _readme_installs()['"pocketgrid[server]"'] == {"server"}
    # Anything else it installs only narrows a package the server extra already requires (the bindings
    # pinned to the daemons' major series), never adds one.
    server = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["server"]
    required = {Requirement(r).name.lower() for r in server}
    for extra in (t for t in targets if not t.startswith("/src")):
        assert Requirement(extra).name.lower() in required, f"Dockerfile.site installs {extra!r}, not in [server]"


def _blocking_python(tmp_path: Path) -> Path:
    """A ``python`` that cannot import any server package: what a base install can run, it runs."""
    wrapper = tmp_path / "base-python"
    wrapper.write_text(
        f"#!{sys.executable}\n"
        "import runpy, sys\n"
        f"BLOCKED = {SERVER_IMPORTS!r}\n"
        "class _Blocked:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in BLOCKED:\n"
        "            raise ImportError(f'{name} is not in the base install (pocketgrid with no extras)')\n"
        "sys.meta_path.insert(0, _Blocked())\n"
        "if sys.argv[1] == '-c':\n"
        "    code = sys.argv[2]\n"
        "    sys.argv = ['-c', *sys.argv[3:]]\n"
        "    exec(compile(code, '<string>', 'exec'), {'__name__': '__main__'})\n"
        "else:\n"
        "    assert sys.argv[1] == '-m', sys.argv\n"
        "    sys.argv = sys.argv[2:]\n"
        "    runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)\n"
    )
    wrapper.chmod(0o755)
    return wrapper


def test_client_service_runs_only_client_commands_without_server_packages(compose: dict, tmp_path: Path) -> None:
    """The client service and the pki service (client image) use client commands only, and they work with
    every server package unimportable: the client image needs no server extra."""
    from pocketgrid.cli import SERVER_COMMANDS

    for script in (CLIENT_SCRIPT, PKI_SCRIPT):
        code = "\n".join(ln for ln in script.read_text().splitlines() if not ln.lstrip().startswith("#"))
        used = set(re.findall(r"\bpocketgrid\s+([a-z][a-z-]*)", code))
        assert used and not used & SERVER_COMMANDS, f"{script.name} runs server commands {used & SERVER_COMMANDS}"
    python = _blocking_python(tmp_path)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "pocketgrid").write_text(f'#!/bin/sh\nexec "{python}" -m pocketgrid.cli "$@"\n')
    (bin_dir / "pocketgrid").chmod(0o755)
    # The pki service's script, for real, with that pocketgrid.
    volume, ca_volume = tmp_path / "pki", tmp_path / "pki-ca"
    volume.mkdir()
    env = {**os.environ, **pki_env(compose), "PKI_DIR": str(volume), "PKI_CA_DIR": str(ca_volume),
           "PKI_USER_OWNER": "", "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run(["sh", str(PKI_SCRIPT), *compose["services"]["pki"]["command"]], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr + done.stdout
    assert (volume / "ca.pem").is_file() and (volume / "hosts" / "site-a.pem").is_file()
    # The client script's own Python: where the sample job comes from.
    code = re.search(r"^SAMPLE=\$\(python -c '([^']+)'\)$", CLIENT_SCRIPT.read_text(), re.M)
    assert code, "the SAMPLE line of client-demo.sh changed shape; update this test"
    out = subprocess.run([str(python), "-c", code.group(1)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert (Path(out.stdout.strip()) / "histogram.py").is_file()
    # And the blocker does block: no server package imports in it.
    for name in ("flask", "htcondor2", "peer.app"):
        blocked = subprocess.run([str(python), "-c", f"import {name}"], capture_output=True, text=True, timeout=60)
        assert blocked.returncode != 0 and "not in the base install" in blocked.stderr, name
