"""A training job as a person sees it from the Snakemake console: progress, a kill, the rerun."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from u1lib.io import read_jsonl

VARIANT = "loss-x0_t-uniform"
TIMINGS = ("seconds", "images_per_s")


def _without_timings(records):
    return [{k: v for k, v in r.items() if k not in TIMINGS} for r in records]


@pytest.mark.integration
def test_a_killed_train_job_resumes_with_its_whole_history_and_the_console_shows_it(workflow, tmp_path):
    config = workflow.config()
    config["train"].update(steps=150, val_every=25, ckpt_every=20, log_every=5)
    config_path = workflow.write_config("long.yaml", config)
    target = f"results/runs/{VARIANT}/adapter.safetensors"
    command = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(workflow.root / "Snakefile"),
        "--directory",
        str(workflow.workdir),
        "--cores",
        "1",
        target,
        "--configfile",
        config_path,
    ]
    run_dir = workflow.workdir / "results" / "runs" / VARIANT
    job = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    console, killed_at = [], None
    deadline = time.monotonic() + 240
    for line in job.stderr:
        console.append(line)
        match = re.match(rf"\[train {VARIANT}\] step (\d+)/150", line)
        if match and int(match[1]) >= 45 and killed_at is None:
            holder = (run_dir / ".lock").read_text()
            pid = int(re.search(r"training process (\d+)", holder)[1])
            os.kill(pid, signal.SIGKILL)  # the job dies as under the OOM killer: no cleanup runs
            killed_at = int(match[1])
        assert time.monotonic() < deadline, "".join(console)
    assert job.wait() != 0 and killed_at is not None, "".join(console)
    assert not (run_dir / "train_log.jsonl").exists()  # Snakemake deleted the failed job's outputs

    rerun = workflow.snakemake("--cores", "1", target, "--configfile", config_path)
    shown = rerun.stderr
    resumed = re.search(rf"\[train {VARIANT}\] resuming from step (\d+) of 150", shown)
    assert resumed and 20 <= int(resumed[1]) <= killed_at, shown
    assert re.search(rf"\[train {VARIANT}\] step 150/150 loss [\d.]+ val [\d.]+ [\d.]+ s/step eta", shown), shown
    assert re.search(rf"\[train {VARIANT}\] done: 150 steps, .*val [\d.]+ -> [\d.]+ \(best", shown), shown

    # the same settings, uninterrupted, in this process: the history must be the same line for line
    from u1lib.train.loop import train

    results = workflow.workdir / "results"
    settings = json.loads((run_dir / "config.json").read_text())
    cache = next((results / "cache").rglob("manifest.parquet")).parent
    train(
        settings["train"],
        prompt=settings["prompt"],
        snapshot_dir=results / "models/tiny/snapshot",
        manifest_path=results / "models/tiny/manifest.json",
        train_parquet=results / "data/demo/train.parquet",
        val_parquet=results / "data/demo/val.parquet",
        cache_dir=cache,
        run_dir=tmp_path / "straight",
    )
    for name in ("train_log.jsonl", "val_log.jsonl"):
        assert _without_timings(read_jsonl(run_dir / name)) == _without_timings(
            read_jsonl(tmp_path / "straight" / name)
        )
    assert read_jsonl(run_dir / "val_log.jsonl")[0]["step"] == 0
