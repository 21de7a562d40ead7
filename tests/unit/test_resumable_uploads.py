"""The tus upload store (peer/resumable_uploads.py) on a real SQLite database and file system, and the
client's metadata encoding against the server's parser."""
from __future__ import annotations

import hashlib
import io
import threading
import time

import pytest

from mobile_client.upload import encode_metadata
from peer.db import Database
from peer.digests import DigestCache
from peer.models import Base, ResumableUpload
from peer.publishing import PublishingArea
from peer.resumable_uploads import (ChecksumMismatch, Gone, Locked, ResumableUploads, check_upload_name,
                                    parse_metadata)
from peer.uploads import upload_dir
from pocketgrid.errors import BadRequest, Conflict, NotFound, TooLarge, TooManyRequests

ALICE, BOB = "CN=Alice", "CN=Bob"


@pytest.fixture()
def store(tmp_path):
    db = Database(f"sqlite:///{tmp_path / 'peer.db'}")
    db.create_all(Base.metadata)
    publishing = PublishingArea(tmp_path / "publish")
    s = ResumableUploads(db, publishing, DigestCache(db), tmp_path / "incoming", max_upload_bytes=1_000_000,
                         expiry_seconds=3600)
    yield s
    db.dispose()


def meta(name: str, data: bytes) -> str:
    return encode_metadata({"filename": name, "sha256": hashlib.sha256(data).hexdigest()})


class CutStream(io.BytesIO):
    """A request body whose connection drops after ``cut`` bytes (the read raises, as a socket does)."""

    def __init__(self, data: bytes, cut: int) -> None:
        super().__init__(data[:cut])

    def read(self, n: int = -1) -> bytes:
        data = super().read(n)
        if not data:
            raise ConnectionResetError("link dropped")
        return data


# ---- metadata ----------------------------------------------------------------------------------

def test_metadata_round_trip_and_the_grammar():
    header = encode_metadata({"filename": "ünï cødé.txt", "sha256": "ab" * 32, "empty": ""})
    assert parse_metadata(header) == {"filename": "ünï cødé.txt", "sha256": "ab" * 32, "empty": ""}
    assert parse_metadata("") == {}
    assert parse_metadata("flag,filename YS50eHQ=") == {"flag": "", "filename": "a.txt"}  # a key alone is allowed
    assert parse_metadata(" filename YS50eHQ= , x eA== ") == {"filename": "a.txt", "x": "x"}


@pytest.mark.parametrize("header, why", [
    ("filename YS50eHQ=,filename YS50eHQ=", "twice"),
    ("filename YS50eHQ", "base64"),
    ("filename !!!!", "base64"),
    ("filename a b", "pair"),
    (",filename YS50eHQ=", "pair"),
    ("fïle YS50eHQ=", "key"),
    ("bin /w==", "UTF-8"),  # base64 of a byte that is not UTF-8
])
def test_bad_metadata_says_what_is_wrong(header, why):
    with pytest.raises(BadRequest) as err:
        parse_metadata(header)
    assert why in err.value.message


def test_upload_names_are_checked_like_the_plain_upload():
    assert check_upload_name("a.txt") == "a.txt"
    assert check_upload_name("runs/7/a.txt") == "runs/7/a.txt"
    for bad in ("", ".", "..", "../a", "a/../../b", "/abs", "a\\b", "a\x00b", "x" * 300):
        with pytest.raises(BadRequest):
            check_upload_name(bad)


# ---- the store ---------------------------------------------------------------------------------

def test_append_in_parts_then_publish(store):
    data = bytes(range(256)) * 1000
    info = store.create(ALICE, len(data), meta("d.bin", data))
    assert (store.incoming / f"{info.id}.part").exists()
    info = store.append(ALICE, info.id, 0, io.BytesIO(data[:100_000]), 100_000, max_body_bytes=200_000)
    assert info.offset == 100_000 and not info.complete and not info.completed_now
    info = store.append(ALICE, info.id, 100_000, io.BytesIO(data[100_000:]), len(data) - 100_000, max_body_bytes=200_000)
    assert info.complete and info.completed_now and info.path == f"{upload_dir(ALICE)}/d.bin"
    assert (store.publishing.root / info.path).read_bytes() == data
    assert not (store.incoming / f"{info.id}.part").exists()
    # The client lost the last answer and asks again: the upload is complete, nothing changes.
    again = store.get(ALICE, info.id, settle=True)
    assert again.complete and not again.completed_now and again.offset == len(data)
    with pytest.raises(Conflict):
        store.append(ALICE, info.id, 0, io.BytesIO(b"x"), 1, max_body_bytes=200_000)


