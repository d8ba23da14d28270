"""profiles/slurm against stand-in SLURM commands: what each heavy job asks sbatch for, and that it runs.

No cluster is needed. The test writes `sbatch`, `srun`, `sacct`, `squeue`, `sinfo`, `scontrol` and
`scancel` (every command snakemake-executor-plugin-slurm and its jobstep plugin call) into a folder
first on PATH. `sbatch` records its parsed arguments, runs the job's `--wrap` command to its end
(as the job would on a node: `-D` as working folder, the log at `--output`, SLURM_JOB_ID set, and
for `--gpus=N` the SLURM_GPUS and CUDA_VISIBLE_DEVICES that SLURM would set), then prints the job
id like `sbatch --parsable`; `sacct` and `squeue` report it COMPLETED or FAILED by its exit status.
The device ids given to GPU jobs are UUIDs no card has, so the tiny jobs run on the CPU on any host.
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import snakemake_executor_plugin_slurm  # noqa: F401 - a test extra: missing fails here instead of skipping
import yaml

pytestmark = pytest.mark.integration  # every test runs real pipeline stages as SLURM jobs

LOCAL_RULES = {"snapshot", "install_modeling", "demo_dataset", "write_variants", "report", "all"}
RUN_LIMIT_S = 300  # a status the plugin cannot read leaves the job "running" forever

STUB = '''\
"""Stand-in for one SLURM command, chosen by the name this file is called under."""

import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path

STATE = Path(__file__).resolve().parents[1]  # the records sit beside this bin/ folder


def parse(args):
    """--flag value, --flag=value and -f value as a dict; a flag without a value maps to True."""
    options, index = {}, 0
    while index < len(args):
        arg = args[index]
        if arg.startswith("-") and "=" in arg:
            key, value = arg.split("=", 1)
        elif arg.startswith("-") and index + 1 < len(args) and not args[index + 1].startswith("-"):
            key, value = arg, args[index + 1]
            index += 1
        else:
            key, value = arg, True
        options[key] = value
        index += 1
    return options


def append(name, record):
    with open(STATE / name, "a", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        handle.write(json.dumps(record) + "\\n")


def next_job_id():
    with open(STATE / "last_job_id", "a+", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        handle.seek(0)
        job_id = int(handle.read() or 1000) + 1
        handle.seek(0)
        handle.truncate()
        handle.write(str(job_id))
    return job_id


def sbatch(args):
    options = parse(args)
    job_id = next_job_id()
    command = options.get("--wrap") or sys.stdin.read()  # the script comes on stdin without --wrap
    env = {**os.environ, "SLURM_JOB_ID": str(job_id), "SLURM_JOBID": str(job_id),
           "SLURM_CPUS_PER_TASK": str(options.get("--cpus-per-task", 1))}
    gpus = int(options.get("--gpus", 0))
    if gpus:
        env["SLURM_GPUS"] = str(gpus)
        env["CUDA_VISIBLE_DEVICES"] = ",".join(f"GPU-stub-{index}" for index in range(gpus))
    log = Path(options["--output"].replace("%j", str(job_id)))
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as handle:
        done = subprocess.run(["sh", "-c", command], check=False, cwd=options["-D"], env=env, stdout=handle,
                              stderr=subprocess.STDOUT)
    state = "COMPLETED" if done.returncode == 0 else "FAILED"
    append("sbatch.jsonl", {"id": str(job_id), "options": options, "state": state})
    print(job_id if "--parsable" in options else f"Submitted batch job {job_id}")


def job_states(args):
    """sacct -X --parsable2 --format=JobIdRaw,State / squeue --format=%i|%T: one id|state per job."""
    name = parse(args).get("--name")
    path = STATE / "sbatch.jsonl"
    for line in path.read_text().splitlines() if path.exists() else []:
        job = json.loads(line)
        if name in (None, job["options"].get("--job-name")):
            print(f"{job['id']}|{job['state']}")


def sacct(args):
    if "JobIdRaw,State" in str(parse(args).get("--format")):
        job_states(args)  # other queries (account guess, failure reasons) get no rows


def srun(args):
    while args and args[0].startswith("-"):  # the step runs in place, without srun's options
        args = args[1:]
    os.execvp(args[0], args)


COMMANDS = {
    "sbatch": sbatch,
    "srun": srun,
    "sacct": sacct,
    "squeue": job_states,
    "sinfo": lambda args: print("PARTITION\\nbatch*\\ngpu"),
    "scontrol": lambda args: print("MinJobAge = 300 sec\\nMaxArraySize = 1001"),
    "scancel": lambda args: None,
}

if __name__ == "__main__":
    command = Path(sys.argv[0]).name
    append("calls.jsonl", {"command": command, "args": sys.argv[1:], "job": os.environ.get("SLURM_JOB_ID")})
    COMMANDS[command](sys.argv[1:])
'''


@dataclass
class Slurm:
    """The stand-in commands' folder and what they recorded."""

    folder: Path

    def submissions(self) -> list[dict]:
        """One record per sbatch call, in order: id, options (parsed arguments), state, rule."""
        records = self._records("sbatch.jsonl")
        for record in records:
            record["rule"] = re.fullmatch(r"rule_(\w+?)(?:_wildcards_.*)?", record["options"]["--comment"])[1]
        return records

    def calls(self, command: str) -> list[dict]:
        return [call for call in self._records("calls.jsonl") if call["command"] == command]

    def _records(self, name: str) -> list[dict]:
        path = self.folder / name
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def slurm(tmp_path, monkeypatch) -> Slurm:
    """Stand-in SLURM commands first on PATH; no GPU choice leaks in from the machine running the test."""
    folder = tmp_path / "slurm"
    (folder / "bin").mkdir(parents=True)
    stub = folder / "bin" / "slurm_stub.py"
    stub.write_text(f"#!{sys.executable}\n{STUB}")
    stub.chmod(0o755)
    for command in ("sbatch", "srun", "sacct", "squeue", "sinfo", "scontrol", "scancel"):
        (folder / "bin" / command).symlink_to(stub.name)
    monkeypatch.setenv("PATH", f"{folder / 'bin'}{os.pathsep}{os.environ['PATH']}")
    for name in ("CUDA_VISIBLE_DEVICES", "U1LIB_GPUS", "SLURM_JOB_ID", "SLURM_JOBID"):
        monkeypatch.delenv(name, raising=False)
    return Slurm(folder)


