"""Any peer is an entry point, also for what lives on one peer only (issue 12).

Real TLS peers (mutual TLS between them) on loopback: a pairing code issued
at one peer is redeemed at another; a failed input's status says why (its
stderr's name and last lines); the audit log and the token list are the
whole grid's, tagged per peer, and a stopped peer is named as unreachable.
The tests share three peers and run in file order: the last one stops site-c.
"""
from __future__ import annotations


import pytest
import requests

from mobile_client import ApiError, Client
from tests.conftest import wait_until
from tests.conftest import login_client as login, start_secure as start

pytestmark = pytest.mark.integration

#: Writes ~6 KiB of noise to stderr, then a last line with a byte that is not UTF-8, and fails on bad.txt.
FAILING_SH = b"""#!/bin/sh
if [ "$1" = bad.txt ]; then
    i=0
    while [ $i -lt 300 ]; do echo "noise line $i of the failing proc" >&2; i=$((i+1)); done
    printf 'boom: cannot parse %s \\377\\n' "$1" >&2
    exit 3
fi
echo ok > out.txt
"""


def get(client: Client, path: str, **params) -> dict:
    """GET on the client's peer with its token; the whole JSON answer (``unreachable_peers`` included)."""
    r = client.session.get(client.peers[0] + path, params=params, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture(scope="module")
def grid(tmp_path_factory, site_pki):
    root = tmp_path_factory.mktemp("grid-views")
    a = start(root, site_pki, "site-a")
    b = start(root, site_pki, "site-b", join=a)
    c = start(root, site_pki, "site-c", join=a)
    carol = login(a, site_pki, "carol")
    for p in (a, b, c):  # every peer knows every other (the membership is pushed to all)
        wait_until(lambda p=p: len(login(p, site_pki, "carol").system()["members"]) == 3,
                   what=f"{p.name} to know all three peers")
    yield {"a": a, "b": b, "c": c, "carol": carol}
    for p in (c, b, a):
        p.stop()


# ---- a pairing code redeemed at another peer --------------------------------------------------------
def test_a_code_issued_at_one_peer_pairs_at_another_once(grid, site_pki):
    a, b = grid["a"], grid["b"]
    laptop = login(a, site_pki, "alice")
    issued = laptop.pairing_code()
    phone = Client(b.url, ca=site_pki.ca, retries=0)
    paired = phone.pair(issued["code"].lower().replace("-", " "), device="pixel")  # typed loosely, at site-b
    assert paired["dn"] == site_pki.dn("alice") and paired["kind"] == "device"
    for peer in (a, b):  # the device token works everywhere
        assert Client(peer.url, ca=site_pki.ca, token=paired["token"], retries=0).whoami()["dn"] == site_pki.dn("alice")
    for peer in (a, b):  # single use: spent at its home, wherever it is tried again
        with pytest.raises(ApiError) as err:
            Client(peer.url, ca=site_pki.ca, retries=0).pair(issued["code"])
        assert err.value.status == 401 and "already used" in err.value.message
    events = get(grid["carol"], "/api/v1/admin/audit", limit=1000)["events"]
    home = [e for e in events if e["action"] == "pairing-redeem" and e["outcome"] == "ok"]
    assert [e["peer"] for e in home] == ["site-a"] and "redeemed at peer site-b" in home[0]["detail"]
    ok = [e for e in events if e["action"] == "pair" and e["outcome"] == "ok" and paired["token_id"] in e["detail"]]
    assert [e["peer"] for e in ok] == ["site-b"] and "code issued by peer site-a" in ok[0]["detail"]
    devices = [t for t in laptop.tokens() if t["kind"] == "device" and t["device"] == "pixel"]
    assert [t["peer"] for t in devices] == ["site-b"]  # issued by the peer that redeemed the code


def test_wrong_codes_lock_out_where_they_were_tried_not_at_the_home_peer(grid, site_pki):
    a, c = grid["a"], grid["c"]
    laptop = login(a, site_pki, "alice")
    code = laptop.pairing_code()["code"]
    at_c = Client(c.url, ca=site_pki.ca, retries=0)
    for guess in ("AAAA-AAAA", "BBBB-BBBB", "CCCC-CCCC", "DDDD-DDDD", "EEEE-EEEE"):  # each one asked of a and b too
        with pytest.raises(ApiError) as err:
            at_c.pair(guess)
        assert err.value.status == 401
    r = requests.post(f"{c.url}/api/v1/auth/pair", json={"code": code}, verify=site_pki.ca, timeout=10)
    assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0  # locked out at site-c, even a right code
    # site-a (the home, asked five times by site-c) counted none of it: the same address pairs there
    paired = Client(a.url, ca=site_pki.ca, retries=0).pair(code, device="tablet")
    assert paired["kind"] == "device"


# ---- a failed input says why ------------------------------------------------------------------------
def _final(client: Client, job_id: str) -> dict:
    def done():
        status, _ = client.status(job_id)
        return status if all(i["state"] in ("completed", "failed", "removed") for i in status["inputs"]) else None

    return wait_until(done, 60, interval=0.2, what=f"job {job_id} to finish")


@pytest.mark.parametrize("error_line, stderr_file", [("error = err.$(input_index).txt\n", "err.1.txt"),
                                                    ("", "_condor_stderr")])
def test_a_failed_input_shows_its_stderr_name_and_last_lines(grid, site_pki, error_line, stderr_file):
    a, b = grid["a"], grid["b"]
    for name, text in (("good.txt", "1\n"), ("bad.txt", "2\n")):
        (a.publish / name).write_text(text)
    alice = login(a, site_pki, "alice")
    job = alice.submit("fails", FAILING_SH, "job.sub", ["good.txt", "bad.txt"], executable_name="run.sh",
                       submit_text=f"executable = run.sh\narguments = $(input) $(inptu)\n{error_line}queue\n")
    assert any(w.startswith("$(inptu) is not defined") for w in job["warnings"])  # warned at submit
    status = _final(login(b, site_pki, "alice"), job["id"])  # asked at site-b: relayed if it ran elsewhere
    good, bad = status["inputs"]
    assert good["state"] == "completed" and "stderr_file" not in good and "stderr_tail" not in good
    assert bad["state"] == "failed" and bad["exit_code"] == 3
    assert bad["stderr_file"] == stderr_file
    tail = bad["stderr_tail"]
    assert tail.splitlines()[-1] == "boom: cannot parse bad.txt \ufffd"  # decoded with replacement
    assert "noise line 299 of the failing proc" in tail and "noise line 0 of" not in tail
    assert len(tail.encode()) <= 2048
    again, _ = alice.status(job["id"])  # the cached body carries it too
    assert again["inputs"][1]["stderr_tail"] == tail


# ---- the whole grid's audit log and tokens ----------------------------------------------------------
def test_audit_and_tokens_are_the_whole_grids_newest_first(grid, site_pki):
    a, b, c, carol = grid["a"], grid["b"], grid["c"], grid["carol"]
    alice_b = login(b, site_pki, "alice")
    alice_c = login(c, site_pki, "alice")
    answer = carol.audit_log(action="login", limit=1000)
    assert answer["unreachable_peers"] == []
    events = answer["events"]
    assert {e["peer"] for e in events} == {"site-a", "site-b", "site-c"}
    assert [e["at"] for e in events] == sorted((e["at"] for e in events), reverse=True)
    assert {e["peer"] for e in carol.audit(action="login", local=True)} == {"site-a"}
    limited = get(carol, "/api/v1/admin/audit", limit=3)["events"]
    assert len(limited) == 3 and limited == get(carol, "/api/v1/admin/audit", limit=1000)["events"][:3]

    alice_a = login(a, site_pki, "alice")
    mine = alice_a.token_list()
    by_id = {t["id"]: t["peer"] for t in mine["tokens"]}
    assert by_id[alice_b.whoami()["token"]["id"]] == "site-b" and by_id[alice_c.whoami()["token"]["id"]] == "site-c"
    assert {t["dn"] for t in mine["tokens"]} == {site_pki.dn("alice")}
    assert {t["peer"] for t in alice_a.tokens(local=True)} == {"site-a"}
    everyone = carol.tokens(everyone=True)
    assert {site_pki.dn("alice"), site_pki.dn("carol")} <= {t["dn"] for t in everyone}
    assert {t["peer"] for t in everyone} == {"site-a", "site-b", "site-c"}

    # a token listed from site-a but issued by site-c is revoked from site-a (site-c revokes it)
    revoked = alice_a.revoke_token(alice_c.whoami()["token"]["id"])
    assert revoked["peer"] == "site-c"
    wait_until(lambda: _refused(alice_c), what="the revoked token to be refused at site-c")


def _refused(client: Client) -> bool:
    try:
        client.whoami()
        return False
    except ApiError as exc:
        return exc.status == 401


def test_a_stopped_peer_is_named_and_the_others_still_answer(grid, site_pki):
    a, c, carol = grid["a"], grid["c"], grid["carol"]
    alice = login(a, site_pki, "alice")
    code = alice.pairing_code()["code"]
    c.stop()  # the last test: site-c is gone from here on
    audit = carol.audit_log(limit=1000)
    assert audit["unreachable_peers"] == ["site-c"]
    assert {e["peer"] for e in audit["events"]} == {"site-a", "site-b"}
    tokens = alice.token_list()
    assert tokens["unreachable_peers"] == ["site-c"] and {t["peer"] for t in tokens["tokens"]} <= {"site-a", "site-b"}
    with pytest.raises(ApiError) as err:  # an unknown code says which peer could have issued it
        Client(grid["b"].url, ca=site_pki.ca, retries=0).pair("ZZZZ-ZZZZ")
    assert err.value.status == 401 and "site-c did not answer" in err.value.message
    assert Client(grid["b"].url, ca=site_pki.ca, retries=0).pair(code)["kind"] == "device"  # a's codes still pair
