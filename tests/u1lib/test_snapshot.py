import fnmatch
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import u1lib.snapshot
from u1lib.cli import main
from u1lib.io import read_json
from u1lib.snapshot import SnapshotError, require_verified, snapshot_dir, stamp_path, verify_snapshot
from u1lib.snapshot_hub import snapshot_hub
from u1lib.snapshot_record import snapshot_local, snapshot_tiny, write_manifest
from u1lib.tiny_config import tiny_config_dict

ROOT = Path(__file__).resolve().parents[2]
REVISION = "0123456789abcdef0123456789abcdef01234567"
OTHER_REVISION = "fedcba9876543210fedcba9876543210fedcba98"
CONFIG = json.dumps(tiny_config_dict(vocab_size=1024)).encode()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tree(folder: Path) -> dict[str, tuple]:
    """Every path under ``folder`` with its bytes and stat: equal before and after = nothing written."""
    return {
        str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None, p.lstat().st_mtime_ns, p.lstat().st_mode)
        for p in sorted(folder.rglob("*"))
    }


@pytest.fixture
def hashed(monkeypatch) -> list[str]:
    """The names of the files u1lib.snapshot reads to hash them, in order."""
    names = []
    real = u1lib.snapshot.sha256_file

    def counting(path, *args, **kwargs):
        names.append(Path(path).name)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(u1lib.snapshot, "sha256_file", counting)
    return names


# --- manifest ---------------------------------------------------------------------------------


@pytest.fixture
def folder(tmp_path) -> Path:
    snap = tmp_path / "snap"
    (snap / "b").mkdir(parents=True)
    (snap / "b" / "x.bin").write_bytes(b"\x00\x01\x02")
    (snap / "a.txt").write_bytes(b"hello")
    (snap / ".cache").mkdir()
    (snap / ".cache" / "meta").write_bytes(b"download bookkeeping")
    (snap / "modeling_neo_chat.py").write_bytes(b"# installed modeling code")
    return snap


def test_manifest_lists_sorted_files_with_sizes_and_hashes(folder, tmp_path):
    manifest = write_manifest(folder, tmp_path / "m.json", model="m", source="hub", repo_id="o/r", revision=REVISION)
    a_sha, b_sha = sha(b"hello"), sha(b"\x00\x01\x02")
    assert manifest["files"] == [
        {"path": "a.txt", "size": 5, "sha256": a_sha},
        {"path": "b/x.bin", "size": 3, "sha256": b_sha},
    ]
    assert manifest["manifest_hash"] == sha(f"a.txt\t{a_sha}\nb/x.bin\t{b_sha}\n".encode())
    assert [manifest[k] for k in ("model", "source", "repo_id", "revision")] == ["m", "hub", "o/r", REVISION]
    assert (manifest["snapshot_dir"], manifest["read_only"]) == ("snap", False)
    assert read_json(tmp_path / "m.json") == manifest
    assert verify_snapshot(folder, manifest) == []


def test_verify_names_each_changed_or_missing_file(folder, tmp_path, caplog):
    manifest = write_manifest(folder, tmp_path / "m.json", model="m", source="hub", repo_id="o/r", revision=REVISION)
    (folder / "a.txt").write_bytes(b"jello")  # same size, other content
    (folder / "b" / "x.bin").unlink()
    (folder / "new.bin").write_bytes(b"extra")
    with caplog.at_level(logging.WARNING):
        problems = verify_snapshot(folder, manifest)
    assert len(problems) == 2
    tampered = next(p for p in problems if "a.txt" in p)
    assert sha(b"jello") in tampered and sha(b"hello") in tampered
    assert any("x.bin" in p and "missing" in p for p in problems)
    assert "new.bin" in caplog.text  # extra files are only a warning


