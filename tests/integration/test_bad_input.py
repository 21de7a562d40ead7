"""Every bad input gets a clear 4xx and changes nothing (real peer process, TLS, logged-in user)."""
from __future__ import annotations

import http.client
import io
import json
import os
import socket
import ssl

import pytest

from tests.conftest import PeerProcess, free_port, host_session, secure_args, user_session, wait_until

pytestmark = pytest.mark.integration

OK_SH = b"#!/bin/sh\necho ok > out.txt\n"
OK_SUB = "executable = ok.sh\nqueue\n"


@pytest.fixture(scope="module")
def peer(tmp_path_factory, site_pki):
    root = tmp_path_factory.mktemp("bad")
    env = {**os.environ, "POCKETGRID_MAX_BODY_BYTES": "200000"}
    p = PeerProcess("solo", root / "solo", free_port(), secure_args(site_pki, "solo", "--no-agent", "--threads", "4"), env)
    (p.state / "publish" / "sub").mkdir(parents=True)
    (p.state / "publish" / "data.txt").write_text("1\n2\n3\n")
    (p.state / "publish" / "sub" / "inner.txt").write_text("x\n")
    (root / "secret.txt").write_text("secret")
    os.symlink(root / "secret.txt", p.state / "publish" / "leak.txt")
    p.start()
    p.http = user_session(p, site_pki, "alice")  # every request below is a logged-in user's
    p.host = host_session(site_pki, "solo")  # peer-to-peer and agent routes
    p.site_pki = site_pki
    p.host.post(f"{p.url}/api/v1/broker/reports", json={"peer": "solo", "url": p.url, "coefficient": 0.1},
                timeout=5).raise_for_status()
    yield p
    p.stop()


def raw_conn(peer, path: str) -> http.client.HTTPSConnection:
    """A TLS connection that sends paths exactly as given; peer routes present the host certificate."""
    context = ssl.create_default_context(cafile=peer.site_pki.ca)
    if path.startswith("/api/v1/peer/") or path.startswith("/api/v1/broker/"):
        host = peer.site_pki.host("solo")
        context.load_cert_chain(host.cert_path, host.key_path)
    return http.client.HTTPSConnection("127.0.0.1", peer.port, timeout=10, context=context)


def raw_get(peer, path: str, headers: dict | None = None) -> tuple[int, dict]:
    """Send the path exactly as given (requests would normalise '..'), as the logged-in user."""
    conn = raw_conn(peer, path)
    conn.request("GET", path, headers={"Authorization": peer.http.headers["Authorization"], **(headers or {})})
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    try:
        return resp.status, json.loads(body)
    except ValueError:
        return resp.status, {"raw": body[:200]}


def submit(peer, *, inputs=("data.txt",), exe=OK_SH, exe_name="ok.sh", sub=OK_SUB, name="j", key=None):
    files = {"executable": (exe_name, io.BytesIO(exe)), "submit": ("job.sub", io.BytesIO(sub.encode()))}
    headers = {"Idempotency-Key": key} if key else {}
    return peer.http.post(f"{peer.url}/api/v1/jobs", data={"name": name, "inputs": json.dumps(list(inputs))},
                         files=files, headers=headers, timeout=30)


def job_count(peer) -> int:
    return len(peer.http.get(f"{peer.url}/api/v1/jobs?local=1", timeout=5).json()["jobs"])


def staged(peer) -> list[str]:
    """What a submission leaves on disk: the home's record files and any staged piece."""
    found = []
    for area in ("records", "stage"):
        d = peer.state / area
        found += [f"{area}/{n}" for n in sorted(os.listdir(d))] if d.exists() else []
    return found


@pytest.mark.parametrize("path", [
    "/api/v1/files/../secret.txt",
    "/api/v1/files/%2e%2e/secret.txt",
    "/api/v1/files/sub/%2E%2E/%2e%2e/secret.txt",
    "/api/v1/files/leak.txt",
    "/api/v1/files?path=..",
    "/api/v1/files?path=/etc",
    "/api/v1/files?glob=../*",
    "/api/v1/peer/files/%2e%2e/secret.txt",
])
def test_traversal_forms_are_refused(peer, path):
    status, body = raw_get(peer, path)
    assert status in (400, 404), (status, body)
    assert "secret" not in json.dumps(body).replace("secret.txt", "")
    assert body.get("error")


def test_plain_browse_still_works(peer):
    status, body = raw_get(peer, "/api/v1/files")
    assert status == 200 and {"data.txt", "sub"} <= {f["path"] for f in body["files"]}


