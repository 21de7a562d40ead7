"""A site's submit policy from its TOML file (peer/executors/policy.py), applied by the real parser."""
from __future__ import annotations

from pathlib import Path

import pytest

from peer.executors.policy import load_site_policy, policy_from_mapping
from peer.submit_description import Policy, SubmitDescriptionError, parse
from pocketgrid.config import PeerConfig


def test_no_file_means_the_defaults() -> None:
    assert load_site_policy("") == Policy()
    assert load_site_policy(None) == Policy()


def test_a_site_that_runs_container_jobs_and_refuses_priority(tmp_path: Path) -> None:
    f = tmp_path / "policy.toml"
    f.write_text('[policy]\nallow_universes = ["container"]\nforbid_keys = ["Priority"]\n'
                 'allowed_url_schemes = ["https"]\nmax_submit_bytes = 4096\n')
    policy = load_site_policy(f)
    parse("container_image = docker://debian\nqueue\n", policy)  # allowed here...
    with pytest.raises(SubmitDescriptionError, match="container"):
        parse("container_image = docker://debian\nqueue\n")  # ...not by default
    with pytest.raises(SubmitDescriptionError, match="priority is not allowed") as exc:
        parse("priority = 10\nqueue\n", policy)
    assert exc.value.key == "priority"
    with pytest.raises(SubmitDescriptionError, match="http:// URLs are not allowed"):
        parse("transfer_input_files = http://example.org/x\nqueue\n", policy)
    assert policy.max_submit_bytes == 4096
    # Defaults the file did not mention still apply.
    with pytest.raises(SubmitDescriptionError, match="local universe is not allowed"):
        parse("universe = local\nqueue\n", policy)


def test_attributes_can_be_allowed_or_forbidden() -> None:
    policy = policy_from_mapping({"forbid_attributes": ["MaxWallTime"]})
    with pytest.raises(SubmitDescriptionError, match="MaxWallTime"):
        parse("+MaxWallTime = 3600\nqueue\n", policy)
    parse("+MaxWallTime = 3600\nqueue\n")


@pytest.mark.parametrize("table, message", [
    ({"allow_universe": ["container"]}, "unknown key"),
    ({"forbid_keys": "priority"}, "list of names"),
    ({"max_submit_bytes": -1}, "positive number"),
    ({"expand_timeout_seconds": True}, "positive number"),
    ({"unmatchable": "ignore"}, "'warn', 'refuse'"),
])
def test_mistakes_in_the_file_are_errors(table: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        policy_from_mapping(table)


def test_the_peer_configuration_names_the_file(tmp_path: Path) -> None:
    config = PeerConfig.load(environ={"POCKETGRID_SUBMIT_POLICY": str(tmp_path / "p.toml")})
    assert config.submit_policy == str(tmp_path / "p.toml")


def test_unmatchable_jobs_are_warned_about_by_default_and_refused_on_request() -> None:
    assert Policy().unmatchable == "warn" and policy_from_mapping({}).unmatchable == "warn"
    assert policy_from_mapping({"unmatchable": "refuse"}).unmatchable == "refuse"
