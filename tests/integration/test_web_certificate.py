"""A phone-facing certificate chain next to the site PKI (issue 11, "TLS a phone accepts").

A browser asking for the web name (TLS SNI) gets the operator's chain, signed
by a CA the phone trusts; peers, which connect by the peer's own URL, keep
getting the site certificate, and mutual TLS between them keeps working.
"""
from __future__ import annotations

import socket
import ssl

import pytest

from pocketgrid import pki
from pocketgrid.http import Session
from tests.conftest import wait_until

pytestmark = pytest.mark.integration

WEB_NAME = "grid.localhost"


def _server_certificate(port: int, *, cafile: str, server_hostname: str | None) -> tuple[str, str]:
    """Handshake with the peer as a browser would; the presented certificate's subject CN and issuer CN."""
    ctx = ssl.create_default_context(cafile=cafile)
    if server_hostname is None:  # connect by IP: no SNI is sent
        ctx.check_hostname = False
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=server_hostname) as tls:
            cert = tls.getpeercert()
    subject = dict(x[0] for x in cert["subject"])["commonName"]
    issuer = dict(x[0] for x in cert["issuer"])["commonName"]
    return subject, issuer


@pytest.fixture(scope="module")
def public_ca(tmp_path_factory):
    """Stands in for a public CA (an ACME CA in production): not the site CA."""
    root = tmp_path_factory.mktemp("public-ca")
    pki.init_ca(root, common_name="Public Test CA")
    issued = pki.issue_host(root, "grid", sans=[WEB_NAME])
    return root, issued


def test_browser_name_gets_the_web_chain_and_peers_keep_the_site_certificate(peers, site_pki, public_ca):
    root, issued = public_ca
    a = peers("site-a", site_pki=site_pki,
              extra=["--web-tls-cert", str(issued.cert_path), "--web-tls-key", str(issued.key_path)])
    # A phone that trusts only the public CA, asking for the web name, verifies the peer.
    assert _server_certificate(a.port, cafile=str(root / "ca.pem"), server_hostname=WEB_NAME) == \
        ("grid", "Public Test CA")
    # It must not verify against the site CA: the phone sees a different chain.
    with pytest.raises(ssl.SSLCertVerificationError):
        _server_certificate(a.port, cafile=site_pki.ca, server_hostname=WEB_NAME)
    # A peer or agent connects by the peer's URL (127.0.0.1, no SNI): the site certificate.
    assert _server_certificate(a.port, cafile=site_pki.ca, server_hostname=None) == ("site-a", "pocketgrid site CA")
    # Mutual TLS between peers is untouched: a second peer joins and is a member.
    b = peers("site-b", site_pki=site_pki, join=a.url)
    host = Session(verify=site_pki.ca, cert=(str(site_pki.host("site-b").cert_path), str(site_pki.host("site-b").key_path)))
    wait_until(lambda: {m["name"] for m in host.get(f"{a.url}/api/v1/broker", timeout=5).json()["members"]}
               >= {"site-a", "site-b"}, 30, what="site-b to join site-a")
    assert b.healthy()


def test_half_a_web_certificate_is_refused_with_a_message(tmp_path, site_pki, public_ca):
    import subprocess
    import sys

    _, issued = public_ca
    site_pki.host("site-x")
    r = subprocess.run([sys.executable, "-m", "pocketgrid.cli", "serve", "--name", "site-x", "--state", str(tmp_path),
                        "--pki", str(site_pki.root), "--web-tls-cert", str(issued.cert_path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "web_tls_cert and web_tls_key go together" in r.stderr
