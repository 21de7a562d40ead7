"""Resumable, verified uploads (tus 1.0.0) against a real TLS peer: the Python client, the CLI,
a link that drops mid-upload (tests/cutting_proxy.py), a peer restarted mid-upload, and the
protocol's refusals (409, 412, 415, 460, 404 for another user, 413, 400)."""
from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import signal
import ssl
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from mobile_client import ApiError, Client
from mobile_client.upload import UploadInterrupted, plain_session, upload as tus_upload
from pocketgrid.http import Session
from tests.conftest import ROOT, PeerProcess, free_port, host_session, secure_args, user_session, wait_until
from tests.cutting_proxy import CuttingProxy

pytestmark = pytest.mark.integration

MAX_UPLOAD = 8_000_000
TUS = {"Tus-Resumable": "1.0.0"}
CHUNK = {**TUS, "Content-Type": "application/offset+octet-stream"}

COUNT_SH = b"""#!/bin/sh
# usage: count.sh INPUT ; the number of bytes of the input
wc -c < "$1" | tr -d ' ' > count.txt
"""
COUNT_SUB = """executable = count.sh
arguments = $(input)
output = stdout.txt
error = stderr.txt
queue
"""


@pytest.fixture(scope="module")
def peer(tmp_path_factory, site_pki):
    """One TLS peer (its own broker) with an 8 MB upload limit; sessions for alice, bob and carol (admin)."""
    root = tmp_path_factory.mktemp("uploads")
    config = root / "peer.toml"
    config.write_text(f"[peer]\nmax_upload_bytes = {MAX_UPLOAD}\n")
    p = PeerProcess("up", root / "up", free_port(),
                    secure_args(site_pki, "up", "--no-agent", "--threads", "8", "--config", str(config)),
                    {**os.environ, "PYTHONUNBUFFERED": "1"})
    p.start()
    p.host = host_session(site_pki, "up")
    p.host.post(f"{p.url}/api/v1/broker/reports", json={"peer": "up", "url": p.url, "coefficient": 0.1},
                timeout=5).raise_for_status()
    p.sessions = {user: user_session(p, site_pki, user) for user in ("alice", "bob", "carol")}
    p.site_pki = site_pki
    yield p
    p.stop()


@pytest.fixture(autouse=True)
def client_home(tmp_path, monkeypatch) -> Path:
    """The client remembers unfinished uploads in $POCKETGRID_HOME/uploads: one per test."""
    home = tmp_path / "client-home"
    monkeypatch.setenv("POCKETGRID_HOME", str(home))
    return home


def token(peer, user: str) -> str:
    return peer.sessions[user].headers["Authorization"].split()[1]


def client(peer, user: str = "alice", url: str | None = None) -> Client:
    return Client(url or peer.url, ca=peer.site_pki.ca, token=token(peer, user), retries=0)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def create(peer, data: bytes, filename: str = "raw.bin", *, user: str = "alice", sha256: str | None = None,
           **headers: str) -> requests.Response:
    sha = sha256 or hashlib.sha256(data).hexdigest()
    return peer.sessions[user].post(
        f"{peer.url}/api/v1/uploads", timeout=10,
        headers={**TUS, "Upload-Length": str(len(data)), "Upload-Metadata": f"filename {b64(filename)},sha256 {b64(sha)}",
                 **headers})


def upload_url(peer, r: requests.Response) -> str:
    assert r.status_code == 201, r.text
    assert r.headers["Location"].startswith("/api/v1/uploads/")
    return peer.url + r.headers["Location"]


def my_uploads(peer, user: str = "alice") -> Path:
    return peer.publish / "uploads" / f"u-{hashlib.sha256(peer.site_pki.dn(user).encode()).hexdigest()[:16]}"


def incoming(peer) -> list[str]:
    return sorted(p.name for p in (peer.state / "uploads-incoming").iterdir())


# ---- the happy path -----------------------------------------------------------------------------

