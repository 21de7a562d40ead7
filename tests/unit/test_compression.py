"""peer/compression.py without a server: which answers are gzipped, and how If-None-Match is read."""
from __future__ import annotations

import gzip
import json

import pytest
from flask import Flask, Response, jsonify, send_file

from peer.compression import MIN_BYTES, install, strong_tag


@pytest.mark.parametrize("header, expected", [
    ('W/"12"', '"12"'),  # a gzipped answer's tag, sent back
    ('"12-h"', '"12-h"'),
    ('W/"1", W/"2"', 'W/"1", W/"2"'),  # a list: as it came (it matches no single tag)
    ("*", "*"),
    ('""', '""'),
    ('W/"a"b"', 'W/"a"b"'),
    (None, None),
])
def test_if_none_match_is_read_as_one_strong_tag_or_left_as_it_came(header, expected):
    assert strong_tag(header) == expected


@pytest.fixture
def client(tmp_path):
    app = Flask(__name__)
    big = {"inputs": [{"index": i, "state": "completed", "site": "site-a"} for i in range(200)]}
    (tmp_path / "out.json").write_text(json.dumps(big))

    @app.get("/big")
    def big_json():
        return Response(json.dumps(big), mimetype="application/json", headers={"ETag": '"7"'})

    @app.get("/small")
    def small_json():
        return jsonify(ok=True)

    @app.get("/missing")
    def missing():
        return Response(json.dumps(big), status=404, mimetype="application/json")

    @app.get("/file")
    def a_file():
        return send_file(tmp_path / "out.json", mimetype="application/json")

    install(app)
    return app.test_client(), big


def test_a_large_json_answer_is_gzipped_for_a_client_that_accepts_it(client):
    c, big = client
    r = c.get("/big", headers={"Accept-Encoding": "gzip, deflate"})
    assert r.headers["Content-Encoding"] == "gzip" and r.headers["ETag"] == 'W/"7"'
    assert "Accept-Encoding" in r.headers["Vary"]
    assert json.loads(gzip.decompress(r.data)) == big and len(r.data) < len(json.dumps(big)) / 4
    plain = c.get("/big")  # no Accept-Encoding: as it is
    assert "Content-Encoding" not in plain.headers and plain.headers["ETag"] == '"7"' and plain.json == big
    assert "Content-Encoding" not in c.get("/big", headers={"Accept-Encoding": "gzip;q=0"}).headers


def test_small_answers_errors_and_files_are_left_alone(client):
    c, _ = client
    for path in ("/small", "/missing", "/file"):
        r = c.get(path, headers={"Accept-Encoding": "gzip"})
        assert "Content-Encoding" not in r.headers, path
    assert len(c.get("/small").data) < MIN_BYTES
