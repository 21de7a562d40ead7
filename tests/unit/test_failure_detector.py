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
