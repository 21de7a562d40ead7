"""Claims to the broker role only move forward: higher epoch, then lower sequence number."""
from __future__ import annotations

import requests

from peer.db import Database
from peer.membership import Membership
from peer.models import Base

MEMBERS = [{"name": "a", "url": "http://a", "seq": 1}, {"name": "b", "url": "http://b", "seq": 2},
           {"name": "c", "url": "http://c", "seq": 3}]


def make(tmp_path, name="c") -> Membership:
    db = Database(f"sqlite:///{tmp_path / 'm.db'}")
    db.create_all(Base.metadata)
    return Membership(db, name=name, url=f"http://{name}", http=requests.Session())


def claim(broker: str, epoch: int) -> dict:
    return {"broker": {"name": broker, "url": f"http://{broker}"}, "epoch": epoch, "members": MEMBERS}


def test_higher_epoch_wins_and_epoch_never_goes_back(tmp_path):
    m = make(tmp_path)
    assert m.apply(claim("a", 1)) and m.seq == 3
    assert m.apply(claim("b", 2)) and m.broker["name"] == "b"
    assert not m.apply(claim("a", 1))  # the old broker's stale push
    assert (m.broker["name"], m.epoch) == ("b", 2)


def test_equal_epochs_lower_sequence_wins(tmp_path):
    m = make(tmp_path)
    m.apply(claim("b", 2))
    assert m.apply(claim("a", 2))       # a (seq 1) outranks b (seq 2)
    assert not m.apply(claim("b", 2))   # and b cannot take it back at the same epoch
    assert m.broker["name"] == "a"


def test_broker_steps_down_on_a_better_claim(tmp_path):
    m = make(tmp_path, name="b")
    m.apply(claim("a", 1))
    m.become_broker(2)
    calls = []
    m.on_step_down = calls.append
    assert not m.apply(claim("c", 2))  # c has a higher sequence number: b keeps the role
    assert m.apply(claim("a", 3))
    assert [c["name"] for c in calls] == ["a"] and not m.is_broker


def test_state_survives_a_restart(tmp_path):
    m = make(tmp_path)
    m.apply(claim("b", 4))
    again = make(tmp_path)
    assert (again.broker["name"], again.epoch, again.seq) == ("b", 4, 3)
    assert [x["name"] for x in again.members()] == ["a", "b", "c"]
