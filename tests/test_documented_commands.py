"""The commands the README, the config headers and the Snakefile show, run as written.

They are extracted, not copied: every line of README.md's fenced code blocks (other than data blocks:
yaml, text, json), every inline code span of the README that starts with a program, and the indented
command lines of the config/*.yaml and profiles/*/config.yaml headers and of the Snakefile docstring.
Each is exercised in a fresh copy of the repository, with that copy as the working folder:

* `snakemake ...` as a dry run (`--dry-run` appended), checking that it plans its targets with the
  config files it names; stand-ins for the SLURM commands come first on PATH and record any call, and
  none may submit or cancel a job;
* a fenced block of other commands (the engine sequence) for real, in order, then the files it
  promises: the adapter, the sample PNGs at the size asked for and their index.json;
* an inline `python -m u1lib ...` on a `results/` path after the workflow has built that path;
  one identical to a command of a fenced block is covered by that block's run;
* the rest only if listed in EXEMPT with the reason; any other command fails
  test_every_documented_command_is_run_or_exempt, so a new README line cannot slip by untested.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from PIL import Image

from tests.workflow.conftest import WORKFLOW_FILES
from u1lib.sample_settings import SampleSettings, load_prompts

REPO = Path(__file__).resolve().parents[1]
CLONE_FILES = (*WORKFLOW_FILES, "tests/data/golden_u1_tiny_a")  # what the commands read from a clone's root
PROGRAMS = ("snakemake", "python", "make", "pip", "torchrun", "printf")
DATA_BLOCKS = {"yaml", "text", "json"}
SLURM_COMMANDS = ("sbatch", "srun", "sacct", "squeue", "sinfo", "scontrol", "scancel")
SUBMITTING = {"sbatch", "srun", "scancel"}
LIMIT_S = 300

# Commands no test runs, each with the reason (and what covers it instead).
EXEMPT = {
    # creates .venv and installs torch from PyPI; the snakemake line it runs is dry-run below and
    # tests/workflow/test_pipeline.py runs that whole pipeline
    "make run": "installs into .venv from PyPI",
    # would run this very suite, this test included
    "make test": "runs the test suite itself",
    # changes the environment the tests run in; the project's test extra installs it
    "pip install snakemake-executor-plugin-slurm": "changes the environment",
    # needs the network, a Kubernetes cluster and S3 storage; the README ships no profile for it
    "pip install snakemake-executor-plugin-kubernetes snakemake-storage-plugin-s3": "needs a cluster",
    # needs 4 GPUs and ends in `...`; tests/u1lib/train/test_distributed.py runs torch.distributed.run on CPU ranks
    "torchrun --nproc_per_node=4 -m u1lib train ...": "needs 4 GPUs",
    # the same verb with --gpus 2 runs on two CPU (gloo) ranks in tests/u1lib/train/test_distributed.py
    "python -m u1lib train ... --gpus 4": "needs 4 GPUs",
    # writes a 35 GB random snapshot and trains the 8B model: a GPU run; its figures are in
    # docs/BENCHMARKS.md, and the workflow it drives is dry-run above and run on the tiny model
    "python tests/gpu/workflow_8b.py": "needs a GPU with about 30 GB",
}


@dataclass(frozen=True)
class Command:
    line: str  # as written, continuation lines joined, comment dropped
    where: str  # file:line

    @property
    def words(self) -> list[str]:
        return shlex.split(self.line)


def _strip_comment(text: str) -> str:
    return re.sub(r"(?:^|\s+)#(?:\s.*)?$", "", text).rstrip()


def _is_command(text: str) -> bool:
    return text.split(" ", 1)[0] in PROGRAMS and " " in text


def readme_blocks(path: Path = REPO / "README.md") -> tuple[list[list[Command]], list[Command]]:
    """The commands of each fenced code block that is not data, and the inline code spans that are commands."""
    blocks, inline, fence, prose = [], [], None, []
    for number, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        marker = re.fullmatch(r"```(\S*)\s*", text)
        if marker and fence is None:
            fence = (marker[1], [])
        elif marker:
            if fence[0] not in DATA_BLOCKS:
                blocks.append(_join(fence[1], path.name))
            fence = None
        elif fence is not None:
            fence[1].append((number, text))
        else:
            prose.append((number, text))
    text = "\n".join(line for _, line in prose)
    numbers = [number for number, _ in prose]
    for span in re.finditer(r"`([^`]+)`", text):
        code = " ".join(span[1].split())  # a span may wrap over lines
        if _is_command(code):
            inline.append(Command(code, f"{path.name}:{numbers[text.count(chr(10), 0, span.start())]}"))
    return blocks, inline


def _join(lines: list[tuple[int, str]], name: str) -> list[Command]:
    """Commands of a block: continuation lines joined, comments and blank lines dropped."""
    commands, parts, first = [], [], None
    for number, text in lines:
        text = _strip_comment(text)
        if not text.strip():
            continue
        first = first or number
        parts.append(text.rstrip("\\").strip())
        if not text.endswith("\\"):
            commands.append(Command(" ".join(parts), f"{name}:{first}"))
            parts, first = [], None
    assert not parts, f"{name}:{first}: a code block ends in a continued line"
    return commands


def header_commands() -> list[Command]:
    """Indented command lines in the comment headers of the configs and profiles, and the Snakefile docstring."""
    commands = []
    for path in sorted([*REPO.glob("config/*.yaml"), *REPO.glob("profiles/*/config.yaml")]):
        for number, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            match = re.fullmatch(r"#\s{2,}(\S.*)", text)
            if match and _is_command(_strip_comment(match[1])):
                commands.append(Command(_strip_comment(match[1]), f"{path.relative_to(REPO)}:{number}"))
    docstring = (REPO / "Snakefile").read_text(encoding="utf-8").split('"""')[1]
    for number, text in enumerate(docstring.splitlines(), start=1):
        if text.startswith(" ") and _is_command(_strip_comment(text.strip())):
            commands.append(Command(_strip_comment(text.strip()), f"Snakefile:{number}"))
    return commands


