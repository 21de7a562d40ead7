"""The server side of the phone web app, end to end over real TLS peers (``requests``; the browser tests
are in tests/browser/).

Static files (CSP, gzip, 304, MIME types, no traversal), the browser session cookie and CSRF, devices
without admin rights, live status over Server-Sent Events (also relayed, bounded per user), and the
"run again" routes (spec, executable).
"""
from __future__ import annotations

import gzip
import json
import os
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests

from peer.security_headers import API_CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY
from pocketgrid.http import Session
from tests.conftest import PeerProcess, free_port, secure_args, user_session, wait_until
from tests.job_processes import attempt_dir

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SSE_STREAM_SECONDS = 4
MAX_STREAMS = 2
FINAL = {"completed", "failed", "removed"}

#: The app files served by site-b (``webapp_dir``), so types and sizes are known.
APP_JS = "export function hello(name) {\n  return `hello ${name}`;\n}\n" * 40
MANIFEST = json.dumps({"name": "pocketgrid", "start_url": "/", "display": "standalone"}, indent=2) * 3
ICON = '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 10 10"><circle cx="5" cy="5" r="4"/></svg>\n' * 5
SW = "self.addEventListener('fetch', () => {});\n" * 20


def start(root: Path, site_pki, name: str, *extra: str, join: PeerProcess | None = None) -> PeerProcess:
    args = secure_args(site_pki, name, "--no-agent", "--threads", "12", *extra)
    if join is not None:
        args += ["--join", join.url]
    env = {**os.environ, "POCKETGRID_SSE_STREAM_SECONDS": str(SSE_STREAM_SECONDS),
           "POCKETGRID_SSE_KEEPALIVE_SECONDS": "1", "POCKETGRID_SSE_MAX_STREAMS_PER_USER": str(MAX_STREAMS)}
    if name == "web-b":
        env["POCKETGRID_WEBAPP_DIR"] = str(root / "app")
    return PeerProcess(name, root / name, free_port(), args, env).start()


@pytest.fixture(scope="module")
def site(tmp_path_factory, site_pki):
    """web-a (broker, serves the packaged app) and web-b (joins; serves a test app directory)."""
    root = tmp_path_factory.mktemp("webapp")
    app = root / "app"
    (app / "js").mkdir(parents=True)
    (app / "icons").mkdir()
    (app / "index.html").write_text("<!doctype html><title>test app</title>\n" + "<p>hello</p>\n" * 50)
    (app / "js" / "app.js").write_text(APP_JS)
    (app / "manifest.webmanifest").write_text(MANIFEST)
    (app / "icons" / "icon.svg").write_text(ICON)
    (app / "sw.js").write_text(SW)
    (app / ".secret").write_text("not for anyone\n")
    (root / "outside.txt").write_text("outside the app directory\n")
    a = start(root, site_pki, "web-a")
    b = start(root, site_pki, "web-b", join=a)
    for p in (a, b):
        for name in ("a.txt", "b.txt"):
            (p.publish / name).write_text(f"{name}\n")
    carol = user_session(a, site_pki, "carol")
    wait_until(lambda: len(carol.get(f"{a.url}/api/v1/broker", timeout=5).json()["members"]) == 2,
               what="web-b to join web-a")
    gates = Gates({a.name: a, b.name: b})
    yield a, b, gates
    gates.open_all()  # let every gated job finish
    for p in (b, a):
        p.stop()


class Gates:
    """Where a gated proc looks for its gate: a file in its own proc directory (a sandboxed job sees
    nothing else), ``<site state>/stage/<piece>/<index>/gate-open`` at the site running the input
    (the job's status with ``?history=1`` names the site and the piece)."""

    NAME = "gate-open"

    def __init__(self, peers: dict[str, PeerProcess]) -> None:
        self.peers = peers

    def open(self, session: requests.Session, entry: PeerProcess, job_id: str, index: int) -> None:
        def proc_dir():
            body = session.get(f"{entry.url}/api/v1/jobs/{job_id}?history=1", timeout=10).json()
            d = attempt_dir(self.peers.values(), body, index)
            return d if d is not None and d.is_dir() else None

        found = wait_until(proc_dir, 30, what=f"input {index} of {job_id} to be staged at its site")
        (found / self.NAME).touch()

    def open_all(self) -> None:
        for p in self.peers.values():
            for proc_dir in (p.state / "stage").glob("*/*"):
                if proc_dir.is_dir() and proc_dir.name.isdigit():
                    (proc_dir / self.NAME).touch()