def test_verify_catches_a_size_change_and_an_edited_manifest(folder, tmp_path):
    manifest = write_manifest(folder, tmp_path / "m.json", model="m", source="hub", repo_id="o/r", revision=REVISION)
    (folder / "a.txt").write_bytes(b"hello!")
    edited = {**manifest, "manifest_hash": "0" * 64}
    problems = verify_snapshot(folder, edited)
    assert any("a.txt" in p and "size 6" in p for p in problems)
    assert any("manifest_hash" in p for p in problems)


def test_manifest_paths_may_not_leave_the_snapshot(folder):
    manifest = {"files": [{"path": "../outside", "size": 1, "sha256": "0" * 64}], "manifest_hash": ""}
    with pytest.raises(SnapshotError, match="outside"):
        verify_snapshot(folder, manifest)


# --- where a snapshot is ------------------------------------------------------------------------


def test_snapshot_dir_follows_a_moved_project_and_old_manifests_mean_snapshot(tmp_path, hashed):
    own = tmp_path / "a" / "models" / "m" / "snapshot"
    own.mkdir(parents=True)
    (own / "w.bin").write_bytes(b"weights")
    manifest = write_manifest(
        own, own.with_name("manifest.json"), model="m", source="hub", repo_id="o/r", revision=REVISION
    )
    assert manifest["snapshot_dir"] == "snapshot"
    shutil.copytree(tmp_path / "a", tmp_path / "b")  # copy2: sizes and mtimes kept, as with cp -a
    moved = tmp_path / "b" / "models" / "m" / "manifest.json"
    hashed.clear()
    assert require_verified(moved) == moved.with_name("snapshot")
    assert hashed == []  # the stamp moved along: nothing is read again
    legacy = {k: v for k, v in manifest.items() if k not in ("snapshot_dir", "read_only")}
    assert snapshot_dir(moved, legacy) == moved.with_name("snapshot")


def test_an_absolute_folder_is_recorded_as_given(folder, tmp_path):
    manifest = write_manifest(
        folder.resolve(), tmp_path / "elsewhere" / "m.json", model="m", source="local", repo_id=None, revision=None
    )
    assert manifest["snapshot_dir"] == str(folder.resolve())
    assert snapshot_dir(tmp_path / "elsewhere" / "m.json") == folder.resolve()


# --- the cheap check before weights are read ------------------------------------------------------


@pytest.fixture
def model_folder(tmp_path) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_bytes(CONFIG)
    (folder / "model.safetensors").write_bytes(b"weights-0123456789")
    (folder / "tokenizer.json").write_bytes(b"{}")
    return folder


@pytest.fixture
def recorded(model_folder, tmp_path) -> Path:
    manifest = tmp_path / "models" / "m" / "manifest.json"
    write_manifest(model_folder, manifest, model="m", source="hub", repo_id="o/r", revision=REVISION)
    return manifest


def flip_a_byte(path: Path, *, keep_mtime: bool) -> None:
    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    if keep_mtime:
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_require_verified_hashes_only_files_whose_size_or_mtime_changed(recorded, model_folder, hashed):
    assert require_verified(recorded) == model_folder
    assert hashed == []  # write_manifest stamped every file
    os.utime(model_folder / "tokenizer.json", ns=(1, 10**18))  # touched, same bytes
    assert require_verified(recorded) == model_folder
    assert hashed == ["tokenizer.json"]
    assert require_verified(recorded) == model_folder
    assert hashed == ["tokenizer.json"]  # the stamp now records the new mtime


def test_the_cheap_check_misses_a_flipped_byte_whose_mtime_was_put_back(recorded, model_folder):
    # The documented limit of a size + mtime check: same size, mtime restored -> trusted unread.
    flip_a_byte(model_folder / "model.safetensors", keep_mtime=True)
    assert require_verified(recorded) == model_folder
    assert any("model.safetensors" in p for p in verify_snapshot(model_folder, read_json(recorded)))