def test_upload_then_submit_with_it_as_input(peer, tmp_path):
    local = tmp_path / "input.dat"
    local.write_bytes(os.urandom(1_234_567))
    c = client(peer)
    seen = []
    info = c.upload(local, progress=lambda done, total: seen.append((done, total)))
    assert info["path"] == f"uploads/{my_uploads(peer).name}/input.dat"
    assert info["size"] == 1_234_567 and info["sha256"] == hashlib.sha256(local.read_bytes()).hexdigest()
    assert (my_uploads(peer) / "input.dat").read_bytes() == local.read_bytes()
    assert seen[-1] == (1_234_567, 1_234_567)
    assert incoming(peer) == []  # nothing left behind in the incoming area
    assert not list((Path(os.environ["POCKETGRID_HOME"]) / "uploads").glob("*.json"))  # record gone once done

    exe, sub = tmp_path / "count.sh", tmp_path / "count.sub"
    exe.write_bytes(COUNT_SH)
    sub.write_text(COUNT_SUB)
    job = c.submit("count-upload", exe, sub, [info["path"]])
    final = c.wait(job["id"], timeout=60)
    assert final["state"] == "completed", final
    result = c.fetch(job["id"], 0, "count.txt", tmp_path / "count.txt")
    assert result.path.read_text().strip() == "1234567"

    audit = peer.sessions["carol"].get(f"{peer.url}/api/v1/admin/audit", params={"action": "upload"}, timeout=10).json()
    assert any(e["dn"] == peer.site_pki.dn("alice") and info["path"] in e["detail"] for e in audit["events"])


def test_options_is_public_and_tells_the_limits(peer):
    r = requests.options(f"{peer.url}/api/v1/uploads", verify=peer.site_pki.ca, timeout=10)
    assert r.status_code == 204
    assert r.headers["Tus-Resumable"] == "1.0.0" and r.headers["Tus-Version"] == "1.0.0"
    assert set(r.headers["Tus-Extension"].split(",")) >= {"creation", "termination"}
    assert r.headers["Tus-Max-Size"] == str(MAX_UPLOAD)


def test_get_json_and_head_and_termination(peer):
    data = b"0123456789" * 100
    url = upload_url(peer, create(peer, data, "parts.txt"))
    alice = peer.sessions["alice"]
    r = alice.patch(url, data=data[:400], headers={**CHUNK, "Upload-Offset": "0"}, timeout=10)
    assert r.status_code == 204 and r.headers["Upload-Offset"] == "400" and "Upload-Expires" in r.headers
    r = alice.head(url, headers=TUS, timeout=10)
    assert r.status_code == 200 and r.headers["Upload-Offset"] == "400" and r.headers["Upload-Length"] == "1000"
    assert r.headers["Cache-Control"] == "no-store" and "filename" in r.headers["Upload-Metadata"]
    info = alice.get(url, timeout=10).json()
    assert info["offset"] == 400 and info["length"] == 1000 and info["complete"] is False and info["path"] is None
    r = alice.delete(url, headers=TUS, timeout=10)
    assert r.status_code == 204
    assert alice.head(url, headers=TUS, timeout=10).status_code == 404
    assert not (my_uploads(peer) / "parts.txt").exists()
    assert f"{url.rsplit('/', 1)[1]}.part" not in incoming(peer)


def test_creation_with_upload_of_a_whole_small_file(peer):
    data = b"tiny\n"
    r = peer.sessions["alice"].post(
        f"{peer.url}/api/v1/uploads", data=data, timeout=10,
        headers={**CHUNK, "Upload-Length": str(len(data)),
                 "Upload-Metadata": f"filename {b64('tiny.txt')},sha256 {b64(hashlib.sha256(data).hexdigest())}"})
    assert r.status_code == 201 and r.headers["Upload-Offset"] == "5"
    info = peer.sessions["alice"].get(peer.url + r.headers["Location"], timeout=10).json()
    assert info["complete"] and (my_uploads(peer) / "tiny.txt").read_bytes() == data


