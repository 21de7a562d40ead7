"""A small site PKI: one CA, host certificates (TLS between peers) and user certificates (login).

Layout of a PKI directory (default ``./pocketgrid-pki``, env ``POCKETGRID_PKI``)::

    ca.pem  ca.key
    hosts/<name>.pem  hosts/<name>.key
    users/<name>.pem  users/<name>.key

Host certificates carry serverAuth *and* clientAuth: peers present them as TLS client
certificates to each other (mutual TLS).  User certificates carry clientAuth only, so a
user certificate can never pass as a host.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
import re
import secrets
import stat
import unicodedata
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

KeyType = Literal["ec", "rsa"]
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

ENV_DIR = "POCKETGRID_PKI"
DEFAULT_DIR = "pocketgrid-pki"
RSA_BITS = 3072
CLOCK_SKEW = dt.timedelta(minutes=5)

_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class PkiError(Exception):
    """A PKI operation cannot go on; the message says what to do."""


@dataclass(frozen=True)
class Issued:
    cert_path: Path
    key_path: Path
    subject: str


def default_dir() -> Path:
    return Path(os.environ.get(ENV_DIR) or DEFAULT_DIR)


# --- files -------------------------------------------------------------------------------------

def _make_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` with ``mode`` from the first byte on.

    The file is created under a temporary name with O_EXCL (so a private key is never
    readable by others, not even for a moment), synced, then renamed over ``path``.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)  # the umask may have removed bits (0644 certificates)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _save(cert: x509.Certificate, key: PrivateKey, cert_path: Path, key_path: Path) -> Issued:
    _make_dir(cert_path.parent)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    _write_atomic(key_path, key_pem, 0o600)
    _write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return Issued(cert_path, key_path, cert.subject.rfc4514_string())


def load_certificate(path: str | os.PathLike[str]) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(Path(path).read_bytes())
    except ValueError:
        raise PkiError(f"{path}: not a PEM certificate") from None


def load_private_key(path: str | os.PathLike[str]) -> PrivateKeyTypes:
    try:
        return serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except TypeError:
        raise PkiError(f"{path}: the private key is encrypted; pocketgrid needs an unencrypted key") from None
    except ValueError:
        raise PkiError(f"{path}: not a PEM private key") from None


# --- keys and signatures -----------------------------------------------------------------------

def _new_key(key_type: str) -> PrivateKey:
    if key_type == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    raise PkiError(f"unknown key type {key_type!r}: use 'ec' or 'rsa'")


def sign_bytes(private_key: PrivateKeyTypes, data: bytes) -> bytes:
    """Sign with ECDSA/SHA-256 (EC keys) or PKCS#1 v1.5/SHA-256 (RSA keys)."""
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        return private_key.sign(data, ec.ECDSA(hashes.SHA256()))
    if isinstance(private_key, rsa.RSAPrivateKey):
        return private_key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    raise PkiError(f"unsupported key type {type(private_key).__name__}: use an EC or RSA key")


def verify_signature(public_key: PublicKeyTypes, signature: bytes, data: bytes) -> None:
    """Check a :func:`sign_bytes` signature; raise ``InvalidSignature`` if it does not match."""
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        public_key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
    elif isinstance(public_key, rsa.RSAPublicKey):
        public_key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
    else:
        raise PkiError(f"unsupported key type {type(public_key).__name__}: use an EC or RSA key")


# --- certificates ------------------------------------------------------------------------------

def _validity(not_before: dt.datetime | None, days: int) -> tuple[dt.datetime, dt.datetime]:
    if days < 1:
        raise PkiError(f"days must be at least 1 (got {days})")
    start = not_before or dt.datetime.now(dt.timezone.utc) - CLOCK_SKEW
    if start.tzinfo is None:
        start = start.replace(tzinfo=dt.timezone.utc)
    return start, start + dt.timedelta(days=days)


def _key_usage(*, digital_signature: bool = False, key_encipherment: bool = False,
               cert_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=digital_signature, content_commitment=False,
                         key_encipherment=key_encipherment, data_encipherment=False, key_agreement=False,
                         key_cert_sign=cert_sign, crl_sign=cert_sign, encipher_only=False, decipher_only=False)