BLOCKS, INLINE = readme_blocks()
ALL = [c for block in BLOCKS for c in block] + INLINE + header_commands()
SNAKEMAKE = {}  # one dry run per distinct line, however many places show it
# `snakemake --report` reads a finished workflow's outputs and has no dry run: the pipeline test runs
# these lines as written once its workflow is done (tests/workflow/test_pipeline.py)
REPORT_LINES = sorted({c.line for c in ALL if c.words[0] == "snakemake" and "--report" in c.words})
for _command in ALL:
    if _command.words[0] == "snakemake" and _command.line not in REPORT_LINES:
        SNAKEMAKE.setdefault(_command.line, []).append(_command.where)
RUN_BLOCKS = [block for block in BLOCKS if block and all(c.words[0] != "snakemake" for c in block)]
BLOCK_LINES = {c.line for block in RUN_BLOCKS for c in block}
ON_RESULTS = [
    c
    for c in INLINE
    if c.words[:3] == ["python", "-m", "u1lib"]
    and c.line not in BLOCK_LINES
    and any(w.startswith("results/") for w in c.words)
]


def how_exercised(command: Command) -> str | None:
    if command.line in EXEMPT:
        return f"exempt: {EXEMPT[command.line]}"
    if command.line in REPORT_LINES:
        return "run on the pipeline's results (tests/workflow/test_pipeline.py)"
    if command.words[0] == "snakemake":
        return "dry run"
    if command.line in BLOCK_LINES:
        return "run in its block"
    if command in ON_RESULTS:
        return "run on the workflow's results"
    return None


def clone(target: Path) -> Path:
    """What a fresh clone's root holds for these commands: the workflow, u1lib, config and golden data."""
    for name in CLONE_FILES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, target / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


def shell(line: str, cwd: Path, path_first: Path | None = None) -> subprocess.CompletedProcess:
    """``line`` through the shell, with this interpreter's environment first on PATH (`python`, `snakemake`)."""
    folders = [str(f) for f in (path_first, Path(sys.executable).parent) if f]
    env = {**os.environ, "PATH": os.pathsep.join([*folders, os.environ["PATH"]])}
    return subprocess.run(line, shell=True, cwd=cwd, env=env, capture_output=True, text=True, timeout=LIMIT_S)


def _check(result: subprocess.CompletedProcess, where: str, line: str) -> str:
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{where}: `{line}` exited {result.returncode}:\n{output[-6000:]}"
    return output


def option(words: list[str], flag: str) -> list[str]:
    """The values after each ``flag``, up to the next option, as one space-separated string per occurrence."""
    values = []
    for index, word in enumerate(words):
        if word == flag:
            values += [[]]
            for value in words[index + 1 :]:
                if value.startswith("--"):
                    break
                values[-1].append(value)
    return [" ".join(v) for v in values]


def test_the_readme_shows_commands_where_this_test_looks():
    """Guards the extraction itself: an empty haul would make every other test here pass vacuously."""
    assert RUN_BLOCKS and SNAKEMAKE and INLINE and header_commands()
    assert any(c.words[:4] == ["python", "-m", "u1lib", "train"] for block in RUN_BLOCKS for c in block)
    assert any("--workflow-profile" in line for line in SNAKEMAKE)