# ---- a link that drops ----------------------------------------------------------------------------

def test_upload_cut_midway_resumes_from_the_peers_offset(peer, tmp_path):
    size = 6 * 1024 * 1024
    local = tmp_path / "big.bin"
    local.write_bytes(os.urandom(size))
    with CuttingProxy("127.0.0.1", peer.port, cut_every_bytes=1_500_000) as proxy:
        info = client(peer, url=proxy.url_for("https")).upload(local)
    assert proxy.cuts >= 3  # every 4 MiB chunk was cut at least once
    assert (my_uploads(peer) / "big.bin").read_bytes() == local.read_bytes()
    assert info["sha256"] == hashlib.sha256(local.read_bytes()).hexdigest()
    # Each reconnect went on from the peer's offset: far less than the whole file was sent again
    # (what is lost per cut is what sat in socket buffers; headers and TLS add a little).
    assert proxy.bytes_to_target < 1.5 * size, (proxy.bytes_to_target, size)


def test_a_link_that_went_silent_mid_chunk_keeps_its_bytes_when_the_client_comes_back(peer):
    """A phone's link drops without a FIN: the peer still thinks the old chunk is arriving.  The
    client's reconnect (HEAD for the offset) ends that chunk, and the offset it gets counts the
    bytes that did arrive, so it goes on from there instead of sending them again."""
    data = os.urandom(400_000)
    url = upload_url(peer, create(peer, data, "silent.bin"))
    old = http.client.HTTPSConnection("127.0.0.1", peer.port, timeout=30,
                                      context=ssl.create_default_context(cafile=str(peer.site_pki.ca)))
    old.putrequest("PATCH", urlsplit(url).path)
    for name, value in {**CHUNK, "Upload-Offset": "0", "Content-Length": str(len(data)),
                        "Authorization": peer.sessions["alice"].headers["Authorization"]}.items():
        old.putheader(name, value)
    old.endheaders()
    old.send(data[:150_000])  # ... and then nothing: the connection stays open, silent
    alice = peer.sessions["alice"]
    try:
        offset = int(alice.head(url, headers=TUS, timeout=10).headers["Upload-Offset"])
        # what the silent chunk delivered (up to what the front had read of it when the HEAD came), not 0
        assert 0 < offset <= 150_000
        r = alice.patch(url, data=data[offset:], headers={**CHUNK, "Upload-Offset": str(offset)}, timeout=30)
        assert r.status_code == 204, r.text
    finally:
        old.close()
    assert (my_uploads(peer) / "silent.bin").read_bytes() == data


def test_interrupted_upload_resumes_on_the_next_run(peer, tmp_path):
    """Ctrl-C (here: the progress callback raises) after a few MiB; the same call again sends only the rest."""
    size = 5 * 1024 * 1024
    local = tmp_path / "again.bin"
    local.write_bytes(os.urandom(size))

    def stop_after_two_mib(done: int, total: int | None) -> None:
        if done >= 2 * 1024 * 1024:
            raise KeyboardInterrupt

    with CuttingProxy("127.0.0.1", peer.port) as proxy:
        c = client(peer, url=proxy.url_for("https"))
        with pytest.raises(KeyboardInterrupt):
            c.upload(local, progress=stop_after_two_mib)
        assert not (my_uploads(peer) / "again.bin").exists()
        first_run = proxy.bytes_to_target
        info = c.upload(local)
        second_run = proxy.bytes_to_target - first_run
    assert info["resumed_from"] >= 2 * 1024 * 1024
    assert second_run < size - 2 * 1024 * 1024 + 512 * 1024  # the rest, plus headers and TLS
    assert (my_uploads(peer) / "again.bin").read_bytes() == local.read_bytes()