def test_a_flipped_byte_with_a_new_mtime_is_refused_naming_the_file_and_the_fix(recorded, model_folder):
    flip_a_byte(model_folder / "model.safetensors", keep_mtime=False)
    with pytest.raises(SnapshotError) as caught:
        require_verified(recorded)
    message = str(caught.value)
    assert f"{model_folder / 'model.safetensors'}: sha256" in message and str(recorded) in message
    assert "python -m u1lib snapshot --model m --source hub --repo-id o/r" in message


def test_a_changed_size_is_always_refused(recorded, model_folder):
    path = model_folder / "model.safetensors"
    stat = path.stat()
    path.write_bytes(path.read_bytes() + b"!")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(SnapshotError, match=r"model\.safetensors: size 19 bytes, manifest says 18"):
        require_verified(recorded)
    (model_folder / "tokenizer.json").unlink()
    with pytest.raises(SnapshotError, match=r"tokenizer\.json: missing"):
        require_verified(recorded)


def test_require_verified_names_a_missing_or_edited_manifest(recorded, tmp_path):
    with pytest.raises(SnapshotError, match="no such manifest"):
        require_verified(tmp_path / "nowhere.json")
    manifest = read_json(recorded)
    manifest["files"][0]["sha256"] = "0" * 64
    recorded.write_text(json.dumps(manifest))
    with pytest.raises(SnapshotError, match="manifest_hash does not match"):
        require_verified(recorded)


def test_a_damaged_stamp_costs_a_rehash_and_is_rewritten(recorded, model_folder, hashed):
    stamp_path(recorded).write_text("{not json")
    assert require_verified(recorded) == model_folder
    assert sorted(hashed) == ["config.json", "model.safetensors", "tokenizer.json"]
    assert set(read_json(stamp_path(recorded))["verified"]) == set(hashed)


def test_concurrent_checks_all_pass_and_leave_a_whole_stamp(recorded, model_folder):
    for path in model_folder.iterdir():
        os.utime(path, ns=(1, 10**18))  # every job finds every file changed and writes a stamp
    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(lambda _: require_verified(recorded), range(16))) == [model_folder] * 16
    stamp = read_json(stamp_path(recorded))
    assert stamp["manifest"] == read_json(recorded) and len(stamp["verified"]) == 3
    assert not list(recorded.parent.glob(".*.tmp"))  # no temporary file of a write left behind


# --- hub snapshots with a fake downloader -------------------------------------------------------


class FakeHub:
    """Serves fixed files; like huggingface_hub's local_dir mode it fetches only files not there yet."""

    def __init__(self, files: dict[str, bytes]):
        self.files = files
        self.calls = 0

    def __call__(self, repo_id, *, revision, local_dir, allow_patterns, ignore_patterns):
        self.calls += 1
        for name, data in self.files.items():
            if allow_patterns and not any(fnmatch.fnmatch(name, p) for p in allow_patterns):
                continue
            if ignore_patterns and any(fnmatch.fnmatch(name, p) for p in ignore_patterns):
                continue
            if not (Path(local_dir) / name).exists():
                (Path(local_dir) / name).write_bytes(data)


HUB_FILES = {
    "config.json": CONFIG,
    "model.safetensors": b"weights",
    "tokenizer.json": b"{}",
    "modeling_neo_chat.py": b"import os  # remote code",
}


@pytest.fixture
def hub() -> FakeHub:
    return FakeHub(dict(HUB_FILES))


def test_hub_downloads_once_then_only_verifies(hub, tmp_path):
    snap, manifest_path = tmp_path / "snap", tmp_path / "manifest.json"
    first = snapshot_hub("org/U1", REVISION, snap, manifest_path, downloader=hub)
    assert hub.calls == 1
    assert [f["path"] for f in first["files"]] == ["config.json", "model.safetensors", "tokenizer.json"]
    assert not (snap / "modeling_neo_chat.py").exists()  # remote code only through install_modeling
    assert [first[k] for k in ("source", "repo_id", "revision", "model")] == ["hub", "org/U1", REVISION, "U1"]
    second = snapshot_hub("org/U1", REVISION, snap, manifest_path, downloader=hub)
    assert hub.calls == 1 and second == first


