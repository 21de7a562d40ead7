"""Schemathesis over the OpenAPI document, against a real TLS peer as a logged-in user (issue 10),
and the administrators' routes (ACL, audit log, everyone's tokens) again as an administrator.

The bar: no server error (5xx) and every answer as the document says
(status codes, content types, bodies, headers); requests the document calls
valid are accepted and those it calls invalid refused.  A bounded number of
cases per operation (``POCKETGRID_FUZZ_EXAMPLES``, default 20); the seed is
printed and can be given back with ``POCKETGRID_FUZZ_SEED`` to replay a run;
``POCKETGRID_FUZZ_COVERAGE=1`` adds Schemathesis' coverage phase (edge values; minutes).

Every route is also asked as an anonymous caller (the public routes answer, the rest 401).

Not fuzzed as a host, because it cannot be done safely: ``/api/v1/broker/...`` and
``/api/v1/peer/...`` need a host certificate (mutual TLS), and with one the fuzzer would
register fake peers, overwrite the ACL and revocations, place and forward jobs.  They are
asked with a user's token only, and must refuse it (never a 2xx).
``POST /api/v1/auth/logout`` is not fuzzed: it would revoke the fuzzing user's own token mid-run.

A 414 from gunicorn (a request line over 4094 bytes) is not held against the document: the
request never reached the peer's code.

``POST /api/v1/jobs`` is fuzzed, but without the check that schema-valid requests are
accepted: a valid job names files that exist in the publishing area and a submit file in
HTCondor's language, which no schema can express (such requests get 400/404 with a message).
The same for ``POST /api/v1/uploads`` (tus creation): its ``Upload-Metadata`` header must carry
the base64 of a file name and of the file's SHA-256.
"""
from __future__ import annotations

import os
import random
import re
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import positive_data_acceptance
from schemathesis.config import SchemathesisConfig
from schemathesis.transport.requests import REQUESTS_TRANSPORT, binary_serializer

from tests.conftest import PeerProcess, free_port, secure_args, user_session

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SEED = int(os.environ.get("POCKETGRID_FUZZ_SEED") or random.randrange(2**32))
EXAMPLES = int(os.environ.get("POCKETGRID_FUZZ_EXAMPLES", "20"))
print(f"schemathesis seed: {SEED} (replay with POCKETGRID_FUZZ_SEED={SEED})")

# tus PATCH bodies (peer/api_uploads.py) are plain bytes
REQUESTS_TRANSPORT.serializer("application/offset+octet-stream")(binary_serializer)

NO_POSITIVE_CHECK = {"POST /api/v1/jobs", "POST /api/v1/uploads"}

config = SchemathesisConfig.from_dict({
    "seed": SEED,
    "generation": {"max-examples": EXAMPLES},
    # the coverage phase (every boundary and edge value of every parameter) takes minutes: on demand only
    "phases": {"coverage": {"enabled": os.environ.get("POCKETGRID_FUZZ_COVERAGE") == "1"},
               "stateful": {"enabled": False}},
    # tus (peer/api_uploads.py) answers 412 to a request without "Tus-Resumable: 1.0.0", as its protocol says
    "checks": {"negative_data_rejection": {"expected-statuses": [
        "400", "401", "403", "404", "405", "406", "409", "412", "413", "415", "422", "428", "429"]},
        "missing_required_header": {"expected-statuses": ["400", "401", "403", "412"]}},
})
schema = (
    schemathesis.openapi.from_path(ROOT / "peer" / "openapi.yaml", config=config)
    .exclude(path_regex=r"^/api/v1/(broker|peer)/")
    .exclude(method="POST", path="/api/v1/auth/logout")
)

admin_schema = schema.include(path_regex=r"^/api/v1/(admin/|auth/tokens)")
#: peer-to-peer routes, asked with a user's token: refused before they do anything (403), as documented
host_schema = schemathesis.openapi.from_path(ROOT / "peer" / "openapi.yaml", config=config).include(
    path_regex=r"^/api/v1/(broker|peer)/")


def _valid_beyond_schema(case) -> bool:
    """False when a schema-valid case is still invalid in a way no schema says (so a 400 is right)."""
    if case.operation.label in NO_POSITIVE_CHECK:
        return False
    query = {k: v[0] if isinstance(v, list) and v else v for k, v in (case.query or {}).items()}  # as Flask reads it
    if case.operation.label == "GET /api/v1/files" and query.get("regex") in {"1", "true", "yes"}:
        try:  # with regex on, grep must be a regular expression
            re.compile(str(query.get("grep", "")))
        except re.error:
            return False
    return True


def _call_and_validate(case, peer, session) -> None:
    """``case.call_and_validate``, but a 414 from gunicorn (limit_request_line, 4094 bytes: the request
    never reached the peer's code) for a request line that long is not held against the document."""
    transport = {"base_url": peer.url, "session": session, "verify": peer.ca, "timeout": 30}
    response = case.call(**transport)
    if response.status_code == 414:
        assert len(response.request.url) > 4000, response.request.url
        return
    case.validate_response(response, excluded_checks=[] if _valid_beyond_schema(case) else [positive_data_acceptance],
                           transport_kwargs=transport)


@pytest.fixture(scope="module")
def peer(tmp_path_factory, site_pki):
    root = tmp_path_factory.mktemp("fuzz")
    p = PeerProcess("solo", root / "solo", free_port(), secure_args(site_pki, "solo", "--no-agent", "--threads", "8"),
                    {**os.environ, "PYTHONUNBUFFERED": "1"})
    (p.state / "publish" / "sub").mkdir(parents=True)
    (p.state / "publish" / "data.txt").write_text("1\n2\n3\n")
    (p.state / "publish" / "sub" / "inner.txt").write_text("x\n")
    p.start()
    p.http = user_session(p, site_pki, "alice")
    p.admin = user_session(p, site_pki, "carol")  # the bootstrap administrator
    p.ca = site_pki.ca
    yield p
    p.stop()
    print(f"schemathesis seed: {SEED}")


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_agrees_with_its_document(case, peer):
    _call_and_validate(case, peer, peer.http)


@admin_schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_admin_routes_agree_with_their_document(case, peer):
    """As carol: what a user only ever gets 403 for (ACL rules added and removed, the audit log)."""
    _call_and_validate(case, peer, peer.admin)


@schema.parametrize()
@settings(max_examples=max(EXAMPLES // 4, 3), deadline=None, suppress_health_check=list(HealthCheck))
def test_anonymous_callers_get_what_the_document_says(case, peer):
    """No token, no certificate: the public routes (login, pairing) and a 401 everywhere else."""
    from pocketgrid.http import Session

    _call_and_validate(case, peer, Session(verify=peer.ca))


@host_schema.parametrize()
@settings(max_examples=max(EXAMPLES // 4, 3), deadline=None, suppress_health_check=list(HealthCheck))
def test_host_routes_refuse_users_as_documented(case, peer):
    """A user's token on the routes only hosts may call: refused (never a 2xx), as the document says."""
    response = case.call(base_url=peer.url, session=peer.http, verify=peer.ca, timeout=30)
    assert response.status_code in {401, 403, 404, 405, 414}, (response.status_code, response.text[:300])
    if response.status_code != 414:
        case.validate_response(response, excluded_checks=[positive_data_acceptance],
                               transport_kwargs={"base_url": peer.url, "session": peer.http, "verify": peer.ca})
