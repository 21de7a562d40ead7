"""The peer's security services in one bundle: ACLs, audit log, tokens, login, pairing, sync.

With ``insecure_http`` there is no TLS and so nothing to log in with: the
token, login and pairing services are absent (their routes say so), while
the ACL store and the audit log still exist so an operator can prepare
rules before switching TLS on.
"""
from __future__ import annotations

from dataclasses import dataclass

import requests
from cryptography import x509

from pocketgrid.config import PeerConfig
from pocketgrid.pki import load_private_key

from .acl import AclStore
from .audit import AuditLog
from .db import Database
from .login import LoginService
from .membership import Membership
from .pairing import PairingService
from .security_sync import SecuritySync
from .tokens import IssuerKeys, TokenService


@dataclass
class Security:
    acl: AclStore
    audit: AuditLog
    sync: SecuritySync
    tokens: TokenService | None = None
    login: LoginService | None = None
    pairing: PairingService | None = None


def build_security(config: PeerConfig, db: Database, membership: Membership, http: requests.Session) -> Security:
    acl = AclStore(db, admins=config.admins, default_allow=config.acl_default_allow)
    audit = AuditLog(db, refusals_per_minute=config.audit_refusals_per_minute)
    tokens = login = pairing = None
    if not config.insecure_http:
        with open(config.tls_cert, "rb") as fh:
            host_cert = x509.load_pem_x509_certificate(fh.read())
        keys = IssuerKeys(config.name, host_cert.public_key(), config.tls_ca, membership.url_of,
                          cert_of=membership.cert_of, timeout=min(config.peer_timeout, 5.0))
        tokens = TokenService(db, issuer=config.name, private_key=load_private_key(config.tls_key), keys=keys,
                              lifetime=config.token_lifetime, device_lifetime=config.device_token_lifetime)
        login = LoginService(server=config.name, url=config.url, ca_file=config.tls_ca,
                             challenge_lifetime=config.challenge_lifetime)
        pairing = PairingService(lifetime=config.pairing_code_lifetime, max_failures=config.pairing_max_failures,
                                 window=config.pairing_failure_window)
    sync = SecuritySync(membership=membership, http=http, acl=acl, tokens=tokens, timeout=min(config.peer_timeout, 5.0))
    return Security(acl=acl, audit=audit, sync=sync, tokens=tokens, login=login, pairing=pairing)
