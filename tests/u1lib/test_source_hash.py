"""The import walker behind the workflow's code hashes, the cache key and the checkpoint lineage."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from u1lib import source_hash
from u1lib.source_hash import code_hash, module_closure

REPO = Path(__file__).resolve().parents[2]


def test_closure_follows_absolute_relative_and_package_imports():
    closure = module_closure(["train/loop.py"])
    # relative (from .objectives), two levels up (from ..model.u1), through a package's __init__
    for module in ("train/objectives.py", "model/u1.py", "lora/adapter.py", "train/__init__.py", "__init__.py"):
        assert module in closure, module
    assert "report/html.py" not in closure and "data/pack.py" not in closure  # not imported by training


def test_excluded_modules_are_neither_hashed_nor_followed():
    closure = module_closure(["train/loop.py"], exclude=["train/summary.py"])
    assert "train/summary.py" not in closure
    assert "provenance.py" in module_closure(["train/summary.py"])


def test_an_unknown_entry_is_an_error_not_an_empty_hash():
    with pytest.raises(FileNotFoundError, match="no such u1lib module"):
        module_closure(["train/nowhere.py"])


def test_an_edit_anywhere_in_the_closure_changes_the_hash(tmp_path, monkeypatch):
    copy = tmp_path / "u1lib"
    shutil.copytree(REPO / "u1lib", copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(source_hash, "PACKAGE_DIR", copy)
    before = code_hash(["train/loop.py"])
    (copy / "train" / "optim.py").write_text((copy / "train" / "optim.py").read_text() + "\n# edited\n")
    assert code_hash(["train/loop.py"]) != before
    unrelated = code_hash(["train/loop.py"])
    (copy / "report" / "html.py").write_text((copy / "report" / "html.py").read_text() + "\n# edited\n")
    assert code_hash(["train/loop.py"]) == unrelated


def test_an_edit_to_the_training_maths_refuses_a_resume(tiny_workspace, tmp_path):
    """Resume in a process whose u1lib has an edited learning-rate schedule: the lineage must differ."""
    copy = tmp_path / "code"
    shutil.copytree(REPO / "u1lib", copy / "u1lib", ignore=shutil.ignore_patterns("__pycache__"))
    ws = tiny_workspace
    script = textwrap.dedent(f"""
        import sys
        from u1lib.train.loop import train
        from u1lib.train.resume import IncompatibleCheckpoint
        settings = {{"steps": 2, "batch_size": 2, "lora": "attn=r4a4", "val_every": 0, "ckpt_every": 1}}
        try:
            train(settings, snapshot_dir={str(ws["snapshot_dir"])!r}, manifest_path={str(ws["manifest_path"])!r},
                  train_parquet={str(ws["train_parquet"])!r}, val_parquet={str(ws["val_parquet"])!r},
                  cache_dir={str(ws["cache_dir"])!r}, run_dir={str(tmp_path / "run")!r})
        except IncompatibleCheckpoint as err:
            print(err)
            sys.exit(3)
    """)

    def run():
        return subprocess.run([sys.executable, "-c", script], cwd=copy, capture_output=True, text=True, timeout=300)

    assert run().returncode == 0
    optim = copy / "u1lib" / "train" / "optim.py"
    optim.write_text(optim.read_text().replace("return 1.0\n", "return 0.5\n"))
    refused = run()
    assert refused.returncode == 3, refused.stderr
    assert "engine code: checkpoint" in refused.stdout
