"""Two workflow runs on one results folder: the second is refused with Snakemake's lock message."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest


@pytest.mark.integration
def test_a_second_run_is_refused_while_the_first_holds_the_lock(workflow):
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
        "results/report.html",
    ]
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        locks = workflow.workdir / ".snakemake" / "locks"
        deadline = time.monotonic() + 120
        while not (locks.is_dir() and any(locks.iterdir())):
            assert first.poll() is None, "the first run ended before taking its lock"
            assert time.monotonic() < deadline, "the first run never took its lock"
            time.sleep(0.2)
        second = workflow.snakemake("--cores", "1", "results/report.html", check=False, timeout=120)
        assert second.returncode != 0
        assert "Directory cannot be locked" in second.stdout + second.stderr
    finally:
        first.kill()
        first.wait()
