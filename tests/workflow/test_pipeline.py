"""End-to-end runs of the real stages on the tiny model (marked integration: tens of seconds)."""

import json

import pytest


@pytest.mark.integration
def test_data_stages_run_for_real(workflow):
    targets = ("results/data/demo/train.parquet", "results/models/tiny/modeling.json")
    workflow.snakemake("--cores", "2", *targets)
    stats = json.loads((workflow.workdir / "results/data/demo/stats.json").read_text())
    assert stats["counts"]["train"] == 6 and stats["counts"]["val"] == 2
    assert (workflow.workdir / "results/models/tiny/snapshot/model.safetensors").is_file()
    assert "packed 8 item(s)" in (workflow.workdir / "results/logs/pack/demo.log").read_text()
    assert workflow.planned_jobs(*targets) == {}


@pytest.mark.integration
def test_whole_tiny_pipeline_then_a_sampler_change(workflow):
    config = workflow.config()  # the default config, fewer steps
    config["train"].update(steps=20, val_every=10, ckpt_every=10)
    config["sample"].update(steps=4, seeds=[0])
    short = workflow.write_config("short.yaml", config)
    workflow.snakemake("--cores", "2", "--configfile", short)
    results = workflow.workdir / "results"
    assert (results / "report.html").stat().st_size > 0
    variants = json.loads((results / "variants.json").read_text())
    assert sorted(variants["variants"]) == [
        "loss-v_t-logit_normal",
        "loss-v_t-uniform",
        "loss-x0_t-logit_normal",
        "loss-x0_t-uniform",
    ]
    for name in variants["variants"]:
        for output in ("adapter.safetensors", "metrics.json", "train_log.jsonl", "val_log.jsonl", "config.json"):
            assert (results / "runs" / name / output).is_file()
    assert json.loads((results / "runs/base/samples/demo/index.json").read_text())["images"]

    config["sample"]["cfg_scale"] = 2.0
    changed = workflow.write_config("cfg.yaml", config)
    assert workflow.planned_jobs("--configfile", changed) == {"sample": 5, "report": 1, "all": 1}
    workflow.snakemake("--cores", "2", "--configfile", changed)
    assert workflow.planned_jobs("--configfile", changed) == {}