def test_every_documented_command_is_run_or_exempt():
    uncovered = [f"{c.where}: {c.line}" for c in ALL if how_exercised(c) is None]
    assert not uncovered, (
        "documented commands no test runs; put them in a README code block, or add them to "
        "EXEMPT in this file with the reason:\n  " + "\n  ".join(uncovered)
    )
    stale = sorted(set(EXEMPT) - {c.line for c in ALL})
    assert not stale, f"EXEMPT lists commands the documents no longer show: {stale}"


@pytest.fixture(scope="module")
def dry_clone(tmp_path_factory) -> tuple[Path, Path]:
    """A clone for dry runs, and SLURM stand-ins that record their calls and fail as on a host without SLURM."""
    root = clone(tmp_path_factory.mktemp("dry"))
    stubs = tmp_path_factory.mktemp("slurm-bin")
    for name in SLURM_COMMANDS:
        stub = stubs / name
        stub.write_text(f'#!/bin/sh\necho "{name} $*" >> "{stubs / "calls.log"}"\nexit 1\n')
        stub.chmod(0o755)
    return root, stubs


@pytest.mark.parametrize("line", sorted(SNAKEMAKE), ids=lambda line: " ".join(line.split()[1:]))
def test_snakemake_command_plans_its_targets_in_a_dry_run(dry_clone, line):
    root, stubs = dry_clone
    output = _check(shell(f"{line} --dry-run", root, path_first=stubs), ", ".join(SNAKEMAKE[line]), line)
    calls = (stubs / "calls.log").read_text().splitlines() if (stubs / "calls.log").exists() else []
    assert not [c for c in calls if c.split()[0] in SUBMITTING], f"a dry run called SLURM: {calls}"
    words = shlex.split(line)
    if "--unlock" in words:  # plans no jobs
        return
    assert "Job stats:" in output, output
    configfiles = option(words, "--configfile")
    files = configfiles[0].split() if configfiles else ["config/config.yaml"]
    merged = {}
    for name in files:  # later files merged over earlier ones, section by section
        for key, value in (yaml.safe_load((root / name).read_text()) or {}).items():
            merged[key] = {**merged.get(key, {}), **value} if isinstance(value, dict) else value
    assert f"results/data/{merged['dataset']['name']}/" in output, f"the plan does not use {files}"
    for target in (w for w in words[1:] if w.startswith("results/")):
        assert re.search(rf"output: (.*, )?{re.escape(target)}(,|\n)", output), f"{target} is not planned"
    for profile in option(words, "--workflow-profile"):
        assert f"Using workflow specific profile {profile}" in output


@pytest.mark.integration  # the real tiny model on the CPU, about half a minute
@pytest.mark.parametrize("block", RUN_BLOCKS, ids=lambda block: block[0].where)
def test_a_block_of_engine_commands_runs_as_written(tmp_path, block):
    root = clone(tmp_path / "clone")
    for command in block:
        _check(shell(command.line, root), command.where, command.line)
    for train in (c for c in block if c.words[:4] == ["python", "-m", "u1lib", "train"]):
        assert (root / option(train.words, "--run-dir")[0] / "adapter.safetensors").is_file(), train.where
    for sample in (c for c in block if c.words[:4] == ["python", "-m", "u1lib", "sample"]):
        words = sample.words
        out, prompts = root / option(words, "--out")[0], load_prompts(root / option(words, "--prompts")[0])
        size = [int(v) for v in option(words, "--size")[0].split()] if "--size" in words else None
        seeds = option(words, "--seeds")[0].split() if "--seeds" in words else SampleSettings().seeds
        for variant in ["base", *(a.split("=", 1)[0] for a in option(words, "--adapter"))]:
            index = json.loads((out / variant / "index.json").read_text())
            assert len(index["images"]) == len(prompts) * len(seeds), f"{sample.where}: {variant}"
            for record in index["images"]:
                with Image.open(out / variant / record["file"]) as image:
                    assert size is None or list(image.size) == size, record["file"]


@pytest.mark.integration
@pytest.mark.parametrize("command", ON_RESULTS, ids=lambda command: command.where)
def test_an_inline_command_on_results_runs_once_the_workflow_made_them(tmp_path, command):
    root = clone(tmp_path / "clone")
    targets = " ".join(w for w in command.words if w.startswith("results/"))
    _check(shell(f"snakemake --cores 2 {targets}", root), "setup", targets)
    _check(shell(command.line, root), command.where, command.line)