def plain(site_pki) -> requests.Session:
    return Session(verify=site_pki.ca)


# ---- jobs that move when the test says so ----------------------------------------------------------
class GatedJob:
    """A job with inputs a.txt and b.txt whose procs each wait until the test opens their gate."""

    INPUTS = ("a.txt", "b.txt")

    def __init__(self, session: requests.Session, entry: PeerProcess, gates: Gates, name: str = "gated") -> None:
        self.gates = gates
        script = f'#!/bin/sh\nwhile [ ! -e {Gates.NAME} ]; do sleep 0.05; done\necho "done $1" > out.txt\n'
        self.executable = script.encode()
        r = session.post(f"{entry.url}/api/v1/jobs", timeout=60,
                         data={"name": name, "executable_name": "gate.sh", "submit_name": "gate.sub",
                               "inputs": json.dumps(list(self.INPUTS))},
                         files={"executable": ("gate.sh", self.executable),
                                "submit": ("gate.sub", b"executable = gate.sh\narguments = $(input)\nqueue\n")})
        assert r.status_code == 201, r.text
        self.id: str = r.json()["id"]
        self.peer: str = r.json()["peer"]  # its home: the peer it was submitted to
        self.session, self.entry = session, entry

    def release(self, name: str) -> None:
        self.gates.open(self.session, self.entry, self.id, self.INPUTS.index(name))


def status(session: requests.Session, peer: PeerProcess, job_id: str) -> dict[str, Any]:
    r = session.get(f"{peer.url}/api/v1/jobs/{job_id}", timeout=10)
    r.raise_for_status()
    return r.json()


def states(body: dict[str, Any]) -> dict[str, str]:
    return {i["input"]: i["state"] for i in body["inputs"]}


