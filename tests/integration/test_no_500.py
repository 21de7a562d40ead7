"""Inputs that used to give a 500 now get a clear 4xx (issue 10, section 3): real TLS peer, logged-in users."""
from __future__ import annotations

import http.client
import io
import json
import os
import ssl

import pytest

from tests.conftest import PeerProcess, free_port, secure_args, user_session

pytestmark = pytest.mark.integration

DEEP = b"[" * 100_000


@pytest.fixture(scope="module")
def peer(tmp_path_factory, site_pki):
    root = tmp_path_factory.mktemp("no500")
    env = {**os.environ, "POCKETGRID_MAX_INPUTS_PER_JOB": "5"}
    p = PeerProcess("solo", root / "solo", free_port(), secure_args(site_pki, "solo", "--no-agent", "--threads", "4"), env)
    (p.state / "publish").mkdir(parents=True)
    for i in range(7):
        (p.state / "publish" / f"in{i}.txt").write_text(f"{i}\n")
    p.start()
    p.alice = user_session(p, site_pki, "alice")
    p.carol = user_session(p, site_pki, "carol")  # the bootstrap administrator
    p.site_pki = site_pki
    yield p
    p.stop()


def raw(peer, method: str, path: str, body: bytes | None = None, headers: dict | None = None) -> http.client.HTTPResponse:
    """A request sent exactly as given (path and Host header untouched)."""
    context = ssl.create_default_context(cafile=peer.site_pki.ca)
    conn = http.client.HTTPSConnection("127.0.0.1", peer.port, timeout=30, context=context)
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    resp.body = resp.read()
    conn.close()
    return resp


def acl_rules(peer) -> list:
    r = peer.carol.get(f"{peer.url}/api/v1/admin/acl", timeout=10)
    assert r.status_code == 200, r.text
    return r.json()["rules"]


# ---- 1. integers wider than the database's ------------------------------------------------------
def test_huge_acl_rule_id_is_404(peer):
    r = peer.carol.delete(f"{peer.url}/api/v1/admin/acl/99999999999999999999", timeout=10)
    assert r.status_code == 404, r.text
    assert "no ACL rule" in r.json()["error"]


def test_huge_acl_position_is_400_and_adds_nothing(peer):
    before = acl_rules(peer)
    r = peer.carol.post(f"{peer.url}/api/v1/admin/acl", timeout=10,
                        json={"effect": "allow", "group": "jobs-submit", "match": "vo", "value": "cms",
                              "position": 99999999999999999999})
    assert r.status_code == 400, r.text
    assert "position" in r.json()["error"]
    assert acl_rules(peer) == before


# ---- 2. JSON nested too deeply ----------------------------------------------------------------
@pytest.mark.parametrize("path,who", [("/api/v1/auth/pair", None), ("/api/v1/auth/login", None),
                                      ("/api/v1/admin/acl", "carol")])
def test_deeply_nested_json_is_400(peer, path, who):
    headers = {"Content-Type": "application/json"}
    if who:
        headers["Authorization"] = getattr(peer, who).headers["Authorization"]
    resp = raw(peer, "POST", path, DEEP, headers)
    assert resp.status == 400, resp.body[:300]
    assert "nested too deeply" in json.loads(resp.body)["error"]


# ---- 3. uploads in the way of folders, folders in the way of uploads ---------------------------
def put(peer, path: str, data: bytes = b"x\n"):
    return peer.alice.put(f"{peer.url}/api/v1/files/uploads/{path}", data=data, timeout=10)


def test_upload_to_dot_is_400(peer):
    resp = raw(peer, "PUT", "/api/v1/files/uploads/.", b"x\n",
               {"Authorization": peer.alice.headers["Authorization"], "Content-Length": "2"})
    assert resp.status == 400, resp.body[:300]
    assert "file name" in json.loads(resp.body)["error"]


def test_upload_below_a_file_is_409_and_keeps_the_file(peer):
    assert put(peer, "f", b"first\n").status_code == 201
    r = put(peer, "f/g")
    assert r.status_code == 409, r.text
    assert "'f' is a file" in r.json()["error"]
    assert put(peer, "sub", b"s\n").status_code == 201
    r = put(peer, "sub/f/g")
    assert r.status_code == 409, r.text
    assert "'sub' is a file" in r.json()["error"]
    listing = peer.alice.get(f"{peer.url}/api/v1/files", params={"glob": "uploads/*/f"}, timeout=10).json()["files"]
    assert [e["size"] for e in listing] == [len(b"first\n")]