def test_progress_keeps_a_flaky_upload_going(peer, tmp_path):
    """More cuts than max_failures, but each connection moves the offset: the upload never gives up."""
    size = 5 * 1024 * 1024
    local = tmp_path / "flaky.bin"
    local.write_bytes(os.urandom(size))
    with CuttingProxy("127.0.0.1", peer.port, cut_every_bytes=1_000_000) as proxy:
        result = tus_upload(plain_session(client(peer).session), proxy.url_for("https"), local,
                            max_failures=2, retry_delay=0.01, records=tmp_path / "records")
    assert proxy.cuts > 2
    assert result.sha256 == hashlib.sha256(local.read_bytes()).hexdigest()
    assert (my_uploads(peer) / "flaky.bin").read_bytes() == local.read_bytes()


def test_a_link_that_never_comes_back_gives_up_with_what_to_do(peer, tmp_path):
    local = tmp_path / "stuck.bin"
    local.write_bytes(os.urandom(3 * 1024 * 1024))
    with CuttingProxy("127.0.0.1", peer.port) as proxy:
        session = Session(verify=peer.site_pki.ca)  # no automatic retries: upload() resumes by itself
        session.headers["Authorization"] = f"Bearer {token(peer, 'alice')}"
        records = tmp_path / "records"
        # The first chunk goes through, then every connection is cut before a byte of a PATCH arrives.
        seen = []

        def cut_after_first_chunk(done: int, total: int | None) -> None:
            seen.append(done)
            if done >= 1024 * 1024:
                proxy.set_cut(1)

        with pytest.raises(UploadInterrupted) as err:
            tus_upload(session, proxy.url_for("https"), local, chunk_bytes=1024 * 1024, max_failures=3,
                       retry_delay=0.01, records=records, progress=cut_after_first_chunk)
        assert "run the same command again to resume" in str(err.value) and "1048576" in str(err.value)
        proxy.set_cut(None)
        result = tus_upload(session, proxy.url_for("https"), local, chunk_bytes=1024 * 1024, records=records)
    assert result.resumed_from == 1024 * 1024
    assert (my_uploads(peer) / "stuck.bin").read_bytes() == local.read_bytes()


def test_peer_restarted_mid_upload_lets_it_resume(peer, tmp_path):
    data = os.urandom(3_000_000)
    url = upload_url(peer, create(peer, data, "restart.bin"))
    r = peer.sessions["alice"].patch(url, data=data[:1_000_000], headers={**CHUNK, "Upload-Offset": "0"}, timeout=10)
    assert r.status_code == 204
    peer.stop(signal.SIGKILL)  # no goodbye: what is stored must be on disk and in the database already
    peer.start()
    r = peer.sessions["alice"].head(url, headers=TUS, timeout=10)
    assert r.status_code == 200 and r.headers["Upload-Offset"] == "1000000"
    r = peer.sessions["alice"].patch(url, data=data[1_000_000:], headers={**CHUNK, "Upload-Offset": "1000000"}, timeout=30)
    assert r.status_code == 204 and r.headers["Upload-Offset"] == "3000000"
    assert (my_uploads(peer) / "restart.bin").read_bytes() == data


