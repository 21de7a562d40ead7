import json
import logging

from pocketgrid.logging_setup import configure_logging


def test_json_lines_to_a_file_that_rotates_at_the_configured_size(tmp_path):
    f = tmp_path / "peer.log"
    handler = configure_logging("INFO", "json", str(f), max_bytes=2000, backups=2, name="site-a")
    try:
        log = logging.getLogger("pocketgrid.test")
        for i in range(100):
            log.info("line %d", i, extra={"request_id": "abc123"})
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            log.exception("failed")
        logging.getLogger("gunicorn.error").warning("from gunicorn")
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    assert (tmp_path / "peer.log.1").exists() and (tmp_path / "peer.log.2").exists()
    assert not (tmp_path / "peer.log.3").exists()
    assert f.stat().st_size <= 2000
    records = [json.loads(line) for p in tmp_path.glob("peer.log*") for line in p.read_text().splitlines()]
    assert all(r["peer"] == "site-a" for r in records)
    assert any(r.get("request_id") == "abc123" for r in records)
    assert any("RuntimeError: boom" in r.get("exception", "") for r in records)
    assert any(r["logger"] == "gunicorn.error" for r in records)


def test_gunicorn_logconfig_dict_keeps_gunicorns_messages_in_the_same_file(tmp_path):
    import logging.config

    from gunicorn.glogging import CONFIG_DEFAULTS

    from pocketgrid.logging_setup import gunicorn_logconfig_dict

    f = tmp_path / "peer.log"
    handler = configure_logging("INFO", "json", str(f), name="site-a")
    try:
        config = dict(CONFIG_DEFAULTS)
        config.update(gunicorn_logconfig_dict("INFO"))  # what gunicorn's glogging does with logconfig_dict
        logging.config.dictConfig(config)
        logging.getLogger("gunicorn.error").info("Booting worker")
        logging.getLogger("peer.app").info("app line")
    finally:
        for h in list(logging.getLogger().handlers):
            logging.getLogger().removeHandler(h)
        handler.close()
    records = [json.loads(line) for line in f.read_text().splitlines()]
    assert [r["logger"] for r in records] == ["gunicorn.error", "peer.app"]


def test_gunicorn_access_lines_never_reach_the_log(tmp_path):
    """gunicorn's access line has the raw query string (a pairing code, a token): the peer writes its own."""
    import logging.config

    from gunicorn.glogging import CONFIG_DEFAULTS

    from pocketgrid.logging_setup import gunicorn_logconfig_dict

    f = tmp_path / "peer.log"
    handler = configure_logging("INFO", "text", str(f), name="site-a")
    try:
        config = dict(CONFIG_DEFAULTS)
        config.update(gunicorn_logconfig_dict("INFO"))
        logging.config.dictConfig(config)
        logging.getLogger("gunicorn.access").info('"GET /healthz?code=XYZ HTTP/1.1" 200')
        logging.getLogger("pocketgrid.access").info('"GET /healthz?code=[redacted]" 200')
    finally:
        for h in list(logging.getLogger().handlers):
            logging.getLogger().removeHandler(h)
        handler.close()
    text = f.read_text()
    assert "XYZ" not in text and "code=[redacted]" in text


def test_the_request_id_of_the_current_request_is_on_every_line(tmp_path):
    from pocketgrid.logging_setup import request_id_var

    f = tmp_path / "peer.log"
    handler = configure_logging("INFO", "json", str(f), name="site-a")
    try:
        token = request_id_var.set("req-42")
        logging.getLogger("peer.jobs").info("inside the request")
        request_id_var.reset(token)
        logging.getLogger("peer.jobs").info("outside")
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    records = [json.loads(line) for line in f.read_text().splitlines()]
    assert [r.get("request_id") for r in records] == ["req-42", None]
