"""What runs when an answer is closed, the access log's query redaction and the request-ID check."""
from __future__ import annotations

import io

from flask import Flask, Response, send_file
from werkzeug.wsgi import FileWrapper

from peer.access_log import query_for_log
from peer.on_close import call_on_close
from peer.request_ids import accept


def _app(calls: list[str]) -> Flask:
    app = Flask("t")

    @app.get("/plain")
    def plain():
        r = Response(b"x")
        call_on_close(r, lambda: calls.append("plain"))
        return r

    @app.get("/file")
    def file():
        r = send_file(io.BytesIO(b"0123456789"), mimetype="application/octet-stream")
        assert r.direct_passthrough
        call_on_close(r, lambda: calls.append("file"))
        return r

    @app.get("/stream")
    def stream():
        r = Response((b"a" for _ in range(3)), direct_passthrough=True)
        call_on_close(r, lambda: calls.append("stream"))
        return r

    return app


def test_callbacks_run_for_plain_file_and_passthrough_answers():
    """Werkzeug's own call_on_close never runs for direct_passthrough answers; ours does, once."""
    calls: list[str] = []
    client = _app(calls).test_client()
    for path in ("/plain", "/file", "/stream"):
        r = client.get(path)
        assert r.status_code == 200
        r.close()
    assert calls == ["plain", "file", "stream"]


def test_a_file_wrapper_keeps_its_identity():
    """gunicorn sends a wsgi.file_wrapper with sendfile only if the iterable is still that object."""
    wrapper = FileWrapper(io.BytesIO(b"abc"))
    r = Response(wrapper, direct_passthrough=True)
    seen = []
    call_on_close(r, lambda: seen.append(1))
    assert r.response is wrapper
    wrapper.close()
    assert seen == [1]


def test_query_values_are_redacted_unless_known_harmless():
    assert query_for_log(b"") == ""
    assert query_for_log(b"wait=25&local=1") == "?wait=25&local=1"
    assert query_for_log(b"code=ABCD-EFGH&wait=1") == "?code=[redacted]&wait=1"
    assert query_for_log(b"token=eyJ.x.y") == "?token=[redacted]"
    assert query_for_log(b"path=a%20b/c.txt") == "?path=a%20b/c.txt"
    assert "secret" not in query_for_log(b"%0Aevil=secret")


def test_request_ids_are_taken_only_when_well_formed():
    assert accept("abc-123_x.y:z") == "abc-123_x.y:z"
    for bad in (None, "", "has space", 'quote"', "x" * 129, "-leading", "new\nline"):
        fresh = accept(bad)
        assert fresh != bad and len(fresh) == 16
