"""The site PKI: files a person can trust, certificates the verifiers and a real TLS handshake accept."""
from __future__ import annotations

import datetime as dt
import ipaddress
import os
import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509 import DNSName, ExtendedKeyUsage, IPAddress
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from pocketgrid import pki
from pocketgrid.cli import main

NOW = dt.datetime.now(dt.timezone.utc)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def policy(ca_dir: Path) -> PolicyBuilder:
    # Verify at the time of the check, not of the module's import: certificates issued now are
    # back-dated by the clock-skew allowance only, and a slow suite can run this > 5 min after import.
    return PolicyBuilder().store(Store([pki.load_certificate(ca_dir / "ca.pem")])).time(dt.datetime.now(dt.timezone.utc))


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "pki"
    pki.init_ca(directory)
    return directory


def test_init_ca_writes_private_key_0600_in_0700_directory(tmp_path):
    issued = pki.init_ca(tmp_path / "pki")
    assert issued.subject == "CN=pocketgrid site CA,O=pocketgrid"
    assert mode(issued.key_path) == 0o600
    assert mode(issued.cert_path) == 0o644
    assert mode(tmp_path / "pki") == 0o700
    assert not [p for p in (tmp_path / "pki").iterdir() if p.name.endswith(".tmp")]


def test_init_ca_refuses_to_overwrite_unless_forced(ca_dir):
    before = (ca_dir / "ca.pem").read_bytes()
    with pytest.raises(pki.PkiError, match="already exists.*--force"):
        pki.init_ca(ca_dir)
    assert (ca_dir / "ca.pem").read_bytes() == before
    pki.init_ca(ca_dir, force=True)
    assert (ca_dir / "ca.pem").read_bytes() != before


def test_issuing_without_a_ca_says_how_to_make_one(tmp_path):
    with pytest.raises(pki.PkiError, match=r"no CA in .*run `pocketgrid pki init-ca --dir"):
        pki.issue_host(tmp_path / "empty", "peer-a")


@pytest.mark.parametrize("key_type", ["ec", "rsa"])
def test_host_certificate_passes_the_server_verifier_for_name_and_ip(ca_dir, key_type):
    issued = pki.issue_host(ca_dir, "peer-a", key_type=key_type)
    assert issued.cert_path == ca_dir / "hosts" / "peer-a.pem"
    assert mode(issued.key_path) == 0o600 and mode(ca_dir / "hosts") == 0o700
    cert = pki.load_certificate(issued.cert_path)
    for name in (DNSName("localhost"), DNSName("peer-a"), IPAddress(ipaddress.ip_address("127.0.0.1"))):
        policy(ca_dir).build_server_verifier(name).verify(cert, [])
    policy(ca_dir).build_client_verifier().verify(cert, [])  # peers also use it as a TLS client
    assert pki.is_host_certificate(cert)


def test_host_certificate_with_explicit_sans_only(ca_dir):
    cert = pki.load_certificate(pki.issue_host(ca_dir, "peer-b", sans=["b.example.org", "10.1.2.3"]).cert_path)
    policy(ca_dir).build_server_verifier(IPAddress(ipaddress.ip_address("10.1.2.3"))).verify(cert, [])
    with pytest.raises(VerificationError):
        policy(ca_dir).build_server_verifier(DNSName("localhost")).verify(cert, [])