def test_a_rerun_after_snakemake_deleted_the_manifest_verifies_instead_of_downloading(hub, tmp_path, hashed):
    snap, manifest_path = tmp_path / "snap", tmp_path / "manifest.json"
    first = snapshot_hub("org/U1", REVISION, snap, manifest_path, downloader=hub)
    manifest_path.unlink()  # what Snakemake does to an output before it reruns the rule
    hashed.clear()
    assert snapshot_hub("org/U1", REVISION, snap, manifest_path, downloader=hub) == first
    assert hub.calls == 1 and hashed == []  # recognised from the stamp, no file read
    assert read_json(manifest_path) == first
    manifest_path.unlink()
    (snap / "model.safetensors").write_bytes(b"poison!")
    assert snapshot_hub("org/U1", REVISION, snap, manifest_path, downloader=hub) == first
    assert hub.calls == 2 and (snap / "model.safetensors").read_bytes() == b"weights"


def test_hub_refetches_a_tampered_file(hub, tmp_path):
    snap, manifest_path = tmp_path / "snap", tmp_path / "manifest.json"
    first = snapshot_hub("org/U1", REVISION, snap, manifest_path, downloader=hub)
    (snap / "model.safetensors").write_bytes(b"poison!")
    again = snapshot_hub("org/U1", REVISION, snap, manifest_path, downloader=hub)
    assert hub.calls == 2
    assert (snap / "model.safetensors").read_bytes() == b"weights"
    assert again == first and verify_snapshot(snap, again) == []


def test_hub_fails_when_the_refetched_file_still_differs(hub, tmp_path):
    snap, manifest_path = tmp_path / "snap", tmp_path / "manifest.json"
    snapshot_hub("org/U1", REVISION, snap, manifest_path, downloader=hub)
    hub.files["model.safetensors"] = b"changed upstream"
    (snap / "model.safetensors").unlink()
    with pytest.raises(SnapshotError, match="model.safetensors"):
        snapshot_hub("org/U1", REVISION, snap, manifest_path, downloader=hub)


@pytest.mark.parametrize("manifest_deleted", [False, True])
def test_hub_switching_revision_drops_the_old_files(hub, tmp_path, manifest_deleted):
    snap, manifest_path = tmp_path / "snap", tmp_path / "manifest.json"
    snapshot_hub("org/U1", REVISION, snap, manifest_path, downloader=hub)
    if manifest_deleted:  # Snakemake reruns the rule because its params changed
        manifest_path.unlink()
    del hub.files["tokenizer.json"]
    hub.files["model.safetensors"] = b"newer weights"
    manifest = snapshot_hub("org/U1", OTHER_REVISION, snap, manifest_path, downloader=hub)
    assert hub.calls == 2 and manifest["revision"] == OTHER_REVISION
    assert [f["path"] for f in manifest["files"]] == ["config.json", "model.safetensors"]
    assert (snap / "model.safetensors").read_bytes() == b"newer weights"


@pytest.mark.parametrize("revision", ["main", "v1.0", REVISION[:12], REVISION.upper()])
def test_hub_refuses_a_revision_that_is_not_a_commit_sha(hub, tmp_path, revision):
    with pytest.raises(SnapshotError, match="40-hex commit sha"):
        snapshot_hub("org/U1", revision, tmp_path / "snap", tmp_path / "m.json", downloader=hub)
    assert hub.calls == 0


def test_hub_refuses_a_repo_that_is_not_sensenova_u1(tmp_path):
    fake = FakeHub({"config.json": b'{"model_type": "llama"}', "model.safetensors": b"w"})
    with pytest.raises(SnapshotError, match="config.json"):
        snapshot_hub("org/other", REVISION, tmp_path / "snap", tmp_path / "m.json", downloader=fake)
    assert not (tmp_path / "m.json").exists()


