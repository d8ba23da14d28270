"""What a change reruns: each knob reaches exactly the stages whose output it changes.

The fast tests fake a finished run (`snakemake --touch`, which records params like a real run) and
read the plan of a dry run; the integration tests run the real stages.
"""

import contextlib
import importlib.util
import json

import pytest

from conftest import Workflow, copy_workflow

DOWNSTREAM_OF_PACK = {"pack": 1, "cache": 1, "train": 4, "sample": 4, "report": 1, "all": 1}


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Workflow:
    workflow = copy_workflow(tmp_path_factory.mktemp("finished"))
    workflow.fake_complete()
    return workflow


def plan_with(workflow: Workflow, name: str, edit) -> dict[str, int]:
    config = workflow.config()
    edit(config)
    return workflow.planned_jobs("--configfile", workflow.write_config(name, config))


@contextlib.contextmanager
def edited_module(workflow: Workflow, relative: str):
    """Append a comment to a u1lib module of the copy (creating it if the stage is not written yet)."""
    path = workflow.root / "u1lib" / relative
    original = path.read_bytes() if path.exists() else None
    with open(path, "a") as handle:
        handle.write("\n# changed\n")
    try:
        yield
    finally:
        if original is None:
            path.unlink()
        else:
            path.write_bytes(original)


def test_a_finished_run_has_nothing_to_do(finished):
    assert finished.planned_jobs() == {}


def test_reordered_config_keys_rerun_nothing(finished):
    def reverse(value):
        return {key: reverse(value[key]) for key in reversed(list(value))} if isinstance(value, dict) else value

    assert finished.planned_jobs("--configfile", finished.write_config("reversed.yaml", reverse(finished.config()))) == {}


def test_sampler_knob_reruns_sample_and_report_only(finished):
    plan = plan_with(finished, "cfg.yaml", lambda config: config["sample"].update(cfg_scale=2.0))
    assert plan == {"sample": 5, "report": 1, "all": 1}


def test_new_trigger_reruns_cache_train_sample_report_but_not_pack(finished):
    plan = plan_with(finished, "trigger.yaml", lambda config: config["prompt"].update(trigger="ohwx"))
    assert plan == {"cache": 1, "train": 4, "sample": 5, "report": 1, "all": 1}


def test_new_axis_value_trains_only_the_new_variants(finished):
    plan = plan_with(finished, "axis.yaml",
                     lambda config: config["grid"]["axes"]["train.loss_type"].append("huber_x0"))
    assert plan == {"train": 2, "sample": 2, "write_variants": 1, "report": 1, "all": 1}
    dry_run = finished.snakemake("--dry-run", "--configfile", str(finished.root / "config" / "axis.yaml")).stdout
    assert "results/runs/loss-huber_x0_t-uniform/adapter.safetensors" in dry_run
    assert "results/runs/loss-x0_t-uniform/adapter.safetensors" not in dry_run.split("rule report:")[0]


def test_pack_knob_reruns_everything_after_pack_but_the_base_samples(finished):
    plan = plan_with(finished, "val.yaml", lambda config: config["dataset"].update(val_count=3))
    assert plan == DOWNSTREAM_OF_PACK


def test_u1lib_code_changes_rerun_the_stages_that_import_them(finished):
    with edited_module(finished, "report/html.py"):
        assert finished.planned_jobs() == {"report": 1, "all": 1}
    with edited_module(finished, "lora/spec.py"):
        assert finished.planned_jobs() == {"train": 4, "sample": 5, "report": 1, "all": 1}
    with edited_module(finished, "cache.py"):  # the sampler imports it too, through u1lib.sample
        assert finished.planned_jobs() == {"cache": 1, "train": 4, "sample": 5, "report": 1, "all": 1}
    assert finished.planned_jobs() == {}


def stages_exist(*modules: str) -> bool:
    return all(importlib.util.find_spec(module) is not None for module in modules)


@pytest.mark.integration
@pytest.mark.skipif(not stages_exist("u1lib.hub", "u1lib.data.demo", "u1lib.data.pack"), reason="data stages missing")
def test_data_stages_run_for_real(workflow):
    targets = ("results/data/demo/train.parquet", "results/models/tiny/modeling.json")
    workflow.snakemake("--cores", "2", *targets)
    stats = json.loads((workflow.workdir / "results/data/demo/stats.json").read_text())
    assert stats["counts"]["train"] == 6 and stats["counts"]["val"] == 2
    assert (workflow.workdir / "results/models/tiny/snapshot/model.safetensors").is_file()
    assert "packed 8 item(s)" in (workflow.workdir / "results/logs/pack/demo.log").read_text()
    assert workflow.planned_jobs(*targets) == {}


@pytest.mark.integration
@pytest.mark.skipif(not stages_exist("u1lib.cache", "u1lib.train.loop", "u1lib.sample", "u1lib.report"),
                    reason="cache/train/sample stages not written yet")
def test_whole_tiny_pipeline_then_a_sampler_change(workflow):
    workflow.snakemake("--cores", "2")
    results = workflow.workdir / "results"
    assert (results / "report.html").stat().st_size > 0
    variants = json.loads((results / "variants.json").read_text())
    assert sorted(variants["variants"]) == sorted(
        ["loss-v_t-logit_normal", "loss-v_t-uniform", "loss-x0_t-logit_normal", "loss-x0_t-uniform"])
    for name in variants["variants"]:
        for output in ("adapter.safetensors", "metrics.json", "train_log.jsonl", "val_log.jsonl", "config.json"):
            assert (results / "runs" / name / output).is_file()
    assert (results / "runs/base/samples/demo/index.json").is_file()

    config = workflow.config()
    config["sample"]["cfg_scale"] = 2.0
    changed = workflow.write_config("cfg.yaml", config)
    assert workflow.planned_jobs("--configfile", changed) == {"sample": 5, "report": 1, "all": 1}
    workflow.snakemake("--cores", "2", "--configfile", changed)
    assert workflow.planned_jobs("--configfile", changed) == {}