def test_a_browser_session_uploads_with_the_csrf_header(peer):
    """The web app's way (tus-js-client with the cookie and ``headers: {"X-CSRF-Token": ...}``): the
    writes need the CSRF token, the offset query does not; another site is refused."""
    from http.cookies import SimpleCookie

    from pocketgrid.http import Session as CaSession

    code = peer.sessions["alice"].post(f"{peer.url}/api/v1/auth/pairing", timeout=10).json()["code"]
    browser = CaSession(verify=peer.site_pki.ca)
    r = browser.post(f"{peer.url}/api/v1/auth/pair", json={"code": code, "device": "browser", "cookie": True},
                     headers={"Origin": peer.url}, timeout=10)
    assert r.status_code == 201, r.text
    cookie = SimpleCookie()
    cookie.load(r.headers["Set-Cookie"])
    csrf = r.json()["csrf"]
    browser.cookies.clear()
    browser.headers["Cookie"] = f"pg_session={cookie['pg_session'].value}"

    data = b"from the phone\n"
    meta = {"Upload-Length": str(len(data)),
            "Upload-Metadata": f"filename {b64('phone.txt')},sha256 {b64(hashlib.sha256(data).hexdigest())}"}
    r = browser.post(f"{peer.url}/api/v1/uploads", headers={**TUS, **meta}, timeout=10)
    assert r.status_code == 403 and "CSRF" in r.json()["error"]
    r = browser.post(f"{peer.url}/api/v1/uploads", headers={**TUS, **meta, "X-CSRF-Token": csrf,
                                                           "Origin": "https://evil.example"}, timeout=10)
    assert r.status_code == 403
    r = browser.post(f"{peer.url}/api/v1/uploads", headers={**TUS, **meta, "X-CSRF-Token": csrf}, timeout=10)
    url = upload_url(peer, r)
    assert browser.head(url, headers=TUS, timeout=10).headers["Upload-Offset"] == "0"  # reads need no token
    r = browser.patch(url, data=data, headers={**CHUNK, "Upload-Offset": "0"}, timeout=10)
    assert r.status_code == 403
    r = browser.patch(url, data=data, headers={**CHUNK, "Upload-Offset": "0", "X-CSRF-Token": csrf}, timeout=10)
    assert r.status_code == 204 and (my_uploads(peer) / "phone.txt").read_bytes() == data


# ---- refusals -----------------------------------------------------------------------------------

def test_wrong_sha256_is_460_and_no_file_appears(peer):
    data = os.urandom(100_000)
    url = upload_url(peer, create(peer, data, "wrong.bin", sha256=hashlib.sha256(b"something else").hexdigest()))
    r = peer.sessions["alice"].patch(url, data=data, headers={**CHUNK, "Upload-Offset": "0"}, timeout=10)
    assert r.status_code == 460
    assert "SHA-256" in r.json()["error"] and "upload it again" in r.json()["error"]
    assert not (my_uploads(peer) / "wrong.bin").exists()
    assert f"{url.rsplit('/', 1)[1]}.part" not in incoming(peer)
    assert peer.sessions["alice"].head(url, headers=TUS, timeout=10).status_code == 410  # start a new one


def test_client_sees_a_damaged_upload_as_an_integrity_error(peer, tmp_path, monkeypatch):
    """The client hashes the file first; if the bytes change on the way the peer's 460 reaches the user."""
    from mobile_client import upload as upload_module
    from pocketgrid.transfer import IntegrityError

    local = tmp_path / "changing.txt"
    local.write_bytes(b"a" * 1000)
    monkeypatch.setattr(upload_module, "file_sha256", lambda path, progress=None: hashlib.sha256(b"b" * 1000).hexdigest())
    with pytest.raises(IntegrityError) as err:
        client(peer).upload(local)
    assert "SHA-256" in str(err.value)
    assert not (my_uploads(peer) / "changing.txt").exists()


def test_offset_mismatch_is_409(peer):
    data = b"x" * 1000
    url = upload_url(peer, create(peer, data, "offsets.bin"))
    alice = peer.sessions["alice"]
    r = alice.patch(url, data=data[:10], headers={**CHUNK, "Upload-Offset": "5"}, timeout=10)
    assert r.status_code == 409 and r.json()["offset"] == 0 and "send from byte 0" in r.json()["error"]
    assert alice.patch(url, data=data[:10], headers={**CHUNK, "Upload-Offset": "0"}, timeout=10).status_code == 204
    r = alice.patch(url, data=data[:10], headers={**CHUNK, "Upload-Offset": "0"}, timeout=10)
    assert r.status_code == 409 and r.json()["offset"] == 10
    assert alice.head(url, headers=TUS, timeout=10).headers["Upload-Offset"] == "10"  # the refused ones changed nothing


