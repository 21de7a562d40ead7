"""peer/record_store.py: versions published after the commit, waiters woken by it, the owner kept."""
from __future__ import annotations

import threading
import time

from peer import records
from peer.db import Database
from peer.models import Base, JobRecord
from peer.record_store import RecordStore


def make(tmp_path) -> RecordStore:
    db = Database(f"sqlite:///{tmp_path / 'p.db'}")
    Base.metadata.create_all(db.engine)
    return RecordStore(db)


def add(store: RecordStore, job_id: str = "home.1") -> None:
    with store.session() as s:
        r = JobRecord(id=job_id, name="j", owner="CN=alice", created_at=0.0, executable_name="x", submit_name="s",
                      submit_text="", inputs=[{"name": "a", "path": "a", "size": 1, "sha256": "0" * 64}],
                      warnings=[], version=0, home="home", manager="home", manager_epoch=1)
        s.add(r)
        r.attempts.extend(records.first_attempts(r, 0.0))
        store.touch(s, r)


def test_a_change_is_published_after_its_commit_and_wakes_a_waiter(tmp_path) -> None:
    store = make(tmp_path)
    add(store)
    assert store.known("home.1") == ("CN=alice", 1)
    woke: list[int | None] = []
    waiter = threading.Thread(target=lambda: woke.append(store.wait("home.1", 1, 30)))
    waiter.start()
    with store.session() as s:
        r = s.get(JobRecord, "home.1")
        records.kill(r, 1.0)
        store.touch(s, r)
        assert store.known("home.1") == ("CN=alice", 1)  # not before the commit
    waiter.join(10)
    assert woke == [2] and store.known("home.1") == ("CN=alice", 2)
    with store.db.sessions() as s:
        r = s.get(JobRecord, "home.1")
        assert r.summary == {"state": "removed", "counts": {"removed": 1}} and r.finished_at is not None


def test_a_rolled_back_change_publishes_nothing(tmp_path) -> None:
    store = make(tmp_path)
    add(store)
    try:
        with store.session() as s:
            r = s.get(JobRecord, "home.1")
            store.touch(s, r)
            raise RuntimeError("the change fails")
    except RuntimeError:
        pass
    assert store.known("home.1") == ("CN=alice", 1)
    started = time.monotonic()
    assert store.wait("home.1", 1, 0.2) == 1 and time.monotonic() - started >= 0.2  # nothing moved


def test_the_oldest_versions_are_forgotten_beyond_the_limit(tmp_path) -> None:
    store = make(tmp_path)
    store.max_known = 2
    for n in range(3):
        add(store, f"home.{n}")
    assert store.known("home.0") is None and store.known("home.2") == ("CN=alice", 1)
