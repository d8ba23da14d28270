"""The workflow's shape: lint, formatting, the jobs each shipped config plans, config errors."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

DEFAULT_JOBS = {
    "model_identity": 1,
    "snapshot": 1,
    "install_modeling": 1,
    "demo_dataset": 1,
    "pack": 1,
    "cache": 1,
    "train": 4,
    "export": 4,
    "sample": 5,
    "write_variants": 1,
    "report": 1,
    "all": 1,
}


def test_lint_is_clean(workflow):
    result = workflow.snakemake("--lint")
    assert "Congratulations, your workflow is in a good condition!" in result.stdout + result.stderr


def test_snakefile_and_rules_are_snakefmt_formatted():
    snakefmt = Path(sys.executable).with_name("snakefmt")  # a test extra: missing is a failure, not a skip
    result = subprocess.run([snakefmt, "--check", "Snakefile", "rules"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_default_config_plans_every_stage_and_one_run_per_variant(workflow):
    result = workflow.snakemake("--dry-run")
    assert "Using workflow specific profile profiles/default" in result.stdout + result.stderr
    assert workflow.planned_jobs() == DEFAULT_JOBS


def test_u1_8b_presets_replace_the_default_config(workflow):
    two_k = str(workflow.root / "config" / "u1-8b.yaml")
    one_k = str(workflow.root / "config" / "u1-8b-1k.yaml")
    assert workflow.planned_jobs("--configfile", two_k) == {**DEFAULT_JOBS, "clone_upstream": 1}
    plan = workflow.snakemake("--dry-run", "--configfile", two_k, one_k).stdout
    assert "results/models/u1-8b/manifest.json" in plan and "results/data/demo-1k/train.parquet" in plan
    assert "results/models/tiny" not in plan and "results/data/demo-2k" not in plan


def test_schema_defaults_alone_make_a_runnable_config(workflow):
    empty = workflow.write_config("empty.yaml", {})
    assert workflow.planned_jobs("--configfile", empty) == {**DEFAULT_JOBS, "train": 1, "export": 1, "sample": 2}


def test_bench_is_an_optional_target(workflow):
    assert workflow.planned_jobs("results/bench/tiny.json") == {"bench": 1}


def test_the_base_model_is_sampled_but_never_trained(workflow):
    plan = workflow.planned_jobs("results/runs/base/samples/demo/index.json")
    assert plan == {"model_identity": 1, "snapshot": 1, "sample": 1}
    result = workflow.snakemake("--dry-run", "results/runs/base/adapter.safetensors", check=False)
    assert result.returncode != 0 and "MissingRuleException" in result.stdout + result.stderr


def test_bad_config_fails_naming_every_bad_key_and_the_file(workflow):
    config = workflow.config()
    config["train"]["lrr"] = 1.0
    config["train"]["lr"] = "1e-4"
    config["sample"]["steps"] = "many"
    config["dataset"]["buckets"] = {"kind": "area"}
    path = workflow.write_config("bad.yaml", config)
    result = workflow.snakemake("--dry-run", "--configfile", path, check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    for expected in (
        f"invalid config ({path})",
        "train.lrr: unknown key; did you mean 'lr'?",
        "train.lr: '1e-4' is not of type 'number' (YAML reads 1e-4 as text: write 1.0e-4)",
        "sample.steps: 'many' is not of type 'integer'",
        "dataset.buckets.area: missing",
    ):
        assert expected in output


def test_grid_errors_name_the_axis_and_the_variant(workflow):
    config = workflow.config()
    config["grid"]["axes"]["train.nope"] = ["a"]
    result = workflow.snakemake("--dry-run", "--configfile", workflow.write_config("grid1.yaml", config), check=False)
    assert result.returncode != 0 and "grid.axes: train.nope: no such key" in result.stdout + result.stderr

    config = workflow.config()
    config["grid"]["axes"]["train.loss_type"] = ["x0", "l1"]
    result = workflow.snakemake("--dry-run", "--configfile", workflow.write_config("grid2.yaml", config), check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "variant loss-l1_t-logit_normal: train.loss_type: 'l1' is not one of" in output


def test_prompt_set_from_a_path_names_the_samples_folder(workflow, tmp_path):
    prompts = tmp_path / "mine.yaml"
    prompts.write_text("prompts:\n  - {id: a, prompt: a red apple}\n")
    config = workflow.config()
    config["sample"]["prompt_set"] = str(prompts)
    path = workflow.write_config("mine.yaml", config)
    assert "results/runs/base/samples/mine/index.json" in workflow.snakemake("--dry-run", "--configfile", path).stdout

    config["sample"]["prompt_set"] = "nosuchset"
    result = workflow.snakemake("--dry-run", "--configfile", workflow.write_config("none.yaml", config), check=False)
    assert result.returncode != 0 and "sample.prompt_set 'nosuchset': no file" in result.stdout + result.stderr


def test_slurm_profile_gives_gpu_jobs_their_resources(workflow):
    config = workflow.root / "config" / "u1-8b.yaml"
    plan = workflow.snakemake(
        "--dry-run", "--workflow-profile", str(workflow.root / "profiles" / "slurm"), "--configfile", str(config)
    ).stdout
    train_job = plan[plan.index("rule train:") :]
    resources = next(line for line in train_job.splitlines() if "resources:" in line)
    assert "runtime=720" in resources and "gpu=1" in resources and "mem_mb=64000" in resources