def test_upload_onto_a_folder_is_409(peer):
    assert put(peer, "d/inner").status_code == 201
    r = put(peer, "d")
    assert r.status_code == 409, r.text
    assert "is a folder" in r.json()["error"]


def test_tus_upload_below_a_file_is_409(peer):
    import base64
    import hashlib

    assert put(peer, "t", b"t\n").status_code == 201
    meta = {"filename": "t/inner", "sha256": hashlib.sha256(b"y\n").hexdigest()}
    header = ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in meta.items())
    r = peer.alice.post(f"{peer.url}/api/v1/uploads", timeout=10,
                        headers={"Tus-Resumable": "1.0.0", "Upload-Length": "2", "Upload-Metadata": header})
    assert r.status_code == 409, r.text


# ---- 4. redirects never name the Host header's host --------------------------------------------
@pytest.mark.parametrize("path", ["/api/v1/files//etc/passwd", "//etc/passwd", "/api/v1//jobs"])
def test_slash_redirects_stay_on_this_peer(peer, path):
    resp = raw(peer, "GET", path, headers={"Host": "evil.example.com",
                                           "Authorization": peer.alice.headers["Authorization"]})
    location = resp.getheader("Location")
    if resp.status in (301, 302, 303, 307, 308):
        assert location is not None and location.startswith("/") and not location.startswith("//"), location
        assert "evil.example.com" not in location
    else:
        assert location is None
        assert resp.status < 500


# ---- 5. 405 names the methods allowed ---------------------------------------------------------
def test_405_carries_allow(peer):
    r = peer.alice.delete(f"{peer.url}/api/v1/files", timeout=10)
    assert r.status_code == 405, r.text
    allowed = {m.strip() for m in r.headers.get("Allow", "").split(",")}
    assert "GET" in allowed and "DELETE" not in allowed
    assert r.json()["status"] == 405


# ---- 6. inputs per job ------------------------------------------------------------------------
def test_too_many_inputs_is_400_and_creates_no_job(peer):
    def jobs() -> int:
        return len(peer.alice.get(f"{peer.url}/api/v1/jobs?local=1", timeout=10).json()["jobs"])

    before = jobs()
    files = {"executable": ("ok.sh", io.BytesIO(b"#!/bin/sh\ntrue\n")),
             "submit": ("job.sub", io.BytesIO(b"executable = ok.sh\nqueue\n"))}
    r = peer.alice.post(f"{peer.url}/api/v1/jobs", files=files, timeout=30,
                        data={"name": "many", "inputs": json.dumps([f"in{i}.txt" for i in range(6)])})
    assert r.status_code == 400, r.text
    assert "at most 5 inputs per job on this site" in r.json()["error"]
    assert jobs() == before


def test_deeply_nested_inputs_field_is_400(peer):
    files = {"executable": ("ok.sh", io.BytesIO(b"#!/bin/sh\ntrue\n")),
             "submit": ("job.sub", io.BytesIO(b"executable = ok.sh\nqueue\n"))}
    r = peer.alice.post(f"{peer.url}/api/v1/jobs", files=files, timeout=30,
                        data={"name": "deep", "inputs": DEEP.decode()})
    assert r.status_code == 400, r.text
    assert "nested too deeply" in r.json()["error"]


# ---- 8. what the document says about pairing and ?all ----------------------------------------
def test_a_user_certificate_on_the_connection_mints_a_pairing_code(peer):
    from pocketgrid.http import Session

    issued = peer.site_pki.users["alice"]
    s = Session(verify=peer.site_pki.ca, cert=(str(issued.cert_path), str(issued.key_path)))
    csrf = s.get(f"{peer.url}/api/v1/auth/whoami", timeout=10).json()["csrf"]
    r = s.post(f"{peer.url}/api/v1/auth/pairing", headers={"X-CSRF-Token": csrf}, timeout=10)
    assert r.status_code == 201, r.text
    assert r.json()["code"]


def test_everyones_tokens_are_for_administrators_only(peer):
    r = peer.alice.get(f"{peer.url}/api/v1/auth/tokens", params={"all": "1"}, timeout=10)
    assert r.status_code == 403, r.text
    assert "administrators" in r.json()["error"]
    r = peer.carol.get(f"{peer.url}/api/v1/auth/tokens", params={"all": "1"}, timeout=10)
    assert r.status_code == 200, r.text
    assert {t["dn"] for t in r.json()["tokens"]} >= {peer.site_pki.dn("alice"), peer.site_pki.dn("carol")}
