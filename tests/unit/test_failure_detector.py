"""When a plain peer declares the broker dead (peer/election.py ``FailureDetector``), as a pure function of
heartbeat results and a clock: the documented window, counted from the broker's last answer."""
from __future__ import annotations

import pytest

from peer.election import FailureDetector


def declared_dead_at(detector: FailureDetector, first_failure: float, *, limit: float = 1000.0) -> float:
    """Drive the detector as the elector's loop does (a failed heartbeat, then wait ``delay()``) until it
    declares the broker dead; the time it does."""
    t = first_failure
    while not detector.missed(t):
        t += detector.delay()
        assert t < limit, "never declared dead"
    return t


@pytest.mark.parametrize("stopped_at", [0.05, 2.5, 4.95])  # just after a heartbeat, between two, just before one
def test_a_stopped_broker_is_declared_dead_two_to_three_periods_after_it_stopped(stopped_at: float) -> None:
    interval, misses = 5.0, 3
    d = FailureDetector(interval, misses, now=-10.0)
    d.answered(0.0)  # its last answer
    dead = declared_dead_at(d, first_failure=interval)  # the next heartbeat finds it gone (connection refused)
    after_stop = dead - stopped_at
    assert (misses - 1) * interval <= after_stop <= misses * interval + interval / misses
    # The old rule (three failures in a row, retried interval/misses apart) said "dead" at 8.3 s: 3.3 s
    # after the first failure, under one period after a stop just before a heartbeat.
    assert dead >= misses * interval


def test_a_broker_back_within_the_window_keeps_its_role() -> None:
    d = FailureDetector(5.0, 3, now=0.0)
    t = 5.0
    for _ in range(4):  # a restart: four failed attempts, 10 s without an answer
        assert d.missed(t) is False
        t += d.delay()
    assert d.suspecting and d.delay() == pytest.approx(5.0 / 3)  # retried quickly while suspecting...
    d.answered(t)  # ...so the restarted broker is noticed at once
    assert not d.suspecting and d.delay() == 5.0
    assert declared_dead_at(d, first_failure=t + 5.0) >= t + 15.0  # a new full window


def test_failures_alone_do_not_make_it_dead_and_time_alone_does_not_either() -> None:
    d = FailureDetector(1.0, 3, now=0.0)
    assert [d.missed(t) for t in (0.1, 0.2, 0.3, 0.4)] == [False] * 4  # many quick failures: not yet
    d = FailureDetector(1.0, 3, now=0.0)
    assert d.missed(100.0) is False and d.missed(100.1) is False  # a long silence, but only two failures
    assert d.missed(100.2) is True


def test_a_slow_broker_that_answers_within_the_window_is_never_declared_dead() -> None:
    """Each heartbeat waits until the window closes (``patience``): a broker taking 9 s to answer keeps its role."""
    interval, misses, answer_takes = 5.0, 3, 9.0
    d = FailureDetector(interval, misses, now=0.0)
    t = 0.0
    for _ in range(20):
        t += d.delay()  # the next heartbeat is sent
        assert d.patience(t, least=2.5) > answer_takes
        t += answer_takes  # ...and answered, late
        d.answered(t)
    assert not d.suspecting


def test_a_broker_asked_the_whole_window_in_vain_is_dead_when_the_window_closes() -> None:
    """A hung broker (connections accepted, never answered): one heartbeat waits out the window; then dead,
    not three more timeouts later."""
    d = FailureDetector(5.0, 3, now=-10.0)
    d.answered(0.0)
    asked = 5.0
    waits = d.patience(asked, least=2.5)
    assert waits == pytest.approx(10.0)  # until the window closes at 15 s
    assert d.missed(asked + waits, waited=waits) is True
    # A quick failure (connection refused) still counts once: the documented 2-to-3-periods rule holds.
    d = FailureDetector(5.0, 3, now=0.0)
    assert d.missed(5.0, waited=0.01) is False and d.failures == 1
    assert d.patience(14.9, least=2.5) == 2.5  # near the window's end a heartbeat still gets its least


class _Membership:
    """What the elector reads of the membership: a broker to heartbeat, and this peer is not it."""

    name, url, epoch, seq, is_broker = "site-b", "http://127.0.0.1:1", 1, 2, False

    def __init__(self, broker_url: str) -> None:
        self.broker = {"name": "site-a", "url": broker_url}

    def apply(self, view: dict) -> None:
        pass


def test_the_elector_keeps_a_broker_whose_answers_take_longer_than_its_timeout() -> None:
    """A real elector thread against a broker that answers every heartbeat after 1 s, twice the elector's
    0.5 s timeout but well inside its 3 s window: no election (before, each heartbeat timed out and the busy
    broker lost its role after 3 s)."""
    import json
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import requests

    from peer.election import Elector
    from pocketgrid.loopback import wait_until

    answered = []

    class SlowBroker(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            self.rfile.read(int(self.headers["Content-Length"]))
            time.sleep(1.0)  # the busy broker: this is the behaviour under test, not a wait in the test
            body = json.dumps({"members": []}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            answered.append(self.path)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), SlowBroker)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    took: list[int] = []
    elector = Elector(_Membership(f"http://127.0.0.1:{server.server_port}"), requests.Session(), interval=1.0,
                      misses=3, timeout=0.5, take_role=took.append)
    elector.elect = lambda: took.append(-1)  # an election would be the failure: record it, do not run one
    try:
        elector.start()
        wait_until(lambda: len(answered) >= 3 or took, 60, 0.05, what="three slow heartbeats answered")
        assert took == [] and elector.elections == 0 and len(answered) >= 3
        assert not elector.detector.suspecting
    finally:
        elector.stop()
        server.shutdown()