def test_hub_refuses_a_download_without_weights(tmp_path):
    fake = FakeHub({"config.json": CONFIG, "tokenizer.json": b"{}"})
    with pytest.raises(SnapshotError, match="has no weights"):
        snapshot_hub("org/U1", REVISION, tmp_path / "snap", tmp_path / "m.json", downloader=fake)
    assert not (tmp_path / "m.json").exists()


# --- offline: our own snapshot, or the Hugging Face cache ------------------------------------------


def hf_cache(cache: Path, repo_id: str, revision: str, files: dict[str, bytes]) -> Path:
    """The layout huggingface_hub writes: blobs by content, snapshots/<commit>/ of symlinks, refs/main."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    snap = repo / "snapshots" / revision
    snap.mkdir(parents=True)
    for name, data in files.items():
        (repo / "blobs" / sha(data)).write_bytes(data)
        (snap / name).symlink_to(Path("../..") / "blobs" / sha(data))
    return snap


@pytest.fixture
def offline(monkeypatch, tmp_path) -> Path:
    """HF_HUB_OFFLINE=1 with an empty cache at tmp/hf (huggingface_hub read both at import time)."""
    from huggingface_hub import constants

    cache = tmp_path / "hf"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def no_network(*args, **kwargs):
    raise AssertionError("offline: nothing may be downloaded")


def test_offline_reuses_a_verified_snapshot_of_our_own(hub, tmp_path, monkeypatch):
    snap, manifest_path = tmp_path / "snap", tmp_path / "manifest.json"
    first = snapshot_hub("org/U1", REVISION, snap, manifest_path, downloader=hub)
    manifest_path.unlink()
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert snapshot_hub("org/U1", REVISION, snap, manifest_path, downloader=no_network) == first


def test_offline_verifies_a_complete_hf_cache_snapshot_in_place(offline, tmp_path):
    cached = hf_cache(offline, "org/U1", REVISION, HUB_FILES)
    before = tree(offline)
    manifest_path = tmp_path / "models" / "u1" / "manifest.json"
    manifest = snapshot_hub(
        "org/U1", REVISION, tmp_path / "models" / "u1" / "snapshot", manifest_path, model="u1", downloader=no_network
    )
    assert manifest["snapshot_dir"] == str(cached) and manifest["read_only"] is True
    assert [f["path"] for f in manifest["files"]] == ["config.json", "model.safetensors", "tokenizer.json"]
    assert manifest["files"][1]["sha256"] == sha(b"weights")
    assert tree(offline) == before and not (tmp_path / "models" / "u1" / "snapshot").exists()  # no copy, no write
    assert require_verified(manifest_path) == cached
    manifest_path.unlink()  # a rerun of the rule finds it again through the stamp
    assert snapshot_hub("org/U1", REVISION, tmp_path / "x", manifest_path, downloader=no_network) == manifest


def test_offline_without_a_local_snapshot_names_repo_revision_where_it_looked_and_the_fix(offline, tmp_path):
    with pytest.raises(SnapshotError) as caught:
        snapshot_hub("org/U1", REVISION, tmp_path / "snap", tmp_path / "m.json", downloader=no_network)
    message = str(caught.value)
    for expected in (
        f"org/U1@{REVISION}",
        "HF_HUB_OFFLINE",
        str(tmp_path / "snap"),
        str(offline / "models--org--U1" / "snapshots" / REVISION),
        "hf download org/U1",
    ):
        assert expected in message
    assert not (tmp_path / "m.json").exists()


def test_offline_refuses_an_incomplete_hf_cache_snapshot(offline, tmp_path):
    hf_cache(offline, "org/U1", REVISION, {"config.json": CONFIG, "tokenizer.json": b"{}"})
    with pytest.raises(SnapshotError, match=r"HF_HUB_OFFLINE.*has no weights"):
        snapshot_hub("org/U1", REVISION, tmp_path / "snap", tmp_path / "m.json", downloader=no_network)


def test_offline_with_a_damaged_own_snapshot_names_the_file(hub, tmp_path, offline):
    snap, manifest_path = tmp_path / "snap", tmp_path / "manifest.json"
    from huggingface_hub import constants

    constants.HF_HUB_OFFLINE = False  # the first download had the network (monkeypatch restores it)
    snapshot_hub("org/U1", REVISION, snap, manifest_path, downloader=hub)
    constants.HF_HUB_OFFLINE = True
    (snap / "model.safetensors").write_bytes(b"poison!")
    with pytest.raises(SnapshotError) as caught:
        snapshot_hub("org/U1", REVISION, snap, manifest_path, downloader=no_network)
    assert f"{snap / 'model.safetensors'}: size 7 bytes" not in str(caught.value)  # same size: the sha256 says it
    assert f"{snap / 'model.safetensors'}: sha256" in str(caught.value) and "HF_HUB_OFFLINE" in str(caught.value)


def run_u1lib(*args, env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    return subprocess.run(
        [sys.executable, "-m", "u1lib", *map(str, args)],
        capture_output=True,
        text=True,
        env={**clean, "PYTHONPATH": str(ROOT), **env},
        cwd=ROOT,
        check=False,
    )


def test_the_environment_variables_reach_huggingface_hub(tmp_path):
    home = tmp_path / "home"
    cached = hf_cache(home / "hub", "org/U1", REVISION, HUB_FILES)
    manifest = tmp_path / "m.json"
    args = [
        "snapshot",
        "--model",
        "u1",
        "--source",
        "hub",
        "--repo-id",
        "org/U1",
        "--revision",
        REVISION,
        "--manifest",
        manifest,
    ]
    result = run_u1lib(*args, env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(home)})
    assert result.returncode == 0, result.stderr
    assert snapshot_dir(manifest).resolve() == cached.resolve()
    empty = tmp_path / "empty-cache"
    args[-1] = tmp_path / "other" / "m.json"
    result = run_u1lib(*args, env={"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(empty)})
    assert result.returncode == 1 and "HF_HUB_OFFLINE" in result.stderr and str(empty) in result.stderr


# --- a model folder of the user's --------------------------------------------------------------------


def test_a_local_folder_is_verified_in_place_and_never_written(model_folder, tmp_path, hashed):
    (model_folder / "modeling_neo_chat.py").write_bytes(b"# came with the download")
    before = tree(model_folder)
    manifest_path = tmp_path / "results" / "m" / "manifest.json"
    manifest = snapshot_local(model_folder, manifest_path, model="m")
    assert (manifest["source"], manifest["read_only"], manifest["revision"]) == ("local", True, None)
    assert [f["path"] for f in manifest["files"]] == ["config.json", "model.safetensors", "tokenizer.json"]
    assert snapshot_dir(manifest_path) == model_folder
    assert require_verified(manifest_path) == model_folder
    hashed.clear()
    manifest_path.unlink()
    assert snapshot_local(model_folder, manifest_path, model="m") == manifest
    assert hashed == []  # unchanged files keep the sha256 of their last check
    assert tree(model_folder) == before
    assert stamp_path(manifest_path).parent == manifest_path.parent


def test_an_incomplete_local_folder_is_refused_naming_what_is_missing(model_folder, tmp_path):
    (model_folder / "model.safetensors").unlink()
    (model_folder / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}})
    )
    (model_folder / "model-00001-of-00002.safetensors").write_bytes(b"w")
    with pytest.raises(SnapshotError, match="model-00002-of-00002.safetensors"):
        snapshot_local(model_folder, tmp_path / "m.json", model="m")
    (model_folder / "config.json").unlink()
    with pytest.raises(SnapshotError, match=r"config\.json: no such file"):
        snapshot_local(model_folder, tmp_path / "m.json", model="m")
    with pytest.raises(SnapshotError, match="no such folder"):
        snapshot_local(tmp_path / "nowhere", tmp_path / "m.json", model="m")
    assert not (tmp_path / "m.json").exists()


def test_a_manifest_inside_the_local_folder_is_refused(model_folder):
    with pytest.raises(SnapshotError, match="only read"):
        snapshot_local(model_folder, model_folder / "manifest.json", model="m")


# --- tiny and the command line -------------------------------------------------------------------


def test_snapshot_tiny_writes_a_verifiable_manifest(tmp_path):
    manifest = snapshot_tiny(tmp_path / "snap", tmp_path / "manifest.json", seed=3)
    assert (manifest["source"], manifest["repo_id"], manifest["revision"]) == ("tiny", None, "tiny-seed-3")
    paths = [f["path"] for f in manifest["files"]]
    assert paths == ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    assert verify_snapshot(tmp_path / "snap", manifest) == []
    again = snapshot_tiny(tmp_path / "again", tmp_path / "again.json", seed=3)
    assert again["manifest_hash"] == manifest["manifest_hash"]


def test_cli_snapshot_tiny_defaults_to_snapshot_beside_the_manifest(tmp_path):
    manifest = tmp_path / "models/tiny/manifest.json"
    assert main(["snapshot", "--model", "tiny", "--source", "tiny", "--seed", "2", "--manifest", str(manifest)]) == 0
    assert read_json(manifest)["revision"] == "tiny-seed-2"
    assert snapshot_dir(manifest) == manifest.with_name("snapshot") and manifest.with_name("snapshot").is_dir()


def test_cli_snapshot_of_a_folder(model_folder, tmp_path, capsys):
    manifest = tmp_path / "m.json"
    assert main(["snapshot", "--model", "m", "--source", str(model_folder), "--manifest", str(manifest)]) == 0
    assert read_json(manifest)["source"] == "local"
    with pytest.raises(SystemExit):
        main(["snapshot", "--model", "m", "--source", str(model_folder), "--out", "x", "--manifest", str(manifest)])
    assert "verified in place" in capsys.readouterr().err


def test_cli_reports_a_branch_revision_as_an_error(tmp_path, capsys):
    argv = ["snapshot", "--model", "u1", "--source", "hub", "--repo-id", "org/U1", "--revision", "main"]
    assert main(argv + ["--out", str(tmp_path / "s"), "--manifest", str(tmp_path / "m.json")]) == 1
    assert "'main'" in capsys.readouterr().err


def test_verify_verb_reports_a_changed_file(tmp_path, capsys):
    snapshot_tiny(tmp_path / "snap", tmp_path / "manifest.json", seed=0)
    args = ["verify", "--snapshot", str(tmp_path / "snap"), "--manifest", str(tmp_path / "manifest.json")]
    assert main(args) == 0
    with open(tmp_path / "snap" / "config.json", "a") as handle:
        handle.write(" ")
    assert main(args) == 1
    assert "config.json" in capsys.readouterr().err


def test_files_are_hashed_several_at_a_time_and_problems_come_in_manifest_order(tmp_path):
    from u1lib.io import sha256_file
    from u1lib.snapshot import check_files, digest_files

    names = [f"shard-{k}.bin" for k in range(6)]
    for k, name in enumerate(names):
        (tmp_path / name).write_bytes(bytes([k]) * (1 << 16))
    hashed = digest_files(tmp_path, names, {})
    assert [sha for sha, _ in hashed] == [sha256_file(tmp_path / name) for name in names]
    entries = [{"path": name, "size": 1 << 16, "sha256": sha} for name, (sha, _) in zip(names, hashed)]
    (tmp_path / names[4]).write_bytes(b"\xff" * (1 << 16))  # same size, other content
    (tmp_path / names[1]).unlink()
    failed, stats = check_files(tmp_path, entries, {})
    assert list(failed) == [names[1], names[4]]
    assert "missing" in failed[names[1]] and "sha256" in failed[names[4]]
    assert sorted(stats) == sorted(set(names) - {names[1], names[4]})
