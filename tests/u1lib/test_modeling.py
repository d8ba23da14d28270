import hashlib
from pathlib import Path

import pytest

from u1lib.cli import main
from u1lib.io import read_json
from u1lib.modeling import ModelingPins, install_modeling, verify_modeling
from u1lib.snapshot import SnapshotError
from u1lib.snapshot_record import snapshot_tiny, write_manifest

ROOT = Path(__file__).resolve().parents[2]
PINS = ROOT / "config/pins/neo_unify.yaml"
COMMIT = "df86ca90bfcd95fbdd1e2b3a590822721dba8cd1"
SOURCES = {"__init__.py": b"", "modeling_neo_chat.py": b"class NEOChatModel: ...\n", "utils.py": b"X = 1\n"}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def modeling(tmp_path) -> dict[str, Path]:
    source, snap = tmp_path / "neo_unify", tmp_path / "snapshot"
    source.mkdir()
    snap.mkdir()
    (snap / "model.safetensors").write_bytes(b"weights")
    manifest = tmp_path / "manifest.json"
    write_manifest(snap, manifest, model="m", source="hub", repo_id="o/r", revision="0" * 40)
    for name, data in SOURCES.items():
        (source / name).write_bytes(data)
    pins = tmp_path / "pins.yaml"
    pins.write_text(f"commit: {COMMIT}\nfiles:\n" + "".join(f"  {n}: {sha(d)}\n" for n, d in SOURCES.items()))
    return {"source": source, "snap": snap, "manifest": manifest, "pins": pins, "report": tmp_path / "modeling.json"}


def install(paths: dict[str, Path]) -> dict:
    return install_modeling(
        paths["manifest"], source_dir=paths["source"], pins_path=paths["pins"], report_path=paths["report"]
    )


def refusal(paths: dict[str, Path]) -> str:
    with pytest.raises(SnapshotError) as caught:
        install(paths)
    assert [p.name for p in paths["snap"].iterdir()] == ["model.safetensors"]  # nothing copied
    assert not paths["report"].exists()
    return str(caught.value)


# --- install_modeling ---------------------------------------------------------------------------


def test_install_copies_files_that_match_their_pins(modeling):
    (modeling["source"] / "__pycache__").mkdir()  # left by an import of the clone; never copied
    (modeling["source"] / "__pycache__" / "utils.cpython-311.pyc").write_bytes(b"\x00")
    report = install(modeling)
    hashes = {name: sha(data) for name, data in SOURCES.items()}
    assert report == {"status": "installed", "pinned_commit": COMMIT, "files": hashes}
    assert read_json(modeling["report"]) == report
    assert {p.name: p.read_bytes() for p in modeling["snap"].glob("*.py")} == SOURCES
    assert verify_modeling(modeling["snap"], modeling["report"]) == []


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


def test_install_never_writes_into_a_folder_that_is_not_ours(modeling, tmp_path):
    user = tmp_path / "my-model"
    user.mkdir()
    (user / "model.safetensors").write_bytes(b"weights")
    write_manifest(user, modeling["manifest"], model="m", source="local", repo_id=None, revision=None, read_only=True)
    with pytest.raises(SnapshotError, match="read-only") as caught:
        install(modeling)
    assert "modeling_source to none" in str(caught.value)
    assert [p.name for p in user.iterdir()] == ["model.safetensors"] and not modeling["report"].exists()


def test_install_without_source_records_native_only(tmp_path):
    report = install_modeling(tmp_path / "m.json", source_dir=None, pins_path=PINS, report_path=tmp_path / "r.json")
    assert report["status"] == "native-only" and "no remote code" in report["note"]
    assert read_json(tmp_path / "r.json") == report


def test_shipped_pins_match_the_golden_upstream_files():
    pins = ModelingPins.from_file(PINS)
    golden = read_json(ROOT / "tests/data/golden_u1_tiny_a/meta.json")["upstream_files_sha256"]
    assert pins.commit == COMMIT
    assert pins.files == {k.removeprefix("neo_unify/"): v for k, v in golden.items() if k.startswith("neo_unify/")}
    assert len(pins.files) == 9