# ---- reading Server-Sent Events ------------------------------------------------------------------
class EventStream:
    """One SSE connection, parsed into blocks: {"id", "event", "data", "retry", "comments"}."""

    def __init__(self, session: requests.Session, url: str, last_event_id: str | None = None) -> None:
        headers = {"Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        self.response = session.get(url, headers=headers, stream=True, timeout=(5, 30))
        self._chunks = self.response.iter_content(None) if self.response.ok else iter(())
        self._buffer = b""

    def blocks(self) -> Iterator[dict[str, Any]]:
        while True:
            while b"\n\n" not in self._buffer:
                try:
                    self._buffer += next(self._chunks)
                except StopIteration:
                    return
            raw, self._buffer = self._buffer.split(b"\n\n", 1)
            block: dict[str, Any] = {"comments": []}
            for line in raw.decode().split("\n"):
                field, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if field == "":
                    block["comments"].append(value)
                else:
                    block[field] = value
            yield block

    def close(self) -> None:
        self.response.close()


def follow(session: requests.Session, url: str, until, last_event_id: str | None = None) -> list[dict[str, Any]]:
    """Like a browser's EventSource: read status events, reconnecting with Last-Event-ID when the server
    closes the stream after ``retry:``, until ``until(events)`` is true or an ``end`` event arrives."""
    events: list[dict[str, Any]] = []
    for _ in range(60):
        # The server frees a closed stream's place when it sees the close: a quick reconnect may find it
        # still taken (429); wait for it as a patient client would.
        stream = wait_until(lambda: (st := EventStream(session, url, last_event_id)).response.status_code != 429
                            and st, 20, 0.1, what="a free stream place")
        assert stream.response.status_code == 200, stream.response.text
        try:
            for block in stream.blocks():
                if block.get("event") == "status":
                    events.append({"id": block["id"], "body": json.loads(block["data"])})
                    last_event_id = block["id"]
                    if until(events):
                        return events
                elif block.get("event") == "end":
                    events.append({"end": True})
                    return events
        finally:
            stream.close()
    raise AssertionError(f"the stream never got there; events so far: {events}")


# ---- static files ------------------------------------------------------------------------------
def test_the_packaged_app_is_served_at_the_root_with_the_security_headers(site, site_pki):
    a, _, _ = site
    index = (ROOT / "mobile_client" / "webapp" / "index.html").read_bytes()
    r = plain(site_pki).get(f"{a.url}/", timeout=10)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/html")
    assert r.content == index
    api = plain(site_pki).get(f"{a.url}/healthz", timeout=10)
    assert r.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert api.headers["Content-Security-Policy"] == API_CONTENT_SECURITY_POLICY  # stricter, and shorter per poll
    assert API_CONTENT_SECURITY_POLICY == "default-src 'none'; frame-ancestors 'none'"
    for response in (r, api):  # the API's answers too
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Referrer-Policy"] == "no-referrer"
        assert response.headers["Cross-Origin-Opener-Policy"] == "same-origin"
    assert "'unsafe-inline'" not in CONTENT_SECURITY_POLICY and "script-src 'self'" in CONTENT_SECURITY_POLICY


def test_static_files_are_gzipped_revalidated_and_typed(site, site_pki):
    _, b, _ = site
    s = plain(site_pki)
    r = s.get(f"{b.url}/js/app.js", headers={"Accept-Encoding": "gzip"}, stream=True, timeout=10)
    wire = r.raw.read(decode_content=False)
    assert r.headers["Content-Encoding"] == "gzip" and "Accept-Encoding" in r.headers["Vary"]
    assert gzip.decompress(wire).decode() == APP_JS and len(wire) < len(APP_JS) / 4
    assert r.headers["Content-Type"].startswith("text/javascript")
    assert r.headers["Cache-Control"] == "no-cache" and r.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    again = s.get(f"{b.url}/js/app.js", headers={"Accept-Encoding": "gzip", "If-None-Match": r.headers["ETag"]},
                  timeout=10)
    assert again.status_code == 304 and again.content == b""
    identity = s.get(f"{b.url}/js/app.js", headers={"Accept-Encoding": "identity"}, timeout=10)
    assert "Content-Encoding" not in identity.headers and identity.text == APP_JS
    assert identity.headers["ETag"] != r.headers["ETag"]  # the two forms are different bytes

    expected = {"/manifest.webmanifest": "application/manifest+json", "/icons/icon.svg": "image/svg+xml",
                "/sw.js": "text/javascript", "/": "text/html"}
    for path, mimetype in expected.items():
        got = s.get(f"{b.url}{path}", timeout=10)
        assert got.status_code == 200 and got.headers["Content-Type"].split(";")[0] == mimetype, (path, got.headers)
        assert got.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY  # a worker's own policy too
    assert s.get(f"{b.url}/sw.js", timeout=10).headers["Service-Worker-Allowed"] == "/"


def test_a_changed_file_gets_a_new_etag(site, site_pki, tmp_path):
    _, b, _ = site
    s = plain(site_pki)
    app = b.state.parent / "app"
    (app / "changing.css").write_text("body { color: black; }\n" * 30)
    first = s.get(f"{b.url}/changing.css", timeout=10)
    (app / "changing.css").write_text("body { color: red; }\n" * 30)
    os.utime(app / "changing.css", ns=(0, 10**9))  # another mtime, whatever the clock's resolution
    second = s.get(f"{b.url}/changing.css", headers={"If-None-Match": first.headers["ETag"]}, timeout=10)
    assert second.status_code == 200 and "red" in second.text and second.headers["ETag"] != first.headers["ETag"]


@pytest.mark.parametrize("path", ["/%2e%2e/outside.txt", "/js/%2e%2e/%2e%2e/outside.txt", "/..%2foutside.txt",
                                  "/.secret", "/js/.%2e/.secret", "/%2fetc/passwd", "/nothing.js", "/js/",
                                  "/" + "n" * 300 + ".js"])  # a name too long for the file system
def test_paths_outside_the_app_or_not_files_are_404(site, site_pki, path):
    _, b, _ = site
    r = plain(site_pki).get(f"{b.url}{path}", timeout=10)
    assert r.status_code == 404, (path, r.status_code, r.text[:200])
    assert "outside the app" not in r.text and "not for anyone" not in r.text


def test_unknown_api_paths_stay_api_404s(site, site_pki):
    a, _, _ = site
    s = user_session(a, site_pki, "alice")
    for method in ("GET", "POST"):
        r = s.request(method, f"{a.url}/api/v1/no-such-thing", timeout=10)
        assert r.status_code == 404 and r.headers["Content-Type"] == "application/json", (method, r.status_code)


# ---- cookie sessions and CSRF -------------------------------------------------------------------
def pair_browser(peer: PeerProcess, site_pki, user: str, device: str = "browser") -> tuple[str, dict, SimpleCookie]:
    """Pair like the web app: returns (the cookie's token, the answer, the parsed Set-Cookie)."""
    code = user_session(peer, site_pki, user).post(f"{peer.url}/api/v1/auth/pairing", timeout=10).json()["code"]
    r = plain(site_pki).post(f"{peer.url}/api/v1/auth/pair", json={"code": code, "device": device, "cookie": True},
                             headers={"Origin": peer.url, "Sec-Fetch-Site": "same-origin"}, timeout=10)
    assert r.status_code == 201, r.text
    cookie = SimpleCookie()
    cookie.load(r.headers["Set-Cookie"])
    return cookie["pg_session"].value, r.json(), cookie


def browser(peer: PeerProcess, site_pki, token: str) -> requests.Session:
    """What a browser sends by itself to this origin: the cookie (no Authorization header)."""
    s = plain(site_pki)
    s.headers["Cookie"] = f"pg_session={token}"
    return s


def test_pairing_from_the_browser_sets_a_locked_down_cookie_and_returns_no_token(site, site_pki):
    a, _, _ = site
    token, answer, cookie = pair_browser(a, site_pki, "alice")
    morsel = cookie["pg_session"]
    assert morsel["secure"] and morsel["httponly"] and morsel["samesite"] == "Strict" and morsel["path"] == "/"
    assert abs(int(morsel["max-age"]) - 30 * 86400) < 120
    assert "token" not in answer and token not in json.dumps(answer)
    assert answer["kind"] == "device" and answer["dn"] == site_pki.dn("alice") and answer["csrf"]
    who = browser(a, site_pki, token).get(f"{a.url}/api/v1/auth/whoami", timeout=10)
    assert who.status_code == 200 and who.json()["dn"] == site_pki.dn("alice")
    assert who.json()["csrf"] == answer["csrf"] and who.json()["token"]["kind"] == "device"
    bearer = user_session(a, site_pki, "alice").get(f"{a.url}/api/v1/auth/whoami", timeout=10).json()
    assert bearer["csrf"] is None  # bearer tokens need no CSRF token
    r = plain(site_pki).post(f"{a.url}/api/v1/auth/pair", json={"code": "ABCD-EFGH", "cookie": "yes"}, timeout=10)
    assert r.status_code == 400 and "cookie" in r.json()["error"] and "Set-Cookie" not in r.headers


def test_writes_with_the_cookie_need_the_csrf_token_and_the_same_origin(site, site_pki, tmp_path):
    a, b, _ = site
    token, answer, _ = pair_browser(a, site_pki, "alice")
    s = browser(a, site_pki, token)

    def submit(headers: dict[str, str]) -> requests.Response:
        return s.post(f"{a.url}/api/v1/jobs", headers=headers, timeout=60,
                      data={"name": "csrf", "executable_name": "ok.sh", "inputs": json.dumps(["a.txt"])},
                      files={"executable": ("ok.sh", b"#!/bin/sh\necho ok > out.txt\n"),
                             "submit": ("job.sub", b"executable = ok.sh\nqueue\n")})

    before = s.get(f"{a.url}/api/v1/jobs", timeout=30).json()["jobs"]  # reads need no CSRF token
    for headers in ({}, {"X-CSRF-Token": "wrong"}, {"X-CSRF-Token": answer["csrf"][:-2]}):
        r = submit(headers)
        assert r.status_code == 403 and r.json()["error"] == "missing or wrong CSRF token: reload the page"
    for headers in ({"X-CSRF-Token": answer["csrf"], "Origin": "https://evil.example"},
                    {"X-CSRF-Token": answer["csrf"], "Sec-Fetch-Site": "cross-site"},
                    {"X-CSRF-Token": answer["csrf"], "Origin": b.url}):  # another peer is another origin
        r = submit(headers)
        assert r.status_code == 403 and "refused" in r.json()["error"], r.text
    assert len(s.get(f"{a.url}/api/v1/jobs", timeout=30).json()["jobs"]) == len(before)  # nothing was made
    ok = submit({"X-CSRF-Token": answer["csrf"], "Origin": a.url, "Sec-Fetch-Site": "same-origin"})
    assert ok.status_code == 201, ok.text
    killed = s.delete(f"{a.url}/api/v1/jobs/{ok.json()['id']}", headers={"X-CSRF-Token": answer["csrf"]}, timeout=30)
    assert killed.status_code in (200, 202)  # done, or pending while its piece is still being sent
    # A bearer token needs no CSRF header (the CLI), but a cross-site Origin is refused for everyone.
    bearer = user_session(a, site_pki, "alice")
    r = bearer.post(f"{a.url}/api/v1/auth/logout", headers={"Origin": "https://evil.example"}, timeout=10)
    assert r.status_code == 403
    assert bearer.get(f"{a.url}/api/v1/auth/whoami", timeout=10).status_code == 200  # not logged out


def test_a_browser_with_the_users_certificate_needs_the_csrf_token_too(site, site_pki):
    a, b, _ = site
    alice = site_pki.users["alice"]
    desktop = Session(verify=site_pki.ca, cert=(str(alice.cert_path), str(alice.key_path)))  # TLS client cert
    who = desktop.get(f"{a.url}/api/v1/auth/whoami", timeout=10).json()
    assert who["dn"] == site_pki.dn("alice") and who["token"] is None and who["csrf"]
    assert desktop.get(f"{a.url}/api/v1/auth/whoami", timeout=10).json()["csrf"] == who["csrf"]  # stable
    r = desktop.post(f"{a.url}/api/v1/auth/pairing", timeout=10)  # the browser mints a code for a phone
    assert r.status_code == 403 and r.json()["error"] == "missing or wrong CSRF token: reload the page"
    r = desktop.post(f"{b.url}/api/v1/auth/pairing", headers={"X-CSRF-Token": who["csrf"]}, timeout=10)
    assert r.status_code == 403  # each peer derives its own: a token from another origin does not pass
    r = desktop.post(f"{a.url}/api/v1/auth/pairing", headers={"X-CSRF-Token": who["csrf"]}, timeout=10)
    assert r.status_code == 201 and r.json()["code"]
    paired = plain(site_pki).post(f"{a.url}/api/v1/auth/pair", json={"code": r.json()["code"], "cookie": True},
                                  timeout=10)
    assert paired.status_code == 201 and paired.json()["dn"] == site_pki.dn("alice")


def test_logout_with_the_cookie_revokes_it_everywhere_and_clears_it(site, site_pki):
    a, b, _ = site
    token, answer, _ = pair_browser(a, site_pki, "alice")
    s = browser(a, site_pki, token)
    assert s.post(f"{a.url}/api/v1/auth/logout", timeout=10).status_code == 403  # CSRF applies to logout too
    r = s.post(f"{a.url}/api/v1/auth/logout", headers={"X-CSRF-Token": answer["csrf"]}, timeout=10)
    assert r.status_code == 200 and r.json()["revoked"] == answer["token_id"]
    cleared = SimpleCookie()
    cleared.load(r.headers["Set-Cookie"])
    assert cleared["pg_session"].value == "" and cleared["pg_session"]["max-age"] == "0"
    assert s.get(f"{a.url}/api/v1/auth/whoami", timeout=10).status_code == 401
    on_b = browser(b, site_pki, token)  # the revocation reaches the other peer
    wait_until(lambda: on_b.get(f"{b.url}/api/v1/auth/whoami", timeout=10).status_code == 401,
               what="the revoked cookie to be refused on web-b")
    # a stale cookie does not stop the browser from pairing again
    code = user_session(a, site_pki, "alice").post(f"{a.url}/api/v1/auth/pairing", timeout=10).json()["code"]
    again = s.post(f"{a.url}/api/v1/auth/pair", json={"code": code, "cookie": True}, timeout=10)
    assert again.status_code == 201 and "pg_session=" in again.headers["Set-Cookie"]


def test_a_paired_device_never_holds_admin_rights(site, site_pki, tmp_path):
    a, b, gates = site
    carol_login = user_session(a, site_pki, "carol")
    assert carol_login.get(f"{a.url}/api/v1/admin/acl", timeout=10).status_code == 200
    token, answer, _ = pair_browser(a, site_pki, "carol", device="carols-phone")
    code = carol_login.post(f"{a.url}/api/v1/auth/pairing", timeout=10).json()["code"]
    device_token = plain(site_pki).post(f"{a.url}/api/v1/auth/pair", json={"code": code}, timeout=10).json()["token"]
    phone = plain(site_pki)
    phone.headers["Authorization"] = f"Bearer {device_token}"
    for s, peer in ((browser(a, site_pki, token), a), (phone, a), (phone, b)):
        r = s.get(f"{peer.url}/api/v1/admin/acl", timeout=10)
        assert r.status_code == 403 and "device" in r.json()["error"]
        who = s.get(f"{peer.url}/api/v1/auth/whoami", timeout=10).json()
        assert who["admin"] is False and who["groups"]["admin"] is False and who["groups"]["jobs-manage"] is True
    # nor through a relay: alice's job, asked for at the peer that does not own it
    alice = user_session(a, site_pki, "alice")
    job = GatedJob(alice, a, gates, "alices")
    other = b if job.peer == a.name else a
    assert status(user_session(other, site_pki, "carol"), other, job.id)["id"] == job.id  # the admin's login: yes
    r = phone.get(f"{other.url}/api/v1/jobs/{job.id}", timeout=10)
    assert r.status_code == 404  # the admin's phone: as for anyone else's job
    job.release("a.txt")
    job.release("b.txt")


# ---- Server-Sent Events ---------------------------------------------------------------------------
def test_events_follow_a_job_change_by_change_until_the_end(site, site_pki):
    a, b, gates = site
    alice = user_session(a, site_pki, "alice")
    job = GatedJob(alice, a, gates, "watched")
    owner = a if job.peer == a.name else b
    url = f"{owner.url}/api/v1/jobs/{job.id}/events"
    stream = EventStream(alice, url)
    assert stream.response.headers["Content-Type"].startswith("text/event-stream")
    assert stream.response.headers["Cache-Control"] == "no-cache"
    first = next(b for b in stream.blocks() if "event" in b or b["comments"])
    stream.close()
    assert first["event"] == "status" and not first["comments"]  # the current status at once, no keepalive first
    body = json.loads(first["data"])
    assert body["id"] == job.id and first["id"] == str(body["version"])

    events = follow(alice, url, lambda ev: states(ev[-1]["body"]) == {"a.txt": "running", "b.txt": "running"})
    job.release("a.txt")
    events += follow(alice, url, lambda ev: states(ev[-1]["body"])["a.txt"] == "completed",
                     last_event_id=events[-1]["id"])
    assert states(events[-1]["body"]) == {"a.txt": "completed", "b.txt": "running"}  # the step in between
    job.release("b.txt")
    events += follow(alice, url, lambda ev: False, last_event_id=events[-1]["id"])
    assert events[-1] == {"end": True} and events[-2]["body"]["state"] == "completed"
    versions = [int(e["id"]) for e in events if "id" in e]
    assert versions == sorted(set(versions))  # each change once, in order: nothing resent
    bodies = [e["body"] for e in events if "body" in e]
    assert all(x != y for x, y in zip(bodies, bodies[1:]))
    assert all(e["body"]["version"] == int(e["id"]) for e in events if "id" in e)
    final_etag = alice.get(f"{owner.url}/api/v1/jobs/{job.id}", timeout=10).headers["ETag"]
    assert final_etag == f'"{events[-2]["id"]}"'  # the event ID is the status ETag without quotes

    # A reconnect to a finished job that already has its last version gets just the end.
    stream = EventStream(alice, url, last_event_id=events[-2]["id"])
    blocks = [b for b in stream.blocks() if "event" in b]
    assert [b["event"] for b in blocks] == ["end"]
    # Without it, the final status then the end.
    stream = EventStream(alice, url)
    assert [b["event"] for b in stream.blocks() if "event" in b] == ["status", "end"]


def test_a_stream_resumes_from_last_event_id_and_ends_with_retry(site, site_pki):
    a, b, gates = site
    alice = user_session(a, site_pki, "alice")
    job = GatedJob(alice, b, gates, "resumed")
    owner = a if job.peer == a.name else b
    url = f"{owner.url}/api/v1/jobs/{job.id}/events"
    seen = follow(alice, url, lambda ev: states(ev[-1]["body"]) == {"a.txt": "running", "b.txt": "running"})
    stream = EventStream(alice, url, last_event_id=seen[-1]["id"])
    blocks = list(stream.blocks())  # nothing changes: keepalives, then the server closes with retry
    assert not [b for b in blocks if "event" in b], blocks  # the unchanged status is not sent again
    assert any("keepalive" in c for b in blocks for c in b["comments"])
    assert blocks[-1].get("retry") == "1000"
    job.release("a.txt")  # a change while disconnected is the first thing the next connection gets
    events = follow(alice, url, lambda ev: True, last_event_id=seen[-1]["id"])
    assert int(events[0]["id"]) > int(seen[-1]["id"])
    job.release("b.txt")


def test_events_of_another_peers_job_are_relayed(site, site_pki):
    a, b, gates = site
    alice = user_session(a, site_pki, "alice")
    job = GatedJob(alice, a, gates, "relayed")
    other = b if job.peer == a.name else a
    url = f"{other.url}/api/v1/jobs/{job.id}/events"
    events = follow(alice, url, lambda ev: states(ev[-1]["body"]) == {"a.txt": "running", "b.txt": "running"})
    assert events[-1]["body"]["peer"] == job.peer != other.name
    job.release("a.txt")
    job.release("b.txt")
    events = follow(alice, url, lambda ev: False, last_event_id=events[-1]["id"])
    assert events[-1] == {"end": True} and events[-2]["body"]["state"] == "completed"
    assert plain(site_pki).get(url, timeout=10).status_code == 401
    bob = user_session(a, site_pki, "bob")
    for peer in (a, b):  # another user's job does not exist, directly or relayed
        assert bob.get(f"{peer.url}/api/v1/jobs/{job.id}/events", timeout=10).status_code == 404


def test_too_many_streams_for_one_user_is_429_and_a_closed_one_frees_its_place(site, site_pki):
    a, b, gates = site
    bob = user_session(a, site_pki, "bob")
    job = GatedJob(bob, a, gates, "crowded")
    owner = a if job.peer == a.name else b
    url = f"{owner.url}/api/v1/jobs/{job.id}/events"
    streams = [EventStream(bob, url) for _ in range(MAX_STREAMS)]
    assert all(s.response.status_code == 200 for s in streams)
    extra = EventStream(bob, url)
    assert extra.response.status_code == 429 and int(extra.response.headers["Retry-After"]) > 0
    assert "streams" in extra.response.json()["error"]
    carol_stream = EventStream(user_session(a, site_pki, "carol"), url)  # per user: others are not affected
    assert carol_stream.response.status_code == 200
    carol_stream.close()
    streams[0].close()

    def reopened():
        s = EventStream(bob, url)
        s.close()
        return s.response.status_code == 200

    wait_until(reopened, 30, 0.2, what="the closed stream's place to be freed")
    for s in streams[1:]:
        s.close()
    job.release("a.txt")
    job.release("b.txt")


# ---- run again ---------------------------------------------------------------------------------
def test_spec_and_executable_of_ones_own_job_only(site, site_pki):
    a, b, gates = site
    alice = user_session(a, site_pki, "alice")
    job = GatedJob(alice, a, gates, "again")
    job.release("a.txt")
    job.release("b.txt")
    bob = user_session(a, site_pki, "bob")
    for peer in (a, b):  # at the owner and relayed
        spec = alice.get(f"{peer.url}/api/v1/jobs/{job.id}/spec", timeout=10)
        assert spec.status_code == 200, spec.text
        expected = {"id": job.id, "name": "again", "executable_name": "gate.sh", "submit_name": "gate.sub",
                    "inputs": ["a.txt", "b.txt"], "input_names": ["a.txt", "b.txt"], "entry_peer": a.name}
        assert {k: spec.json().get(k) for k in expected} == expected
        assert spec.json()["submit_text"] == "executable = gate.sh\narguments = $(input)\nqueue\n"
        exe = alice.get(f"{peer.url}/api/v1/jobs/{job.id}/executable", timeout=10)
        assert exe.status_code == 200 and exe.content == job.executable
        for what in ("spec", "executable"):
            r = bob.get(f"{peer.url}/api/v1/jobs/{job.id}/{what}", timeout=10)
            assert r.status_code == 404 and "bob" not in r.text.lower()
    # what the spec says is enough to submit the same job again
    spec = alice.get(f"{a.url}/api/v1/jobs/{job.id}/spec", timeout=10).json()
    r = alice.post(f"{a.url}/api/v1/jobs", timeout=60,
                   data={"name": spec["name"] + " (again)", "executable_name": spec["executable_name"],
                         "submit_name": spec["submit_name"], "inputs": json.dumps(spec["inputs"][:1])},
                   files={"executable": (spec["executable_name"], job.executable),
                          "submit": (spec["submit_name"], spec["submit_text"].encode())})
    assert r.status_code == 201, r.text
    gates.open(alice, a, r.json()["id"], 0)  # the same gated executable: let it through
    final = wait_until(lambda: (st := status(alice, a, r.json()["id"]))["state"] in FINAL and st, 60,
                       what="the job run again to finish")
    assert final["state"] == "completed"


# ---- pocketgrid demo --serve ----------------------------------------------------------------------
def test_demo_serve_keeps_the_peers_up_for_the_app_until_ctrl_c(tmp_path):
    import re
    import signal
    import subprocess
    import sys

    import psutil

    log = tmp_path / "demo.out"
    with open(log, "wb") as out:
        demo = subprocess.Popen([sys.executable, "-m", "pocketgrid.cli", "demo", "--serve", "--inputs", "2"],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT,
                                start_new_session=True)
    try:
        def printed_link() -> str | None:
            t = log.read_text()
            return t if "#pair=" in t or demo.poll() is not None else None

        text = wait_until(printed_link, 180, 0.2, what="the demo to print a pairing link")
        assert demo.poll() is None, text
        state = text.split("state directory: ", 1)[1].split()[0]
        url = re.search(r"the web app: (https://127\.0\.0\.1:\d+/)", text).group(1)
        ca = re.search(r"demo CA, (\S+ca\.pem)", text).group(1)
        link = re.search(r"(https://\S+/#pair=(\S+))", text)
        assert link.group(1).startswith(url) and "▀" in text  # the link, and its QR code
        s = Session(verify=ca)
        page = s.get(url, timeout=10)
        assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
        paired = s.post(f"{url}api/v1/auth/pair", json={"code": link.group(2), "cookie": True}, timeout=10)
        assert paired.status_code == 201 and "pg_session=" in paired.headers["Set-Cookie"]
        token = SimpleCookie(paired.headers["Set-Cookie"])["pg_session"].value
        jobs = browser_at(ca, token).get(f"{url}api/v1/jobs", timeout=30).json()["jobs"]
        assert [j["state"] for j in jobs] == ["completed"]  # the demo's job, seen from the paired browser
        demo.send_signal(signal.SIGINT)  # Ctrl-C
        assert demo.wait(60) == 0
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    assert "stopping the peers" in log.read_text()
    leftovers = [p for p in psutil.process_iter(["cmdline"]) if any(state in c for c in (p.info["cmdline"] or []))]
    assert leftovers == [] and not os.path.exists(state)


def browser_at(ca: str, token: str) -> requests.Session:
    s = Session(verify=ca)
    s.headers["Cookie"] = f"pg_session={token}"
    return s
