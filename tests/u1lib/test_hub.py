import fnmatch
import hashlib
import json
import logging
from pathlib import Path

import pytest

from u1lib.hub import (
    ModelingPins,
    SnapshotError,
    cli,
    install_modeling,
    snapshot_hub,
    snapshot_tiny,
    verify_snapshot,
    write_manifest,
)
from u1lib.io import read_json
from u1lib.tiny import tiny_config_dict

ROOT = Path(__file__).resolve().parents[2]
REVISION = "0123456789abcdef0123456789abcdef01234567"
OTHER_REVISION = "fedcba9876543210fedcba9876543210fedcba98"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


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


@pytest.fixture
def hub() -> FakeHub:
    return FakeHub(
        {
            "config.json": json.dumps(tiny_config_dict(vocab_size=1024)).encode(),
            "model.safetensors": b"weights",
            "tokenizer.json": b"{}",
            "modeling_neo_chat.py": b"import os  # remote code",
        }
    )


def test_hub_downloads_once_then_only_verifies(hub, tmp_path):
    snap, manifest_path = tmp_path / "snap", tmp_path / "manifest.json"
    first = snapshot_hub("org/U1", REVISION, snap, manifest_path, downloader=hub)
    assert hub.calls == 1
    assert [f["path"] for f in first["files"]] == ["config.json", "model.safetensors", "tokenizer.json"]
    assert not (snap / "modeling_neo_chat.py").exists()  # remote code only through install_modeling
    assert [first[k] for k in ("source", "repo_id", "revision", "model")] == ["hub", "org/U1", REVISION, "U1"]
    second = snapshot_hub("org/U1", REVISION, snap, manifest_path, downloader=hub)
    assert hub.calls == 1 and second == first


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


def test_hub_switching_revision_drops_the_old_files(hub, tmp_path):
    snap, manifest_path = tmp_path / "snap", tmp_path / "manifest.json"
    snapshot_hub("org/U1", REVISION, snap, manifest_path, downloader=hub)
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


def test_snapshot_tiny_writes_a_verifiable_manifest(tmp_path):
    manifest = snapshot_tiny(tmp_path / "snap", tmp_path / "manifest.json", seed=3)
    assert (manifest["source"], manifest["repo_id"], manifest["revision"]) == ("tiny", None, "tiny-seed-3")
    paths = [f["path"] for f in manifest["files"]]
    assert paths == ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    assert verify_snapshot(tmp_path / "snap", manifest) == []
    again = snapshot_tiny(tmp_path / "again", tmp_path / "again.json", seed=3)
    assert again["manifest_hash"] == manifest["manifest_hash"]


# --- install_modeling ---------------------------------------------------------------------------

COMMIT = "df86ca90bfcd95fbdd1e2b3a590822721dba8cd1"
SOURCES = {"__init__.py": b"", "modeling_neo_chat.py": b"class NEOChatModel: ...\n", "utils.py": b"X = 1\n"}


@pytest.fixture
def modeling(tmp_path) -> dict[str, Path]:
    source, snap = tmp_path / "neo_unify", tmp_path / "snap"
    source.mkdir()
    snap.mkdir()
    for name, data in SOURCES.items():
        (source / name).write_bytes(data)
    pins = tmp_path / "pins.yaml"
    pins.write_text(f"commit: {COMMIT}\nfiles:\n" + "".join(f"  {n}: {sha(d)}\n" for n, d in SOURCES.items()))
    return {"source": source, "snap": snap, "pins": pins, "report": tmp_path / "modeling.json"}


def install(paths: dict[str, Path]) -> dict:
    return install_modeling(
        paths["snap"], source_dir=paths["source"], pins_path=paths["pins"], report_path=paths["report"]
    )


def refusal(paths: dict[str, Path]) -> str:
    with pytest.raises(SnapshotError) as caught:
        install(paths)
    assert list(paths["snap"].iterdir()) == []  # nothing copied
    assert not paths["report"].exists()
    return str(caught.value)


def test_install_copies_files_that_match_their_pins(modeling):
    (modeling["source"] / "__pycache__").mkdir()  # left by an import of the clone; never copied
    (modeling["source"] / "__pycache__" / "utils.cpython-311.pyc").write_bytes(b"\x00")
    report = install(modeling)
    hashes = {name: sha(data) for name, data in SOURCES.items()}
    assert report == {"status": "installed", "pinned_commit": COMMIT, "files": hashes}
    assert read_json(modeling["report"]) == report
    assert {p.name: p.read_bytes() for p in modeling["snap"].iterdir()} == SOURCES


