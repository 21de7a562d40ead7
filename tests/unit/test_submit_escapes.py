"""Submit files cannot reach outside the job or learn the site's layout (issue 10, section 1).

Every case goes through HTCondor's own parser (``htcondor2.Submit`` in the checker child):
outputs outside the proc's directory, URLs the site would fetch from its own or private network,
and macros that HTCondor expands from the site's configuration (``$(SPOOL)``) are refused with a
400-style message naming the key; the ordinary variants are still accepted.  No test needs the
network: public addresses are literals, and a named host's answer comes from a mocked
``socket.getaddrinfo``.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from peer.executors.policy import load_site_policy
from peer.submit_description import (
    Policy,
    SubmitDescriptionError,
    condor_submit_dict,
    local_proc_specs,
    parse,
)

PUBLIC_IP = "93.184.216.34"


def refused(text: str, policy: Policy | None = None) -> SubmitDescriptionError:
    with pytest.raises(SubmitDescriptionError) as info:
        parse(f"executable = prog\n{text}\nqueue\n", policy)
    return info.value


def accepted(text: str, policy: Policy | None = None) -> list[str]:
    return parse(f"executable = prog\n{text}\nqueue\n", policy, input_names=["data.txt"]).warnings


@pytest.fixture
def stage(tmp_path: Path) -> dict:
    """One staged proc directory with the executable, the input and an extra file."""
    d = tmp_path / "job" / "data.txt"
    d.mkdir(parents=True)
    for name in ("prog", "data.txt", "extra.dat"):
        (d / name).write_text("x\n")
    return {"root": tmp_path / "job", "dirs": [str(d)], "names": ["data.txt"]}


def fake_dns(answers: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """``socket.getaddrinfo`` answering ``answers`` (name -> address), NXDOMAIN for other names;
    returns the names looked up."""
    asked: list[str] = []

    def getaddrinfo(host, port, *args, **kwargs):
        asked.append(host)
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        family = socket.AF_INET6 if ":" in answers[host] else socket.AF_INET
        return [(family, socket.SOCK_STREAM, 6, "", (answers[host], 0))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return asked


# ---------------------------------------------------------------------------
# 1. Outputs stay in the proc's directory
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line, key, value",
    [
        ("transfer_output_files = /etc/passwd", "transfer_output_files", "/etc/passwd"),
        ("transfer_output_files = out.txt, ../other-job/out.txt", "transfer_output_files", "../other-job/out.txt"),
        ("transfer_output_files = sub/../../x", "transfer_output_files", "sub/../../x"),
        ("TransferOutputFiles = /var/lib/pocketgrid/state.db", "TransferOutputFiles", "/var/lib/pocketgrid/state.db"),
        ("transfer_checkpoint_files = ../ckpt", "transfer_checkpoint_files", "../ckpt"),
        ('transfer_output_remaps = "out.txt = /tmp/out.txt"', "transfer_output_remaps", "/tmp/out.txt"),
        ('transfer_output_remaps = "out.txt = ../out.txt"', "transfer_output_remaps", "../out.txt"),
    ],
)
def test_outputs_leaving_the_proc_directory_are_refused(line: str, key: str, value: str) -> None:
    e = refused(line)
    assert e.key == key
    assert str(e).startswith(f"{key}:") and value in str(e)


def test_outputs_through_a_macro_are_checked_after_htcondor_expands_it() -> None:
    e = refused("where = /etc\ntransfer_output_files = $(where)/shadow")
    assert e.key == "transfer_output_files" and "/etc/shadow" in str(e)


@pytest.mark.parametrize(
    "line",
    [
        "transfer_output_files = out.txt, sub/dir/file",
        'transfer_output_files = ""',  # HTCondor: no outputs at all
        "transfer_output_files = sub/../out.txt",  # stays inside
        'transfer_output_remaps = "out.txt = results/$(input).txt"',
    ],
)
def test_outputs_inside_the_proc_directory_are_accepted(line: str, stage: dict) -> None:
    assert accepted(line) == []
    parsed = parse(f"{line}\nqueue\n")
    (spec,) = local_proc_specs(parsed, executable_name="prog", input_names=stage["names"], proc_dirs=stage["dirs"])
    assert spec.iwd == stage["dirs"][0]


# ---------------------------------------------------------------------------
# 2. Inputs: local paths inside the proc directory, URLs only to public addresses
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line, key",
    [
        ("transfer_input_files = /etc/passwd", "transfer_input_files"),
        ("transfer_input_files = data.txt, ../../pki/hosts/peer.key", "transfer_input_files"),
        ("public_input_files = /etc/shadow", "public_input_files"),
    ],
)
def test_local_inputs_outside_the_proc_directory_are_refused(line: str, key: str) -> None:
    e = refused(line)
    assert e.key == key and "leaves the input's directory" in str(e)


PRIVATE_URLS = [
    ("http://127.0.0.1:8443/api/v1/admin/acl", "loopback"),
    ("http://127.1/x", "loopback"),  # short form the resolver reads as 127.0.0.1
    ("http://0x7f000001/x", "loopback"),
    ("http://2130706433/x", "loopback"),
    ("https://[::1]/x", "loopback"),
    ("https://[::ffff:10.0.0.1]/x", "private"),  # IPv4-mapped
    ("http://169.254.169.254/latest/meta-data/", "link-local"),  # cloud metadata
    ("https://[fe80::1]/x", "link-local"),
    ("https://10.1.2.3/x", "private"),
    ("https://172.16.0.1/x", "private"),
    ("https://192.168.1.1/x", "private"),
    ("https://[fd00::1]/x", "private"),  # ULA
    ("https://100.64.0.1/x", "not public"),  # shared address space
    ("http://0.0.0.0:8443/x", "unspecified"),
    (f"http://{PUBLIC_IP}@127.0.0.1/x", "loopback"),  # user info before the real host
    ("http://localhost:8443/x", "own host name"),
    ("http://LocalHost./x", "own host name"),
    ("http://app.localhost/x", "own host name"),
]


@pytest.mark.parametrize("url, why", PRIVATE_URLS)
def test_urls_to_the_site_or_private_addresses_are_refused(url: str, why: str) -> None:
    e = refused(f"transfer_input_files = data.txt, {url}")
    assert e.key == "transfer_input_files"
    assert str(e).startswith(f"transfer_input_files: {url}:") and why in str(e)


def test_the_peers_own_host_name_is_refused() -> None:
    e = refused(f"transfer_input_files = http://{socket.gethostname()}:8443/x")
    assert e.key == "transfer_input_files" and "this site's own host name" in str(e)


def test_a_name_resolving_to_a_private_address_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    asked = fake_dns({"intranet.example.com": "10.20.30.40"}, monkeypatch)
    e = refused("transfer_input_files = https://intranet.example.com/secret")
    assert e.key == "transfer_input_files"
    assert "intranet.example.com resolves to 10.20.30.40, a private address" in str(e)
    assert asked == ["intranet.example.com"]


def test_the_sites_own_names_from_the_policy_are_refused(tmp_path: Path) -> None:
    f = tmp_path / "policy.toml"
    f.write_text('[policy]\nsite_host_names = ["Grid.Example.Org"]\n')
    policy = load_site_policy(f, site_host_names=["peer1.example.net"])
    for host in ("grid.example.org", "peer1.example.net"):
        e = refused(f"transfer_input_files = https://{host}/x", policy)
        assert f"{host} is this site's own host name" in str(e)


def test_the_url_is_checked_again_when_handed_to_htcondor(stage: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_dns({"data.example.com": PUBLIC_IP}, monkeypatch)
    parsed = parse("transfer_input_files = https://data.example.com/d.tgz\nqueue\n")
    fake_dns({"data.example.com": "192.168.0.7"}, monkeypatch)  # the answer changed since the submit
    with pytest.raises(SubmitDescriptionError, match="resolves to 192.168.0.7") as info:
        condor_submit_dict(parsed, executable_path=os.path.join(stage["dirs"][0], "prog"), proc_dirs=stage["dirs"],
                           input_names=stage["names"], log_path=str(stage["root"] / "job.log"))
    assert info.value.key == "transfer_input_files"


def test_public_urls_and_local_inputs_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_dns({"data.example.com": "2606:4700::1111"}, monkeypatch)
    assert accepted(f"transfer_input_files = data.txt, https://{PUBLIC_IP}/x, https://data.example.com/d.tgz") == []
    assert accepted("transfer_input_files = data.txt") == []


def test_a_name_that_does_not_resolve_is_accepted_with_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_dns({}, monkeypatch)
    (w,) = accepted("transfer_input_files = https://nowhere.example.com/x")
    assert "nowhere.example.com" in w and "could not be resolved" in w


def test_a_site_that_allows_private_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "policy.toml"
    f.write_text("[policy]\nallow_private_urls = true\n")
    policy = load_site_policy(f)
    asked = fake_dns({"intranet.example.com": "10.20.30.40"}, monkeypatch)
    assert accepted("transfer_input_files = http://127.0.0.1/x, https://intranet.example.com/y", policy) == []
    assert asked == []  # nothing to check, nothing looked up
    # ...but local paths must still stay inside the proc's directory
    assert refused("transfer_input_files = /etc/passwd", policy).key == "transfer_input_files"
    with pytest.raises(ValueError, match="allow_private_urls must be true or false"):
        f.write_text('[policy]\nallow_private_urls = "yes"\n')
        load_site_policy(f)


# ---------------------------------------------------------------------------
# 3. The site's layout: configuration macros and pocketgrid's own paths
# ---------------------------------------------------------------------------


@pytest.fixture
def site_dir(own_condor_config: Path) -> str:
    """LOCAL_DIR of the HTCondor configuration the tests run with (SPOOL is under it)."""
    return str(own_condor_config.parent / "condor")


@pytest.mark.parametrize(
    "line, key",
    [
        ("arguments = --scratch $(SPOOL)/x", "arguments"),
        ('environment = "TMP=$(spool:/tmp)"', "environment"),  # any case, with a default
        ("arguments = $Fp(SPOOL)", "arguments"),  # a function of it
        ("arguments = $SUBSTR(SPOOL,1,3)", "arguments"),
        ("n = SPO\narguments = $($(n)OL)", "arguments"),  # a name HTCondor builds itself
        ('+Scratch = "$(SPOOL)"', "MY.Scratch"),  # a job attribute, visible in the job's ad
    ],
)
def test_site_configuration_macros_are_refused_naming_the_macro(line: str, key: str, site_dir: str) -> None:
    e = refused(line)
    assert e.key.lower() == key.lower()
    assert "$(SPOOL)" in str(e) and "site's HTCondor configuration" in str(e)
    assert site_dir not in str(e)  # the message does not tell the path either


@pytest.mark.parametrize("macro", ["LOCAL_DIR", "RELEASE_DIR", "EXECUTE", "LIBEXEC", "BIN", "SBIN", "LOCK"])
def test_configuration_names_the_submit_language_does_not_see_expand_to_nothing(
    macro: str, stage: dict, site_dir: str
) -> None:
    text = f"arguments = [$({macro})] $(input)\nqueue\n"
    parsed = parse(text, input_names=stage["names"])
    (w,) = parsed.warnings
    assert w.startswith(f"$({macro}) is a setting of the site's HTCondor configuration") and "nothing" in w
    (spec,) = local_proc_specs(parsed, executable_name="prog", input_names=stage["names"], proc_dirs=stage["dirs"])
    assert spec.arguments == ["[]", "data.txt"]
    submit, _ = condor_submit_dict(parsed, executable_path=os.path.join(stage["dirs"][0], "prog"),
                                   proc_dirs=stage["dirs"], input_names=stage["names"],
                                   log_path=str(stage["root"] / "job.log"))
    assert site_dir not in str(submit)


def test_a_macro_the_user_defines_and_the_platform_are_fine(stage: dict) -> None:
    text = "SPOOL = my-spool\narguments = $(SPOOL) $(Arch) $(OpSys) $(OpSysAndVer)\nqueue\n"
    parsed = parse(text)
    assert parsed.warnings == []
    (spec,) = local_proc_specs(parsed, executable_name="prog", input_names=stage["names"], proc_dirs=stage["dirs"])
    assert spec.arguments[0] == "my-spool" and len(spec.arguments) == 4


@pytest.mark.parametrize("ref", ["$(log)", "$(LOG)", "$(UserLog)", "$(executable)", "$Fp(log)", "$(transfer_input_files)"])
def test_pocketgrids_own_paths_are_not_given_to_the_job(ref: str) -> None:
    e = refused(f"arguments = {ref}")
    assert e.key == "arguments" and "set by pocketgrid" in str(e)