def test_protocol_refusals_412_415(peer):
    data = b"y" * 100
    alice = peer.sessions["alice"]
    r = alice.post(f"{peer.url}/api/v1/uploads", timeout=10,
                   headers={"Upload-Length": "100", "Upload-Metadata": f"filename {b64('v.bin')},sha256 {b64('0' * 64)}"})
    assert r.status_code == 412 and r.headers["Tus-Version"] == "1.0.0" and "Tus-Resumable: 1.0.0" in r.json()["error"]
    url = upload_url(peer, create(peer, data, "types.bin"))
    r = alice.patch(url, data=data, headers={**TUS, "Upload-Offset": "0", "Content-Type": "application/octet-stream"},
                    timeout=10)
    assert r.status_code == 415 and "application/offset+octet-stream" in r.json()["error"]
    r = alice.patch(url, data=data, headers={**CHUNK, "Tus-Resumable": "0.2.2", "Upload-Offset": "0"}, timeout=10)
    assert r.status_code == 412
    assert alice.head(url, headers=TUS, timeout=10).headers["Upload-Offset"] == "0"


def test_another_users_upload_is_404(peer):
    data = b"private\n"
    url = upload_url(peer, create(peer, data, "secret.txt"))
    bob = peer.sessions["bob"]
    assert bob.head(url, headers=TUS, timeout=10).status_code == 404
    assert bob.get(url, timeout=10).status_code == 404
    assert bob.patch(url, data=data, headers={**CHUNK, "Upload-Offset": "0"}, timeout=10).status_code == 404
    assert bob.delete(url, headers=TUS, timeout=10).status_code == 404
    r = peer.sessions["alice"].patch(url, data=data, headers={**CHUNK, "Upload-Offset": "0"}, timeout=10)
    assert r.status_code == 204  # untouched by bob's attempts
    assert not (my_uploads(peer, "bob") / "secret.txt").exists()
    assert (my_uploads(peer) / "secret.txt").read_bytes() == data


def test_without_login_is_401(peer):
    r = requests.post(f"{peer.url}/api/v1/uploads", verify=peer.site_pki.ca, timeout=10,
                      headers={**TUS, "Upload-Length": "1", "Upload-Metadata": f"filename {b64('a')},sha256 {b64('0' * 64)}"})
    assert r.status_code == 401


def test_oversize_is_413(peer, tmp_path):
    before = incoming(peer)
    r = create(peer, b"", "huge.bin", **{"Upload-Length": str(MAX_UPLOAD + 1)})
    assert r.status_code == 413 and str(MAX_UPLOAD) in r.json()["error"]
    huge = tmp_path / "huge.bin"
    huge.write_bytes(b"z" * (MAX_UPLOAD + 1))
    with pytest.raises(ApiError) as err:
        client(peer).upload(huge)
    assert err.value.status == 413
    # a chunk that goes past Upload-Length
    url = upload_url(peer, create(peer, b"12345", "short.bin"))
    r = peer.sessions["alice"].patch(url, data=b"123456", headers={**CHUNK, "Upload-Offset": "0"}, timeout=10)
    assert r.status_code == 413 and "length" in r.json()["error"]
    assert incoming(peer) == sorted([*before, f"{url.rsplit('/', 1)[1]}.part"])
    assert not (my_uploads(peer) / "huge.bin").exists()


@pytest.mark.parametrize("filename, why", [
    ("../evil.txt", "'..'"),
    ("/etc/evil.txt", "absolute"),
    ("a/../../evil.txt", "'..'"),
    ("bad\x00name", "NUL"),
    ("back\\slash", "backslash"),
    ("", "file name"),
])
def test_bad_names_are_400_and_change_nothing(peer, filename, why):
    before = incoming(peer)
    r = create(peer, b"evil", filename)
    assert r.status_code == 400 and why in r.json()["error"], r.text
    assert incoming(peer) == before
    assert not list(peer.state.rglob("evil.txt"))