def test_install_refuses_a_tampered_file(modeling):
    (modeling["source"] / "utils.py").write_bytes(b"X = 2\n")
    message = refusal(modeling)
    assert "utils.py" in message and sha(b"X = 2\n") in message and sha(b"X = 1\n") in message


def test_install_refuses_a_missing_file(modeling):
    (modeling["source"] / "modeling_neo_chat.py").unlink()
    message = refusal(modeling)
    assert "modeling_neo_chat.py" in message and "missing" in message


def test_install_refuses_an_extra_file(modeling):
    (modeling["source"] / "patch.py").write_bytes(b"import os\n")
    message = refusal(modeling)
    assert "patch.py" in message and "not in the pins" in message


def test_install_refuses_a_symlink_even_to_the_right_bytes(modeling, tmp_path):
    real = tmp_path / "elsewhere.py"
    real.write_bytes(SOURCES["utils.py"])
    (modeling["source"] / "utils.py").unlink()
    (modeling["source"] / "utils.py").symlink_to(real)
    message = refusal(modeling)
    assert "utils.py" in message and "symlink" in message and "missing" not in message


def test_install_lists_every_problem_at_once(modeling):
    (modeling["source"] / "utils.py").write_bytes(b"tampered")
    (modeling["source"] / "__init__.py").unlink()
    (modeling["source"] / "extra.py").write_bytes(b"")
    message = refusal(modeling)
    assert all(name in message for name in ("utils.py", "__init__.py", "extra.py"))


def test_install_without_source_records_native_only(tmp_path):
    pins = ROOT / "config/pins/neo_unify.yaml"
    report = install_modeling(tmp_path / "snap", source_dir=None, pins_path=pins, report_path=tmp_path / "r.json")
    assert report["status"] == "native-only" and "no remote code" in report["note"]
    assert read_json(tmp_path / "r.json") == report


def test_shipped_pins_match_the_golden_upstream_files():
    pins = ModelingPins.from_file(ROOT / "config/pins/neo_unify.yaml")
    golden = read_json(ROOT / "tests/data/golden_u1_tiny_a/meta.json")["upstream_files_sha256"]
    assert pins.commit == COMMIT
    assert pins.files == {k.removeprefix("neo_unify/"): v for k, v in golden.items() if k.startswith("neo_unify/")}
    assert len(pins.files) == 9


def test_bad_pins_file_names_each_bad_value(tmp_path):
    pins = tmp_path / "pins.yaml"
    pins.write_text("commit: main\nfiles:\n  utils.py: abc\n")
    with pytest.raises(SnapshotError) as caught:
        ModelingPins.from_file(pins)
    assert "'main'" in str(caught.value) and "utils.py" in str(caught.value) and str(pins) in str(caught.value)


# --- command line -------------------------------------------------------------------------------


def test_cli_snapshot_tiny_and_install_none(tmp_path):
    manifest = tmp_path / "models/tiny/manifest.json"
    snap = tmp_path / "models/tiny/snapshot"
    argv = ["--model", "tiny", "--source", "tiny", "--seed", "2", "--out", str(snap), "--manifest", str(manifest)]
    assert cli("snapshot", argv) == 0
    assert read_json(manifest)["revision"] == "tiny-seed-2"
    args = ["--snapshot", str(snap), "--source", "none", "--pins", str(ROOT / "config/pins/neo_unify.yaml")]
    assert cli("install-modeling", args + ["--report", str(tmp_path / "modeling.json")]) == 0
    assert read_json(tmp_path / "modeling.json")["status"] == "native-only"


def test_cli_reports_a_branch_revision_as_an_error(tmp_path, capsys):
    argv = ["--model", "u1", "--source", "hub", "--repo-id", "org/U1", "--revision", "main"]
    assert cli("snapshot", argv + ["--out", str(tmp_path / "s"), "--manifest", str(tmp_path / "m.json")]) == 1
    assert "'main'" in capsys.readouterr().err


def test_verify_verb_reports_a_changed_file(tmp_path, capsys):
    from u1lib.cli import main
    from u1lib.hub import snapshot_tiny

    snapshot_tiny(tmp_path / "snap", tmp_path / "manifest.json", seed=0)
    args = ["verify", "--snapshot", str(tmp_path / "snap"), "--manifest", str(tmp_path / "manifest.json")]
    assert main(args) == 0
    with open(tmp_path / "snap" / "config.json", "a") as handle:
        handle.write(" ")
    assert main(args) == 1
    assert "config.json" in capsys.readouterr().err
