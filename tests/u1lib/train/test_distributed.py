"""Data parallel: 2 processes (gloo, CPU) log the same losses as 1 process with the same global batch,
and a checkpoint written by 2 ranks resumes on 1."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from u1lib.io import read_jsonl

ROOT = Path(__file__).resolve().parents[3]
SETTINGS = {
    "steps": 4,
    "batch_size": 2,
    "lr": 2e-3,
    "lora": "attn=r4a4",
    "val_every": 2,
    "ckpt_every": 2,
    "val_max_items": 2,
    "log_every": 100,
    "cond_dropout": 0.5,
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch(ws, run_dir: Path, nproc: int, settings: dict, *, verb_gpus: int | None = None):
    """torchrun with ``nproc`` ranks, each running the train verb; or, with ``verb_gpus``, the verb
    itself with ``--gpus`` (which starts torchrun the way the train rule does)."""
    config = run_dir.parent / f"{run_dir.name}.yaml"
    config.write_text(yaml.safe_dump({"train": settings}))
    args = [
        "--snapshot",
        ws["snapshot_dir"],
        "--manifest",
        ws["manifest_path"],
        "--train-data",
        ws["train_parquet"],
        "--val-data",
        ws["val_parquet"],
        "--cache",
        ws["cache_dir"],
        "--run-dir",
        run_dir,
    ]
    launcher = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(nproc),
        "--master_port",
        str(_free_port()),
    ]
    cmd = [*launcher, "-m", "u1lib", "train", str(config), *map(str, args)]
    if verb_gpus is not None:
        cmd = [sys.executable, "-m", "u1lib", "train", str(config), *map(str, args), "--gpus", str(verb_gpus)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.integration
def test_two_ranks_match_one_process_and_resume_on_one(tiny_workspace, tmp_path):
    _launch(tiny_workspace, tmp_path / "one", 1, SETTINGS)
    _launch(tiny_workspace, tmp_path / "two", 2, SETTINGS, verb_gpus=2)  # the verb starts torchrun, as the rule does
    one, two = (read_jsonl(tmp_path / name / "train_log.jsonl") for name in ("one", "two"))
    assert [r["step"] for r in two] == [1, 2, 3, 4]
    for a, b in zip(one, two):
        assert a["t"] == b["t"] and a["dropped"] == b["dropped"]
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
    val_one, val_two = (read_jsonl(tmp_path / name / "val_log.jsonl") for name in ("one", "two"))
    assert [v["val_loss"] for v in val_two] == pytest.approx([v["val_loss"] for v in val_one], rel=1e-5)
    # the 2-rank run's step-2 checkpoint continues on 1 rank, to 6 steps
    shutil.copytree(tmp_path / "two", tmp_path / "two_then_one")
    _launch(tiny_workspace, tmp_path / "two_then_one", 1, {**SETTINGS, "steps": 6})
    resumed = read_jsonl(tmp_path / "two_then_one" / "train_log.jsonl")
    assert [r["step"] for r in resumed] == [1, 2, 3, 4, 5, 6]
