"""Run one training job on the GPUs it was given: in this process for one, through torchrun for more."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import yaml

from u1lib.io import write_text
from u1lib.train.cli import file_arguments
from u1lib.train.inputs import RunFiles
from u1lib.train.loop import train


def run_training(settings: dict, files: RunFiles, *, gpus: int, prompt=None, on_incompatible: str = "refuse") -> None:
    """``gpus`` > 1 starts one data-parallel rank per GPU (torchrun --standalone) on the same run folder."""
    if gpus <= 1:
        train(settings, prompt=prompt, on_incompatible=on_incompatible, **asdict(files))
        return
    files.run_dir.mkdir(parents=True, exist_ok=True)
    config = files.run_dir / "launch.yaml"
    write_text(config, yaml.safe_dump({"train": settings, "prompt": prompt or {}}, sort_keys=True))
    args = [*file_arguments(files), "--on-incompatible", on_incompatible]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}"]
    package_root = str(Path(__file__).resolve().parents[2])  # ranks import this same u1lib
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([*launcher, "-m", "u1lib", "train", str(config), *args], env=env)
    if done.returncode != 0:
        raise RuntimeError(f"torchrun with {gpus} ranks failed (exit {done.returncode}); see the log above")
