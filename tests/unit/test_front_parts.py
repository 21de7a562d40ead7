"""The front's parts that need no network: connection limits, its event log, the header contract with the app."""
from __future__ import annotations

import base64
import logging

import pytest

from peer.front.headers import CERTIFICATE, SECRET, TrustFront, is_front_header, request_headers
from peer.front.limits import ConnectionLimits, EventLog, Lease, Refusal
from pocketgrid.client_certificate import ENVIRON_CERTIFICATE


def test_limits_per_address_and_in_all_and_a_place_comes_back_once():
    limits = ConnectionLimits(total=3, per_address=2)
    a1, a2 = limits.admit("10.0.0.1"), limits.admit("10.0.0.1")
    assert isinstance(a1, Lease) and isinstance(a2, Lease)
    refused = limits.admit("10.0.0.1")
    assert isinstance(refused, Refusal) and refused.kind == "address-limit"
    b1 = limits.admit("10.0.0.2")
    assert isinstance(b1, Lease)
    assert isinstance(limits.admit("10.0.0.3"), Refusal) and limits.admit("10.0.0.3").kind == "total-limit"
    a1.release()
    a1.release()  # a handshake failure and a close may both give it back: counted once
    assert limits.open == 2 and limits.held_by("10.0.0.1") == 1
    assert isinstance(limits.admit("10.0.0.1"), Lease)


def test_no_per_address_limit_when_zero():
    limits = ConnectionLimits(total=100, per_address=0)
    assert all(isinstance(limits.admit("10.0.0.1"), Lease) for _ in range(100))
    assert limits.admit("10.0.0.1").kind == "total-limit"


def test_event_log_writes_the_first_event_and_then_one_summary_per_interval(caplog):
    now = [100.0]
    events = EventLog(interval=10.0, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="pocketgrid.front"):
        for i in range(500):
            events.note("address-limit", f"10.0.0.{i % 3}")
        events.flush()  # not due yet
        assert len(caplog.records) == 1 and "10.0.0.0" in caplog.records[0].getMessage()
        now[0] += 10.0
        events.flush()
    assert len(caplog.records) == 2
    summary = caplog.records[1].getMessage()
    assert "499 more connections refused (front_max_connections_per_address)" in summary and "10.0.0.1 (167)" in summary
    assert events.totals["address-limit"] == 500


def test_request_headers_drop_hop_by_hop_and_anything_claiming_to_be_the_front():
    raw = [(b"Host", b"x"), (b"Connection", b"keep-alive, X-Secret-Hop"), (b"X-Secret-Hop", b"1"),
           (b"Transfer-Encoding", b"chunked"), (b"Expect", b"100-continue"), (b"Content-Length", b"5"),
           (b"X-Pocketgrid-Front", b"guess"), (b"x-pocketgrid-front-certificate", b"Zm9v"),
           (b"X-Pocketgrid-Front_Address", b"10.9.8.7"), (b"Cookie", b"a=1"), (b"Cookie", b"b=2"),
           (b"Authorization", b"Bearer t")]
    out = request_headers(raw, "s3cret", "192.0.2.5", b"\x30\x82")
    names = [k.lower() for k, _ in out]
    assert ("Cookie", "a=1") in out and ("Cookie", "b=2") in out and ("Authorization", "Bearer t") in out
    for gone in ("connection", "x-secret-hop", "transfer-encoding", "expect", "content-length"):
        assert gone not in names
    assert [v for k, v in out if is_front_header(k)] == ["s3cret", "192.0.2.5", base64.b64encode(b"\x30\x82").decode()]
    assert "10.9.8.7" not in [v for _, v in out] and "guess" not in [v for _, v in out]


def _environ(**headers: str) -> dict:
    env = {"REQUEST_METHOD": "GET", "PATH_INFO": "/x", "REMOTE_ADDR": "", "wsgi.url_scheme": "http"}
    env.update({"HTTP_" + k.upper(): v for k, v in headers.items()})
    return env


def test_trust_front_believes_the_headers_only_with_the_secret():
    der = b"\x30\x82\x01\x0a"

    def seen_with(secret: str) -> dict:
        seen: dict = {}

        def app(env, start_response):
            seen.update(env)
            return []

        TrustFront(app, "s3cret", "https")(_environ(x_pocketgrid_front=secret, x_pocketgrid_front_address="192.0.2.5",
                                                    x_pocketgrid_front_certificate=base64.b64encode(der).decode()),
                                           lambda *a: None)
        return seen

    good = seen_with("s3cret")
    assert good["REMOTE_ADDR"] == "192.0.2.5" and good[ENVIRON_CERTIFICATE] == der and good["wsgi.url_scheme"] == "https"
    assert not any(k.startswith("HTTP_X_POCKETGRID_FRONT") for k in good)  # the app never sees them
    for wrong in ("s3cre", "s3cret!", "", "S3CRET"):
        bad = seen_with(wrong)
        assert ENVIRON_CERTIFICATE not in bad and bad["REMOTE_ADDR"] == ""
        assert not any(k.startswith("HTTP_X_POCKETGRID_FRONT") for k in bad)


def test_trust_front_refuses_an_empty_secret():
    with pytest.raises(ValueError, match="secret"):
        TrustFront(lambda e, s: [], "", "https")


def test_header_names_of_the_contract_are_front_headers():
    assert is_front_header(SECRET) and is_front_header(CERTIFICATE) and is_front_header("X_POCKETGRID_FRONT_ADDRESS")
    assert not is_front_header("X-Pocketgrid-User") and not is_front_header("X-Request-ID")