def test_a_body_cut_short_keeps_what_arrived(store):
    data = b"q" * 50_000
    info = store.create(ALICE, len(data), meta("cut.bin", data))
    with pytest.raises(ConnectionResetError):
        store.append(ALICE, info.id, 0, CutStream(data, 12_345), len(data), max_body_bytes=100_000)
    assert store.get(ALICE, info.id).offset == 12_345
    info = store.append(ALICE, info.id, 12_345, io.BytesIO(data[12_345:]), len(data) - 12_345, max_body_bytes=100_000)
    assert info.complete and (store.publishing.root / info.path).read_bytes() == data


def test_offsets_limits_and_owners(store):
    data = b"z" * 1000
    info = store.create(ALICE, len(data), meta("o.bin", data))
    with pytest.raises(Conflict) as err:
        store.append(ALICE, info.id, 10, io.BytesIO(data[:10]), 10, max_body_bytes=100_000)
    assert err.value.details["offset"] == 0
    with pytest.raises(TooLarge):
        store.append(ALICE, info.id, 0, io.BytesIO(data), 1000, max_body_bytes=999)
    with pytest.raises(TooLarge):
        store.append(ALICE, info.id, 0, io.BytesIO(data + b"!"), 1001, max_body_bytes=100_000)
    with pytest.raises(TooLarge):
        store.create(ALICE, 1_000_001, meta("big.bin", b""))
    for call in (lambda: store.get(BOB, info.id), lambda: store.terminate(BOB, info.id),
                 lambda: store.append(BOB, info.id, 0, io.BytesIO(data), 1000, max_body_bytes=100_000),
                 lambda: store.get(ALICE, "not-an-id")):
        with pytest.raises(NotFound):
            call()
    assert store.get(ALICE, info.id).offset == 0


def test_checksum_mismatch_discards_the_upload(store):
    info = store.create(ALICE, 3, meta("m.txt", b"abc"))
    with pytest.raises(ChecksumMismatch) as err:
        store.append(ALICE, info.id, 0, io.BytesIO(b"abd"), 3, max_body_bytes=100)
    assert err.value.status == 460 and err.value.details["expected_sha256"] == hashlib.sha256(b"abc").hexdigest()
    assert not (store.incoming / f"{info.id}.part").exists()
    assert not (store.publishing.root / upload_dir(ALICE) / "m.txt").exists()
    with pytest.raises(Gone):
        store.get(ALICE, info.id)


def test_an_empty_file_is_complete_at_creation(store):
    info = store.create(ALICE, 0, meta("empty.txt", b""))
    assert info.complete and info.completed_now and (store.publishing.root / info.path).read_bytes() == b""


def test_one_patch_at_a_time(store, monkeypatch):
    import peer.resumable_uploads as module

    monkeypatch.setattr(module, "LOCK_WAIT_SECONDS", 0.2)
    data = b"l" * 100
    info = store.create(ALICE, len(data), meta("l.bin", data))
    started, release = threading.Event(), threading.Event()

    class SlowStream(io.BytesIO):
        def read(self, n: int = -1) -> bytes:
            started.set()
            release.wait(10)
            return super().read(n)

    worker = threading.Thread(target=store.append, args=(ALICE, info.id, 0, SlowStream(data), 100),
                              kwargs={"max_body_bytes": 1000})
    worker.start()
    assert started.wait(10)
    with pytest.raises(Locked):
        store.append(ALICE, info.id, 0, io.BytesIO(data), 100, max_body_bytes=1000)
    release.set()
    worker.join(10)
    assert store.get(ALICE, info.id).complete