@pytest.mark.parametrize("metadata, why", [
    ("filename bm90LWJhc2U2NA", "base64"),  # missing padding: not strict base64
    (f"filename {b64('x.txt')}", "sha256"),
    (f"filename {b64('x.txt')},sha256 {b64('not-hex')}", "64 hex"),
    (f"filename {b64('x.txt')},filename {b64('y.txt')},sha256 {b64('0' * 64)}", "twice"),
    ("filename a b c", "pair"),
])
def test_bad_metadata_is_400(peer, metadata, why):
    r = peer.sessions["alice"].post(f"{peer.url}/api/v1/uploads", timeout=10,
                                    headers={**TUS, "Upload-Length": "4", "Upload-Metadata": metadata})
    assert r.status_code == 400 and why in r.json()["error"], r.text


def test_bad_lengths_and_offsets_are_400(peer):
    alice = peer.sessions["alice"]
    meta = f"filename {b64('n.txt')},sha256 {b64('0' * 64)}"
    for length in ("-1", "ten", ""):
        r = alice.post(f"{peer.url}/api/v1/uploads", headers={**TUS, "Upload-Length": length, "Upload-Metadata": meta},
                       timeout=10)
        assert r.status_code == 400 and "Upload-Length" in r.json()["error"]
    url = upload_url(peer, create(peer, b"abcd", "n.txt"))
    r = alice.patch(url, data=b"ab", headers={**CHUNK, "Upload-Offset": "zero"}, timeout=10)
    assert r.status_code == 400 and "Upload-Offset" in r.json()["error"]


# ---- the CLI, as a person types it ------------------------------------------------------------------

def cli(peer, *args: str, home: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "POCKETGRID_HOME": str(home), "POCKETGRID_TOKEN": token(peer, "alice"),
           "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "pocketgrid.cli", *args, "--peer", peer.url, "--ca", peer.site_pki.ca],
                          capture_output=True, text=True, env=env, cwd=cwd, timeout=120)


def test_cli_upload_prints_the_input_path(peer, tmp_path, client_home):
    (tmp_path / "one.txt").write_text("1\n")
    (tmp_path / "two.txt").write_text("2\n2\n")
    r = cli(peer, "upload", "one.txt", "two.txt", home=client_home, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    prefix = f"uploads/{my_uploads(peer).name}/"
    assert lines[0].startswith(f"{prefix}one.txt  2 bytes  sha256 ") and "verified" in lines[0]
    assert lines[1].startswith(f"{prefix}two.txt  4 bytes")
    assert (my_uploads(peer) / "two.txt").read_text() == "2\n2\n"

    r = cli(peer, "upload", "one.txt", "--name", "renamed.txt", "--json", home=client_home, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)[0]["path"] == f"{prefix}renamed.txt"

    r = cli(peer, "upload", "missing.txt", home=client_home, cwd=tmp_path)
    assert r.returncode == 1 and "missing.txt" in r.stderr and "Traceback" not in r.stderr


def test_cli_submit_uploads_local_inputs_first(peer, tmp_path, client_home):
    (tmp_path / "count.sh").write_bytes(COUNT_SH)
    (tmp_path / "count.sub").write_text(COUNT_SUB)
    (tmp_path / "local-a.txt").write_text("abc")
    (tmp_path / "local-b.txt").write_text("abcdef")
    r = cli(peer, "submit", "--name", "cli-upload", "--executable", "count.sh", "--submit-file", "count.sub",
            "--upload", "local-a.txt", "--upload", "local-b.txt", "--json", home=client_home, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    job = json.loads(r.stdout)
    assert "uploaded uploads/" in r.stderr
    c = client(peer)
    final = c.wait(job["id"], timeout=60)
    assert final["state"] == "completed", final
    assert [i["input"].rsplit("/", 1)[-1] for i in final["inputs"]] == ["local-a.txt", "local-b.txt"]
    counts = [c.fetch(job["id"], i, "count.txt", tmp_path / f"out{i}.txt").path.read_text().strip() for i in (0, 1)]
    assert counts == ["3", "6"]

    r = cli(peer, "submit", "--name", "nothing", "--executable", "count.sh", "--submit-file", "count.sub",
            home=client_home, cwd=tmp_path)
    assert r.returncode == 2 and "--upload" in r.stderr
