"""The verified TLS client certificate of the current request (server side, all roles).

The front's TLS handshake already checked the certificate's chain to the site
CA and its dates (peer/front/); the front passes it to the app, which puts it
into the request's environ only when the front's per-start secret came with it
(peer/front/headers.py, ``TrustFront``).  A certificate header from anyone else
is dropped, never read.  This says whose certificate it is.  Shared by the peer
and the broker role, which must not import peer internals.  Imports Flask:
server code only.
"""
from __future__ import annotations

import ssl
import threading
from dataclasses import dataclass

from cryptography import x509
from flask import current_app, request

from .errors import Forbidden
from .pki import common_name, identity_of, is_host_certificate


#: Where the app finds the verified certificate (DER) of a request: put there by peer/front/headers.py's TrustFront.
ENVIRON_CERTIFICATE = "pocketgrid.client_certificate"


@dataclass(frozen=True)
class CertIdentity:
    dn: str
    vo: str | None
    is_host: bool
    cn: str | None = None
    pem: str = ""


_cert_cache: dict[bytes, CertIdentity] = {}
_cert_lock = threading.Lock()


def tls_client_certificate() -> CertIdentity | None:
    """The verified TLS client certificate of this request's connection, if any."""
    der = request.environ.get(ENVIRON_CERTIFICATE)
    if not der:
        return None
    found = _cert_cache.get(der)
    if found is None:
        cert = x509.load_der_x509_certificate(der)
        dn, vo = identity_of(cert)
        found = CertIdentity(dn, vo, is_host_certificate(cert), common_name(cert), ssl.DER_cert_to_PEM_cert(der))
        with _cert_lock:
            if len(_cert_cache) > 1024:
                _cert_cache.clear()
            _cert_cache[der] = found
    return found


def require_host_name(name: str) -> None:
    """403 unless the calling host's certificate is for ``name`` (a peer may only speak for itself)."""
    if current_app.extensions["pocketgrid"].config.insecure_http:
        return
    cert = tls_client_certificate()
    if cert is None or not cert.is_host or cert.cn != name:
        raise Forbidden(f"only the host certificate of {name!r} may register, heartbeat or report for it "
                        f"(this connection presents {cert.dn if cert else 'none'})")
