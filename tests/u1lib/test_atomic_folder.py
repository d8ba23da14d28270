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


def test_what_a_killed_writer_left_is_removed_and_a_live_writers_folder_is_not(tmp_path):
    import fcntl
    import os
    import time

    target = tmp_path / "cache"
    old = time.time() - 3600
    killed, replaced = tmp_path / ".cache.k1ll3d.tmp", tmp_path / ".cache.k1ll3d.tmp.old"
    live, fresh = tmp_path / ".cache.l1v3.tmp", tmp_path / ".cache.fr3sh.tmp"
    for folder in (killed, replaced, live, fresh):
        folder.mkdir()
        (folder / "shard-00000.safetensors").write_bytes(b"half")
    for folder in (killed, replaced, live):
        os.utime(folder, (old, old))
    (tmp_path / ".other.k1ll3d.tmp").mkdir()  # another output's: not this writer's to judge
    os.utime(tmp_path / ".other.k1ll3d.tmp", (old, old))
    holder = os.open(live, os.O_RDONLY)
    fcntl.flock(holder, fcntl.LOCK_EX)  # as a running writer holds its folder
    try:
        with atomic_folder(target) as tmp:
            (tmp / "manifest.parquet").write_bytes(b"new")
    finally:
        os.close(holder)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == [".cache.fr3sh.tmp", ".cache.l1v3.tmp", ".other.k1ll3d.tmp", "cache"]
    assert (live / "shard-00000.safetensors").read_bytes() == b"half"


def test_a_writer_holds_its_own_temporary_folder_for_as_long_as_it_writes(tmp_path):
    import os
    import time

    target = tmp_path / "samples"
    with atomic_folder(target) as first:
        (first / "a_seed0.png").write_bytes(b"first")
        old = time.time() - 3600
        os.utime(first, (old, old))  # as a long build's folder looks to a second writer
        with atomic_folder(tmp_path / "samples") as second:
            (second / "b_seed0.png").write_bytes(b"second")
        assert (first / "a_seed0.png").read_bytes() == b"first"
    assert sorted(p.name for p in target.iterdir()) == ["a_seed0.png"]


def test_a_half_written_file_of_a_killed_writer_is_removed_by_the_next_write(tmp_path):
    import os
    import time

    from u1lib.io import write_bytes

    killed = tmp_path / ".train.parquet.k1ll3d.tmp"
    killed.write_bytes(b"half a parquet")
    old = time.time() - 3600
    os.utime(killed, (old, old))
    write_bytes(tmp_path / "train.parquet", b"whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.parquet"]
