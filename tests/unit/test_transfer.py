"""Resumable verified downloads against a real HTTP server that drops connections."""
from __future__ import annotations

import hashlib
import os
import threading

import pytest
import requests
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from pocketgrid.transfer import DownloadFailed, IntegrityError, download

DATA = os.urandom(3 * 1024 * 1024 + 123)
SHA = hashlib.sha256(DATA).hexdigest()


class FlakyServer:
    """Serves DATA with Range support; can cut the body after N bytes."""

    def __init__(self) -> None:
        self.cut_after: int | None = None
        self.sent = 0
        self.requests: list[str | None] = []
        self.etag = "v1"
        self.server = make_server("127.0.0.1", 0, self.app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}/f"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def app(self, environ, start_response):
        req = Request(environ)
        self.requests.append(req.headers.get("Range"))
        resp = Response(DATA, mimetype="application/octet-stream")
        resp.set_etag(self.etag)
        resp.make_conditional(req, accept_ranges=True, complete_length=len(DATA))
        body = resp.get_data() if resp.status_code in (200, 206) else b""
        cut = self.cut_after

        def stream():
            step = 64 * 1024
            for i in range(0, len(body), step):
                piece = body[i:i + step]
                if cut is not None and self.sent + len(piece) > cut:
                    self.cut_after = None  # only once
                    raise ConnectionAbortedError("simulated drop")
                self.sent += len(piece)
                yield piece

        return Response(stream(), status=resp.status_code, headers=resp.headers)(environ, start_response)

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def server():
    s = FlakyServer()
    yield s
    s.close()


def test_plain_download_verifies(server, tmp_path):
    res = download(requests.Session(), server.url, tmp_path / "out", expected_sha256=SHA, expected_size=len(DATA))
    assert res.sha256 == SHA and (tmp_path / "out").read_bytes() == DATA
    assert not (tmp_path / "out.part").exists() and not (tmp_path / "out.part.json").exists()


def test_dropped_connection_resumes_from_last_checkpoint(server, tmp_path):
    server.cut_after = 1024 * 1024 + 5000
    chunk = 256 * 1024
    res = download(requests.Session(), server.url, tmp_path / "out", expected_sha256=SHA, chunk_bytes=chunk)
    assert res.sha256 == SHA
    # The second request asked for a range starting at most one chunk before the drop.
    assert server.requests[0] is None
    start = int(server.requests[1].split("=")[1].rstrip("-"))
    assert 1024 * 1024 + 5000 - chunk <= start <= 1024 * 1024 + 5000
    assert res.transferred <= len(DATA) + chunk


def test_new_process_resumes_from_checkpoint_file(server, tmp_path):
    dest = tmp_path / "out"
    part = tmp_path / "out.part"
    # An earlier process got 2 MiB + a torn tail before it died.
    part.write_bytes(DATA[: 2 * 1024 * 1024] + b"garbage")
    (tmp_path / "out.part.json").write_text(
        '{"url": "%s", "offset": %d, "etag": "\\"v1\\""}' % (server.url, 2 * 1024 * 1024))
    res = download(requests.Session(), server.url, dest, expected_sha256=SHA)
    assert res.resumed_from == 2 * 1024 * 1024
    assert res.transferred == len(DATA) - 2 * 1024 * 1024
    assert dest.read_bytes() == DATA


def test_changed_file_restarts_from_zero(server, tmp_path):
    (tmp_path / "out.part").write_bytes(DATA[:1000])
    (tmp_path / "out.part.json").write_text('{"url": "%s", "offset": 1000, "etag": "\\"old\\""}' % server.url)
    res = download(requests.Session(), server.url, tmp_path / "out", expected_sha256=SHA)
    assert res.sha256 == SHA and res.transferred == len(DATA)


def test_wrong_digest_discards_partial(server, tmp_path):
    with pytest.raises(IntegrityError):
        download(requests.Session(), server.url, tmp_path / "out", expected_sha256="0" * 64)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.part").exists()


def test_server_refusal_is_not_retried(tmp_path):
    s = make_server("127.0.0.1", 0, lambda e, sr: Response('{"error": "no such job"}', 404)(e, sr), threaded=True)
    threading.Thread(target=s.serve_forever, daemon=True).start()
    try:
        with pytest.raises(DownloadFailed, match="no such job") as info:
            download(requests.Session(), f"http://127.0.0.1:{s.server_port}/x", tmp_path / "o")
        assert info.value.status == 404
    finally:
        s.shutdown()


def test_a_link_that_keeps_dropping_but_makes_progress_never_gives_up(server, tmp_path):
    """A phone link that resets every ~200 KB: far more drops than the stall limit, yet it completes."""
    from tests.cutting_proxy import CuttingProxy

    port = int(server.url.rsplit(":", 1)[1].split("/")[0])
    with CuttingProxy("127.0.0.1", port, cut_every_bytes=200 * 1024) as proxy:
        url = f"{proxy.url_for('http')}/f"
        res = download(requests.Session(), url, tmp_path / "out", expected_sha256=SHA, chunk_bytes=64 * 1024,
                       max_stalls=3)
        assert proxy.cuts > 3 * 3  # many more drops than the limit of stalls in a row
    assert res.sha256 == SHA and (tmp_path / "out").read_bytes() == DATA


def test_a_dead_link_gives_up_and_says_a_rerun_resumes(server, tmp_path):
    from tests.cutting_proxy import CuttingProxy

    port = int(server.url.rsplit(":", 1)[1].split("/")[0])
    with CuttingProxy("127.0.0.1", port, cut_every_bytes=300 * 1024) as proxy:
        url = f"{proxy.url_for('http')}/f"
        proxy.set_cut(300 * 1024)

        def first_drop_kills_the_link(done: int, _total: int | None) -> None:
            if done >= 256 * 1024:
                proxy.set_cut(1)  # from now on no response byte gets through

        with pytest.raises(DownloadFailed, match="running the same command again resumes from byte") as info:
            download(requests.Session(), url, tmp_path / "out", expected_sha256=SHA, chunk_bytes=64 * 1024,
                     max_stalls=2, progress=first_drop_kills_the_link)
        kept = (tmp_path / "out.part").stat().st_size
        assert kept >= 256 * 1024 and f"resumes from byte {kept}" in str(info.value)
        # The link is back: the same call resumes from the kept bytes and verifies.
        proxy.set_cut(None)
        res = download(requests.Session(), url, tmp_path / "out", expected_sha256=SHA, chunk_bytes=64 * 1024)
    assert res.resumed_from == kept and res.sha256 == SHA
