"""The publishing area refuses every traversal form and searches as a person expects."""
from __future__ import annotations

import os

import pytest

from peer.publishing import PublishingArea, check_name
from pocketgrid.errors import BadRequest, NotFound


@pytest.fixture
def area(tmp_path):
    root = tmp_path / "publish"
    (root / "runs" / "2004").mkdir(parents=True)
    (root / "runs" / "2004" / "a.dat").write_text("energy 12\ncalibration ok\n")
    (root / "runs" / "b.dat").write_text("energy 7\n")
    (root / "notes.txt").write_text("Calibration pending\n")
    (root / "bin.raw").write_bytes(b"\x00\x01calibration")
    (tmp_path / "secret.txt").write_text("top secret")
    os.symlink(tmp_path / "secret.txt", root / "escape.txt")
    os.symlink(root / "notes.txt", root / "inside-link.txt")
    return PublishingArea(root)


@pytest.mark.parametrize("bad", ["../secret.txt", "runs/../../secret.txt", "/etc/passwd", "a\\..\\b", "x\x00y"])
def test_traversal_refused(area, bad):
    with pytest.raises(BadRequest):
        area.resolve(bad)


def test_symlink_leaving_area_refused_but_inside_link_allowed(area):
    with pytest.raises(BadRequest, match="leaves the publishing area"):
        area.file("escape.txt")
    assert area.file("inside-link.txt").name == "notes.txt"


def test_listing_hides_links_that_leave(area):
    names = [e.path for e in area.list("")]
    assert "escape.txt" not in names and "runs" in names and "notes.txt" in names


def test_missing_file_is_404(area):
    with pytest.raises(NotFound):
        area.file("nope.txt")


@pytest.mark.parametrize("path", ["\u0301" * 200, "runs/" + "e" * 256, "a/" * 2100])
def test_names_past_the_file_systems_limits_are_a_400_not_an_error(area, path):
    # Schemathesis found it: a 400-byte name made every lookup raise ENAMETOOLONG (a 500).
    with pytest.raises(BadRequest, match="255 bytes"):
        area.resolve(path)
    with pytest.raises(BadRequest):
        area.list(path)


def test_glob_matches_names_at_any_depth_without_slash(area):
    assert sorted(e.path for e in area.glob("*.dat")) == ["runs/2004/a.dat", "runs/b.dat"]
    assert [e.path for e in area.glob("runs/*.dat")] == ["runs/b.dat"]
    assert [e.path for e in area.glob("runs/**/*.dat")] == ["runs/2004/a.dat", "runs/b.dat"]
    assert "escape.txt" not in [e.path for e in area.glob("*.txt")]


def test_grep_finds_lines_skips_binary_and_respects_limits(area):
    res = area.grep("calibration", ignore_case=True, max_file_bytes=1 << 20, max_matches=10)
    assert {(m["path"], m["line"]) for m in res["matches"]} == {("runs/2004/a.dat", 2), ("notes.txt", 1), ("inside-link.txt", 1)}
    assert "bin.raw" in res["skipped"]
    res = area.grep("e", max_file_bytes=1 << 20, max_matches=1)
    assert res["truncated"] and len(res["matches"]) == 1


def test_grep_bad_regex_is_a_clear_400(area):
    with pytest.raises(BadRequest, match="regular expression"):
        area.grep("(", regex=True, max_file_bytes=100, max_matches=1)


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "a\\b", "x\ny", "x" * 256, "\u00e9" * 128])
def test_check_name_refuses(name):
    with pytest.raises(BadRequest):
        check_name(name)


def test_digests(area):
    p = area.file("notes.txt")
    assert len(area.digest(p, "md5")) == 32 and len(area.digest(p, "sha256")) == 64
