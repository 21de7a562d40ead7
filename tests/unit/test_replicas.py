"""The pure rules of replicas (peer/records.py claims and takeover, peer/replicas.py deputy choice and applying
a document): which copy of a record wins, what a takeover loses and keeps, and a replica written over a copy."""
from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from peer import records
from peer.db import Database
from peer.models import Base, JobAttempt, JobRecord
from peer.record_store import RecordStore
from peer.replicas import apply_document, choose_deputy

T = 1_000.0
LIMITS = records.Limits(max_attempts=4, retry_backoff=5.0)


def record(n: int = 4) -> JobRecord:
    r = JobRecord(id="home.1", name="j", owner="CN=alice", owner_vo="cms", created_at=T, executable_name="x.sh",
                  submit_name="x.sub", submit_text="executable = x.sh\nqueue\n",
                  inputs=[{"name": f"in{i}.txt", "path": f"in{i}.txt", "size": 10, "sha256": "0" * 64}
                          for i in range(n)], warnings=[], version=7, home="home", manager="home", manager_epoch=1,
                  deputy="dep")
    r.attempts.extend(records.first_attempts(r, T))
    return r


def at(a: JobAttempt, site: str, state: str = "running", piece: str | None = "auto") -> JobAttempt:
    a.state, a.site, a.piece_key, a.dispatched_at = state, site, "k", T
    a.piece = f"{site}.p" if piece == "auto" else piece
    return a


# ---- claims -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("local, incoming, verdict", [
    (None, (1, 1), "newer"),           # nothing here yet
    ((1, 5), (1, 6), "newer"),         # the same manager, a later version
    ((1, 6), (1, 6), "same"),          # a push repeated
    ((1, 6), (1, 5), "older"),         # an old push arriving late
    ((1, 50), (2, 3), "newer"),        # a takeover beats any version of the epoch before
    ((2, 3), (1, 50), "older"),        # the old home, back with its stale record, must yield
])
def test_the_higher_epoch_wins_then_the_higher_version(local, incoming, verdict) -> None:
    assert records.newer_claim(local, incoming) == verdict


def test_a_claim_reads_a_record_or_its_document_alike() -> None:
    r = record()
    assert records.claim(r) == (1, 7) == records.claim(records.to_document(r)["record"])


# ---- the deputy -----------------------------------------------------------------------------------------
def test_the_deputy_is_the_next_member_by_name_wrapping_and_never_the_home_or_a_silent_peer() -> None:
    members = ["site-a", "site-b", "site-c"]
    assert choose_deputy("site-b", members) == "site-c"
    assert choose_deputy("site-c", members) == "site-a"  # wraps
    assert choose_deputy("site-c", members, exclude={"site-a"}) == "site-b"
    assert choose_deputy("site-a", ["site-a"]) is None  # alone: no replica
    assert choose_deputy("site-c", members, exclude={"site-a", "site-b"}) is None


# ---- takeover -------------------------------------------------------------------------------------------
def test_a_takeover_loses_what_ran_at_the_old_manager_and_keeps_the_pieces_elsewhere() -> None:
    r = record(5)
    a0, a1, a2, a3, a4 = sorted(r.attempts, key=lambda a: a.index)
    at(a0, "home")                          # running at the home: lost, runs again
    at(a1, "site-x")                        # running elsewhere: kept, watched by the new manager
    at(a2, "home", "completed").result = True  # a result at the home, job unfinished: out of reach
    at(a3, "site-x", "dispatching", piece=None)  # being sent by the old manager: lost, nothing to clean
    a3.cleanup = "delete"
    # a4 still pending: the new manager sends it
    new = records.take_over(r, "dep", "its manager home did not answer for 3 s", T + 10, LIMITS)
    assert (r.manager, r.manager_epoch, r.deputy) == ("dep", 2, None)
    assert sorted(a.index for a in new) == [0, 2, 3]
    assert all(a.state == "pending" and a.number == 2 for a in new)
    assert {a.index: a.avoid for a in new}[0] == ["home"]
    assert a0.state == "lost" and "did not answer" in a0.reason and a0.cleanup == "delete"
    assert a2.state == "lost" and not a2.result and a2.cleanup == "delete"  # deleted at the home if it returns
    assert a1.state == "running" and a1.cleanup is None
    assert a3.state == "lost" and a3.cleanup is None
    assert a4.state == "pending" and a4.number == 1
    assert records.claim(r)[0] == 2