def _check_name(name: str, what: str) -> str:
    if not _SAFE_NAME.fullmatch(name):
        raise PkiError(f"{what} {name!r}: use letters, digits, '.', '_' or '-' (it becomes a file name)")
    return name


def _slug(text: str) -> str:
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()  # "María" -> "Maria"
    slug = re.sub(r"[^a-z0-9._-]+", "-", ascii_text.lower()).strip("-.")
    if not slug:
        raise PkiError(f"cannot make a file name from {text!r}: give one with --name")
    return slug[:128]


def init_ca(directory: str | os.PathLike[str], *, common_name: str = "pocketgrid site CA",
            organization: str = "pocketgrid", days: int = 3650, key_type: KeyType = "ec",
            force: bool = False) -> Issued:
    root = Path(directory)
    cert_path, key_path = root / "ca.pem", root / "ca.key"
    if not force and (cert_path.exists() or key_path.exists()):
        raise PkiError(f"a CA already exists in {root}; pass --force to replace it "
                       "(every certificate it issued will stop verifying)")
    key = _new_key(key_type)
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    start, end = _validity(None, days)
    cert = (x509.CertificateBuilder()
            .subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(cert_sign=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return _save(cert, key, cert_path, key_path)


def _load_ca(root: Path) -> tuple[x509.Certificate, PrivateKey]:
    cert_path, key_path = root / "ca.pem", root / "ca.key"
    if not (cert_path.exists() and key_path.exists()):
        raise PkiError(f"no CA in {root}: run `pocketgrid pki init-ca --dir {root}` first")
    key = load_private_key(key_path)
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        raise PkiError(f"{key_path}: unsupported CA key type {type(key).__name__}")
    return load_certificate(cert_path), key


def _issue(root: Path, attributes: list[x509.NameAttribute], *, usages: list[x509.ObjectIdentifier],
           san: list[x509.GeneralName], key_type: str, days: int, not_before: dt.datetime | None,
           cert_path: Path, key_path: Path) -> Issued:
    """Sign a leaf certificate with the CA in ``root``.

    ``attributes`` go most general first (X.500 order) after the CA's O, so the subject
    reads "CN=...,OU=...,O=..." as an RFC 4514 string.
    """
    ca_cert, ca_key = _load_ca(root)
    start, end = _validity(not_before, days)
    key = _new_key(key_type)
    org = ca_cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    subject = x509.Name([*org[:1], *attributes])
    cert = (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(digital_signature=True,
                                      key_encipherment=isinstance(key, rsa.RSAPrivateKey)), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.SubjectAlternativeName(san), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return _save(cert, key, cert_path, key_path)


def _general_name(item: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(item))
    except ValueError:
        return x509.DNSName(item)


def issue_host(directory: str | os.PathLike[str], name: str, *, sans: list[str] | None = None,
               days: int = 397, key_type: KeyType = "ec", not_before: dt.datetime | None = None) -> Issued:
    """Issue ``hosts/<name>.pem``: a TLS server certificate that is also a client certificate."""
    root = Path(directory)
    _check_name(name, "host name")
    items = [name, "localhost", "127.0.0.1"] if sans is None else sans
    san = [_general_name(s) for s in dict.fromkeys(s.strip() for s in items) if s]
    if not san:
        raise PkiError("a host certificate needs at least one DNS name or IP address")
    return _issue(root, [x509.NameAttribute(NameOID.COMMON_NAME, name)],
                  usages=[ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH], san=san,
                  key_type=key_type, days=days, not_before=not_before,
                  cert_path=root / "hosts" / f"{name}.pem", key_path=root / "hosts" / f"{name}.key")


def issue_user(directory: str | os.PathLike[str], common_name: str, *, vo: str | None = None,
               email: str | None = None, days: int = 365, key_type: KeyType = "ec",
               not_before: dt.datetime | None = None, file_name: str | None = None) -> Issued:
    """Issue ``users/<file_name>.pem``: a client-only certificate; the VO goes in the OU.

    ``cryptography``'s client verifier requires a SubjectAlternativeName, so the
    certificate carries the email (RFC 822 name) or else ``urn:pocketgrid:user:<CN>``.
    """
    root = Path(directory)
    file_name = _check_name(file_name, "file name") if file_name else _slug(common_name)
    attributes = [x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, vo)] if vo else []
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    san: x509.GeneralName = (x509.RFC822Name(email) if email else
                             x509.UniformResourceIdentifier(f"urn:pocketgrid:user:{urllib.parse.quote(common_name)}"))
    return _issue(root, attributes, usages=[ExtendedKeyUsageOID.CLIENT_AUTH], san=[san],
                  key_type=key_type, days=days, not_before=not_before,
                  cert_path=root / "users" / f"{file_name}.pem", key_path=root / "users" / f"{file_name}.key")


# --- reading certificates ----------------------------------------------------------------------

def common_name(cert: x509.Certificate) -> str | None:
    """The subject's CN (a host certificate's CN is its peer name)."""
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else None


def identity_of(cert: x509.Certificate) -> tuple[str, str | None]:
    """Return (subject DN, VO): the VO is the first OU of the subject, if any."""
    ous = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    return cert.subject.rfc4514_string(), (str(ous[0].value) if ous else None)


def _extension(cert: x509.Certificate, kind: type[x509.ExtensionType]) -> x509.ExtensionType | None:
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def is_host_certificate(cert: x509.Certificate) -> bool:
    eku = _extension(cert, x509.ExtendedKeyUsage)
    return eku is not None and ExtendedKeyUsageOID.SERVER_AUTH in eku


def _key_text(key: PublicKeyTypes | PrivateKeyTypes) -> str:
    if isinstance(key, (ec.EllipticCurvePublicKey, ec.EllipticCurvePrivateKey)):
        return f"EC {key.curve.name} ({key.key_size} bits)"
    if isinstance(key, (rsa.RSAPublicKey, rsa.RSAPrivateKey)):
        return f"RSA {key.key_size} bits"
    return type(key).__name__


_SAN_PREFIX = {x509.DNSName: "DNS", x509.IPAddress: "IP", x509.RFC822Name: "email", x509.UniformResourceIdentifier: "URI"}
_EKU_NAME = {ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth", ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth"}


def _status(cert: x509.Certificate, now: dt.datetime) -> str:
    if now < cert.not_valid_before_utc:
        return f"NOT YET VALID (starts in {(cert.not_valid_before_utc - now).days} days)"
    if now > cert.not_valid_after_utc:
        return f"EXPIRED ({(now - cert.not_valid_after_utc).days} days ago)"
    return f"valid (expires in {(cert.not_valid_after_utc - now).days} days)"


def describe(path: str | os.PathLike[str]) -> str:
    """Human-readable summary of a PEM certificate, or of a private key and its file mode."""
    path = Path(path)
    if b"PRIVATE KEY-----" in path.read_bytes():
        mode = stat.S_IMODE(path.stat().st_mode)
        lines = [f"file:        {path}", f"private key: {_key_text(load_private_key(path))}", f"mode:        {mode:04o}"]
        if mode & 0o077:
            lines.append(f"WARNING: readable by group or others: run `chmod 600 {path}`")
        return "\n".join(lines)
    cert = load_certificate(path)
    san = _extension(cert, x509.SubjectAlternativeName)
    eku = _extension(cert, x509.ExtendedKeyUsage)
    basic = _extension(cert, x509.BasicConstraints)
    fingerprint = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest().upper()
    return "\n".join([
        f"file:        {path}",
        f"subject:     {cert.subject.rfc4514_string()}",
        f"issuer:      {cert.issuer.rfc4514_string()}",
        f"serial:      {cert.serial_number:x}",
        f"not before:  {cert.not_valid_before_utc.isoformat()}",
        f"not after:   {cert.not_valid_after_utc.isoformat()}",
        f"status:      {_status(cert, dt.datetime.now(dt.timezone.utc))}",
        f"CA:          {'yes' if basic is not None and basic.ca else 'no'}",
        "SANs:        " + (", ".join(f"{_SAN_PREFIX.get(type(g), type(g).__name__)}:{g.value}" for g in san)
                           if san else "none"),
        "EKU:         " + (", ".join(_EKU_NAME.get(o, o.dotted_string) for o in eku) if eku else "none"),
        f"key:         {_key_text(cert.public_key())}",
        f"sha256:      {':'.join(fingerprint[i:i + 2] for i in range(0, len(fingerprint), 2))}",
    ])
