"""The front's parts that need no network: connection limits, its event log, the header contract with the app."""
from __future__ import annotations

import base64
import logging

import pytest

from peer.front.changes import DATAGRAM_BYTES, ChangeSender, decode, encode
from peer.front.headers import (CERTIFICATE, ENVIRON_FRONT_WAITS, ENVIRON_WAITS_HELD, SECRET, WAIT, WAITS, WAITS_HELD,
                                TrustFront, is_front_header, parse_wait_header, request_headers, wait_header)
from peer.front.limits import ConnectionLimits, EventLog, Lease, Refusal
from peer.front.waits import WaitPlace, WaitRefusal, Waits
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


# ---- waiting in the front (peer/front/waits.py, changes.py) ----------------------------------------
def test_trust_front_believes_front_waits_only_with_the_secret():
    def seen_with(secret: str) -> dict:
        seen: dict = {}
        TrustFront(lambda env, sr: seen.update(env) or [], "s3cret", "https")(
            _environ(x_pocketgrid_front=secret, x_pocketgrid_front_waits="1", x_pocketgrid_front_waits_held="7"),
            lambda *a: None)
        return seen

    good = seen_with("s3cret")
    assert good[ENVIRON_FRONT_WAITS] is True and good[ENVIRON_WAITS_HELD] == 7
    bad = seen_with("guess")  # a client on the socket claiming the front waits: the app parks as before
    assert ENVIRON_FRONT_WAITS not in bad and ENVIRON_WAITS_HELD not in bad
    assert is_front_header(WAIT) and is_front_header(WAITS) and is_front_header(WAITS_HELD)


def test_wait_header_round_trip_names_no_dn_and_rejects_garbage():
    value = wait_header("peer a.job 1", 12, "CN=Alice,O=x", 25.0)
    assert "Alice" not in value
    spec = parse_wait_header(value)
    assert spec is not None and (spec.job_id, spec.version, spec.seconds) == ("peer a.job 1", 12, 25.0)
    assert spec.user == parse_wait_header(wait_header("other", 1, "CN=Alice,O=x", 1)).user
    assert spec.user != parse_wait_header(wait_header("other", 1, "CN=Bob,O=x", 1)).user
    for bad in ("", "25 12 u", "x 12 u j", "25 x u j", "nan 1 u j", "-1 1 u j", "1 2 3 4 5"):
        assert parse_wait_header(bad) is None, bad


def test_change_datagrams_round_trip_and_split_under_the_size():
    pairs = [(f"peer.job {i}%", i) for i in range(3000)]
    payloads = encode(pairs)
    assert len(payloads) > 1 and all(len(p) <= DATAGRAM_BYTES for p in payloads)
    decoded = [pair for p in payloads for pair in decode(p)[1]]
    assert decoded == pairs
    assert decode(b"*\nj 3\nbroken\nk x\n") == (True, [("j", 3)])


def test_change_sender_says_everything_first_and_after_a_refusal(tmp_path):
    import socket

    path = str(tmp_path / "changes.sock")
    sender = ChangeSender(path)
    sender({"a.1": ("alice", 1)})  # nobody listens yet: refused, remembered
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(path)
    receiver.settimeout(5)
    try:
        sender({"a.1": ("alice", 2)})
        assert decode(receiver.recv(65536)) == (True, [("a.1", 2)])  # "*": the first one was lost
        sender({"a.1": ("alice", 3), "b.2": ("bob", 1)})
        assert decode(receiver.recv(65536)) == (False, [("a.1", 3), ("b.2", 1)])
    finally:
        receiver.close()
        sender.close()


def test_waits_limits_per_user_per_kind_per_address_and_in_all():
    waits = Waits(total=5, per_user=2, per_address=4, streams_per_user=1)
    polls = [waits.admit("alice", "10.0.0.1") for _ in range(2)]
    assert all(isinstance(p, WaitPlace) for p in polls)
    assert isinstance(waits.admit("alice", "10.0.0.1"), WaitRefusal)
    stream = waits.admit("alice", "10.0.0.1", stream=True)  # streams count apart
    assert isinstance(stream, WaitPlace)
    assert "streams" in waits.admit("alice", "10.0.0.2", stream=True).why
    assert isinstance(waits.admit("bob", "10.0.0.1"), WaitPlace)
    assert "address" in waits.admit("carol", "10.0.0.1").why  # 4 from 10.0.0.1
    assert isinstance(waits.admit("carol", "10.0.0.2"), WaitPlace)
    assert "front_max_waits" in waits.admit("dave", "10.0.0.3").why  # 5 in all
    polls[0].release()
    polls[0].release()  # idempotent
    assert waits.held == 4 and isinstance(waits.admit("alice", "10.0.0.2"), WaitPlace)


def test_a_wait_wakes_on_another_version_of_its_job_only():
    import asyncio

    async def main() -> None:
        waits = Waits(total=10, per_user=0, per_address=0)
        gen = waits.generation
        task = asyncio.create_task(waits.wait("j", 3, 10, gen))
        other = asyncio.create_task(waits.wait("k", 1, 0.2, gen))
        await asyncio.sleep(0)
        waits.heard(b"k 1\n")  # the version the waiter has: no change for it
        waits.heard(b"x 9\n")
        assert not task.done()
        waits.heard(b"j 4\n")
        assert await task is True
        assert await other is False  # timed out
        # a change heard between the app's answer and the wait is not missed
        assert await waits.wait("j", 3, 10, gen) is True
        # "*" (notifications lost, a new worker): everyone asks again, also a waiter who asked before it
        late = asyncio.create_task(waits.wait("q", 1, 10, gen))
        await asyncio.sleep(0)
        waits.heard(b"*\n")
        assert await late is True
        assert await waits.wait("z", 1, 10, gen) is True
        gone = asyncio.get_running_loop().create_future()
        leaving = asyncio.create_task(waits.wait("z", 1, 10, waits.generation, gone))
        await asyncio.sleep(0)
        gone.set_result(None)
        assert await leaving is False and not waits._waiters

    _run_in_a_thread_of_its_own(main())


def _run_in_a_thread_of_its_own(coro) -> None:
    """asyncio.run in a new thread: a test run before may have left an event loop running in this one
    (Playwright's sync API does)."""
    import asyncio
    import threading

    failure: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(coro)
        except BaseException as exc:  # handed to the test's thread
            failure.append(exc)

    t = threading.Thread(target=run)
    t.start()
    t.join(60)
    assert not t.is_alive(), "the coroutine did not finish within 60 s"
    if failure:
        raise failure[0]
