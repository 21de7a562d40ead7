"""Range answers for output files (peer/downloads.py) through Werkzeug's conditional send_file."""
from __future__ import annotations

from flask import Flask

from peer.downloads import send_ranged


def _app(path):
    app = Flask("t")

    @app.get("/f")
    def f():
        return send_ranged(path)

    return app.test_client()


def test_the_tail_of_a_file_shorter_than_the_tail_asked_for_is_the_whole_file(tmp_path):
    path = tmp_path / "out.txt"
    path.write_bytes(b"34 bytes of a freshly started job\n")
    r = _app(path).get("/f", headers={"Range": "bytes=-8192"})
    assert r.status_code == 206 and r.data == path.read_bytes()
    assert r.headers["Content-Range"] == f"bytes 0-{len(r.data) - 1}/{len(r.data)}"


def test_a_suffix_range_inside_the_file_is_its_tail_and_bad_ranges_stay_416(tmp_path):
    path = tmp_path / "out.txt"
    path.write_bytes(bytes(range(256)) * 40)
    client = _app(path)
    r = client.get("/f", headers={"Range": "bytes=-100"})
    assert r.status_code == 206 and r.data == path.read_bytes()[-100:]
    assert client.get("/f", headers={"Range": "bytes=20000-"}).status_code == 416
