"""Run one training job on the GPUs it was given: in this process for one, through torchrun for more."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import yaml

from u1lib.io import write_text
from u1lib.train.inputs import RunFiles
from u1lib.train.loop import train
from u1lib.train.run_folder import claim_run_folder

# each RunFiles field's flag: (flag, help); the fields without a default are required
FILE_FLAGS = {
    "snapshot_dir": ("--snapshot", "the model snapshot folder"),
    "manifest_path": ("--manifest", "the snapshot's manifest.json"),
    "train_parquet": ("--train-data", "train.parquet"),
    "val_parquet": ("--val-data", "val.parquet (default: the loss on a fixed subset of train)"),
    "cache_dir": ("--cache", "prefix cache dir (not needed with memory_mode online_prefix)"),
    "run_dir": ("--run-dir", "the run folder (checkpoints, logs, adapters)"),
}


def file_arguments(files: RunFiles) -> list[str]:
    """``files`` as this verb's flags, for a launcher that starts it in other processes."""
    values = asdict(files)
    return [str(a) for name, (flag, _) in FILE_FLAGS.items() if values[name] is not None for a in (flag, values[name])]


def run_training(settings: dict, files: RunFiles, *, gpus: int, prompt=None, on_incompatible: str = "refuse") -> None:
    """``gpus`` > 1 starts one data-parallel rank per GPU (torchrun --standalone) on the same run folder."""
    if gpus <= 1:
        train(settings, prompt=prompt, on_incompatible=on_incompatible, **asdict(files))
        return
    claim_run_folder(files.run_dir)  # before launch.yaml is written into it
    config = files.run_dir / "launch.yaml"
    write_text(config, yaml.safe_dump({"train": settings, "prompt": prompt or {}}, sort_keys=True))
    args = [*file_arguments(files), "--on-incompatible", on_incompatible]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}"]
    package_root = str(Path(__file__).resolve().parents[2])  # ranks import this same u1lib
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([*launcher, "-m", "u1lib", "train", str(config), *args], env=env)
    if done.returncode != 0:
        raise RuntimeError(f"torchrun with {gpus} ranks failed (exit {done.returncode}); see the log above")
