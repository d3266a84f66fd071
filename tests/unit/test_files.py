"""Atomic writes: a file or folder is the old one or the new one, never half of one, and no temporary is left."""

import pytest

from decomp.files import staged_folder, write_atomically


def test_write_atomically_replaces_text_and_bytes_and_leaves_nothing_else(tmp_path):
    path = tmp_path / "sub" / "a.json"
    assert write_atomically(path, "old") == path and path.read_text() == "old"
    write_atomically(path, b"\x00new")
    assert path.read_bytes() == b"\x00new"
    assert [p.name for p in path.parent.iterdir()] == ["a.json"]


def test_staged_folder_swaps_in_on_success_and_keeps_the_old_folder_on_error(tmp_path):
    out = tmp_path / "out"
    with staged_folder(out) as staging:
        (staging / "one.txt").write_text("1")
        assert not out.exists()
    assert [p.name for p in out.iterdir()] == ["one.txt"]
    with pytest.raises(RuntimeError), staged_folder(out) as staging:
        (staging / "two.txt").write_text("2")
        raise RuntimeError("crash while writing")
    assert [p.name for p in out.iterdir()] == ["one.txt"]
    with staged_folder(out) as staging:
        (staging / "two.txt").write_text("2")
    assert [p.name for p in out.iterdir()] == ["two.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging or old folder left behind