def test_user_certificate_is_a_client_with_a_vo_and_never_a_host(ca_dir):
    issued = pki.issue_user(ca_dir, "Ana María", vo="cms")
    assert issued.cert_path == ca_dir / "users" / "ana-maria.pem"
    assert mode(issued.key_path) == 0o600
    cert = pki.load_certificate(issued.cert_path)
    policy(ca_dir).build_client_verifier().verify(cert, [])
    assert pki.identity_of(cert) == ("CN=Ana María,OU=cms,O=pocketgrid", "cms")
    assert issued.subject == "CN=Ana María,OU=cms,O=pocketgrid"
    assert not pki.is_host_certificate(cert)
    assert list(cert.extensions.get_extension_for_class(ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    with pytest.raises(VerificationError):  # no DNS/IP name and no serverAuth: the verifier requires both
        policy(ca_dir).build_server_verifier(DNSName("localhost")).verify(cert, [])


def test_user_certificate_without_vo_and_with_email(ca_dir):
    cert = pki.load_certificate(pki.issue_user(ca_dir, "bob", email="bob@example.org", file_name="b0b").cert_path)
    verified = policy(ca_dir).build_client_verifier().verify(cert, [])
    assert [g.value for g in verified.subjects] == ["bob@example.org"]
    assert pki.identity_of(cert) == ("CN=bob,O=pocketgrid", None)


def test_certificate_from_another_ca_is_rejected(ca_dir, tmp_path):
    other = tmp_path / "other"
    pki.init_ca(other)
    stranger = pki.load_certificate(pki.issue_user(other, "mallory").cert_path)
    with pytest.raises(VerificationError):
        policy(ca_dir).build_client_verifier().verify(stranger, [])


@pytest.mark.parametrize("not_before, days", [(NOW - dt.timedelta(days=30), 1), (NOW + dt.timedelta(days=1), 30)],
                         ids=["expired", "not-yet-valid"])
def test_certificate_outside_its_validity_is_rejected(ca_dir, not_before, days):
    user = pki.load_certificate(pki.issue_user(ca_dir, "u", not_before=not_before, days=days).cert_path)
    host = pki.load_certificate(pki.issue_host(ca_dir, "h", not_before=not_before, days=days).cert_path)
    with pytest.raises(VerificationError):
        policy(ca_dir).build_client_verifier().verify(user, [])
    with pytest.raises(VerificationError):
        policy(ca_dir).build_server_verifier(DNSName("localhost")).verify(host, [])


@pytest.mark.parametrize("key_type", ["ec", "rsa"])
def test_sign_and_verify_round_trip_and_tampering(ca_dir, key_type):
    issued = pki.issue_user(ca_dir, "signer", key_type=key_type)
    key = pki.load_private_key(issued.key_path)
    public = pki.load_certificate(issued.cert_path).public_key()
    signature = pki.sign_bytes(key, b"nonce-123")
    pki.verify_signature(public, signature, b"nonce-123")
    with pytest.raises(InvalidSignature):
        pki.verify_signature(public, signature, b"nonce-124")


def test_unsupported_key_type_is_a_pki_error():
    key = ed25519.Ed25519PrivateKey.generate()
    with pytest.raises(pki.PkiError):
        pki.sign_bytes(key, b"x")
    with pytest.raises(pki.PkiError):
        pki.verify_signature(key.public_key(), b"sig", b"x")


def mutual_tls(ca_dir: Path, server: pki.Issued, client: pki.Issued) -> tuple[BaseException | None, bytes]:
    """Handshake over loopback; return (server-side error, what the client read)."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(server.cert_path, server.key_path)
    server_ctx.load_verify_locations(ca_dir / "ca.pem")
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.load_verify_locations(ca_dir / "ca.pem")
    client_ctx.load_cert_chain(client.cert_path, client.key_path)
    errors: list[BaseException] = []

    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(10)

        def serve() -> None:
            try:
                conn, _ = listener.accept()
                with server_ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.sendall(b"hello " + tls.getpeercert()["subject"][-1][0][1].encode())
            except (ssl.SSLError, OSError) as exc:
                errors.append(exc)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        received = b""
        try:
            with socket.create_connection(listener.getsockname(), timeout=10) as raw:
                with client_ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                    received = tls.recv(100)  # TLS 1.3: a refused client certificate shows up here
        except (ssl.SSLError, OSError):
            pass
        thread.join(timeout=10)
        assert not thread.is_alive()
    return (errors[0] if errors else None), received


def test_mutual_tls_handshake_between_two_hosts(ca_dir):
    error, received = mutual_tls(ca_dir, pki.issue_host(ca_dir, "peer-a"), pki.issue_host(ca_dir, "peer-b"))
    assert error is None
    assert received == b"hello peer-b"


def test_mutual_tls_refuses_a_client_certificate_from_another_ca(ca_dir, tmp_path):
    pki.init_ca(tmp_path / "other")
    error, received = mutual_tls(ca_dir, pki.issue_host(ca_dir, "peer-a"), pki.issue_host(tmp_path / "other", "evil"))
    assert isinstance(error, ssl.SSLError) and "certificate verify failed" in str(error)
    assert received == b""


def test_cli_round_trip_and_show(tmp_path, capsys):
    d = str(tmp_path / "pki")
    assert main(["pki", "init-ca", "--dir", d, "--org", "Example Site"]) == 0
    assert "CN=pocketgrid site CA,O=Example Site" in capsys.readouterr().out
    assert main(["pki", "issue-host", "peer-a", "--dir", d, "--san", "a.example", "--san", "10.0.0.1"]) == 0
    assert f"{d}/hosts/peer-a.pem" in capsys.readouterr().out
    assert main(["pki", "issue-user", "Ana", "--vo", "cms", "--email", "ana@example.org", "--dir", d,
                 "--name", "ana01", "--key-type", "rsa"]) == 0
    out = capsys.readouterr().out
    assert f"{d}/users/ana01.pem" in out and "CN=Ana,OU=cms,O=Example Site" in out

    assert main(["pki", "show", f"{d}/hosts/peer-a.pem", f"{d}/users/ana01.key"]) == 0
    out = capsys.readouterr().out
    assert "subject:     CN=peer-a,O=Example Site" in out
    assert "status:      valid" in out
    assert "DNS:a.example" in out and "IP:10.0.0.1" in out and "serverAuth, clientAuth" in out
    assert "private key: RSA 3072 bits" in out and "mode:        0600" in out and "WARNING" not in out


def test_cli_errors_go_to_stderr_with_exit_code_2(tmp_path, capsys):
    d = str(tmp_path / "pki")
    assert main(["pki", "issue-user", "Ana", "--dir", d]) == 2
    assert capsys.readouterr().err.startswith(f"error: no CA in {d}")
    assert main(["pki", "init-ca", "--dir", d]) == 0
    assert main(["pki", "init-ca", "--dir", d]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["pki", "show", str(tmp_path / "missing.pem")]) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_cli_uses_pocketgrid_pki_env_and_show_warns_about_readable_keys(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("POCKETGRID_PKI", str(tmp_path / "env-pki"))
    assert main(["pki", "init-ca"]) == 0
    key = tmp_path / "env-pki" / "ca.key"
    assert key.exists()
    os.chmod(key, 0o644)
    capsys.readouterr()
    assert main(["pki", "show", str(key)]) == 0
    assert "WARNING: readable by group or others" in capsys.readouterr().out


def test_show_reports_an_expired_certificate(ca_dir):
    issued = pki.issue_user(ca_dir, "old", not_before=NOW - dt.timedelta(days=10), days=2)
    assert "status:      EXPIRED" in pki.describe(issued.cert_path)