@pytest.mark.parametrize("kwargs, status, needle", [
    ({"inputs": ("../secret.txt",)}, 400, "'..'"),
    ({"inputs": ("/etc/passwd",)}, 400, "absolute"),
    ({"inputs": ("leak.txt",)}, 400, "leaves the publishing area"),
    ({"inputs": ("missing.txt",)}, 404, "no such file"),
    ({"inputs": ()}, 400, "at least one input"),
    ({"exe": b""}, 400, "executable is empty"),
    ({"exe_name": "../evil.sh"}, 400, "executable name"),
    ({"sub": "executable = ok.sh\nqueue 1 2 3 in\n"}, 400, "submit file"),
    ({"sub": "universe = local\nexecutable = ok.sh\nqueue\n"}, 400, "universe"),
    ({"sub": "include command : touch /tmp/pwned |\nqueue\n"}, 400, "include"),
    ({"exe_name": "data.txt"}, 400, "same name"),
    ({"name": ""}, 400, "name"),
    ({"sub": "executable = ok.sh\ntransfer_output_files = /etc/passwd\nqueue\n"}, 400, "transfer_output_files: /etc/passwd"),
    ({"sub": "executable = ok.sh\ntransfer_input_files = http://127.0.0.1:8443/x\nqueue\n"}, 400, "own or private addresses"),
    ({"sub": "executable = ok.sh\narguments = $(SPOOL)\nqueue\n"}, 400, "$(SPOOL)"),
])
def test_bad_submissions_are_refused_and_change_nothing(peer, kwargs, status, needle):
    before_jobs, before_stage = job_count(peer), staged(peer)
    r = submit(peer, **kwargs)
    assert r.status_code == status, r.text
    assert needle.lower() in r.json()["error"].lower(), r.json()
    assert job_count(peer) == before_jobs and staged(peer) == before_stage