def short_config(workflow, *, gpus: int, train_gpus: int) -> dict:
    """The tiny config with one variant and a few steps, asking for these GPU counts."""
    config = workflow.config()
    config["grid"] = {}  # one variant, `default`
    config["train"].update(steps=4, val_every=2, ckpt_every=2, log_every=2)
    config["sample"].update(steps=2, seeds=[0])
    config["resources"] = {"gpus_per_job": gpus, "gpus_per_train_job": train_gpus}
    return config


def run_on_slurm(workflow, configfile: str, *targets: str, check: bool = True):
    return workflow.snakemake(
        "--workflow-profile",
        str(workflow.root / "profiles" / "slurm"),
        "--configfile",
        configfile,
        "--slurm-init-seconds-before-status-checks",
        "1",  # poll every second instead of every 40
        *targets,
        check=check,
        timeout=RUN_LIMIT_S,
    )


def profile_request(workflow, rule: str) -> dict:
    """What profiles/slurm asks for on behalf of ``rule``: its default-resources, then set-resources."""
    profile = yaml.safe_load((workflow.root / "profiles" / "slurm" / "config.yaml").read_text())
    return {
        **profile["default-resources"],
        **profile["set-resources"].get(rule, {}),
        "threads": profile["set-threads"].get(rule, 1),
    }


