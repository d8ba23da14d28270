"""atomic_folder: a folder is replaced whole or not at all."""

from __future__ import annotations

import pytest

from u1lib.io import atomic_folder


def test_a_new_folder_replaces_the_old_one_whole(tmp_path):
    target = tmp_path / "figures"
    target.mkdir()
    (target / "old.png").write_bytes(b"old")
    with atomic_folder(target) as tmp:
        assert not (tmp / "old.png").exists()  # built from empty, beside the target
        (tmp / "new.png").write_bytes(b"new")
        assert (target / "old.png").read_bytes() == b"old"  # readers still see the old folder
    assert sorted(p.name for p in target.iterdir()) == ["new.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figures"]  # no temporary folder left


def test_a_failure_keeps_the_old_folder_and_leaves_nothing_behind(tmp_path):
    target = tmp_path / "figures"
    target.mkdir()
    (target / "old.png").write_bytes(b"old")
    with pytest.raises(OSError), atomic_folder(target) as tmp:
        (tmp / "half.png").write_bytes(b"half")
        raise OSError("No space left on device")
    assert sorted(p.name for p in target.iterdir()) == ["old.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figures"]


def test_a_missing_folder_is_created_with_its_parents(tmp_path):
    target = tmp_path / "a" / "b"
    with atomic_folder(target) as tmp:
        (tmp / "x").write_text("1")
    assert (target / "x").read_text() == "1"


def test_a_linked_folder_is_replaced_and_its_target_left_alone(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.png").write_bytes(b"keep")
    target = tmp_path / "figures"
    target.symlink_to(elsewhere)
    with atomic_folder(target) as tmp:
        (tmp / "new.png").write_bytes(b"new")
    assert not target.is_symlink() and sorted(p.name for p in target.iterdir()) == ["new.png"]
    assert (elsewhere / "keep.png").read_bytes() == b"keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere", "figures"]
