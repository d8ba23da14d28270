"""The command line as a person meets it: one-line errors, and Ctrl-C that keeps a resumable state."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _u1lib(*args, **kwargs):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "u1lib", *map(str, args)],
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **kwargs,
    )


def _train_args(ws, config: Path, run_dir: Path) -> list:
    return [
        "train",
        config,
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


def test_ctrl_c_during_training_saves_a_checkpoint_and_says_how_to_resume(tiny_workspace, tmp_path):
    config = tmp_path / "train.yaml"
    config.write_text(
        "train: {steps: 5000, batch_size: 2, lora: attn=r4a4, log_every: 5, val_every: 0, ckpt_every: 0}\n"
    )
    run_dir = tmp_path / "run"
    process = _u1lib(*_train_args(tiny_workspace, config, run_dir))
    seen = []
    for line in process.stderr:
        seen.append(line)
        if line.startswith("step 10/5000"):
            process.send_signal(signal.SIGINT)
            break
    _, rest = process.communicate(timeout=120)
    stderr = "".join(seen) + rest
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert "u1lib train: SIGINT: stopped at step" in stderr and "run the same command again to resume" in stderr
    checkpoints = sorted((run_dir / "checkpoints").glob("step-*"))
    assert checkpoints, stderr  # saved on the signal although ckpt_every is 0

    stopped_at = int(checkpoints[-1].name.split("-")[1])
    more = stopped_at + 3
    config.write_text(
        f"train: {{steps: {more}, batch_size: 2, lora: attn=r4a4, log_every: 5, val_every: 0, ckpt_every: 0}}\n"
    )
    resumed = _u1lib(*_train_args(tiny_workspace, config, run_dir))
    _, stderr = resumed.communicate(timeout=120)
    assert resumed.returncode == 0 and f"resuming from step {stopped_at} of {more}" in stderr, stderr
    assert f"done: {more} steps" in stderr, stderr


def test_a_bad_setting_is_one_line_naming_the_key(tiny_workspace, tmp_path):
    config = tmp_path / "train.yaml"
    config.write_text("train: {steps: 2, lr: 1e-4}\n")
    process = _u1lib(*_train_args(tiny_workspace, config, tmp_path / "run"))
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 1, stderr
    assert "Traceback" not in stderr and "train.lr" in stderr and "1.0e-4" in stderr, stderr