def oversize(peer, method: str, path: str, length: int, content_type: str = "application/octet-stream") -> tuple[int, dict]:
    """Announce a body over the limit and send only its first bytes: the peer must answer 413 from the
    headers alone.  (Sending it all races the answer: a server that refuses a body without reading it
    closes the connection, and over TLS the sender may see that close before it reads the 413.)"""
    context = ssl.create_default_context(cafile=peer.site_pki.ca)
    with socket.create_connection(("127.0.0.1", peer.port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            head = (f"{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {peer.http.headers['Authorization']}\r\n"
                    f"Content-Type: {content_type}\r\nContent-Length: {length}\r\n\r\n")
            tls.sendall(head.encode() + b"x" * 1024)
            response = http.client.HTTPResponse(tls)
            response.begin()
            body = response.read()
    return response.status, json.loads(body)


def test_oversize_body_is_413_and_changes_nothing(peer):
    before, before_stage = job_count(peer), staged(peer)
    status, body = oversize(peer, "POST", "/api/v1/jobs", 300_000, "multipart/form-data; boundary=x")
    assert status == 413 and "limit" in body["error"]
    assert job_count(peer) == before and staged(peer) == before_stage


def test_bad_multipart_fields(peer):
    r = peer.http.post(f"{peer.url}/api/v1/jobs", data={"name": "x", "inputs": "not json"},
                      files={"executable": ("a.sh", b"x"), "submit": ("s", b"queue\n")}, timeout=10)
    assert r.status_code == 400 and "JSON list" in r.json()["error"]
    r = peer.http.post(f"{peer.url}/api/v1/jobs", data={"name": "x"}, timeout=10)
    assert r.status_code == 400 and "executable" in r.json()["error"]


@pytest.mark.parametrize("job_id, status", [
    ("solo.doesnotexist", 404),
    ("nopeer.123", 404),
    ("garbage", 404),
])
def test_unknown_jobs(peer, job_id, status):
    for suffix in ("", "/outputs", "/outputs/0/out.txt"):
        r = peer.http.get(f"{peer.url}/api/v1/jobs/{job_id}{suffix}", timeout=10)
        assert r.status_code == status and r.json()["error"], (suffix, r.text)
    assert peer.http.delete(f"{peer.url}/api/v1/jobs/{job_id}", timeout=10).status_code == status


def test_output_routes_refuse_traversal_and_staged_files(peer):
    r = submit(peer)
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    wait_until(lambda: peer.http.get(f"{peer.url}/api/v1/jobs/{job_id}").json()["state"] == "completed")
    base = f"/api/v1/jobs/{job_id}/outputs"
    assert raw_get(peer, f"{base}/0/out.txt")[0] == 200
    for bad, codes in [(f"{base}/0/%2e%2e/job.log", (400,)), (f"{base}/0/../../job.log", (400, 404)),
                       (f"{base}/0/ok.sh", (404,)), (f"{base}/7/out.txt", (404,)), (f"{base}/0/nope", (404,))]:
        status, body = raw_get(peer, bad)
        assert status in codes and body.get("error"), (bad, status, body)


BAD_RETRY_AND_RELEASE = [
    ("retry", {"inputs": []}, "non-empty list of input numbers"),
    ("retry", {"inputs": ["0"]}, "non-empty list of input numbers"),
    ("retry", {"inputs": [True]}, "non-empty list of input numbers"),
    ("retry", {"failed": "yes"}, "'failed' must be true or false"),
    ("retry", {}, "say which inputs to run again"),
    ("retry", [0], "send a JSON object"),
    ("retry", {"inputs": [7]}, "no input 7"),
    ("release", {"inputs": []}, "non-empty list of input numbers"),
    ("release", {"inputs": "0"}, "non-empty list of input numbers"),
    ("release", [0], "send a JSON object"),
]


def test_bad_retry_and_release_bodies_are_400_and_run_nothing(peer):
    r = submit(peer)
    assert r.status_code == 201, r.text
    status = f"{peer.url}/api/v1/jobs/{r.json()['id']}"
    done = wait_until(lambda: (st := peer.http.get(status, params={"history": 1}, timeout=10).json())["state"]
                      == "completed" and st, what="the job to complete")
    for route, body, needle in BAD_RETRY_AND_RELEASE:
        r = peer.http.post(f"{status}/{route}", json=body, timeout=10)
        assert r.status_code == 400 and needle in r.json()["error"], (route, body, r.text)
    after = peer.http.get(status, params={"history": 1}, timeout=10).json()
    assert after["state"] == "completed" and after["inputs"][0]["attempts"] == done["inputs"][0]["attempts"]


def test_bad_output_pages_are_400(peer):
    r = submit(peer)
    assert r.status_code == 201, r.text
    for query, needle in [("limit=0", "limit"), ("limit=1001", "limit"), ("limit=x", "limit"),
                          ("start=-1", "start"), ("start=1e3", "start"), ("limit=%C2%B2", "limit")]:
        r2 = peer.http.get(f"{peer.url}/api/v1/jobs/{r.json()['id']}/outputs?{query}", timeout=10)
        assert r2.status_code == 400 and needle in r2.json()["error"], (query, r2.text)


def test_range_beyond_end_is_416(peer):
    r = peer.http.get(f"{peer.url}/api/v1/files/data.txt", headers={"Range": "bytes=1000-2000"}, timeout=10)
    assert r.status_code == 416
    assert r.headers.get("Content-Range") == "bytes */6"
    r = peer.http.get(f"{peer.url}/api/v1/files/data.txt", headers={"Range": "bytes=2-"}, timeout=10)
    assert r.status_code == 206 and r.content == b"2\n3\n"


@pytest.mark.parametrize("wait", ["soon", "nan", "inf", "-1"])
def test_bad_wait_parameter(peer, wait):
    r = peer.http.get(f"{peer.url}/api/v1/jobs/solo.x", params={"wait": wait}, timeout=10)
    assert r.status_code == 400 and "wait" in r.json()["error"]


@pytest.mark.parametrize("pattern", ["**x", "a**"])
def test_bad_glob_is_400(peer, pattern):
    status, body = raw_get(peer, f"/api/v1/files?glob={pattern}")
    assert status == 400 and "pattern" in body["error"]


def test_bad_broker_calls(peer):
    r = peer.host.post(f"{peer.url}/api/v1/broker/reports", json={"peer": "x"}, timeout=10)
    assert r.status_code == 400 and "url" in r.json()["error"]
    r = peer.host.post(f"{peer.url}/api/v1/broker/placements", data="nope", timeout=10)
    assert r.status_code == 400


def test_upload_then_use_as_input_and_upload_refusals(peer, tmp_path):
    from mobile_client import Client

    local = tmp_path / "mine.txt"
    local.write_text("a\nb\n")
    client = Client(peer.url, ca=peer.site_pki.ca, token=peer.http.headers["Authorization"].split()[1])
    info = client.upload(local)
    assert info["path"].startswith("uploads/u-") and info["path"].endswith("/mine.txt") and info["size"] == 4
    r = submit(peer, inputs=(info["path"],))
    assert r.status_code == 201, r.text
    # traversal and oversize uploads are refused and leave nothing behind
    conn = raw_conn(peer, "/api/v1/files/uploads")
    conn.request("PUT", "/api/v1/files/uploads/%2e%2e/%2e%2e/evil.txt", body=b"x",
                 headers={"Authorization": peer.http.headers["Authorization"]})
    resp = conn.getresponse()
    assert resp.status == 400 and b"'..'" in resp.read()
    conn.close()
    status, body = oversize(peer, "PUT", "/api/v1/files/uploads/huge.bin", 300_000)
    assert status == 413 and body["error"]
    huge = tmp_path / "huge.bin"
    huge.write_bytes(b"x" * 300_000)
    # The resumable upload sends it in PATCHes within the body limit: a big file still gets through.
    assert client.upload(huge)["size"] == 300_000
    assert not (peer.state / "evil.txt").exists() and not (peer.publish / "evil.txt").exists()
