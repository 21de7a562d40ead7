"""One TLS peer's state with a logged-in (non-admin) user and a completed job, reused by every candidate server.

``python -m benchmarks.connection_model.fixture DIR`` builds ``DIR/pki``, ``DIR/state`` and ``DIR/fixture.json``
by running the real product once (``pocketgrid serve --pki``, as benchmarks/auth_throughput.py does): the user
logs in by challenge-response, submits the demo's histogram job and waits until it completed.  The peer is
stopped afterwards; every candidate server (benchmarks/connection_model/servers.py) then serves the same state
directory, so the token, the job and its ETag are the same for all of them.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import requests

from mobile_client import Client
from pocketgrid import pki

from ..auth_throughput import sample_job
from ..harness import TlsPeer, free_port

NAME = "site-a"


def build(root: Path) -> dict[str, Any]:
    root.mkdir(parents=True, exist_ok=True)
    pki_dir = root / "pki"
    ca = pki.init_ca(pki_dir, common_name="connection_model CA")
    pki.issue_host(pki_dir, NAME)
    pki.issue_host(pki_dir, "site-b")  # a second host certificate: a "peer" client for the mutual-TLS check
    admin = pki.issue_user(pki_dir, "Bench Admin", vo="bench")
    user = pki.issue_user(pki_dir, "Bench User", vo="bench")
    peer = TlsPeer(NAME, root / "state", pki_dir=pki_dir, admin=admin.subject, threads=32, log_level="WARNING")
    peer.start()
    try:
        client = Client(peer.url, ca=ca.cert_path)
        login = client.login(user.cert_path, user.key_path)
        final = sample_job(client, peer, 3, 180.0)
        r = requests.get(f"{peer.url}/api/v1/jobs/{final['id']}", verify=str(ca.cert_path),
                         headers={"Authorization": f"Bearer {login['token']}"}, timeout=10)
        r.raise_for_status()
        fixture = {
            "name": NAME, "port": peer.port, "state": str(peer.state), "pki": str(pki_dir), "ca": str(ca.cert_path),
            "admin_dn": admin.subject, "user_dn": login["dn"], "token": login["token"], "job": final["id"],
            "etag": r.headers["ETag"], "status_bytes": len(r.content),
            "host_cert": str(pki_dir / "hosts" / "site-b.pem"), "host_key": str(pki_dir / "hosts" / "site-b.key"),
        }
    finally:
        peer.stop()
    (root / "fixture.json").write_text(json.dumps(fixture, indent=2))
    return fixture


def load(root: Path) -> dict[str, Any]:
    return json.loads((root / "fixture.json").read_text())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root", type=Path)
    args = p.parse_args(argv)
    print(json.dumps(build(args.root), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
