from __future__ import annotations

import pytest

from broker.placement import JobRequest, PeerState, get_policy, min_coefficient
from pocketgrid.config import PeerConfig


def _peer(name, coeff, age=1.0):
    return PeerState(name=name, url=f"http://{name}", coefficient=coeff, report_age=age)


def test_min_coefficient_prefers_least_loaded_and_puts_stale_last():
    peers = [_peer("a", 0.9), _peer("b", 0.2), _peer("c", 0.1, age=999), PeerState("d", "http://d", None, None)]
    ranked = min_coefficient(peers, JobRequest(n_procs=1), 0.0)
    assert [r.name for r in ranked] == ["b", "a", "c", "d"]
    assert ranked[-1].score is None


def test_unknown_policy_is_a_clear_error():
    with pytest.raises(ValueError, match="min-coefficient"):
        get_policy("nope")


def test_config_layers(tmp_path):
    toml = tmp_path / "p.toml"
    toml.write_text('[peer]\nname = "from-toml"\nport = 9000\nlocal_slots = 2\n')
    cfg = PeerConfig.load(toml, environ={"POCKETGRID_PORT": "9100", "POCKETGRID_JOIN": "http://a,http://b"},
                          overrides={"local_slots": 4})
    assert (cfg.name, cfg.port, cfg.local_slots, cfg.join) == ("from-toml", 9100, 4, ["http://a", "http://b"])
    assert cfg.url == "https://127.0.0.1:9100"  # TLS unless insecure_http is set explicitly


def test_admin_dns_split_on_semicolons_and_tls_is_required(tmp_path):
    cfg = PeerConfig.load(None, environ={"POCKETGRID_ADMINS": "CN=A,O=x; CN=B,OU=cms,O=x"})
    assert cfg.admins == ["CN=A,O=x", "CN=B,OU=cms,O=x"]  # DNs contain commas
    with pytest.raises(ValueError, match="TLS is required"):
        cfg.resolve_tls()
    cfg.pki_dir = str(tmp_path)
    with pytest.raises(ValueError, match="no such file"):
        cfg.resolve_tls()
    dev = PeerConfig.load(None, environ={"POCKETGRID_INSECURE_HTTP": "true"})
    dev.resolve_tls()
    assert dev.url.startswith("http://")


def test_config_rejects_unknown_keys_and_bad_booleans(tmp_path):
    toml = tmp_path / "p.toml"
    toml.write_text("[peer]\nnmae = 'typo'\n")
    with pytest.raises(ValueError, match="nmae"):
        PeerConfig.load(toml, environ={})
    with pytest.raises(ValueError, match="agent"):
        PeerConfig.load(None, environ={"POCKETGRID_AGENT": "maybe"})