def test_gpu_jobs_are_submitted_with_their_resources_and_run(workflow, slurm):
    configfile = workflow.write_config("gpus.yaml", short_config(workflow, gpus=1, train_gpus=2))
    run_on_slurm(workflow, configfile)  # the whole pipeline, report included

    results = workflow.workdir / "results"
    assert (results / "report.html").stat().st_size > 0
    submissions = slurm.submissions()
    assert sorted(job["rule"] for job in submissions) == ["cache", "export", "pack", "sample", "sample", "train"]
    assert not LOCAL_RULES & {job["rule"] for job in submissions}
    gpus_per_rule = {"pack": None, "export": None, "cache": "1", "sample": "1", "train": "2"}
    run_names = {job["options"]["--job-name"] for job in submissions}
    assert len(run_names) == 1
    for job in submissions:
        options, expected = job["options"], profile_request(workflow, job["rule"])
        assert job["state"] == "COMPLETED", job
        assert options["-t"] == str(expected["runtime"]), job["rule"]
        assert options["--mem"] == str(expected["mem_mb"]), job["rule"]
        assert options["--cpus-per-task"] == str(expected["cpus_per_task"]), job["rule"]
        assert expected["threads"] <= expected["cpus_per_task"], f"{job['rule']}: more threads than CPUs"
        assert options.get("--gpus") == gpus_per_rule[job["rule"]], job["rule"]
        assert "--gres" not in options, job["rule"]  # a second GPU request on top of --gpus
        assert options["-D"] == str(workflow.workdir)
        # the step inside the allocation asks for the same GPUs and CPUs
        (step,) = [call for call in slurm.calls("srun") if call["job"] == job["id"]]
        assert f"--cpus-per-task={expected['cpus_per_task']}" in step["args"]
        step_gpus = [arg.removeprefix("--gpus=") for arg in step["args"] if arg.startswith("--gpus=")]
        assert step_gpus == ([options["--gpus"]] if "--gpus" in options else []), job["rule"]

    assert any(run_names & set(call["args"]) for call in slurm.calls("sacct")), "status was never asked"
    # the train job kept SLURM's devices and started one rank per GPU
    assert (
        "GPUs placed by the scheduler: CUDA_VISIBLE_DEVICES=GPU-stub-0,GPU-stub-1"
        in (results / "logs/train/default.log").read_text()
    )
    assert json.loads((results / "runs/default/metrics.json").read_text())["world_size"] == 2


def test_zero_gpus_ask_sbatch_for_none_and_a_failed_job_fails_the_run(workflow, slurm, tmp_path):
    """One run of two independent jobs (one SLURM start-up, not two): the base model's samples, asked
    with no GPU, complete; the pack of a folder whose only image is broken fails, and so does the run."""
    (tmp_path / "broken").mkdir()  # an empty folder would stop the workflow before any job
    (tmp_path / "broken" / "a.png").write_bytes(b"not an image")
    (tmp_path / "broken" / "a.txt").write_text("a caption")
    config = short_config(workflow, gpus=0, train_gpus=0)
    config["dataset"]["source"] = str(tmp_path / "broken")
    configfile = workflow.write_config("cpus.yaml", config)
    targets = ("results/runs/base/samples/demo/index.json", "results/data/demo/train.parquet")
    result = run_on_slurm(workflow, configfile, "--keep-going", *targets, check=False)

    jobs = {job["rule"]: job for job in slurm.submissions()}  # snapshot is a local rule
    assert sorted(jobs) == ["pack", "sample"]
    sample, pack = jobs["sample"], jobs["pack"]
    assert sample["state"] == "COMPLETED"
    assert "--gpus" not in sample["options"] and "--gres" not in sample["options"]
    assert sample["options"]["--ntasks"] == "1"
    index = json.loads((workflow.workdir / targets[0]).read_text())
    assert index["images"]
    assert pack["state"] == "FAILED" and result.returncode != 0
    assert f"SLURM-job '{pack['id']}' failed, SLURM status is: 'FAILED'" in result.stdout + result.stderr
    assert "no usable items" in (workflow.workdir / "results/logs/pack/demo.log").read_text()