def test_a_piece_being_sent_that_its_site_made_is_adopted_not_run_twice() -> None:
    """The old manager died between a site's accepting a piece and the answer reaching the record: the new
    manager asked the site (``found``: origin key -> piece ID) and keeps that piece running."""
    r = record(3)
    a0, a1, a2 = sorted(r.attempts, key=lambda a: a.index)
    at(a0, "site-x", "dispatching", piece=None).piece_key = "made"    # the site made it: adopted
    at(a1, "site-y", "dispatching", piece=None).piece_key = "unmade"  # the site has none: lost, runs again
    at(a2, "home", "dispatching", piece=None).piece_key = "at-home"   # to the dead manager itself: lost
    new = records.take_over(r, "dep", "its manager home did not answer for 3 s", T + 10, LIMITS,
                            found={"made": "site-x.p9", "at-home": "home.p1"})
    assert (a0.state, a0.piece, a0.number) == ("idle", "site-x.p9", 1)
    assert a1.state == "lost" and "while its piece was being sent" in a1.reason
    assert a2.state == "lost" and a2.piece is None
    assert sorted(a.index for a in new) == [1, 2]
    assert records.being_sent(r) == []


def test_a_finished_job_taken_over_loses_nothing() -> None:
    r = record(1)
    a0 = r.attempts[0]
    at(a0, "home", "completed").result = True
    r.finished_at = T + 5
    assert records.take_over(r, "dep", "silent", T + 10, LIMITS) == []
    assert a0.state == "completed" and a0.result and r.manager == "dep"


# ---- applying a document -----------------------------------------------------------------------------------
def store(tmp_path) -> RecordStore:
    db = Database(f"sqlite:///{tmp_path / 'p.db'}")
    Base.metadata.create_all(db.engine)
    return RecordStore(db)


def load(st: RecordStore, job_id: str = "home.1") -> JobRecord:
    with st.db.sessions() as s:
        return s.scalars(select(JobRecord).where(JobRecord.id == job_id)
                         .options(selectinload(JobRecord.attempts))).one()


def test_a_document_becomes_a_replica_and_a_newer_one_replaces_its_attempts(tmp_path) -> None:
    st = store(tmp_path)
    with st.session() as s:  # an unrelated record here first: attempt IDs are this database's own
        other = record(2)
        other.id, other.home, other.manager = "here.9", "here", "here"
        for a in other.attempts:
            a.job_id = other.id
        s.add(other)
    source = record(2)
    with st.session() as s:
        apply_document(s, records.to_document(source))
    held = load(st)
    assert (held.manager, held.version, len(held.attempts), held.replica_version) == ("home", 7, 2, None)
    # the home moves on: input 0 lost at a site and sent again, input 1 done
    a0, a1 = sorted(source.attempts, key=lambda a: a.index)
    at(a0, "site-x")
    source.attempts.extend(records.lose_site(source, "site-x", "gone", T + 1, LIMITS))
    at(a1, "site-y", "completed").result = True
    source.version = 9
    with st.session() as s:
        kept = s.get(JobRecord, "home.1")
        kept.replica_version = 4  # a column of this peer's own: a document does not carry it over
    with st.session() as s:
        apply_document(s, records.to_document(source))
    held = load(st)
    assert held.version == 9 and held.replica_version == 4
    got = sorted((a.index, a.number, a.state, a.site, bool(a.result)) for a in held.attempts)
    assert got == [(0, 1, "lost", "site-x", False), (0, 2, "pending", None, False), (1, 1, "completed", "site-y", True)]
    assert len(load(st, "here.9").attempts) == 2  # nothing of another record touched


# ---- the deputy's copies of the inputs ----------------------------------------------------------------------
def test_an_input_runs_from_the_deputys_copy_only_when_it_is_the_file_submitted(tmp_path) -> None:
    import hashlib

    from pocketgrid.errors import NotFound
    from peer.digests import DigestCache
    from peer.publishing import PublishingArea
    from peer.replicas import Replicas

    st = store(tmp_path)
    deputy = Replicas(name="dep", url="https://dep", store=st, membership=None, http=None,  # type: ignore[arg-type]
                      records_root=tmp_path / "records", publishing=PublishingArea(tmp_path / "publish"),
                      digests=DigestCache(st.db), limits=LIMITS)
    r = record(2)
    body = b"input 0\n"
    r.inputs = [{"name": "in0.txt", "path": "in0.txt", "size": len(body), "sha256": hashlib.sha256(body).hexdigest()},
                {"name": "in1.txt", "path": "in1.txt", "size": 3, "sha256": "0" * 64}]
    with st.session() as s:
        apply_document(s, records.to_document(r))
    held = load(st)
    copy = tmp_path / "records" / "home.1" / "inputs" / "0" / "in0.txt"
    copy.parent.mkdir(parents=True)
    copy.write_bytes(body)
    assert deputy.check_copy(held, 0) is None and deputy.input_path("home.1", 0) == copy
    assert "input lost with the job's home home" in deputy.check_copy(held, 1)  # never copied
    with pytest.raises(NotFound):
        deputy.input_path("home.1", 1)
    copy.write_bytes(b"input 0 but changed\n")  # not what was submitted: it does not run
    assert deputy.check_copy(held, 0) is not None
    assert deputy.describe("home.1")["copies"] == {"executable": False, "inputs": 1, "of": 2}