def test_expired_uploads_are_gone_then_swept(store):
    data = b"e" * 10
    info = store.create(ALICE, len(data), meta("e.bin", data))
    store.append(ALICE, info.id, 0, io.BytesIO(data[:5]), 5, max_body_bytes=100)
    with store.db.session() as s:  # a day later
        s.get(ResumableUpload, info.id).expires_at = time.time() - 1
    with pytest.raises(Gone):
        store.get(ALICE, info.id)
    (store.incoming / "stray.part").write_bytes(b"left from a crash")
    assert store.sweep() == 1
    assert list(store.incoming.iterdir()) == []
    with pytest.raises(NotFound):
        store.get(ALICE, info.id)


def test_fewer_bytes_on_disk_than_recorded_resumes_from_the_disk(store):
    """After a machine crash the file may hold less than the recorded offset: trust the file."""
    data = b"r" * 1000
    info = store.create(ALICE, len(data), meta("r.bin", data))
    store.append(ALICE, info.id, 0, io.BytesIO(data[:600]), 600, max_body_bytes=1000)
    with open(store.incoming / f"{info.id}.part", "r+b") as fh:
        fh.truncate(400)
    assert store.get(ALICE, info.id).offset == 400
    info = store.append(ALICE, info.id, 400, io.BytesIO(data[400:]), 600, max_body_bytes=1000)
    assert info.complete


def test_bytes_past_the_offset_are_overwritten(store):
    """A write that reached the file but not the database (a crash between) is sent again and replaced."""
    data = b"0123456789"
    info = store.create(ALICE, len(data), meta("w.bin", data))
    (store.incoming / f"{info.id}.part").write_bytes(b"XXXXXXX")  # unacknowledged garbage
    info = store.append(ALICE, info.id, 0, io.BytesIO(data), len(data), max_body_bytes=100)
    assert info.complete and (store.publishing.root / info.path).read_bytes() == data


def test_a_folder_or_file_in_the_way_is_409(store):
    mine = store.publishing.root / upload_dir(ALICE)
    (mine / "taken").mkdir(parents=True)
    (mine / "plain.txt").write_text("x")
    for name in ("taken", "plain.txt/inner.txt"):
        with pytest.raises(Conflict):
            store.create(ALICE, 1, meta(name, b"1"))
    # The area changes while the upload runs: it fails with the reason, nothing is half-published.
    info = store.create(ALICE, 1, meta("later", b"1"))
    (mine / "later").mkdir()
    with pytest.raises(Conflict):
        store.append(ALICE, info.id, 0, io.BytesIO(b"1"), 1, max_body_bytes=10)
    with pytest.raises(Gone) as err:
        store.get(ALICE, info.id)
    assert "folder" in err.value.message and (mine / "later").is_dir()


def test_unfinished_uploads_per_user_are_bounded(store, monkeypatch):
    import peer.resumable_uploads as module

    monkeypatch.setattr(module, "MAX_INCOMPLETE_PER_USER", 2)
    first = store.create(ALICE, 5, meta("1.bin", b"11111"))
    store.create(ALICE, 5, meta("2.bin", b"22222"))
    with pytest.raises(TooManyRequests) as err:
        store.create(ALICE, 5, meta("3.bin", b"33333"))
    assert "unfinished uploads" in err.value.message
    store.create(BOB, 5, meta("b.bin", b"bbbbb"))  # others are not affected
    store.append(ALICE, first.id, 0, io.BytesIO(b"11111"), 5, max_body_bytes=10)  # finishing one frees a place
    store.create(ALICE, 5, meta("3.bin", b"33333"))


def test_disk_promised_to_unfinished_uploads_is_not_promised_twice(store, monkeypatch):
    import collections

    import peer.resumable_uploads as module

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(module.shutil, "disk_usage", lambda path: usage(10_000, 0, 10_000))
    store.create(ALICE, 6_000, meta("a.bin", b"a" * 6_000))
    with pytest.raises(module.InsufficientStorage) as err:
        store.create(BOB, 6_000, meta("b.bin", b"b" * 6_000))
    assert err.value.status == 507 and "4000" in err.value.message
