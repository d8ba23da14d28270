"""Snakemake on a temporary copy of the workflow, so tests never touch the repo's results/."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
WORKFLOW_FILES = ("Snakefile", "rules", "workflow_scripts", "config", "profiles", "envs", "u1lib")


@dataclass
class Workflow:
    root: Path  # the copied Snakefile, rules, config, ... and u1lib (whose code hashes count)
    workdir: Path  # --directory: where results/ and .snakemake/ go

    def snakemake(self, *args: str, check: bool = True, timeout: float | None = None) -> subprocess.CompletedProcess:
        """``timeout`` (seconds) turns a run that never ends into subprocess.TimeoutExpired."""
        command = [
            sys.executable,
            "-m",
            "snakemake",
            "-s",
            str(self.root / "Snakefile"),
            "--directory",
            str(self.workdir),
            *args,
        ]
        result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}")
        return result

    def planned_jobs(self, *args: str) -> dict[str, int]:
        """Jobs a dry run would execute, per rule ({} when everything is up to date)."""
        result = self.snakemake("--dry-run", *args)
        return job_counts(result.stdout + result.stderr)

    def config(self) -> dict:
        return yaml.safe_load((self.root / "config" / "config.yaml").read_text())

    def write_config(self, name: str, config: dict) -> str:
        path = self.root / "config" / name
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return str(path)

    def fake_complete(self, *args: str) -> None:
        """Create every output as an empty file (folders for suffix-less paths), then let
        `snakemake --touch` record them as done, params and all, in DAG order."""
        summary = self.snakemake("--summary", *args).stdout.splitlines()
        for line in summary[1:]:
            path = self.workdir / line.split("\t")[0]
            if path.suffix:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.touch()
            else:
                path.mkdir(parents=True, exist_ok=True)
        self.snakemake("--touch", "--forceall", "--cores", "1", *args)


def job_counts(text: str) -> dict[str, int]:
    if "Nothing to be done" in text:
        return {}
    if "Job stats:" not in text:
        raise AssertionError(f"no job table in Snakemake's output:\n{text}")
    counts = {}
    for line in text.split("Job stats:")[1].splitlines():
        match = re.fullmatch(r"(\w+)\s+(\d+)", line.strip())
        if match and match[1] == "total":
            break
        if match:
            counts[match[1]] = int(match[2])
    return counts


def copy_workflow(target: Path) -> Workflow:
    (target / "workflow").mkdir(parents=True)
    for name in WORKFLOW_FILES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, target / "workflow" / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, target / "workflow" / name)
    (target / "run").mkdir()
    return Workflow(target / "workflow", target / "run")


def pytest_configure(config):
    config.addinivalue_line("markers", "integration: end-to-end runs of real pipeline stages")


@pytest.fixture
def workflow(tmp_path) -> Workflow:
    """A fresh copy of the workflow (and u1lib) with an empty working directory."""
    return copy_workflow(tmp_path)


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Workflow:
    """A copy whose whole default run is recorded as done (shared by a module's tests)."""
    workflow = copy_workflow(tmp_path_factory.mktemp("finished"))
    workflow.fake_complete()
    return workflow