def test_bad_pins_file_names_each_bad_value(tmp_path):
    pins = tmp_path / "pins.yaml"
    pins.write_text("repo: not a repo\ncommit: main\nfiles:\n  utils.py: abc\n")
    with pytest.raises(SnapshotError) as caught:
        ModelingPins.from_file(pins)
    message = str(caught.value)
    assert "'main'" in message and "utils.py" in message and str(pins) in message and "'not a repo'" in message


def test_shipped_pins_name_the_repository_the_workflow_clones():
    assert ModelingPins.from_file(ROOT / "config/pins/neo_unify.yaml").repo == "OpenSenseNova/SenseNova-U1"


# --- verify_modeling: the snapshot's .py files against modeling.json ----------------------------------


def test_verify_modeling_names_edited_missing_and_unexpected_files(modeling):
    install(modeling)
    (modeling["snap"] / "utils.py").write_bytes(b"X = 2  # edited after install\n")
    (modeling["snap"] / "__init__.py").unlink()
    (modeling["snap"] / "patch.py").write_bytes(b"import os\n")
    problems = verify_modeling(modeling["snap"], modeling["report"])
    assert len(problems) == 3
    edited = next(p for p in problems if "utils.py" in p)
    assert sha(b"X = 1\n") in edited and str(modeling["report"]) in edited and "install-modeling" in edited
    assert any("__init__.py" in p and "missing" in p for p in problems)
    assert any("patch.py" in p and "unexpected" in p for p in problems)


def test_a_native_only_snapshot_may_hold_no_modeling_code(modeling):
    install_modeling(modeling["manifest"], source_dir=None, pins_path=PINS, report_path=modeling["report"])
    assert verify_modeling(modeling["snap"], modeling["report"]) == []
    (modeling["snap"] / "sub").mkdir()
    (modeling["snap"] / "sub" / "modeling_neo_chat.py").write_bytes(b"import os\n")
    (modeling["snap"] / ".cache").mkdir()
    (modeling["snap"] / ".cache" / "hidden.py").write_bytes(b"")  # huggingface_hub bookkeeping is not ours
    [problem] = verify_modeling(modeling["snap"], modeling["report"])
    assert "sub/modeling_neo_chat.py: unexpected modeling code" in problem


def test_verify_modeling_without_a_report(modeling, tmp_path):
    assert verify_modeling(modeling["snap"], tmp_path / "none.json") == []
    (modeling["snap"] / "x.py").write_bytes(b"")
    [problem] = verify_modeling(modeling["snap"], tmp_path / "none.json")
    assert "no modeling report" in problem and "--modeling" in problem
    with pytest.raises(SnapshotError, match="no such modeling report"):
        verify_modeling(modeling["snap"], tmp_path / "none.json", required=True)


def test_a_damaged_report_is_named(modeling):
    modeling["report"].write_text('{"status": "installed"}')
    with pytest.raises(SnapshotError, match="not a modeling report"):
        verify_modeling(modeling["snap"], modeling["report"])


# --- command line -------------------------------------------------------------------------------


def test_cli_install_none_then_verify_uses_the_report_beside_the_manifest(tmp_path, capsys):
    manifest = tmp_path / "models/tiny/manifest.json"
    snapshot_tiny(manifest.with_name("snapshot"), manifest, seed=0)
    report = manifest.with_name("modeling.json")
    args = ["--manifest", str(manifest), "--source", "none", "--pins", str(PINS), "--report", str(report)]
    assert main(["install-modeling", *args]) == 0
    assert read_json(report)["status"] == "native-only"
    assert main(["verify", "--manifest", str(manifest)]) == 0
    (manifest.with_name("snapshot") / "modeling_neo_chat.py").write_bytes(b"import os\n")
    assert main(["verify", "--manifest", str(manifest)]) == 1
    assert "modeling_neo_chat.py: unexpected modeling code" in capsys.readouterr().err


def test_cli_verify_catches_an_edited_installed_file(modeling, capsys):
    install(modeling)
    other = modeling["report"].with_name("other.json")
    modeling["report"].rename(other)
    args = ["verify", "--manifest", str(modeling["manifest"]), "--modeling", str(other)]
    assert main(args) == 0
    with open(modeling["snap"] / "modeling_neo_chat.py", "a") as handle:
        handle.write("import os  # an edit\n")
    assert main(args) == 1
    assert "modeling_neo_chat.py: sha256" in capsys.readouterr().err
    assert main(["verify", "--manifest", str(modeling["manifest"]), "--modeling", str(other) + ".missing"]) == 1
