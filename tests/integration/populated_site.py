"""A peer with history (for the migration and backup tests): finished jobs with outputs, an ACL rule, a
revoked and a live token, audit records and an upload, all made through the real API; and the check
that another peer (upgraded, or restored from a backup) serves the same."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from mobile_client import ApiError, Client
from tests.conftest import PeerProcess, SitePki, login_client

WC = b'#!/bin/sh\nwc -l < "$1"\n'
SUBMIT = "executable = wc.sh\narguments = $(input)\noutput = n.txt\nqueue\n"
INPUTS = {"a.txt": "1\n2\n", "b.txt": "3\n", "c.txt": "4\n5\n6\n"}


@dataclass
class SiteFacts:
    """What the populated peer showed its users, to compare with what another peer shows."""

    statuses: dict[str, dict[str, Any]] = field(default_factory=dict)  # job id -> final status
    outputs: dict[str, dict[tuple[int, str], bytes]] = field(default_factory=dict)
    alice_token: str = ""
    bob_revoked_token: str = ""
    rule_id: int = 0
    upload_id: str = ""
    upload: dict[str, Any] = field(default_factory=dict)
    audit_actions: set[str] = field(default_factory=set)


def publish_inputs(peer: PeerProcess) -> None:
    peer.publish.mkdir(parents=True, exist_ok=True)
    for name, text in INPUTS.items():
        (peer.publish / name).write_text(text)


def submit(client: Client, name: str, inputs: list[str], key: str | None = None) -> dict[str, Any]:
    return client.submit(name, WC, "wc.sub", inputs, executable_name="wc.sh", submit_text=SUBMIT,
                         idempotency_key=key)


def job_outputs(client: Client, job_id: str, tmp: Path) -> dict[tuple[int, str], bytes]:
    """Every output file of the job, downloaded (verified by SHA-256) and read."""
    got = {}
    for result in client.fetch_all(job_id, tmp / job_id.replace("/", "_"), overwrite=True):
        rel = result.path.relative_to(tmp / job_id.replace("/", "_"))
        got[(int(rel.parts[0]), "/".join(rel.parts[1:]))] = result.path.read_bytes()
    return got


def upload_info(client: Client, upload_id: str) -> dict[str, Any]:
    r = client.session.get(f"{client.base_url}/api/v1/uploads/{upload_id}", timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def populate(peer: PeerProcess, site_pki: SitePki, tmp: Path) -> SiteFacts:
    facts = SiteFacts()
    tmp.mkdir(parents=True, exist_ok=True)
    publish_inputs(peer)
    alice, bob, carol = (login_client(peer, site_pki, u) for u in ("alice", "bob", "carol"))
    facts.rule_id = carol.acl_add("deny", "jobs-submit", "vo", "atlas")["id"]
    local = tmp / "mine.txt"
    local.write_text("7\n8\n9\n10\n")
    uploaded = alice.upload(local, name="mine.txt")
    facts.upload_id = uploaded["url"].rstrip("/").rsplit("/", 1)[-1]
    jobs = [submit(alice, "two", ["a.txt", "b.txt"]), submit(alice, "mine", [uploaded["path"], "c.txt"])]
    for job in jobs:
        final = alice.wait(job["id"], timeout=60)
        assert [i["state"] for i in final["inputs"]] == ["completed"] * len(final["inputs"]), final
        facts.statuses[job["id"]] = final
        facts.outputs[job["id"]] = job_outputs(alice, job["id"], tmp / "before")
    # the outputs are what the jobs computed (wc -l of each input)
    assert facts.outputs[jobs[0]["id"]][(0, "n.txt")].strip() == b"2"
    assert facts.outputs[jobs[1]["id"]][(0, "n.txt")].strip() == b"4"
    facts.upload = upload_info(alice, facts.upload_id)
    facts.bob_revoked_token = bob.token
    bob.logout()
    facts.alice_token = alice.token
    facts.audit_actions = {e["action"] for e in carol.audit(limit=200)}
    assert {"login", "submit", "acl-deny", "logout"} <= facts.audit_actions
    return facts


def assert_same_site(peer: PeerProcess, site_pki: SitePki, facts: SiteFacts, tmp: Path, *,
                     since_release: bool = False) -> Client:
    """``peer`` serves everything ``facts`` recorded: jobs, statuses, outputs, tokens, the rule, audit, upload.

    ``since_release``: ``facts`` were recorded by the previous release, whose statuses said less: each
    input shows every field it showed then, unchanged (this version adds the input's site and attempt).
    """
    alice = Client(peer.url, ca=site_pki.ca, token=facts.alice_token, retries=0)  # a token from before
    listed = {j["id"] for j in alice.jobs()}
    assert set(facts.statuses) <= listed, f"jobs missing after the move: {set(facts.statuses) - listed}"
    for job_id, before in facts.statuses.items():
        now, _ = alice.status(job_id)
        assert now["state"] == before["state"], f"{job_id}: now {now}, before {before}"
        if since_release:
            shown = [{k: i.get(k) for k in b} for i, b in zip(now["inputs"], before["inputs"])]
            assert shown == before["inputs"], f"{job_id}: now {shown}, before {before['inputs']}"
            assert len(now["inputs"]) == len(before["inputs"])
        else:
            assert now["inputs"] == before["inputs"]
        assert job_outputs(alice, job_id, tmp / "after") == facts.outputs[job_id]
    assert upload_info(alice, facts.upload_id) == facts.upload
    with pytest.raises(ApiError) as err:  # revoked before, still revoked
        Client(peer.url, ca=site_pki.ca, token=facts.bob_revoked_token, retries=0).whoami()
    assert err.value.status == 401 and "revoked" in err.value.message
    with pytest.raises(ApiError) as err:  # the rule still applies: bob (VO atlas) may not submit
        submit(login_client(peer, site_pki, "bob"), "denied", ["a.txt"])
    assert err.value.status == 403
    carol = login_client(peer, site_pki, "carol")
    assert [r["id"] for r in carol.acl()["rules"]] == [facts.rule_id]
    assert facts.audit_actions <= {e["action"] for e in carol.audit(limit=500)}
    return alice