def test_a_push_of_an_older_claim_is_refused_with_the_newer_copy_and_the_pusher_yields_to_it(tmp_path) -> None:
    """A partition healed: the deputy took the job over (epoch 2) while the home went on (epoch 1)."""
    from pocketgrid.errors import Conflict
    from peer.digests import DigestCache
    from peer.publishing import PublishingArea
    from peer.replicas import Replicas

    def peer(name: str) -> tuple[Replicas, RecordStore]:
        (tmp_path / name).mkdir()
        st = store(tmp_path / name)
        return Replicas(name=name, url=f"https://{name}", store=st, membership=None, http=None,  # type: ignore[arg-type]
                        records_root=tmp_path / name / "records", publishing=PublishingArea(tmp_path / name / "pub"),
                        digests=DigestCache(st.db), limits=LIMITS), st

    home, home_store = peer("home")
    dep, dep_store = peer("dep")
    r = record(1)
    with home_store.session() as s:
        s.add(r)
    assert dep.receive(records.to_document(load(home_store)))["applied"] is True
    assert dep.receive(records.to_document(load(home_store)))["applied"] is False  # the same claim again
    dep.take_over("home", ["home.1"], "its manager home did not answer for 3 s")
    taken = load(dep_store)
    assert (taken.manager, taken.manager_epoch) == ("dep", 2)
    with home_store.session() as s:  # the home, cut off, goes on: a later version at epoch 1
        s.get(JobRecord, "home.1").version = 30
    with pytest.raises(Conflict) as refused:
        dep.receive(records.to_document(load(home_store)))
    theirs = refused.value.details["document"]
    assert records.claim(theirs["record"]) == (2, taken.version)
    assert home.yield_to(theirs, "its deputy holds a newer claim") is True
    back = load(home_store)
    assert (back.manager, back.manager_epoch, back.home) == ("dep", 2, "home")
    assert home.yield_to(records.to_document(r), "stale") is False  # an older copy never wins


@pytest.mark.parametrize("spoil, why", [
    (lambda d: d.pop("attempts"), "expected"),
    (lambda d: d["record"].update(manager=""), "'manager'"),
    (lambda d: d["record"].update(manager_epoch="2"), "'manager_epoch'"),
    (lambda d: d["record"].update(inputs=[1, 2]), "'inputs'"),
    (lambda d: d["attempts"][0].update(index=7), "does not have"),
    (lambda d: d["attempts"][0].update(job_id="other.1"), "does not have"),
])
def test_a_pushed_document_that_is_not_a_record_is_refused_with_the_reason(spoil, why) -> None:
    from pocketgrid.errors import BadRequest
    from peer.replicas import check_document

    r = record(2)
    for a in r.attempts:
        a.job_id = r.id
    doc = records.to_document(r)
    check_document(doc)  # the real thing passes
    spoil(doc)
    with pytest.raises(BadRequest) as refused:
        check_document(doc)
    assert why in refused.value.message


def test_the_new_manager_asks_each_site_it_was_sending_to_and_adopts_what_it_made(tmp_path) -> None:
    """peer/replicas.py ``take_over``: one question per site (origin keys with the old manager's name), then
    the pure takeover with the answers.  The network is a recorded session: what is asked is asserted."""
    from peer.digests import DigestCache
    from peer.publishing import PublishingArea
    from peer.replicas import Replicas

    class Site:
        def __init__(self, made: dict[str, str]) -> None:
            self.made, self.asked = made, []

        def post(self, url: str, json: dict, timeout: float):  # noqa: A002 - requests' name
            self.asked.append((url, json))
            answer = {"pieces": {}, "missing": [], "found": {k: v for k, v in self.made.items() if k in json["origins"]}}
            return type("R", (), {"ok": True, "json": lambda self: answer})()

    class Members:
        def url_of(self, name: str) -> str | None:
            return {"site-x": "https://x", "site-y": "https://y"}.get(name)

    st = store(tmp_path)
    site = Site({"kx": "site-x.p9"})
    dep = Replicas(name="dep", url="https://dep", store=st, membership=Members(), http=site,  # type: ignore[arg-type]
                   records_root=tmp_path / "records", publishing=PublishingArea(tmp_path / "pub"),
                   digests=DigestCache(st.db), limits=LIMITS)
    r = record(2)
    a0, a1 = sorted(r.attempts, key=lambda a: a.index)
    at(a0, "site-x", "dispatching", piece=None).piece_key = "kx"
    at(a1, "site-y", "dispatching", piece=None).piece_key = "ky"
    with st.session() as s:
        s.add(r)
    dep.take_over("home", ["home.1"], "its manager home did not answer for 3 s")
    assert sorted(site.asked, key=lambda q: q[0]) == [
        ("https://x/api/v1/peer/pieces/status", {"pieces": {}, "origins": {"kx": "home"}}),
        ("https://y/api/v1/peer/pieces/status", {"pieces": {}, "origins": {"ky": "home"}})]
    taken = {a.index: a for a in load(st).attempts if a.number == 1}
    assert (taken[0].state, taken[0].piece) == ("idle", "site-x.p9")
    assert taken[1].state == "lost"
