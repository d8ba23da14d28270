"""End-to-end runs of the real stages on the tiny model (marked integration: tens of seconds)."""

import json
import shlex
import zipfile

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.test_documented_commands import REPORT_LINES
from u1lib.lora.io import read_lora_file
from u1lib.lora.peft import read_peft


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
    config = workflow.config()  # the default config with one grid axis (2 variants) and fewer steps
    config["grid"] = {"axes": {"train.loss_type": ["x0", "v"]}}
    config["train"].update(steps=20, val_every=10, ckpt_every=10, save_every=10, preview_every=10)
    config["sample"].update(steps=4, seeds=[0])
    short = workflow.write_config("short.yaml", config)
    workflow.snakemake("--cores", "2", "--configfile", short)
    results = workflow.workdir / "results"
    assert (results / "report.html").stat().st_size > 0
    variants = json.loads((results / "variants.json").read_text())
    assert sorted(variants["variants"]) == ["loss-v", "loss-x0"]
    for name in variants["variants"]:
        for output in ("adapter.safetensors", "metrics.json", "train_log.jsonl", "val_log.jsonl", "config.json"):
            assert (results / "runs" / name / output).is_file()
    assert json.loads((results / "runs/base/samples/demo/index.json").read_text())["images"]
    html = (results / "report.html").read_text()
    assert "Leaderboard" in html and "adapter_best.safetensors" in html
    for name in variants["variants"]:
        run = results / "runs" / name
        events = EventAccumulator(str(run / "tensorboard"))
        events.Reload()
        assert {"train/loss", "train/lr", "train/grad_norm", "val/x0_mse"} <= set(events.Tags()["scalars"])
        assert [s["step"] for s in json.loads((run / "previews/index.json").read_text())["steps"]] == [0, 10, 20]
        best = json.loads((run / "metrics.json").read_text())["best_adapter"]
        assert best["step"] in (10, 20) and (run / "adapter_best.safetensors").is_file()
        exported = json.loads((run / "export/export.json").read_text())
        checks = {k: v for k, v in exported["verification"].items() if isinstance(v, dict)}
        assert checks and all(check["ok"] for check in checks.values()), checks
        source = read_lora_file(run / "adapter.safetensors")
        assert read_lora_file(run / "export/lora_upstream.safetensors").triples.keys() == source.triples.keys()
        assert read_peft(run / "export/peft").keys() == source.triples.keys()

    # Snakemake's own report collects the same parts, from the outputs the report rule declares;
    # the README's command as written, on this workflow's config
    assert REPORT_LINES, "the README shows no snakemake --report command"
    for line in REPORT_LINES:
        workflow.snakemake(*shlex.split(line)[1:], "--configfile", short)
    words = shlex.split(REPORT_LINES[0])
    with zipfile.ZipFile(workflow.workdir / words[words.index("--report") + 1]) as archive:
        names = archive.namelist()
        page = next(archive.read(n).decode() for n in names if n.count("/") == 1 and n.endswith("/report.html"))
    for name in (  # each file under its declared folder, as Snakemake stores them
        "/leaderboard.tsv",
        "/validation_loss.png",
        "/base/cat_seed0.png",
        "/loss-v/cat_seed0.png",
        "/loss-x0/step-00000000/ihc_seed0.png",  # named by the held-out caption id
        "/loss-x0/step-00000020/ihc_seed0.png",
        "/report.html",
    ):
        assert any("/data/raw/" in n and n.endswith(name) for n in names), (name, names)
    categories = json.loads(page.split("var categories = ", 1)[1].split(";\n", 1)[0])
    assert sorted(categories) == ["1. Report", "2. Tables", "3. Figures", "4. Samples", "5. Previews"]
    assert sorted(categories["4. Samples"]) == ["base", "loss-v", "loss-x0"]

    config["sample"]["cfg_scale"] = 2.0
    changed = workflow.write_config("cfg.yaml", config)
    assert workflow.planned_jobs("--configfile", changed) == {"sample": 3, "report": 1, "all": 1}
    workflow.snakemake("--cores", "2", "--configfile", changed)
    assert workflow.planned_jobs("--configfile", changed) == {}
