"""A grid spread over the GPUs of one host: jobs running at once hold different devices."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from datetime import datetime
from itertools import combinations

import pytest

CLAIM = re.compile(r"claimed GPU\(s\) \['(\d+)'\]")
STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def _window(log: str) -> tuple[str, datetime, datetime]:
    """(the GPU id the job claimed, its first and last log time)."""
    stamps = [datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S,%f") for m in map(STAMP.match, log.splitlines()) if m]
    return CLAIM.search(log)[1], stamps[0], stamps[-1]


@pytest.mark.integration
def test_train_jobs_run_side_by_side_each_on_its_own_gpu(workflow, tmp_path):
    """Two pretend GPUs (the claims' pool, on a CPU machine), four train jobs, `--resources gpu=2`."""
    config = workflow.config()
    config["train"].update(steps=2, val_every=2, preview_every=0, save_every=0, ckpt_every=2, log_every=1)
    config["resources"].update(gpus_per_job=1, gpus_per_train_job=1)
    config_path = workflow.write_config("two_gpus.yaml", config)
    variants = [f"loss-{loss}_t-{t}" for loss in ("x0", "v") for t in ("uniform", "logit_normal")]
    targets = [f"results/runs/{variant}/adapter.safetensors" for variant in variants]
    env = {**os.environ, "U1LIB_GPUS": "0,1", "U1LIB_GPU_LOCK_DIR": str(tmp_path / "locks")}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    command = [sys.executable, "-m", "snakemake", *targets, "-s", str(workflow.root / "Snakefile")]
    command += ["--directory", str(workflow.workdir), "--cores", "2", "--set-threads", "train=1"]  # targets first
    command += ["--resources", "gpu=2"]  # (a train job takes 4 threads by default: on 2 cores, one at a time)
    done = subprocess.run([*command, "--configfile", config_path], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    logs = workflow.workdir / "results" / "logs" / "train"
    windows = {variant: _window((logs / f"{variant}.log").read_text()) for variant in variants}
    assert {gpu for gpu, _, _ in windows.values()} <= {"0", "1"}
    overlapping = [(a, b) for (a, wa), (b, wb) in combinations(windows.items(), 2) if wa[1] < wb[2] and wb[1] < wa[2]]
    assert overlapping, f"no two train jobs ran at once: {windows}"
    for a, b in overlapping:
        assert windows[a][0] != windows[b][0], f"{a} and {b} ran at once on GPU {windows[a][0]}"
