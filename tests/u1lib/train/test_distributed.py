"""Data parallel on CPU (gloo) processes: any number of ranks logs the losses of 1 process with the same
global batch, and a checkpoint written by one number of ranks resumes on another."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from u1lib.io import read_jsonl
from u1lib.train.loop import train

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


def _launch(ws, run_dir: Path, gpus: int, settings: dict) -> None:
    """The train verb with ``--gpus``, which starts one rank per GPU through torchrun as the train rule
    does (gloo processes on a machine without GPUs)."""
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
        "--gpus",
        gpus,
    ]
    cmd = [sys.executable, "-m", "u1lib", "train", str(config), *map(str, args)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="module")
def one_bucket_workspace(tiny_workspace, tmp_path_factory):
    """Ten same-size images (one bucket, so a global batch of 8 exists): 8 train, 2 held out."""
    from PIL import Image

    from u1lib.cache import build_cache
    from u1lib.data.buckets import BucketSpec
    from u1lib.data.pack import pack

    root = tmp_path_factory.mktemp("one_bucket")
    (root / "raw").mkdir()
    for k in range(10):
        Image.new("RGB", (64, 64), (25 * k, 255 - 20 * k, 90)).save(root / "raw" / f"img{k}.png")
        (root / "raw" / f"img{k}.txt").write_text(f"a flat colour, number {k}")
    pack(root / "raw", root / "data", buckets=BucketSpec(kind="area", area=64 * 64, token_size=8), val_count=2)
    data = [root / "data" / "train.parquet", root / "data" / "val.parquet"]
    ws = {**tiny_workspace, "train_parquet": data[0], "val_parquet": data[1], "cache_dir": root / "cache"}
    build_cache(ws["snapshot_dir"], ws["manifest_path"], data, ws["cache_dir"])
    return ws


@pytest.mark.integration
def test_ranks_log_the_losses_of_one_process_and_resume_on_any_number(one_bucket_workspace, tmp_path):
    """The global batch and its random draws do not depend on the ranks. One run hops one plain
    process -> 8 ranks (the verb's --gpus, as the train rule starts them) -> one plain process, so a
    checkpoint written on 1 rank resumes on 8 and one written on 8 resumes on 1, and it logs the train
    and validation losses of one straight process."""
    settings = {**SETTINGS, "batch_size": 8}
    ws = one_bucket_workspace
    paths = {k: ws[k] for k in ("snapshot_dir", "manifest_path", "train_parquet", "val_parquet", "cache_dir")}
    train({**settings, "steps": 6}, run_dir=tmp_path / "straight", **paths)  # one plain process
    run = tmp_path / "hopping"
    train({**settings, "steps": 2}, run_dir=run, **paths)
    _launch(ws, run, 8, {**settings, "steps": 4})
    train({**settings, "steps": 6}, run_dir=run, **paths)  # and back to one plain process
    straight, hopping = (read_jsonl(folder / "train_log.jsonl") for folder in (tmp_path / "straight", run))
    assert [r["step"] for r in hopping] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(straight, hopping):
        assert a["t"] == b["t"] and a["dropped"] == b["dropped"]
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
    val_straight, val_hopping = (read_jsonl(folder / "val_log.jsonl") for folder in (tmp_path / "straight", run))
    assert [v["step"] for v in val_hopping] == [0, 2, 4, 6]
    assert [v["val_loss"] for v in val_hopping] == pytest.approx([v["val_loss"] for v in val_straight], rel=1e-5)


@pytest.mark.integration
def test_a3b_experts_train_on_two_ranks_as_in_one_process(one_bucket_workspace, tmp_path_factory, tmp_path):
    """A3B data parallel: with LoRA on every generation expert, 2 ranks with half the global batch each
    (their tokens routed to experts independently) log the losses and gradient norms of one process,
    and write the same adapter. An unreduced or unaveraged expert gradient fails here; the reducer's
    own test covers an expert one rank leaves without a gradient."""
    from safetensors.torch import load_file

    from u1lib.cache import build_cache
    from u1lib.snapshot_record import snapshot_tiny

    root = tmp_path_factory.mktemp("a3b")
    snapshot_tiny(root / "snapshot", root / "manifest.json", seed=0, variant="a3b")
    ws = {**one_bucket_workspace, "snapshot_dir": root / "snapshot", "manifest_path": root / "manifest.json"}
    ws["cache_dir"] = root / "cache"
    build_cache(ws["snapshot_dir"], ws["manifest_path"], [ws["train_parquet"], ws["val_parquet"]], ws["cache_dir"])
    settings = {**SETTINGS, "batch_size": 4, "lora": "attn=r4a4;gen_moe_mlp=r4a4"}
    paths = {k: ws[k] for k in ("snapshot_dir", "manifest_path", "train_parquet", "val_parquet", "cache_dir")}
    train(settings, run_dir=tmp_path / "one", **paths)
    _launch(ws, tmp_path / "two", 2, settings)
    one, two = (read_jsonl(tmp_path / name / "train_log.jsonl") for name in ("one", "two"))
    assert [r["step"] for r in two] == [1, 2, 3, 4]
    for a, b in zip(one, two):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
    adapters = [load_file(tmp_path / name / "adapter.safetensors") for name in ("one", "two")]
    assert adapters[0].keys() == adapters[1].keys() and any(".experts." in key for key in adapters[0])
    for key, tensor in adapters[0].items():
        assert torch.allclose(adapters[1][key], tensor, rtol=1e-4, atol=1e-6), key
